"""The console's server: its page, and a same-origin proxy to the two local APIs (ASGI).

The page calls ``/api/v1/...`` and ``/openai/v1/...`` on its own origin; this forwards them to
the control API, SigV4-signed with the local key pair (botocore's ``SigV4Auth``, as the SDK
signs for API Gateway's IAM auth), and to the OpenAI-compatible server with the local API key.
Answers come back as they arrive, chunk by chunk, so a chat's server-sent events stream.

It is not an open proxy, and a web page elsewhere cannot use it:

- only paths under ``/v1/`` of the two configured upstreams, with ``GET``/``POST``/``PATCH``/
  ``DELETE``; a path with ``..`` or ``.`` segments (percent-encoded too), an empty segment
  (``//``), a backslash, a scheme (``http://``) or control characters is a 400;
- every request must name this server in ``Host`` (``127.0.0.1:<port>`` or
  ``localhost:<port>``): a DNS-rebound name is refused with 403;
- a proxied request must carry ``X-Llmhost-Console: 1``. A browser sends such a header
  cross-origin only after a CORS preflight, which this server never grants, so another site
  cannot make the console sign requests for it (a form or an ``<img>`` cannot add headers).

Only the headers a client of the APIs needs go upstream (``Content-Type``, ``Accept``,
``Prefer``, ``Idempotency-Key``); never the browser's cookies or credentials.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router

STATIC = Path(__file__).resolve().parent / "static"
# The page's files: URL path -> (file, media type). Nothing else is served from disk.
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
CONSOLE_HEADER = "x-llmhost-console"
METHODS = ("GET", "POST", "PATCH", "DELETE")
# API Gateway's payload limit: nothing larger is worth reading into memory to sign.
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_PATH_CHARS = 4096
# Request headers a client of the APIs sends; everything else stays in the browser.
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "prefer", "idempotency-key")
# Hop-by-hop and framing headers: this server sets its own.
_OWN_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


class ProxyRefused(Exception):
    """A request the console will not forward: ``status`` and a message naming why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upstreams:
    """Where the console forwards, and with which credentials (the local stack's)."""

    api: str  # the control API's base URL, e.g. http://127.0.0.1:8080
    openai: str  # the OpenAI-compatible server's base URL, without /v1
    access_key: str
    secret_key: str
    api_key: str
    region: str = "us-east-1"
    service: str = field(default="execute-api")


def upstream_path(path: str) -> str:
    """``path`` (what follows ``/api`` or ``/openai``, as received: percent-encoded) if it
    is one of the APIs' paths; raises ``ProxyRefused`` (400) naming the problem otherwise."""
    if len(path) > MAX_PATH_CHARS:
        raise ProxyRefused(400, f"path: longer than {MAX_PATH_CHARS} characters")
    if _CONTROL.search(path) or "\\" in path:
        raise ProxyRefused(400, "path: control characters, spaces and backslashes are refused")
    if not path.startswith("/v1/"):
        raise ProxyRefused(400, "path: only the APIs' /v1/... paths are forwarded")
    if "://" in path or "//" in path:
        raise ProxyRefused(400, "path: absolute URLs and empty segments (//) are refused")
    for segment in path.split("/")[1:]:
        # Decoded as a front might decode it (twice: %252e%252e), each part must be a name.
        decoded = segment
        for _ in range(3):
            decoded = unquote(decoded)
            parts = re.split(r"[/\\]", decoded)
            if any(part in {".", ".."} for part in parts) or _CONTROL.search(decoded):
                raise ProxyRefused(400, "path: '.' and '..' segments are refused")
            if _SCHEME.match(decoded) and "//" in decoded:
                raise ProxyRefused(400, "path: absolute URLs are refused")
    return path


