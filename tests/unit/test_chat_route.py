"""Which API a chat goes to: the engine's chat API, with the model's own template, for every
catalog model whose tokenizer ships one; llmhost's rendered prompt on the generate API only for
models without a template and engines without a chat API. Usage, stop sequences and the
prompt-too-long retry behave the same either way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from llmhost import catalog
from llmhost.engines.chat_templates import render_prompt
from llmhost.engines.codecs import ChatMessage
from llmhost.errors import LlmhostError
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.serving.errors import engine_error
from llmhost.serving.requests import ChatCompletionRequest
from llmhost.serving.routing import ModelRoute, route_for
from llmhost.serving.service import ServingService
from llmhost.specs import parse_spec
from llmhost.token_counting import token_counter_for
from llmhost_local.engine import LocalEngine
from llmhost_local.extractive import count_tokens

ENGINES = ("tgi", "vllm", "lmi", "hf-inference")
QUESTION = "How is sourdough bread leavened?"


def _route(model: catalog.CatalogModel, engine: str) -> ModelRoute | None:
    """The route of a deployment of ``model`` on ``engine``, or None if it cannot be deployed."""
    try:
        spec = parse_spec(
            {"name": "m", "model": {"model_id": model.hf_id}, "engine": {"name": engine}}
        )
    except LlmhostError:
        return None
    return route_for(DeploymentRecord(name="m", spec=spec))


CASES = [
    pytest.param(model, engine, id=f"{model.id}-{engine}")
    for model in catalog.all_models()
    for engine in ENGINES
    if _route(model, engine) is not None
]


class Directory:
    """The model directory, reduced to one route."""

    def __init__(self, route: ModelRoute) -> None:
        self._route = route

    def route(self, model: str) -> ModelRoute:
        return self._route

    def answered(self, model: str) -> None:
        pass


class Recorder:
    """An invoker that records each payload and answers with what the test scripts."""

    def __init__(self, plain: Any = None, stream: list[bytes] | None = None) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.plain = plain
        self.events = stream or []

    def invoke(self, target: Any, payload: dict[str, Any]) -> bytes:
        self.payloads.append(payload)
        return json.dumps(self.plain).encode()

    def stream(self, target: Any, payload: dict[str, Any]) -> Iterator[bytes]:
        self.payloads.append(payload)
        return iter(self.events)


class Engine:
    """An invoker in front of the local TGI-protocol engine (as SageMaker's runtime is)."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.payloads: list[dict[str, Any]] = []

    def _reply(self, payload: dict[str, Any]) -> Any:
        self.payloads.append(payload)
        return self.engine.handle("POST", "/invocations", json.dumps(payload).encode())

    def invoke(self, target: Any, payload: dict[str, Any]) -> bytes:
        reply = self._reply(payload)
        if reply.status >= 400:
            raise engine_error(reply.status, reply.body)
        return reply.body

    def stream(self, target: Any, payload: dict[str, Any]) -> Iterator[bytes]:
        reply = self._reply(payload)
        if reply.status >= 400:
            raise engine_error(reply.status, reply.body)
        return iter(reply.stream or [reply.body])


def _service(route: ModelRoute, invoker: Any) -> ServingService:
    def unused() -> Any:
        raise AssertionError("not used without RAG")

    return ServingService(Directory(route), lambda: invoker, unused, unused)  # type: ignore[arg-type]


def _request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": QUESTION},
            ],
            **fields,
        }
    )


def _sent(route: ModelRoute, request: ChatCompletionRequest) -> dict[str, Any]:
    # A reply every codec reads: OpenAI's shape (chat, completions) and the generate one
    reply = {"choices": [{"message": {"content": "ok"}, "text": "ok"}], "generated_text": "ok"}
    recorder = Recorder(plain=reply)
    _service(route, recorder).chat(request)
    (payload,) = recorder.payloads
    return payload


# ------------------------------------------------------------------------- which API


@pytest.mark.parametrize(("model", "engine"), CASES)
def test_a_model_with_its_own_template_goes_to_the_engines_chat_api(
    model: catalog.CatalogModel, engine: str
) -> None:
    route = _route(model, engine)
    assert route is not None
    payload = _sent(route, _request())
    if model.ships_chat_template and engine != "hf-inference":
        # Then the engine gets the messages as they are, to apply the model's own template
        assert payload["messages"] == [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTION},
        ]
        assert "inputs" not in payload and "prompt" not in payload
    else:
        # Flan-T5 and Falcon (no template), and hf-inference (no chat API): llmhost's prompt
        rendered = render_prompt(
            model.chat_template,
            [ChatMessage("system", "Answer briefly."), ChatMessage("user", QUESTION)],
        )
        assert "messages" not in payload
        assert payload.get("inputs", payload.get("prompt")) == rendered


