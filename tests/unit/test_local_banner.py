"""The local runner's startup banner says what the runner really did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmhost_local import runner
from llmhost_local.cloud import LocalCloud, project_root


class _Server:
    def __init__(self, port: int = 8080) -> None:
        self.server_address = ("127.0.0.1", port)

    def shutdown(self) -> None:
        return None


def _banner_of(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> str:
    """What ``make run`` prints with ``argv``, with no server started."""
    created: list[str] = []
    monkeypatch.setattr(LocalCloud, "start", lambda self: setattr(self, "moto_url", "-"))
    monkeypatch.setattr(LocalCloud, "stop", lambda self: None)
    monkeypatch.setattr(LocalCloud, "start_openai_server", lambda self, port: _Server())
    monkeypatch.setattr(LocalCloud, "create_demo", lambda self: created.append("demo"))
    monkeypatch.setattr(runner, "serve", lambda port, cloud: _Server())
    monkeypatch.setattr(runner, "serve_console", lambda port, upstreams, log: _Server(port))

    def stop(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.time, "sleep", stop)
    assert runner.main(argv) == 0
    text = capsys.readouterr().out
    assert ("demo" in created) == ("--no-demo" not in argv)
    return text


def test_with_no_demo_the_banner_says_no_deployment_is_being_created(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _banner_of(["--no-demo"], monkeypatch, capsys)
    assert '"demo"' not in text and "zero-demo" not in text
    assert "No deployment is being created (--no-demo)" in text
    # and by default it announces the demo deployments it creates
    text = _banner_of([], monkeypatch, capsys)
    assert 'A deployment named "demo" is being created' in text and "zero-demo" in text


def test_the_banner_names_the_qdrant_folder_in_use(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Given QDRANT_PATH points away from .llmhost/qdrant
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "elsewhere"))
    text = _banner_of(["--no-demo"], monkeypatch, capsys)
    # Then the banner names that folder, not the default
    (line,) = [line for line in text.splitlines() if line.strip().startswith("documents")]
    assert str(tmp_path / "elsewhere") in line and ".llmhost" not in line
    # And without it, the default under the project
    monkeypatch.delenv("QDRANT_PATH")
    text = _banner_of(["--no-demo"], monkeypatch, capsys)
    assert str(project_root() / ".llmhost" / "qdrant") in text


def test_the_banner_names_the_console_at_port_plus_3_or_console_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONSOLE_PORT", raising=False)
    text = _banner_of(["--no-demo", "--port", "9000"], monkeypatch, capsys)
    (line,) = [line for line in text.splitlines() if line.strip().startswith("console")]
    assert "http://127.0.0.1:9003" in line
    monkeypatch.setenv("CONSOLE_PORT", "7777")
    text = _banner_of(["--no-demo"], monkeypatch, capsys)
    assert "console       http://127.0.0.1:7777" in text


def test_the_console_moves_to_a_free_port_when_port_plus_3_is_taken() -> None:
    import socket

    from llmhost_local.console import Upstreams

    upstreams = Upstreams(api="http://127.0.0.1:1", openai="http://127.0.0.1:2", access_key="a",
                          secret_key="s", api_key="k")  # fmt: skip
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        # Given the API on busy - 3, whose console port is taken
        server = runner.start_console(None, busy - 3, upstreams, log=print)
        try:
            assert server.server_address[1] not in (busy, 0)
        finally:
            server.shutdown()
        # A console port asked for by name and taken is an error, not a silent move
        with pytest.raises(OSError):
            runner.start_console(busy, 8080, upstreams, log=print)
