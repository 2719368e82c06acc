"""uvicorn's HTTP/1.1 (h11) protocol answering a request it cannot parse with a JSON 400.

A request h11 cannot parse (a ``Content-Length`` that is not a number, say) gets a 400 whose
JSON body says what was wrong (the caller's ``bad_request`` shapes it). So does a request
framed both by ``Content-Length`` and by ``Transfer-Encoding``, after which the connection
closes (RFC 9112, section 6.1): a proxy in front that read the other header would see a
different next request. The stream function's server uses it, and so do the local runner's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


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
