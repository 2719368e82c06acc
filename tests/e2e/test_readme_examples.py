"""The README's local examples, run as written against a running local stack.

Only the ports differ: the stack here listens on free ports, so the examples' 8080 and 8081
are replaced by them (the ``llmhost`` command gets ``--url``, as the README says for another
stack than the one ``make run`` announces).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import local_stack
from llmhost_local.cloud import LOCAL_API_KEY

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with local_stack(tmp_path_factory.mktemp("qdrant"), speed=600, drift_seconds=0.5) as stack:
        stack.cloud.create_demo()
        yield stack.api, stack.openai


def _wait_for_demo(openai_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=openai_url + "/v1", api_key=LOCAL_API_KEY)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        models = {m.id: m for m in client.models.list()}
        if (
            "demo" in models
            and (models["demo"].model_extra or {}).get("llmhost", {}).get("status") == "IN_SERVICE"
        ):
            return
        time.sleep(0.3)
    raise AssertionError("demo never reached IN_SERVICE")


def test_ingest_then_stream_with_sources_as_the_readme_shows(stack: tuple[str, str]) -> None:
    api, openai_url = stack
    _wait_for_demo(openai_url)

    # Given the README's ingest command, run from the project root as written (the llmhost
    # command that `make test` installs next to this interpreter, as `make run`'s venv has it)
    [ingest] = [
        line
        for block in _blocks("bash")
        for line in block.splitlines()
        if line.startswith("llmhost ingest README.md ")
    ]
    argv = shlex.split(ingest)
    argv[0:1] = [str(Path(sys.executable).parent / "llmhost"), "--url", api]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    # When the README's openai snippet runs (only its port changed)
    # (the quick start's: the one asking for RAG; other sections have snippets of their own)
    [snippet] = [b for b in _blocks("python") if "from openai import OpenAI" in b and '"rag"' in b]
    assert "http://127.0.0.1:8081/v1" in snippet
    code = snippet.replace("http://127.0.0.1:8081", openai_url)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})

    # Then it prints a streamed answer and the sources it came from (this README)
    lines = printed.getvalue().strip().splitlines()
    sources = [line for line in lines if re.fullmatch(r"\[.+\] score \d\.\d{3}", line)]
    assert sources, printed.getvalue()
    assert any("README" in line for line in sources)
    assert len(lines) > len(sources)  # the answer came first
