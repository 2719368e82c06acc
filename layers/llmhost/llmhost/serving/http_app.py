"""The OpenAI-compatible HTTP server: ``/v1/chat/completions`` (streaming for real), ``/v1/models``.

In AWS it runs inside the stream function behind the Lambda Web Adapter, whose function URL
is in RESPONSE_STREAM mode, so each SSE event leaves as soon as the model produces it.
Locally, ``make run`` serves the same app. It is an ASGI app served by uvicorn (h11): request
framing, ``Content-Length`` checks, keep-alive and chunked encoding are uvicorn's, so a
refused request's unread body can never be read as a next request.

Every route but ``/health`` and ``/v1/openapi.json`` (this API's OpenAPI document) needs an
API key; each key has its own request rate (``llmhost.serving.ratelimit``). The service is
synchronous (boto3, Qdrant), so it runs in a thread pool, one call or one stream step at a
time: a slow stream never holds up another request. A streamed request learns its outcome
(routing, the model accepting the prompt) before the headers go out, so a refused stream
keeps its 4xx/5xx status; a failure after that ends the stream with an OpenAI error event
and a proper end of the body.

A request for a cold model may wait for it (``llmhost.serving.hold``): chat and RAG with
``Prefer: wait=<seconds>``, and every streaming chat unless it sends ``Prefer: wait=0``. A
held stream answers 200 at once and sends an SSE comment (``: waiting for <model>
(<state>)``) every few seconds until the model answers; a hold that ends without an answer
ends the stream with an error event. The stream function holds within its own timeout.

Every chat and RAG request, answered or refused, ends with one ``RequestObservation`` for
the runtime's observers (``llmhost.serving.watch``): a plain answer's before its response
goes out, a stream's after its last chunk and before ``data: [DONE]`` (so the Lambda Web
Adapter does not end the invocation first); its response names its trace
(``x-llmhost-trace-id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from llmhost.api.body import InvalidBody, check_content_type, parse_json_body, too_deep
from llmhost.errors import LlmhostError
from llmhost.serving.auth import ApiKeyAuth
from llmhost.serving.batch_routes import BatchRoutes
from llmhost.serving.hold import MAX_WAIT_S, Hold, HoldPolicy, Wait, wait_preference, waitable
from llmhost.serving.ratelimit import KeyRateLimiter
from llmhost.serving.requests import ChatCompletionRequest, RagRequest
from llmhost.serving.watch import RequestWatch, observe, start_watch, watching
from llmhost.specs import issues_from_validation_error

if TYPE_CHECKING:
    from llmhost.batches.service import Batches

MAX_BODY_BYTES = 1_048_576
LISTEN_BACKLOG = 2048

M = TypeVar("M", bound=BaseModel)

# Failures go to the stream function's Powertools Logger (a child logs through its parent);
# the ``log`` callable an app is given writes only its one access line per request.
logger = Logger(child=True)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    """OpenAI's error body, which its client turns into typed exceptions."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "api_error"),
            "code": code,
            "param": extra.pop("param", None),
            **extra,
        }
    }


class BodyTooLarge(LlmhostError):
    code = "body_too_large"
    status = 413


class RequestInvalid(LlmhostError):
    """The body is JSON but not a request this route takes (names the field)."""

    code = "invalid_request"
    status = 422

    def __init__(self, message: str, param: str | None = None, fields: list[Any] | None = None):
        super().__init__(message)
        self.param = param
        self.fields = fields or []


class RouteNotFound(LlmhostError):
    code = "route_not_found"
    status = 404


class MethodNotAllowed(LlmhostError):
    code = "method_not_allowed"
    status = 405

    def __init__(self, message: str, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allowed = allowed


ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/models": ("GET",),
    "/v1/chat/completions": ("POST",),
    "/v1/rag": ("POST",),
}


