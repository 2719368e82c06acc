"""An ASGI app served by uvicorn on a background thread: the local runner's HTTP servers.

HTTP framing, keep-alive and request limits are uvicorn's (and h11's), not ours to get
wrong; a request h11 cannot parse, or framed both by ``Content-Length`` and by
``Transfer-Encoding``, is a JSON 400 (``llmhost.serving.h11_protocol``; ``bad_request`` shapes
it, API Gateway's ``{"message": ...}`` by default). The listening socket
is bound here (port 0 picks a free port) with a backlog of ``BACKLOG`` connections, so a
burst of clients waits to be accepted instead of being reset.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from llmhost.serving.h11_protocol import h11_with_json_400

# Connections the kernel queues before the server accepts them (uvicorn's default too).
BACKLOG = 2048


def gateway_bad_request(problem: str) -> bytes:
    """API Gateway's shape for a request it cannot parse."""
    return json.dumps(
        {
            "message": f"Invalid HTTP request: {problem}. Send HTTP/1.1 with a Content-Length "
            "that is the body's size in bytes (a non-negative integer), or chunked encoding."
        }
    ).encode()


class BackgroundServer:
    """uvicorn running ``app`` on ``host:port`` in a daemon thread until ``shutdown``."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "http",
        bad_request: Callable[[str], bytes] = gateway_bad_request,
    ) -> None:
        self._socket = socket.create_server((host, port), backlog=BACKLOG)
        self.server_address: tuple[str, int] = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            app,
            http=h11_with_json_400(bad_request),
            lifespan="off",
            access_log=False,
            log_level="warning",
            backlog=BACKLOG,
            server_header=False,
            # Handlers may take a while (a model answering); idle connections are closed.
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._wait_started()

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def _wait_started(self) -> None:
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP server on {self.url} did not start")
            self._thread.join(0.01)

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish (5 s at most), and return."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