def test_the_catalog_says_which_models_have_no_template() -> None:
    without = {m.family for m in catalog.all_models() if not m.ships_chat_template}
    assert without == {"flan-t5", "falcon"}


def test_an_unknown_model_goes_to_the_chat_api() -> None:
    spec = parse_spec({"name": "m", "model": {"model_id": "someone/unknown-chat-model"}})
    route = route_for(DeploymentRecord(name="m", spec=spec))
    assert route.chat_template is None
    assert "messages" in _sent(route, _request())


def test_a_repetition_penalty_the_chat_api_cannot_take_keeps_the_generate_api() -> None:
    zephyr = catalog.lookup("zephyr-7b-beta")
    assert zephyr is not None
    for engine, api in (("tgi", "inputs"), ("lmi", "inputs"), ("vllm", "messages")):
        route = _route(zephyr, engine)
        assert route is not None
        route = ModelRoute(
            **{
                **route.__dict__,
                "defaults": route.defaults.model_copy(update={"repetition_penalty": 1.2}),
            }
        )
        payload = _sent(route, _request())
        assert api in payload, engine
        penalty = payload.get("parameters", payload).get("repetition_penalty")
        assert penalty == 1.2, engine


@pytest.mark.parametrize("engine", ["tgi", "vllm", "lmi"])
def test_stop_sequences_and_limits_reach_the_chat_api(engine: str) -> None:
    llama = catalog.lookup("llama-3.1-8b-instruct")
    assert llama is not None
    route = _route(llama, engine)
    assert route is not None
    payload = _sent(route, _request(stop=["\n\n", "Question:"], max_tokens=40, temperature=0))
    assert payload["stop"] == ["\n\n", "Question:"]
    assert payload["max_tokens"] == 40 and payload["temperature"] == 0


# ------------------------------------------------------------------------------ usage


def _zephyr(engine: str) -> ModelRoute:
    model = catalog.lookup("zephyr-7b-beta")
    assert model is not None
    route = _route(model, engine)
    assert route is not None
    return route


def _streamed(service: ServingService, request: ChatCompletionRequest) -> tuple[str, Any]:
    chunks = list(service.chat_stream(request))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return text, chunks[-1].get("usage")


def test_tgi_chat_usage_is_the_engines_count_streamed_or_not() -> None:
    engine = Engine(LocalEngine())
    service = _service(_zephyr("tgi"), engine)
    request = _request()
    plain = service.chat(request)
    text, streamed = _streamed(
        service, _request(stream=True, stream_options={"include_usage": True})
    )
    assert all("messages" in p for p in engine.payloads)
    assert text == plain["choices"][0]["message"]["content"]
    assert plain["usage"] == streamed
    # the engine's own count of what it templated, not llmhost's estimate
    assert streamed["prompt_tokens"] == count_tokens("Answer briefly.") + count_tokens(QUESTION)


def test_lmi_chat_usage_is_the_same_streamed_or_not_though_its_stream_counts_nothing() -> None:
    # LMI answers a plain chat with usage; its streamed chat is one chunk per token, no usage
    plain_reply = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Wild yeast."},
                "finish_reason": "eos_token",
            }
        ],
        "usage": {"prompt_tokens": 33, "completion_tokens": 3, "total_tokens": 36},
    }
    lines = [
        {"delta": {"content": "Wild", "role": "assistant"}, "finish_reason": None},
        {"delta": {"content": " yeast"}, "finish_reason": None},
        {"delta": {"content": "."}, "finish_reason": "eos_token"},
    ]
    events = [
        json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, **line}],
            }
        ).encode()
        + b"\n"
        for line in lines
    ]
    route = _zephyr("lmi")
    recorder = Recorder(plain=plain_reply, stream=events)
    service = _service(route, recorder)
    plain = service.chat(_request())
    text, streamed = _streamed(
        service, _request(stream=True, stream_options={"include_usage": True})
    )
    assert all("messages" in p for p in recorder.payloads)
    assert text == "Wild yeast."
    assert plain["usage"] == streamed
    estimate = token_counter_for("zephyr")(
        render_prompt(
            "zephyr",
            [ChatMessage("system", "Answer briefly."), ChatMessage("user", QUESTION)],
            bos=True,
        )
    )
    assert streamed == {
        "prompt_tokens": estimate,
        "completion_tokens": 3,
        "total_tokens": estimate + 3,
    }


# ------------------------------------------------------------------ too long, rebuilt

SOURDOUGH = "Sourdough is leavened by wild yeast and lactic acid bacteria in a starter. "


