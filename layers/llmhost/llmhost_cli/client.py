"""HTTP to a stack: the control API signed with SigV4 (botocore's signer, as API Gateway's
IAM auth checks it), and the OpenAI-compatible server with an API key, streamed as SSE.

Every failure comes back typed (``llmhost_cli.errors``): an error status as ``ApiRefused``
with the API's own message and fields, nothing listening as ``StackUnreachable``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from llmhost_cli.errors import (
    ApiRefused,
    CliFailure,
    RequestTimedOut,
    StackUnreachable,
    refusal_from_body,
)
from llmhost_cli.target import Target

DEFAULT_TIMEOUT_S = 60.0


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class Client:
    """One stack's APIs. ``timeout_s``: how long a request may take unless told otherwise."""

    def __init__(self, target: Target, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.target = target
        self.timeout_s = timeout_s

    # ---------------------------------------------------------------------- control API

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """The JSON answer of a control-API route. Raises ApiRefused for an error status."""
        reply = self.request(method, path, body, query=query, timeout_s=timeout_s)
        if reply.status >= 400:
            raise refusal_from_body(reply.status, reply.body, reply.headers)
        return reply.body

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        """One signed request; the reply whatever its status."""
        url = self.target.api + path
        wanted = {k: v for k, v in (query or {}).items() if v is not None}
        if wanted:
            url += "?" + urlencode(wanted)
        data = json.dumps(body).encode() if body is not None else b""
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.target.credentials is not None:
            sent = sign(method, url, data, sent, self.target.credentials, self.target.region)
        with self._open(method, url, data, sent, timeout_s) as reply:
            try:
                raw = reply.read()
            except TimeoutError:
                raise self._timed_out(method, url, timeout_s) from None
            return Reply(reply.status, _json(raw), dict(reply.headers.items()))

    # ---------------------------------------------------------------- OpenAI-compatible

    def stream_chat(
        self,
        body: dict[str, Any],
        *,
        timeout_s: float | None = None,
        on_headers: Callable[[dict[str, str]], None] = lambda headers: None,
    ) -> Iterator[Any]:
        """The chunks of a streamed chat completion, as they arrive (``stream`` is set here);
        ``on_headers`` gets the reply's headers first.

        Raises ApiRefused for an error status or an error event in the stream.
        """
        base = self.target.openai
        if not base:
            raise CliFailure(
                f"no OpenAI-compatible URL for {self.target.where}: pass --openai-url",
                field="--openai-url",
            )
        if not self.target.api_key:
            raise CliFailure(
                "streaming goes through the OpenAI-compatible endpoint, which needs an API key: "
                "pass --api-key or set LLMHOST_API_KEY (README: minting one)",
                field="--api-key",
            )
        url = f"{base}/v1/chat/completions"
        data = json.dumps({**body, "stream": True}).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Authorization": f"Bearer {self.target.api_key}",
        }
        with self._open("POST", url, data, headers, timeout_s) as reply:
            if reply.status >= 400:
                raise refusal_from_body(reply.status, _json(reply.read()), dict(reply.headers))
            on_headers(dict(reply.headers.items()))
            for raw in reply:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    return
                event = _json(payload.encode())
                if isinstance(event, dict) and isinstance(event.get("error"), dict):
                    raise refusal_from_body(500, event, {})
                yield event

    # ------------------------------------------------------------------------- transport

    def _open(
        self, method: str, url: str, data: bytes, headers: dict[str, str], timeout_s: float | None
    ) -> Any:
        request = urllib.request.Request(url, data=data or None, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s)
        except urllib.error.HTTPError as error:
            return _ErrorReply(error)
        except urllib.error.URLError as error:
            raise self._unreachable(url, error.reason) from None
        except TimeoutError:
            raise self._timed_out(method, url, timeout_s) from None
        except OSError as error:
            raise self._unreachable(url, error) from None

    def _timed_out(self, method: str, url: str, timeout_s: float | None) -> RequestTimedOut:
        return RequestTimedOut(
            f"{method} {url.split('?')[0]}: no answer within {timeout_s or self.timeout_s:g} s; "
            "pass --timeout to wait longer"
        )

    def _unreachable(self, url: str, reason: Any) -> StackUnreachable:
        return StackUnreachable(
            f"no llmhost answered at {url.split('?')[0]} ({self.target.where}): {reason}",
            hint=self.target.hint,
        )


class _ErrorReply:
    """An HTTPError read like a reply (urllib raises for every status >= 400)."""

    def __init__(self, error: urllib.error.HTTPError) -> None:
        self.status = error.code
        self.headers = error.headers
        self._error = error

    def read(self) -> bytes:
        return self._error.read() or b""

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._error)

    def __enter__(self) -> _ErrorReply:
        return self

    def __exit__(self, *exc: object) -> None:
        self._error.close()


def sign(
    method: str, url: str, data: bytes, headers: dict[str, str], credentials: Any, region: str
) -> dict[str, str]:
    """``headers`` with SigV4's (``Authorization``, ``X-Amz-Date``, a session token) added
    for ``execute-api`` in ``region``, by botocore's own signer."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=url, data=data, headers=headers)
    SigV4Auth(credentials, "execute-api", region).add_auth(request)
    return dict(request.headers.items())


def _json(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


__all__ = ["ApiRefused", "Client", "Reply", "sign"]