class ServingHttpApp:
    """The ASGI app: routes requests to a serving service; owns only HTTP concerns."""

    def __init__(
        self,
        service: Callable[[], Any],
        auth: ApiKeyAuth | None,
        log: Callable[[str], None] = lambda _: None,
        limiter: KeyRateLimiter | None = None,
        holds: Callable[[], HoldPolicy] | None = None,
        batches: Callable[[], Batches] | None = None,
    ) -> None:
        """``holds``: how requests for a cold model are held; without it none is (the
        Prefer header is ignored, as RFC 7240 lets a server do)."""
        self._service = service
        self._auth = auth
        self._log = log
        self._limiter = limiter
        self._holds = holds
        # OpenAI's Files and Batches routes, where the function has the jobs' table.
        self._batch_routes = BatchRoutes(batches) if batches is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; no websockets
            return
        request = Request(scope, receive)
        started = time.perf_counter()
        watch = _watch_for(request)
        request.state.watch = watch
        response = await self._respond(request)
        if watch is not None:
            from llmhost.traces.record import trace_id_for

            response.headers["x-llmhost-trace-id"] = trace_id_for(watch.request_id)
            if not isinstance(response, StreamingResponse):  # a stream observes its end
                code = _error_code(response) if response.status_code >= 400 else None
                await run_in_threadpool(observe, watch, response.status_code, code)
        await response(scope, receive, send)
        self._log(
            f"{request.method} {request.url.path} -> {response.status_code} "
            f"in {(time.perf_counter() - started) * 1000:.1f} ms"
        )

    # ------------------------------------------------------------------------- dispatch

    async def _respond(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        method = request.method
        try:
            if path in {"/", "/health"}:
                return _json(200, {"status": "ok"})
            if path == "/v1/openapi.json":
                from llmhost.serving.openapi import openai_api_document

                return _json(200, openai_api_document())
            if self._auth is not None:
                header = request.headers.get("authorization")
                # A key checked against cached hashes needs no thread; only a due read of
                # the key secret goes to a worker thread.
                principal = self._auth.authenticate_cached(header)
                if principal is None:
                    principal = await run_in_threadpool(self._auth.authenticate, header)
                if request.state.watch is not None:
                    request.state.watch.caller = principal.key_name
                if self._limiter is not None:
                    self._limiter.take(principal.key_name)
            if self._batch_routes is not None and (batch := BatchRoutes.allowed(path)):
                if method not in batch:
                    takes = " or ".join(batch)
                    raise MethodNotAllowed(f"{path} takes {takes}, not {method}", batch)
                status, answer = await self._batch_routes.respond(request, path)
                if isinstance(answer, bytes):
                    return Response(
                        answer,
                        status_code=status,
                        media_type="application/octet-stream",
                        headers={"x-request-id": uuid.uuid4().hex},
                    )
                return _json(status, answer)
            allowed = ROUTES.get(path)
            if allowed is None:
                served = [f"{m} {p}" for p, ms in ROUTES.items() for m in ms]
                if self._batch_routes is not None:
                    served.append("/v1/files and /v1/batches (OpenAI's Batch API)")
                raise RouteNotFound(
                    f"no route for {method} {path}: the OpenAI-compatible API serves "
                    + ", ".join(served)
                )
            if method not in allowed:
                raise MethodNotAllowed(
                    f"{path} takes {' or '.join(allowed)}, not {method}", allowed
                )
            # The service is fetched on the worker thread that calls it: one hop a request.
            if path == "/v1/models":
                return _json(200, await run_in_threadpool(lambda: self._service().models()))
            watch: RequestWatch | None = request.state.watch
            if path == "/v1/rag":
                rag = await read_body(request, RagRequest)
                held = self._hold(request, stream=False)
                if held is None:
                    answer = await run_in_threadpool(
                        lambda: self._service().rag(rag, **watching(watch))
                    )
                    return _json(200, answer)
                hold, applied = held
                answer = await run_in_threadpool(
                    lambda: self._service().rag(rag, hold=hold, **watching(watch))
                )
                return _json(200, answer, applied)
            chat = await read_body(request, ChatCompletionRequest)
            if watch is not None:
                watch.stream = chat.stream
            held = self._hold(request, stream=chat.stream)
            if chat.stream:
                return await self._stream(chat, held, watch)
            if held is None:
                answer = await run_in_threadpool(
                    lambda: self._service().chat(chat, **watching(watch))
                )
                return _json(200, answer)
            hold, applied = held
            answer = await run_in_threadpool(
                lambda: self._service().chat(chat, hold=hold, **watching(watch))
            )
            return _json(200, answer, applied)
        except ValidationError as error:
            return _invalid(error)
        except PydanticCustomError as error:
            # A request model's own check outside validation (its content, read by the service)
            return _error_response(RequestInvalid(error.message(), param="messages"))
        except LlmhostError as error:
            if error.status >= 500 and error.log_detail:
                # The client's message names no internals; the operator's log says what failed.
                logger.warning(
                    error.message, extra={"code": error.code, "detail": error.log_detail}
                )
            return _error_response(error)
        except Exception:  # no stack trace reaches the client; the log has it
            logger.exception("unhandled error", extra={"path": path, "method": method})
            return _json(500, openai_error(500, "internal_error", "llmhost hit an internal error"))

    def _hold(self, request: Request, stream: bool) -> tuple[Hold, dict[str, str]] | None:
        """The hold this request asks for, with its Preference-Applied header (none for a
        stream's default hold), or None. Raises PreferInvalid for a malformed wait."""
        if self._holds is None:
            return None
        wait = wait_preference(request.headers.getlist("prefer"))
        if wait is None and not stream:
            return None
        policy = self._holds()
        left = _time_left(request.headers.get("x-amzn-lambda-context"), policy.request_limit_s)
        hold = policy.hold(MAX_WAIT_S if wait is None else wait, left)
        return hold, {} if wait is None else {"Preference-Applied": f"wait={wait}"}

    async def _stream(
        self,
        request: ChatCompletionRequest,
        held: tuple[Hold, dict[str, str]] | None,
        watch: RequestWatch | None = None,
    ) -> Response:
        # The service routes, retrieves, calls the model and reads its first event before
        # returning; taking the first chunk here too means any error so far keeps its status.
        # The chunks it says are ready (the engine's first text, read already) are taken on
        # the same thread, so they leave without waiting for the relay's own thread.
        def start(hold: Hold | None = None) -> tuple[Iterator[Any], list[Any]]:
            service = self._service()
            chunks = (
                service.chat_stream(request, hold=hold, **watching(watch))
                if hold
                else service.chat_stream(request, **watching(watch))
            )
            first = next(chunks, None)
            if first is None:
                return chunks, []
            ready = [first]
            for _ in range(getattr(chunks, "ready", 1) - 1):
                ready.append(next(chunks))
            return chunks, ready

        applied = held[1] if held else {}
        try:
            chunks, ready = await run_in_threadpool(start)
        except LlmhostError as refused:
            if held is None or not waitable(refused):
                raise
            hold = held[0]
            # Raises the refusal (its status and Retry-After) when waiting cannot help.
            step = hold.next(refused)
            return _event_stream(
                _HeldStream(hold, step, lambda: start(hold), watch).events(request.model), applied
            )
        relay = _StreamRelay(chunks, asyncio.get_running_loop(), watch)
        return _event_stream(relay.events(ready), applied)


def _event_stream(events: AsyncIterator[bytes], headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream; charset=utf-8",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "x-request-id": uuid.uuid4().hex,
            **headers,
        },
    )


