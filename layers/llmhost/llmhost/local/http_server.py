"""An ASGI app served by uvicorn on a background thread: the local runner's HTTP servers.

HTTP framing, keep-alive and request limits are uvicorn's (and h11's), not ours to get
wrong; a request h11 cannot parse (a ``Content-Length`` that is not a number, say) is a 400
whose JSON body says what was wrong (``bad_request`` shapes it; API Gateway's
``{"message": ...}`` by default). So is a request framed both by ``Content-Length`` and by
``Transfer-Encoding``, after which the connection closes (RFC 9112, section 6.1): a proxy in
front that read the other header would see a different next request. The listening socket
is bound here (port 0 picks a free port) with a backlog of ``BACKLOG`` connections, so a
burst of clients waits to be accepted instead of being reset.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

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


class _OneFraming(h11.Connection):
    """h11's connection, refusing a request that has both Content-Length and
    Transfer-Encoding (h11 would follow Transfer-Encoding and keep the connection open)."""

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}  # h11 lower-cases names
            if b"content-length" in names and b"transfer-encoding" in names:
                raise h11.RemoteProtocolError(
                    "both Content-Length and Transfer-Encoding (send only one of them)", 400
                )
        return event


def h11_with_json_400(bad_request: Callable[[str], bytes]) -> type[H11Protocol]:
    """uvicorn's h11 protocol whose 400 for an unparseable request is ``bad_request(problem)``
    as JSON (``problem``: h11's words, e.g. "bad Content-Length"); pass it as ``http=``."""

    class JsonBadRequests(H11Protocol):
        """uvicorn's HTTP/1.1, answering an unparseable request with a JSON 400."""

        def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            size = config.h11_max_incomplete_event_size
            self.conn = _OneFraming(h11.SERVER, *(() if size is None else (size,)))

        def send_400_response(self, msg: str) -> None:
            # Called from the handler of h11's RemoteProtocolError, which names the problem.
            error = sys.exc_info()[1]
            body = bad_request(str(error) if error is not None and str(error) else msg)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
            self.transport.close()

    return JsonBadRequests


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