def _rag_service(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, *, passages: int, repeat: int
) -> ServingService:
    """A zephyr deployment (planned for more than 2,000 input tokens) answered by ``engine``,
    whose retrieval returns ``passages`` passages of ``repeat`` sentences each."""
    hits = [
        SimpleNamespace(
            doc_id=f"doc{i}", chunk_index=0, text=SOURDOUGH * repeat, score=1 - i / 100,
            metadata={}, start=0, end=len(SOURDOUGH) * repeat,
        )
        for i in range(passages)
    ]  # fmt: skip
    import llmhost.rag.retrieve

    monkeypatch.setattr(
        llmhost.rag.retrieve, "retrieve", lambda *a, **k: SimpleNamespace(hits=hits, timings_ms={})
    )

    def unused() -> Any:
        return None

    route = _zephyr("tgi")
    assert route.max_input_tokens > 2000
    return ServingService(Directory(route), lambda: engine, unused, unused)  # type: ignore[arg-type]


def _answer(service: ServingService, request: ChatCompletionRequest) -> str:
    if request.stream:
        return _streamed(service, request)[0]
    return str(service.chat(request)["choices"][0]["message"]["content"])


def test_a_rag_prompt_the_engine_finds_too_long_is_rebuilt_and_sent_to_chat_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An engine that takes fewer tokens than the deployment's plan says
    engine = Engine(LocalEngine(max_input_tokens=2000, max_total_tokens=2048))
    service = _rag_service(monkeypatch, engine, passages=40, repeat=30)
    for stream in (False, True):
        engine.payloads.clear()
        request = _request(stream=stream, max_tokens=100, rag={"collection": "kb", "k": 40})
        text = _answer(service, request)
        # Then the first chat payload was refused and a smaller one answered
        assert len(engine.payloads) == 2, stream
        first, second = (json.dumps(p["messages"]) for p in engine.payloads)
        assert all("messages" in p for p in engine.payloads)
        assert len(second) < len(first)
        assert "wild yeast" in text


def test_a_rag_prompt_of_few_passages_over_the_engines_real_limit_is_answered_on_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given 5 passages that fill far less than the deployment's planned input budget, but more
    # than the engine really takes (a deployment named for a bigger model than answers it)
    engine = Engine(LocalEngine(max_input_tokens=600, max_total_tokens=2048))
    service = _rag_service(monkeypatch, engine, passages=5, repeat=10)
    request = _request(stream=False, max_tokens=100, rag={"collection": "kb", "k": 5})
    text = _answer(service, request)
    # Then the refused prompt was rebuilt smaller, and that one was answered
    assert len(engine.payloads) == 2
    first, second = (json.dumps(p["messages"]) for p in engine.payloads)
    assert len(second) < len(first)
    assert "wild yeast" in text


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_refused_by_the_total_check_then_the_input_check_is_cut_twice(
    monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    # Given many long passages, and an engine whose input limit (500) is far below what its
    # total limit leaves (2048 - 100): TGI checks the total first, so its first refusal names
    # only the looser limit, and the prompt cut to it is refused by the input check
    engine = Engine(LocalEngine(max_input_tokens=500, max_total_tokens=2048))
    service = _rag_service(monkeypatch, engine, passages=40, repeat=30)
    request = _request(stream=stream, max_tokens=100, rag={"collection": "kb", "k": 40})
    text = _answer(service, request)
    # Then each refusal's limit was used in turn, and the third prompt was answered
    assert len(engine.payloads) == 3
    sizes = [len(json.dumps(p["messages"])) for p in engine.payloads]
    assert sizes[0] > sizes[1] > sizes[2]
    assert "wild yeast" in text


def test_a_refusal_that_teaches_no_tighter_limit_is_not_retried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an engine that refuses every prompt naming the same limit (a counter wildly off)
    from llmhost.serving.errors import PromptTooLong

    class Refuses(Engine):
        def invoke(self, target: Any, payload: dict[str, Any]) -> bytes:
            self.payloads.append(payload)
            raise engine_error(
                422,
                b'{"error": "Input validation error: `inputs` must have less than 300 tokens. '
                b'Given: 400", "error_type": "validation"}',
            )

    engine = Refuses(LocalEngine())
    service = _rag_service(monkeypatch, engine, passages=5, repeat=5)
    request = _request(stream=False, max_tokens=100, rag={"collection": "kb", "k": 5})
    with pytest.raises(PromptTooLong):
        service.chat(request)
    # Then it was sent twice (once, and once cut); the same limit again ends it
    assert len(engine.payloads) == 2


def test_a_stream_says_which_chunks_are_ready_before_the_next_model_event() -> None:
    # Given a stream whose first engine event carried text
    stream = _service(_zephyr("tgi"), Engine(LocalEngine())).chat_stream(_request(stream=True))
    # Then the role announcement and that text are ready (a server sends them at once)
    assert stream.ready == 2
    role, text = next(stream), next(stream)
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text["choices"][0]["delta"]["content"]
    stream.close()