def _time_left(lambda_context: str | None, limit_s: float) -> float:
    """Seconds this request has left: the invocation's deadline, as the Lambda Web Adapter
    passes it (``x-amzn-lambda-context``, its ``deadline`` in epoch milliseconds), never more
    than ``limit_s`` (the function's timeout), which is all there is without it."""
    if not lambda_context:
        return limit_s
    try:
        deadline = json.loads(lambda_context).get("deadline")
        if isinstance(deadline, int | float) and not isinstance(deadline, bool):
            return max(0.0, min(limit_s, deadline / 1000 - time.time()))
    except (ValueError, AttributeError):
        pass  # not the adapter's JSON: the function's timeout bounds the hold
    return limit_s


class _HeldStream:
    """A streaming request held while its model wakes: 200 at once, an SSE comment every
    ``keepalive`` seconds, then the answer's events (or an error event).

    The hold runs on a thread of its own, not the server's pool: a burst of held streams
    must not starve the requests that can be answered. A client that goes away cancels the
    hold, and a stream the model opened meanwhile is closed.
    """

    def __init__(
        self,
        hold: Hold,
        first: Wait,
        start: Callable[[], tuple[Iterator[Any], list[Any]]],
        watch: RequestWatch | None = None,
    ) -> None:
        self._hold = hold
        self._first = first
        self._start = start
        self._watch = watch

    def _run(self, loop: asyncio.AbstractEventLoop, outcome: asyncio.Future[Any]) -> None:
        def settle(result: Any, error: BaseException | None) -> None:
            if outcome.done():  # the client left: nobody reads this stream
                if error is None:
                    _close_chunks(result[0])
            elif error is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(result)

        try:
            self._hold.sleep(self._first)
            result, error = self._start(), None
        except BaseException as failure:  # handed to the event loop, which reports it
            result, error = None, failure
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: the server stopped
            if error is None and result is not None:
                _close_chunks(result[0])

    async def events(self, model: str) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Any] = loop.create_future()
        threading.Thread(
            target=self._run, args=(loop, outcome), name="held-stream", daemon=True
        ).start()
        keepalive = self._hold.keepalive_s
        try:
            while not outcome.done():
                yield f": waiting for {model} ({self._hold.state})\n\n".encode()
                await asyncio.wait({outcome}, timeout=keepalive)
            try:
                chunks, ready = outcome.result()
            except Exception as error:
                event = _error_event(error)
                await _observe_end(self._watch, error)
                yield _sse(event)
                yield b"data: [DONE]\n\n"
                return
        finally:
            if not outcome.done():
                self._hold.cancel()
                outcome.cancel()
                _abandoned(self._watch)
        async for part in _StreamRelay(chunks, loop, self._watch).events(ready):
            yield part


