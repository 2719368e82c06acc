"""``make run`` with the real model, as a user runs it: ``python -m llmhost_local --engine
llama`` in its own process, the README ingested and asked about with the ``llmhost``
command (which finds the stack by itself, and streams through the OpenAI-compatible
endpoint), and ``--engine-port`` serving the same engine's own TGI API for direct
comparisons.

The runner runs from a folder of its own that links the checkout's functions/ and
template.yaml, so its ``.llmhost/local.json`` announcement (and its state) stay there and a
``make run`` of the developer's own keeps its announcement.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from llm_reference import MODEL_ID

from conftest import ROOT

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Run:
    api: str
    openai: str
    engine: str
    out: Path
    err: Path
    home: Path

    def banner(self) -> str:
        return self.out.read_text()

    def llmhost(self, *args: str) -> subprocess.CompletedProcess[str]:
        found = shutil.which(
            "llmhost", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        )
        if found is None:
            pytest.fail("the llmhost command is not installed: `pip install -e .`")
        # As a user runs it: no settings, the stack found from the working directory
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LLMHOST_", "AWS_")) and k not in ("COLUMNS", "LINES")
        }
        return subprocess.run(
            [found, "--request-timeout", "300", *args],
            cwd=self.home,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read() or b"null")


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    home = tmp_path_factory.mktemp("run")
    for name in ("functions", "template.yaml"):
        (home / name).symlink_to(ROOT / name)
    api, openai, moto, console, engine = (free_port() for _ in range(5))
    out, err = home / "stdout.log", home / "stderr.log"
    env = {
        **os.environ,
        "QDRANT_PATH": str(home / "qdrant"),
        # The stack's own request timeout: the model runs on a CPU shared with everything
        "SERVING_TIMEOUT_S": "300",
    }
    env.pop("LLMHOST_ENGINE", None)  # tests/conftest.py pins the extractive engine
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "llmhost_local", "--engine", "llama",
                "--port", str(api), "--openai-port", str(openai), "--moto-port", str(moto),
                "--console-port", str(console), "--engine-port", str(engine),
                "--speed", "600", "--drift-seconds", "0.5",
            ],
            cwd=home,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )  # fmt: skip
    running = Run(
        f"http://127.0.0.1:{api}", f"http://127.0.0.1:{openai}", f"http://127.0.0.1:{engine}",
        out, err, home,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "model engine" not in running.banner():
            assert process.poll() is None, f"make run exited: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no banner: {err.read_text()[-2000:]}"
            time.sleep(0.3)
        assert _up(running.openai + "/health") and _up(running.engine + "/health")
        assert (home / ".llmhost" / "local.json").is_file()
        yield running
    finally:
        process.send_signal(signal.SIGTERM)  # stops as Ctrl-C does
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_the_banner_names_the_real_model(run: Run) -> None:
    [line] = [ln for ln in run.banner().splitlines() if ln.strip().startswith("model engine")]
    assert MODEL_ID in line and "llama.cpp" in line, line
    info = _get(run.engine + "/info")
    assert f"{info['max_input_tokens']} input tokens" in line, line
    assert "extractive" not in run.err.read_text()


def test_the_demo_deployment_names_the_model_the_engine_serves(run: Run) -> None:
    deadline = time.monotonic() + 120
    while (status := run.llmhost("status", "demo", "--json")).returncode != 0 or json.loads(
        status.stdout
    )["status"] != "IN_SERVICE":
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(0.5)
    demo = json.loads(status.stdout)
    info = _get(run.engine + "/info")
    assert demo["spec"]["model"]["model_id"] == info["model_id"] == MODEL_ID
    options = demo["spec"]["engine"]["options"]
    assert options["max_input_tokens"] == info["max_input_tokens"]
    assert options["max_total_tokens"] == info["max_total_tokens"]


def test_llmhost_ask_streams_a_rag_answer_from_the_readme(run: Run) -> None:
    shutil.copy(ROOT / "README.md", run.home / "README.md")
    ingested = run.llmhost("ingest", "README.md", "--collection", "docs")
    assert ingested.returncode == 0, ingested.stderr
    shown = run.llmhost(
        "ask", "demo", "How do I run the tests?", "--collection", "docs", "--stream",
        "--max-tokens", "32",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    # The model's answer, then its sources, numbered as the prompt numbered them
    answer, _, sources = shown.stdout.partition("\n[1] ")
    assert answer.strip(), shown.stdout
    assert re.match(r"README\.md#\d+ ", sources), shown.stdout