def sigv4_headers(
    method: str, url: str, body: bytes, headers: dict[str, str], upstreams: Upstreams
) -> dict[str, str]:
    """``headers`` plus the SigV4 ones (``Authorization``, ``X-Amz-Date``) for ``url``."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    credentials = Credentials(upstreams.access_key, upstreams.secret_key)
    SigV4Auth(credentials, upstreams.service, upstreams.region).add_auth(request)
    return dict(request.headers.items())


def _refusal(error: ProxyRefused) -> Response:
    return JSONResponse({"message": error.message}, status_code=error.status)


class ConsoleApp:
    """The console's ASGI app: the page's three files and the proxy to ``upstreams``."""

    def __init__(
        self,
        upstreams: Upstreams,
        *,
        timeout_s: float = 905.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.upstreams = upstreams
        # Long enough for a request held while its model wakes (Prefer: wait=900).
        self._timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._client: httpx.AsyncClient | None = None
        self._log = log or (lambda line: None)
        self._router = Router(
            routes=[
                *(Route(path, self._page, methods=["GET", "HEAD"]) for path in PAGES),
                Route("/api/{rest:path}", self._to_api, methods=list(METHODS)),
                Route("/openai/{rest:path}", self._to_openai, methods=list(METHODS)),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            try:
                self._check_host(scope)
            except ProxyRefused as error:
                await _refusal(error)(scope, receive, send)
                return
        await self._router(scope, receive, send)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _check_host(scope: Any) -> None:
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        port = (scope.get("server") or ("", 0))[1]
        allowed = {f"127.0.0.1:{port}", f"localhost:{port}"}
        if host.lower() not in allowed:
            raise ProxyRefused(
                403, f"Host: the console answers only as {' or '.join(sorted(allowed))}"
            )

    @staticmethod
    def _proxied(request: Request, prefix: str) -> tuple[str, str]:
        """The upstream path and query of ``request`` (under ``prefix``), checked."""
        if request.headers.get(CONSOLE_HEADER) != "1":
            raise ProxyRefused(403, f"{CONSOLE_HEADER}: the console's requests carry it (1)")
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        path = upstream_path(raw.decode("latin-1").removeprefix(prefix))
        query = request.scope.get("query_string", b"").decode("latin-1")
        if _CONTROL.search(query):
            raise ProxyRefused(400, "query: control characters and spaces are refused")
        return path, query

    # ------------------------------------------------------------------ routes

    async def _page(self, request: Request) -> Response:
        name, media_type = PAGES[request.url.path]
        return FileResponse(
            STATIC / name,
            media_type=media_type,
            headers={
                "Cache-Control": "no-cache",
                # The page runs only its own script and talks only to its own origin.
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                "style-src 'self'; script-src 'self'; connect-src 'self'; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def _to_api(self, request: Request) -> Response:
        async def build(url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
            return sigv4_headers(request.method, url, body, headers, self.upstreams)

        return await self._forward(request, "/api", self.upstreams.api, build)

    async def _to_openai(self, request: Request) -> Response:
        async def build(url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
            return {**headers, "Authorization": f"Bearer {self.upstreams.api_key}"}

        return await self._forward(request, "/openai", self.upstreams.openai, build)

    async def _forward(
        self,
        request: Request,
        prefix: str,
        base: str,
        authorize: Callable[[str, bytes, dict[str, str]], Awaitable[dict[str, str]]],
    ) -> Response:
        try:
            path, query = self._proxied(request, prefix)
            body = await self._body(request)
        except ProxyRefused as error:
            return _refusal(error)
        url = base.rstrip("/") + path + (f"?{query}" if query else "")
        headers = {
            name: request.headers[name]
            for name in FORWARDED_REQUEST_HEADERS
            if name in request.headers
        }
        headers = await authorize(url, body, headers)
        # The bytes pass through as sent: no compression to undo.
        headers["Accept-Encoding"] = "identity"
        client = self._http()
        upstream_request = client.build_request(request.method, url, content=body, headers=headers)
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as error:
            self._log(f"console: {request.method} {url} failed: {error!r}")
            return JSONResponse(
                {"message": f"{base} did not answer ({type(error).__name__}); is make run up?"},
                status_code=502,
            )
        return StreamingResponse(
            _chunks(upstream),
            status_code=upstream.status_code,
            headers={
                name: value
                for name, value in upstream.headers.items()
                if name.lower() not in _OWN_RESPONSE_HEADERS
            },
        )

    @staticmethod
    async def _body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise ProxyRefused(413, f"body: larger than {MAX_BODY_BYTES} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ProxyRefused(413, f"body: larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, inside the server's event loop (the client belongs to it).
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, follow_redirects=False, trust_env=False
            )
        return self._client


async def _chunks(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as it arrives; the connection is released however the copy ends
    (also when the browser goes away mid-stream)."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()