def _close_chunks(chunks: Any) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


class _StreamRelay:
    """Reads a stream's chunks on a thread of its own and hands them to the event loop.

    The reading thread goes back to the engine as soon as a chunk is queued, not after a
    round trip through the event loop, so events leave as the engine produces them however
    busy the loop is. A full queue (a slow client) makes the thread wait; a client that goes
    away stops it, and the stream is closed on the thread that reads it.
    """

    QUEUE = 256

    def __init__(
        self,
        chunks: Iterator[Any],
        loop: asyncio.AbstractEventLoop,
        watch: RequestWatch | None = None,
    ) -> None:
        self._chunks = chunks
        self._loop = loop
        self._watch = watch
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(self.QUEUE)
        self._ready = asyncio.Event()
        self._stop = threading.Event()

    def _read(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(("chunk", chunk)):
                    return
            self._put(("end", None))
        except Exception as error:  # reported to the client as an error event
            self._put(("error", error))
        finally:
            self._close()

    def _close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
            except queue.Full:
                continue
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading
                self._loop.call_soon_threadsafe(self._ready.set)
            return True
        return False

    async def _next(self) -> tuple[str, Any]:
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                await self._ready.wait()
                self._ready.clear()

    async def events(self, ready: list[Any]) -> AsyncIterator[bytes]:
        """The SSE body: the chunks taken already (``ready``), then the ones this relay's
        thread reads, then the end. No ready chunk means the stream had none at all."""
        reading = False
        try:
            if ready:
                for chunk in ready:
                    yield _sse(chunk)
                # Started once the ready chunks are out: they do not wait for it.
                threading.Thread(target=self._read, name="stream-relay", daemon=True).start()
                reading = True
                while True:
                    kind, value = await self._next()
                    if kind == "end":
                        break
                    if kind == "error":
                        event = self._error_event(value)
                        await _observe_end(self._watch, value)
                        yield _sse(event)
                        break
                    yield _sse(value)
            await _observe_end(self._watch, None)
            yield b"data: [DONE]\n\n"
        finally:
            self._stop.set()
            if not reading:  # no thread took the stream over (or none was needed)
                self._close()
            _abandoned(self._watch)

    def _error_event(self, error: Exception) -> dict[str, Any]:
        return _error_event(error)


def _watch_for(request: Request) -> RequestWatch | None:
    """A watch for a chat or RAG request (None for every other route)."""
    if request.method != "POST":
        return None
    path = request.url.path.rstrip("/")
    if path == "/v1/chat/completions":
        return start_watch("chat")
    if path == "/v1/rag":
        return start_watch("rag")
    return None


def _error_code(response: Response) -> str | None:
    try:
        code = json.loads(bytes(response.body))["error"]["code"]
    except Exception:  # not an error body of ours
        return None
    return str(code) if code else None


async def _observe_end(watch: RequestWatch | None, error: BaseException | None) -> None:
    """Observe a stream that ended (with ``error``'s event, or whole), off the event loop."""
    # Claimed here, on the event loop, before any await: a client going away while the
    # observation is written must not observe the request a second time (as 499).
    if watch is None or not watch.claim():
        return
    if isinstance(error, LlmhostError):
        watch.ended(error.status, error.code)
    elif error is not None:
        watch.ended(500, "internal_error")
    await run_in_threadpool(observe, watch, 200, None, claimed=True)


def _abandoned(watch: RequestWatch | None) -> None:
    """A stream whose client went away before its end: observed as 499 (nginx's "client
    closed request"), on a thread of its own (this runs as the response is torn down)."""
    if watch is None or not watch.claim():
        return
    threading.Thread(
        target=observe,
        args=(watch, 499, "client_closed_request"),
        kwargs={"claimed": True},
        daemon=True,
    ).start()


def _error_event(error: BaseException) -> dict[str, Any]:
    """The SSE event for a failure after a stream's 200 went out."""
    if isinstance(error, LlmhostError):
        # Mid-stream failure: OpenAI clients raise an APIError for an "error" event.
        return openai_error(error.status, error.code, error.message)
    logger.error("stream failed", exc_info=error)
    return openai_error(500, "internal_error", "llmhost hit an internal error")


# ------------------------------------------------------------------------------ bodies


async def read_body(request: Request, model: type[M]) -> M:
    """The body as ``model``. Every way a body can be unreadable is a 4xx naming the fix."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        check_content_type(content_type)
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > MAX_BODY_BYTES:
        raise _too_large(int(declared))
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise _too_large(len(raw))
    return parse_body(bytes(raw), model, getattr(request.state, "watch", None))


def _too_large(size: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the body is {size} bytes; the limit is {MAX_BODY_BYTES} (shorten the messages)"
    )


def parse_body(raw: bytes, model: type[M], watch: RequestWatch | None = None) -> M:
    """Decode, parse and validate a request body. Raises InvalidBody or InvalidJson (400) for
    bytes that are not UTF-8 JSON of sane depth, RequestInvalid (422) for JSON that is not
    this request."""
    if not raw.strip():
        raise InvalidBody("the body is empty: send a JSON object")
    # The same parser as the control API: UTF-8, strict JSON, line and column on errors, the
    # same nesting limit.
    data = parse_json_body(raw)
    if watch is not None:
        watch.asked_raw(data)
    _check_values(data)
    if not isinstance(data, dict):
        raise RequestInvalid(
            f"the body must be a JSON object, not {type(data).__name__}", param="body"
        )
    try:
        return model.model_validate(data)
    except ValidationError as error:
        issues = issues_from_validation_error(error)
        raise RequestInvalid(
            "; ".join(f"{i.field}: {i.message}" for i in issues[:3]) or "the body is invalid",
            param=issues[0].field if issues else None,
            fields=[i.as_dict() for i in issues],
        ) from None
    except RecursionError:
        raise too_deep() from None
    except (ValueError, TypeError) as error:  # a validator that raised something plain
        raise RequestInvalid(f"the body is invalid: {error}", param="body") from None


def _check_values(data: Any) -> None:
    """Refuse strings that are not valid Unicode (a lone surrogate such as "\\ud800" parses,
    then fails wherever the text is encoded); the parser has checked the nesting."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as error:
                    raise RequestInvalid(
                        f"{path or 'body'}: contains a lone surrogate "
                        f"(\\u{ord(value[error.start]):04x}); send valid Unicode text",
                        param=path or "body",
                    ) from None
            continue
        if isinstance(value, dict | list):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                child = f"{path}.{key}" if path else str(key)
                if isinstance(key, str):
                    stack.append((key, child))
                stack.append((item, child))


# --------------------------------------------------------------------------- responses


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body).encode(),
        status_code=status,
        media_type="application/json",
        headers={"x-request-id": uuid.uuid4().hex, **(headers or {})},
    )


