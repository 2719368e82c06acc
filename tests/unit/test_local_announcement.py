"""``.llmhost/local.json``: a second local stack (a test's, while ``make run`` runs) leaves
the first one announced when it stops, so the ``llmhost`` command still finds it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from llmhost_local import runner


def read(root: Path) -> dict[str, object] | None:
    path = root / runner.LOCAL_FILE
    return json.loads(path.read_text()) if path.exists() else None


def test_a_stack_that_stops_gives_the_file_back_to_the_one_still_running(tmp_path: Path) -> None:
    first = {"api": "http://127.0.0.1:8080", "pid": os.getpid()}
    second = {"api": "http://127.0.0.1:19000", "pid": os.getpid()}
    with runner.announced(tmp_path, first):
        with runner.announced(tmp_path, second):
            assert read(tmp_path) == second
        # the first still runs: it is announced again
        assert read(tmp_path) == first
    assert read(tmp_path) is None


def test_a_stack_that_is_gone_is_not_announced_again(tmp_path: Path) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    path = tmp_path / runner.LOCAL_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"api": "http://127.0.0.1:8080", "pid": ended.pid}))
    with runner.announced(tmp_path, {"api": "http://127.0.0.1:19000", "pid": os.getpid()}):
        pass
    assert read(tmp_path) is None
