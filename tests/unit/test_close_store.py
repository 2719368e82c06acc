"""The process's vector store is closed when the local stack stops: embedded Qdrant releases
its folder, and nothing is left for the interpreter's exit (where closing it printed an
ImportError traceback after every Ctrl-C of `make run`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from llmhost import runtime


def test_close_store_releases_the_folder_and_forgets_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "qdrant"))
    runtime._store.cache_clear()
    opened = runtime.store()
    # While it is open, embedded Qdrant refuses the folder to a second client
    with pytest.raises(RuntimeError):
        QdrantClient(path=str(tmp_path / "qdrant"))
    runtime.close_store()
    other = QdrantClient(path=str(tmp_path / "qdrant"))  # the lock is released
    other.close()
    assert runtime.store() is not opened  # a later call opens a new one
    runtime.close_store()
    runtime.close_store()  # nothing open: nothing to do


def test_a_process_that_closes_its_store_exits_without_a_traceback(tmp_path: Path) -> None:
    code = (
        "import os; os.environ['QDRANT_PATH'] = {path!r}; os.environ.pop('QDRANT_URL', None)\n"
        "from llmhost import runtime\n"
        "runtime.store()\n"
        "if {close}: runtime.close_store()\n"
    )
    runs = {}
    for close in (False, True):
        done = subprocess.run(
            [sys.executable, "-c", code.format(path=str(tmp_path / f"q{close}"), close=close)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        runs[close] = done.stderr
    # Left open, the client is closed during the interpreter's shutdown, noisily; closed
    # first, nothing is printed
    assert "sys.meta_path is None" in runs[False]
    assert "Traceback" not in runs[True]
