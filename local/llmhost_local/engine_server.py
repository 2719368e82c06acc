"""The local engine over HTTP: a stdlib keep-alive server with complete and chunked replies.

``StreamingHandler`` is the HTTP/1.1 base shared by the engine and the SageMaker runtime front
(``llmhost_local.runtime_front``); ``serve_engine`` serves a ``LocalEngine`` from a daemon
thread. Run it alone: ``python -m llmhost_local.engine_server --port 8081 --latency-ms 50``.
"""

from __future__ import annotations

import argparse
import socket
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llmhost_local.engine import LocalEngine


class StreamingHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler base with complete and chunked replies, shared by the
    engine and the SageMaker runtime front. Quiet: no per-request log lines."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Without this, a small chunk written right after the headers waits for the peer's
        # delayed ACK (Nagle), adding ~40 ms to time-to-first-token.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        """The request body, sent with a Content-Length or chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            pieces = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass  # trailers
            return b"".join(pieces)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_complete(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def send_chunked(
        self, status: int, headers: Mapping[str, str], chunks: Iterator[bytes]
    ) -> None:
        """Send each item as one HTTP chunk as soon as it is produced; a client that hangs up
        ends the iteration (and with it the engine's work)."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in chunks:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()


class _EngineHandler(StreamingHandler):
    engine: LocalEngine

    def do_GET(self) -> None:
        self._serve("GET", b"")

    def do_POST(self) -> None:
        self._serve("POST", self.read_body())

    def _serve(self, method: str, body: bytes) -> None:
        reply = self.engine.handle(method, self.path, body)
        headers = {"Content-Type": reply.content_type, **reply.headers}
        if reply.stream is not None:
            self.send_chunked(reply.status, {**headers, "Cache-Control": "no-cache"}, reply.stream)
        else:
            self.send_complete(reply.status, headers, reply.body)


def serve_engine(
    engine: LocalEngine, host: str = "127.0.0.1", port: int = 0
) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``engine`` over HTTP from a daemon thread. Returns the server (stop it with
    ``shutdown()`` then ``server_close()``) and its base URL. ``port=0`` picks a free port."""
    handler = type("LocalEngineHandler", (_EngineHandler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},  # shutdown() waits up to one interval
        name="llmhost-local-engine",
        daemon=True,
    ).start()
    return server, f"http://{host}:{server.server_port}"


def main(argv: list[str] | None = None) -> None:
    """``python -m llmhost_local.engine_server``: serve the extractive engine until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m llmhost_local.engine_server",
        description="A TGI-compatible extractive engine (not an LLM) for local runs and benchmarks",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--latency-ms", type=float, default=0, help="total time of a non-streamed reply"
    )
    parser.add_argument(
        "--token-interval-ms", type=float, default=0, help="wait before each streamed token"
    )
    parser.add_argument(
        "--first-token-ms", type=float, default=0, help="extra wait before the first token"
    )
    parser.add_argument("--max-input-tokens", type=int, default=4096)
    parser.add_argument("--max-total-tokens", type=int, default=8192)
    args = parser.parse_args(argv)
    engine = LocalEngine(
        latency_ms=args.latency_ms,
        token_interval_ms=args.token_interval_ms,
        first_token_ms=args.first_token_ms,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
    )
    server, url = serve_engine(engine, args.host, args.port)
    print(f"llmhost local extractive engine (not an LLM) on {url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
