"""The local console: a web page served by ``make run`` on ``CONSOLE_PORT`` (default PORT+3).

Deployments with their status and history, a chart of copies over time with scaling
decisions marked, recent traces, and a chat that streams from a deployment. The page is
plain HTML, one script and one stylesheet in ``static/`` (no build step, nothing fetched from
elsewhere); ``proxy`` serves them and forwards the page's API calls, signed.
"""

from __future__ import annotations

from collections.abc import Callable

from llmhost_local.console.proxy import ConsoleApp, Upstreams
from llmhost_local.http_server import BackgroundServer

__all__ = ["ConsoleApp", "Upstreams", "serve_console"]


def serve_console(
    port: int, upstreams: Upstreams, *, log: Callable[[str], None] | None = None
) -> BackgroundServer:
    """The console on ``127.0.0.1:port`` (0: a free port), forwarding to ``upstreams``."""
    return BackgroundServer(ConsoleApp(upstreams, log=log), port=port, name="console")