def _error_response(error: LlmhostError) -> Response:
    headers: dict[str, str] = {}
    retry_after = getattr(error, "retry_after", None)
    if retry_after:
        headers["Retry-After"] = str(int(retry_after))
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    extra: dict[str, Any] = {"param": getattr(error, "param", None)}
    if isinstance(error, RequestInvalid):
        extra["fields"] = error.fields
    return _json(
        error.status, openai_error(error.status, error.code, error.message, **extra), headers
    )


def _invalid(error: ValidationError) -> Response:
    issues = issues_from_validation_error(error)
    return _error_response(
        RequestInvalid(
            "; ".join(f"{i.field}: {i.message}" for i in issues[:3]) or "the request is invalid",
            param=issues[0].field if issues else None,
            fields=[i.as_dict() for i in issues],
        )
    )


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def bad_request(problem: str) -> bytes:
    """The body of uvicorn's 400 for a request h11 cannot parse, in OpenAI's shape."""
    message = (
        f"invalid HTTP request: {problem}. Send HTTP/1.1 with a Content-Length that is the "
        "body's size in bytes (a non-negative integer), or chunked encoding"
    )
    return json.dumps(openai_error(400, "invalid_http_request", message)).encode()


# ------------------------------------------------------------------------------ server


class AsgiServer:
    """uvicorn serving one ASGI app on a socket bound at construction (so ``port=0`` works
    and ``server_address`` is known before the first request)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        # uvicorn's h11 protocol with a JSON 400 (ours in OpenAI's shape).
        from llmhost.serving.h11_protocol import h11_with_json_400

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(LISTEN_BACKLOG)
        self.server_address: tuple[str, int] = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            app,
            http=h11_with_json_400(bad_request),
            loop="asyncio",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            backlog=LISTEN_BACKLOG,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        """Serve until ``shutdown`` (or SIGTERM/SIGINT when run on the main thread)."""
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._stopped.wait(10)
        self._socket.close()


def serve(app: ServingHttpApp, host: str = "127.0.0.1", port: int = 8080) -> AsgiServer:
    """Bind and return the server (call ``serve_forever`` on it)."""
    return AsgiServer(app, host, port)
