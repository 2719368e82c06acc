"""A local engine that speaks the TGI protocol but is not an LLM: it answers extractively.

``make run`` needs the whole serving path without a GPU. This engine implements the HTTP API
of Hugging Face Text Generation Inference (TGI 3.x: ``/generate``, ``/generate_stream``,
``/v1/chat/completions``, the SageMaker ``/invocations`` and ``/ping`` contract, ``/health``,
``/info``) with the same request and reply shapes, validation and wording, so codecs, the
SageMaker runtime front and the ``openai`` client work against it unchanged. Its answer is
``llmhost_local.extractive``'s; ``llmhost_local.engine_server`` serves it over HTTP.

Timing knobs make it a stand-in for benchmarks: ``latency_ms`` (the total time of a
non-streamed reply), ``token_interval_ms`` (the wait before each streamed token, including
the first) and ``first_token_ms`` (extra wait before the first token).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmhost.errors import LlmhostError
from llmhost_local.extractive import (
    Generation,
    Turn,
    count_tokens,
    generate,
    parse_prompt,
    prompt_tokens,
    token_id,
)

MODEL_ID = "llmhost/local-extractive"
VERSION = "0.1.0"
TOKENIZER_NOTE = "llmhost's local engine counts each word and each punctuation mark as one token"
# TGI's defaults: max_new_tokens when the request names none, and the stop-sequence cap.
DEFAULT_MAX_NEW_TOKENS = 100
MAX_STOP_SEQUENCES = 4


# ---- errors and replies ---------------------------------------------------------------------


class EngineRequestInvalid(LlmhostError):
    """A request TGI's validation refuses (limits, parameters): HTTP 422, ``error_type``
    ``validation``; inside the stream, with HTTP 200, when the request asked for one."""

    code = "validation"
    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(f"Input validation error: {message}")


class EngineBodyInvalid(LlmhostError):
    """JSON of the wrong shape (TGI's deserialisation rejection): HTTP 422, never streamed."""

    code = "validation"
    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(f"Failed to deserialize the JSON body into the target type: {message}")


class EngineRequestMalformed(LlmhostError):
    """A body that is not JSON at all: HTTP 400."""

    code = "validation"
    status = 400


class EngineRouteNotFound(LlmhostError):
    code = "not_found"
    status = 404


@dataclass(frozen=True)
class EngineReply:
    """One HTTP reply: ``body`` for a complete one, ``stream`` (SSE events, each item one
    event, produced lazily with the engine's delays) for a streamed one."""

    status: int
    content_type: str = "application/json"
    body: bytes = b""
    stream: Iterator[bytes] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def _json(value: Any) -> bytes:
    # serde_json's compact output, UTF-8 unescaped, like TGI.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _sse(value: Any) -> bytes:
    # axum's Event::json_data writes "data:" with no space, then a blank line.
    return b"data:" + _json(value) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def _error_reply(error: LlmhostError) -> EngineReply:
    return EngineReply(error.status, body=_json({"error": error.message, "error_type": error.code}))


def message_text(content: Any) -> str:
    """An OpenAI message's content as text: a string, or the text parts of a part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    raise EngineBodyInvalid(
        'messages: `content` must be a string or a list of {"type": "text", "text": ...} parts'
    )


# ---- the engine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    turns: list[Turn]
    input_tokens: int
    max_new_tokens: int
    stop: list[str]
    inputs: str = ""


class LocalEngine:
    """The TGI-compatible extractive engine. Thread-safe and stateless; call ``handle``
    in-process or serve it over HTTP with ``serve_engine``.

    ``latency_ms``: total time of a non-streamed reply; ``token_interval_ms``: wait before
    each streamed token (the first included); ``first_token_ms``: extra wait before the first
    token. Token limits are checked with ``count_tokens`` (an approximation, see there).
    """

    def __init__(
        self,
        latency_ms: float = 0,
        token_interval_ms: float = 0,
        first_token_ms: float = 0,
        max_input_tokens: int = 4096,
        max_total_tokens: int = 8192,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if min(latency_ms, token_interval_ms, first_token_ms) < 0:
            raise ValueError("latency_ms, token_interval_ms and first_token_ms must be >= 0")
        if not 0 < max_input_tokens < max_total_tokens:
            raise ValueError(
                f"need 0 < max_input_tokens < max_total_tokens, got {max_input_tokens} "
                f"and {max_total_tokens}"
            )
        self.latency_ms = latency_ms
        self.token_interval_ms = token_interval_ms
        self.first_token_ms = first_token_ms
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self._sleep = sleep

    # -- dispatch

    def handle(self, method: str, path: str, body: bytes = b"") -> EngineReply:
        """Serve one request as TGI would; never raises for a client's mistake (those become
        TGI-shaped error replies)."""
        started = time.perf_counter()
        route = path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if method == "GET":
                return self._get(route)
            if method != "POST":
                raise EngineRouteNotFound(f"{method} {route} is not served; use GET or POST")
            payload = self._payload(body)
            if route in ("/invocations", "/"):
                return self._invocations(payload, started)
            if route == "/generate":
                return self._generate(payload, started, wrap=False)
            if route == "/generate_stream":
                return self._generate_stream(payload)
            if route == "/v1/chat/completions":
                return self._chat(payload, started)
            raise EngineRouteNotFound(
                f"POST {route} is not served; try /invocations, /generate, /generate_stream "
                "or /v1/chat/completions"
            )
        except LlmhostError as error:
            return _error_reply(error)
        except Exception as error:  # a bug here must still reach the client as TGI would say it
            return EngineReply(
                500,
                body=_json(
                    {
                        "error": f"Incomplete generation: {type(error).__name__}: {error}",
                        "error_type": "incomplete_generation",
                    }
                ),
            )

    def info(self) -> dict[str, Any]:
        """TGI's ``/info``, plus a note on how tokens are counted."""
        return {
            "model_id": MODEL_ID,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 1,
            "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "llmhost-local-engine",
            "version": VERSION,
            "sha": None,
            "docker_label": None,
            "tokenizer": TOKENIZER_NOTE,
        }

    def _get(self, route: str) -> EngineReply:
        if route in ("/health", "/ping"):
            return EngineReply(200, content_type="text/plain")
        if route == "/info":
            return EngineReply(200, body=_json(self.info()))
        if route == "/v1/models":
            model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "llmhost"}
            return EngineReply(200, body=_json({"object": "list", "data": [model]}))
        raise EngineRouteNotFound(f"GET {route} is not served; try /health, /info or /ping")

    @staticmethod
    def _payload(body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as error:
            raise EngineRequestMalformed(
                f"Failed to parse the request body as JSON: {error}"
            ) from error
        if not isinstance(payload, dict):
            raise EngineBodyInvalid(
                "expected a JSON object with `inputs` (generate) or `messages` (chat)"
            )
        return payload

    def _invocations(self, payload: dict[str, Any], started: float) -> EngineReply:
        # TGI's SagemakerRequest is an untagged enum tried in this order.
        if "inputs" in payload:
            if payload.get("stream") is True:
                return self._generate_stream(payload)
            return self._generate(payload, started, wrap=True)
        if "messages" in payload:
            return self._chat(payload, started)
        raise EngineBodyInvalid(
            "data did not match any variant of untagged enum SagemakerRequest (send "
            '{"inputs": ..., "parameters": ...} or an OpenAI chat payload with `messages`)'
        )

    # -- generate

    def _generate_request(self, payload: dict[str, Any]) -> tuple[_Request, dict[str, Any]]:
        inputs = payload.get("inputs")
        if not isinstance(inputs, str):
            raise EngineBodyInvalid("`inputs` must be a string")
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise EngineBodyInvalid("`parameters` must be an object")
        return self._checked(
            [*parse_prompt(inputs)],
            count_tokens(inputs),
            params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
            params.get("stop") or [],
            params,
            inputs,
        ), params

    def _checked(
        self,
        turns: list[Turn],
        input_tokens: int,
        max_new_tokens: Any,
        stop: Any,
        params: Mapping[str, Any],
        inputs: str = "",
    ) -> _Request:
        """TGI's validation, in TGI's order and wording (limits use ``count_tokens``)."""
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise EngineRequestInvalid("`stop` must be a list of strings")
        best_of = params.get("best_of")
        if best_of not in (None, 1):
            raise EngineRequestInvalid("`best_of` != 1 is not allowed for this endpoint")
        temperature = params.get("temperature")
        if temperature is not None and (not _number(temperature) or temperature < 0):
            raise EngineRequestInvalid("`temperature` must be strictly positive")
        top_p = params.get("top_p")
        if top_p is not None and (not _number(top_p) or not 0 < top_p <= 1):
            raise EngineRequestInvalid("`top_p` must be > 0.0 and < 1.0")
        if max_new_tokens is None:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool):
            raise EngineRequestInvalid("`max_new_tokens` must be an integer")
        if max_new_tokens <= 0:
            raise EngineRequestInvalid("`max_new_tokens` must be strictly positive")
        if len(stop) > MAX_STOP_SEQUENCES:
            raise EngineRequestInvalid(
                f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(stop)}"
            )
        if not any(t.text for t in turns):
            raise EngineRequestInvalid("`inputs` cannot be empty")
        if input_tokens + max_new_tokens > self.max_total_tokens:
            raise EngineRequestInvalid(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {input_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens` "
                f"({TOKENIZER_NOTE})"
            )
        if input_tokens > self.max_input_tokens:
            raise EngineRequestInvalid(
                f"`inputs` must have less than {self.max_input_tokens} tokens. "
                f"Given: {input_tokens} ({TOKENIZER_NOTE})"
            )
        return _Request(turns, input_tokens, max_new_tokens, stop, inputs)

    def _generate(self, payload: dict[str, Any], started: float, *, wrap: bool) -> EngineReply:
        request, params = self._generate_request(payload)
        result = generate(request.turns, request.input_tokens, request.max_new_tokens, request.stop)
        text = result.text
        if params.get("return_full_text"):
            text = request.inputs + text
        reply: dict[str, Any] = {"generated_text": text}
        if params.get("details"):
            reply["details"] = {
                "finish_reason": result.finish_reason,
                "generated_tokens": len(result.tokens),
                "seed": params.get("seed"),
                "prefill": _prefill(request.inputs) if params.get("decoder_input_details") else [],
                "tokens": [_token(t) for t in result.tokens],
            }
        self._wait_until(started)
        # TGI's compat route (/ and /invocations) wraps the reply in a list; /generate doesn't.
        return EngineReply(
            200, body=_json([reply] if wrap else reply), headers=_usage_headers(result)
        )

    def _generate_stream(self, payload: dict[str, Any]) -> EngineReply:
        try:
            request, params = self._generate_request(payload)
            if params.get("decoder_input_details"):
                raise EngineRequestInvalid(
                    "`decoder_input_details` == true is not supported when streaming tokens"
                )
        except EngineRequestInvalid as error:
            # TGI reports validation failures of a stream inside the stream, with HTTP 200.
            return _stream_reply(iter([_sse({"error": error.message, "error_type": error.code})]))
        result = generate(request.turns, request.input_tokens, request.max_new_tokens, request.stop)

        def events() -> Iterator[bytes]:
            last = len(result.tokens) - 1
            for index, (token, _) in enumerate(self._paced(result.tokens)):
                done = index == last
                yield _sse(
                    {
                        "index": index + 1,
                        "token": _token(token),
                        "generated_text": result.text if done else None,
                        "details": {
                            "finish_reason": result.finish_reason,
                            "generated_tokens": len(result.tokens),
                            "seed": params.get("seed"),
                            "input_length": result.input_tokens,
                        }
                        if done and params.get("details")
                        else None,
                    }
                )

        return _stream_reply(events())

    # -- chat

    def _chat(self, payload: dict[str, Any], started: float) -> EngineReply:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise EngineBodyInvalid('`messages` must be a list of {"role", "content"} objects')
        turns = [Turn(str(m.get("role", "user")), message_text(m.get("content"))) for m in messages]
        stream = payload.get("stream") is True
        options = payload.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        created = int(time.time())
        ident = "chatcmpl-" + hashlib.sha1(_json(payload)).hexdigest()[:24]
        try:
            request = self._checked(
                turns,
                sum(count_tokens(t.text) for t in turns),
                payload.get("max_tokens", payload.get("max_completion_tokens")),
                payload.get("stop") or [],
                payload,
            )
        except EngineRequestInvalid as error:
            if not stream:
                raise
            return _stream_reply(iter([_sse({"error": error.message, "error_type": error.code})]))
        result = generate(request.turns, request.input_tokens, request.max_new_tokens, request.stop)
        usage = {
            "prompt_tokens": result.input_tokens,
            "completion_tokens": len(result.tokens),
            "total_tokens": result.input_tokens + len(result.tokens),
        }
        finish = "stop" if result.finish_reason == "eos_token" else result.finish_reason
        common = {
            "id": ident,
            "created": created,
            "model": MODEL_ID,
            "system_fingerprint": f"{VERSION}-local-extractive",
        }
        if not stream:
            self._wait_until(started)
            reply = {
                "object": "chat.completion",
                **common,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
            return EngineReply(200, body=_json(reply), headers=_usage_headers(result))

        def events() -> Iterator[bytes]:
            last = len(result.tokens) - 1
            for index, (token, _) in enumerate(self._paced(result.tokens)):
                chunk = {
                    "object": "chat.completion.chunk",
                    **common,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": token},
                            "logprobs": None,
                            "finish_reason": finish if index == last else None,
                        }
                    ],
                    "usage": None,
                }
                yield _sse(chunk)
            if include_usage:
                # OpenAI's shape: a last chunk with no choices that carries the usage.
                yield _sse(
                    {"object": "chat.completion.chunk", **common, "choices": [], "usage": usage}
                )
            yield SSE_DONE

        return _stream_reply(events())

    # -- timing

    def _paced(self, tokens: tuple[str, ...]) -> Iterator[tuple[str, int]]:
        for index, token in enumerate(tokens):
            delay = self.token_interval_ms + (self.first_token_ms if index == 0 else 0)
            if delay > 0:
                self._sleep(delay / 1000)
            yield token, index

    def _wait_until(self, started: float) -> None:
        left = self.latency_ms / 1000 - (time.perf_counter() - started)
        if left > 0:
            self._sleep(left)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _token(text: str) -> dict[str, Any]:
    return {"id": token_id(text), "text": text, "logprob": 0.0, "special": False}


def _prefill(inputs: str) -> list[dict[str, Any]]:
    tokens = prompt_tokens(inputs)
    return [
        {"id": token_id(t), "text": t, "logprob": None if i == 0 else 0.0}
        for i, t in enumerate(tokens)
    ]


def _usage_headers(result: Generation) -> dict[str, str]:
    return {
        "x-compute-type": "local-extractive",
        "x-prompt-tokens": str(result.input_tokens),
        "x-generated-tokens": str(len(result.tokens)),
    }


def _stream_reply(events: Iterator[bytes]) -> EngineReply:
    return EngineReply(200, content_type="text/event-stream", stream=events)
