"""The ``llmhost`` command, installed with the package, run as a user runs it: a subprocess
against one local stack that announces itself in ``.llmhost/local.json`` as ``make run``
does, found from the working directory without any option.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import local_stack
from llmhost_local import runner

pytestmark = pytest.mark.e2e

SPEC = """\
# a deployment spec in YAML, as a user writes one
name: cli-demo
model:
  model_id: HuggingFaceH4/zephyr-7b-beta
hosting:
  kind: dedicated
  instance_type: ml.g5.2xlarge
"""


def llmhost_command() -> str:
    """The installed ``llmhost`` script, next to this interpreter (``make test`` installs it
    with the package)."""
    found = shutil.which(
        "llmhost", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    if found is None:
        pytest.fail("the llmhost command is not installed: `pip install -e .` (make test does)")
    return found


@dataclass
class Cli:
    root: Path  # where .llmhost/local.json is: the commands run from here
    api: str

    def __call__(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        # A terminal's COLUMNS (which a test runner may export) would fold the tables the
        # assertions read line by line; piped output is otherwise never folded.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("LLMHOST_") and k not in ("COLUMNS", "LINES")
        }
        return subprocess.run(
            [llmhost_command(), *args],
            cwd=cwd or self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def json(self, *args: str) -> Any:
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    root = tmp_path_factory.mktemp("project")
    # 600x: an endpoint is created in about a second
    with local_stack(root / "qdrant", speed=600, drift_seconds=0.5) as stack:
        info = runner.announcement(stack.api, stack.openai, "http://127.0.0.1:9")
        with runner.announced(root, info):
            yield Cli(root, stack.api)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_up_waits_showing_the_reconcilers_steps_until_in_service(cli: Cli) -> None:
    # Given a spec file in YAML
    (cli.root / "demo.yaml").write_text(SPEC)
    # When it is planned, nothing is created, and the plan names the instance and its price
    planned = cli("plan", "demo.yaml")
    assert planned.returncode == 0, planned.stderr
    assert re.search(r"^instance_type\s+ml\.g5\.2xlarge\s*$", planned.stdout, re.M)
    assert re.search(r"^cost\.\S*hour\S*\s+\d", planned.stdout, re.M), planned.stdout
    # When it is brought up with --wait
    done = cli("up", "demo.yaml", "--wait")
    # Then the command follows the reconciler's steps and ends when the model serves
    assert done.returncode == 0, done.stderr
    assert "cli-demo: created (generation 1, PENDING)" in done.stderr
    assert "CreateEndpoint" in done.stderr and "CreateModel" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("cli-demo: IN_SERVICE after ")
    # And bringing up the same spec again changes nothing
    again = cli("up", "demo.yaml")
    assert again.returncode == 0 and "cli-demo: unchanged" in again.stderr, again.stderr
    # And an edited spec is an update, followed until the reconciler has taken it up
    (cli.root / "demo.yaml").write_text(SPEC + "tags: {team: search}\n")
    updated = cli("up", "demo.yaml", "--wait", "--timeout", "120")
    assert updated.returncode == 0, updated.stderr
    assert "cli-demo: updated (generation 2, IN_SERVICE)" in updated.stderr
    assert "SpecUpdated" in updated.stderr
    assert updated.stderr.rstrip().splitlines()[-1].startswith("cli-demo: IN_SERVICE after ")


def test_ls_and_status_show_the_deployment(cli: Cli) -> None:
    listed = cli.json("ls")
    assert {d["name"]: d["status"] for d in listed["deployments"]}["cli-demo"] == "IN_SERVICE"
    table = cli("ls")
    assert table.returncode == 0
    [row] = [line for line in table.stdout.splitlines() if line.startswith("cli-demo ")]
    assert "IN_SERVICE" in row and "HuggingFaceH4/zephyr-7b-beta" in row
    status = cli("status", "cli-demo")
    assert status.returncode == 0
    assert status.stdout.startswith("cli-demo  IN_SERVICE")
    assert "history:" in status.stdout and "CreateEndpoint" in status.stdout


def test_ingest_reports_each_rejected_document_and_asks_answer_from_the_rest(cli: Cli) -> None:
    # Given a folder with two good documents and a .jsonl file whose second line is empty
    docs = cli.root / "docs"
    (docs / "geo").mkdir(parents=True)
    (docs / "geo" / "etna.md").write_text(
        "Mount Etna is an active stratovolcano on the east coast of Sicily."
    )
    (docs / "bread.txt").write_text("Sourdough is leavened by wild yeast and lactic bacteria.")
    (docs / "notes.jsonl").write_text(
        json.dumps({"id": "tide", "text": "Tides follow the moon."})
        + "\n"
        + json.dumps({"id": "blank", "text": "   "})
        + "\n"
    )
    # (and a picture, which is not read, and a hidden folder, which is not even looked at)
    (docs / "photo.png").write_bytes(b"\x89PNG")
    (docs / ".git").mkdir()
    (docs / ".git" / "HEAD.txt").write_text("ref: refs/heads/main")
    # When it is ingested
    done = cli("ingest", "docs", "--collection", "kb")
    # Then the rejected document gets a line saying where and why, the others land
    assert done.returncode == 1, done.stdout + done.stderr
    assert "rejected notes.jsonl line 2 (text): is empty" in done.stderr
    assert "ignored photo.png: not .txt, .md or .jsonl" in done.stderr
    assert "HEAD" not in done.stderr
    assert "indexed 3 documents" in done.stdout and "1 problems above" in done.stdout

    # And the model answers from them, with the source it used
    plain = cli("ask", "cli-demo", "Where is Mount Etna?", "--collection", "kb", "-k", "2")
    assert plain.returncode == 0, plain.stderr
    assert "Sicily" in plain.stdout
    # the sources follow the answer: the number it cites, the chunk, the score
    assert re.search(r"^\[1\] geo/etna\.md#0  score \d\.\d{3}$", plain.stdout, re.M), plain.stdout

    # And streamed, through the OpenAI-compatible server with the local API key
    streamed = cli("ask", "cli-demo", "How is sourdough leavened?", "-c", "kb", "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert "wild yeast" in streamed.stdout
    assert re.search(r"^\[1\] bread\.txt#0  score ", streamed.stdout, re.M), streamed.stdout


def test_sleep_and_wake_follow_the_deployment(cli: Cli) -> None:
    asleep = cli("sleep", "cli-demo", "--wait")
    assert asleep.returncode == 0, asleep.stderr
    assert "cli-demo: SLEEPING after " in asleep.stderr
    awake = cli("wake", "cli-demo", "--wait")
    assert awake.returncode == 0, awake.stderr
    assert "cli-demo: IN_SERVICE after " in awake.stderr


def test_asking_a_sleeping_model_says_when_to_retry_or_waits_for_it(cli: Cli) -> None:
    assert cli("sleep", "cli-demo", "--wait").returncode == 0
    # A question to a model asleep is the API's 503, with its Retry-After: a failure, exit 1
    cold = cli("ask", "cli-demo", "Where is Mount Etna?", "-c", "kb")
    assert cold.returncode == 1
    assert cold.stderr.startswith("error: 503 model_not_ready: ")
    assert re.search(r"^  retry after \d+ s$", cold.stderr, re.M), cold.stderr
    assert re.search(r"^  trace [0-9a-f]{32}: llmhost traces ", cold.stderr, re.M)
    # With --wait the request is held while the model wakes, and answered
    held = cli("ask", "cli-demo", "Where is Mount Etna?", "-c", "kb", "--wait", "60")
    assert held.returncode == 0, held.stderr
    assert "Sicily" in held.stdout


def test_an_api_refusal_prints_its_message_and_field(cli: Cli) -> None:
    # Given a spec the API refuses (a JSON one this time): no such instance type
    bad = {"name": "cli-bad", "model": {"model_id": "x/y"}, "hosting": {"instance_type": "big"}}
    (cli.root / "bad.json").write_text(json.dumps(bad))
    done = cli("up", "bad.json")
    # Then the API's message and the field it names are printed, without a traceback
    assert done.returncode == 1
    assert done.stderr.startswith("error: 422 invalid_request: the request is invalid: ")
    assert "field hosting" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    # And an unknown deployment is the API's 404, also exit 1
    missing = cli("status", "nobody-here")
    assert missing.returncode == 1 and "error: 404" in missing.stderr


def test_usage_errors_exit_2(cli: Cli) -> None:
    for args in (["ask", "cli-demo"], ["rm"], ["ls", "--bogus"], ["ask", "m", "q", "-k", "3"]):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Usage: llmhost" in done.stderr or "Error:" in done.stderr


def test_an_unreachable_stack_says_where_and_how_to_start_it(cli: Cli, tmp_path: Path) -> None:
    port = closed_port()
    # Given a URL nothing listens on
    done = cli("--url", f"http://127.0.0.1:{port}", "ls")
    assert done.returncode == 3
    assert f"no llmhost answered at http://127.0.0.1:{port}/v1/deployments" in done.stderr
    assert "make run" in done.stderr and "Traceback" not in done.stderr
    # And a local stack that announced itself and is gone (a stale .llmhost/local.json)
    stale = runner.announcement(f"http://127.0.0.1:{port}", "http://127.0.0.1:1", "-")
    (tmp_path / ".llmhost").mkdir()
    (tmp_path / ".llmhost" / "local.json").write_text(json.dumps(stale))
    gone = cli("ls", cwd=tmp_path)
    assert gone.returncode == 3
    assert str(tmp_path / ".llmhost" / "local.json") in gone.stderr
    assert "it may have stopped: start it with `make run`" in gone.stderr


def test_traces_list_show_and_follow_the_requests(cli: Cli) -> None:
    # Given the questions asked above: each one's trace, newest last, one JSON object a line
    listed = cli("traces", "--model", "cli-demo", "--json")
    assert listed.returncode == 0, listed.stderr
    traces = [json.loads(line) for line in listed.stdout.splitlines()]
    etna = [
        t
        for t in traces
        if (t["kind"], t["query"], t["status"]) == ("rag", "Where is Mount Etna?", "ok")
    ]
    assert etna and etna[-1]["collection"] == "kb"
    assert [t["started_at"] for t in traces] == sorted(t["started_at"] for t in traces)
    # And the refusal while the model slept, by status
    refused = cli("traces", "--model", "cli-demo", "--status", "error")
    assert refused.returncode == 0
    assert re.search(r"^\S+ \S+  [0-9a-f]{32}  rag  cli-demo/kb  error 503 ", refused.stdout, re.M)

    # When one is shown: its stages, prompt, sources and answer
    shown = cli("traces", etna[-1]["id"])
    assert shown.returncode == 0, shown.stderr
    for part in ("retrieve", "generate", "prompt:", "answer:", "Sicily", "[1] geo/etna.md#0"):
        assert part in shown.stdout, (part, shown.stdout)
    # And scored
    scored = cli("feedback", etna[-1]["id"], "1", "--comment", "right volcano")
    assert scored.returncode == 0, scored.stderr
    assert "  feedback user: 1  right volcano\n" in cli("traces", etna[-1]["id"]).stdout

    # When traces are followed while a new question is asked
    follow = subprocess.Popen(
        [llmhost_command(), "traces", "-f", "--model", "cli-demo", "--interval", "0.3", "--json"],
        cwd=cli.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a runner started in the background (CI, `make test
        # &`) ignores SIGINT, its children inherit that, and Python then never raises
        # KeyboardInterrupt for it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert follow.stdout is not None
        first = [json.loads(follow.stdout.readline()) for _ in range(len(traces))]
        asked = cli("ask", "cli-demo", "What leavens sourdough?", "-c", "kb")
        assert asked.returncode == 0, asked.stderr
        # the answer names its trace (on stderr), and the follower prints that trace next
        [trace_id] = re.findall(r"^trace ([0-9a-f]{32}): llmhost traces ", asked.stderr, re.M)
        assert json.loads(follow.stdout.readline())["id"] == trace_id
    finally:
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    # Then Ctrl-C ends it without an error, and nothing was printed twice
    assert follow.returncode == 0, err
    assert len({t["id"] for t in first}) == len(first)


def test_usage_counts_the_requests_asked_and_prices_them(cli: Cli) -> None:
    # Given the questions asked above (plain, streamed, refused while asleep, held)
    report = cli.json("usage", "--by", "deployment")
    rows = {row["deployment"]: row for row in report["rows"]}
    assert rows["cli-demo"]["requests"] >= 4
    assert rows["cli-demo"]["errors"] >= 1  # the 503 while it slept
    assert rows["cli-demo"]["cost_usd"] > 0
    # And the table shows the same, with the total and how the cost was shared
    table = cli("usage")
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if line.startswith("cli-demo ")]
    assert str(rows["cli-demo"]["requests"]) == row.split()[1]
    assert "total" in table.stdout and report["method"] in table.stdout
    # And a time it cannot read is the API's refusal, naming the parameter
    bad = cli("usage", "--from", "yesterday")
    assert bad.returncode == 1 and "from" in bad.stderr, bad.stderr


def test_jobs_lists_them(cli: Cli) -> None:
    listed = cli.json("jobs", "--model", "cli-demo")
    assert listed["jobs"] == [] and listed["count"] == 0


def test_rm_waits_until_deleted(cli: Cli) -> None:
    done = cli("rm", "cli-demo", "--wait")
    assert done.returncode == 0, done.stderr
    assert "cli-demo: DELETED after " in done.stderr
    assert cli.json("status", "cli-demo")["status"] == "DELETED"
