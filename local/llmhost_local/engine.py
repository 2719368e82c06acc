"""A local engine that speaks the TGI protocol, over a pluggable generator (``EngineBackend``).

``make run`` needs the whole serving path without a GPU. This engine implements the HTTP API
of Hugging Face Text Generation Inference (TGI 3.x: ``/generate``, ``/generate_stream``,
``/v1/chat/completions``, the SageMaker ``/invocations`` and ``/ping`` contract, ``/health``,
``/info``) with the same request and reply shapes, validation and wording, so codecs, the
SageMaker runtime front and the ``openai`` client work against it unchanged;
``llmhost_local.engine_server`` serves it over HTTP.

What generates the tokens is a backend:

- ``ExtractiveBackend`` (the default, and what ``make test`` uses): not an LLM; it answers
  by quoting retrieved sentences (``llmhost_local.extractive``), deterministic, no model;
- ``llmhost_local.llama.LlamaBackend``: a real model (a GGUF file run by llama.cpp on the
  CPU), with the model's own tokenizer and chat template.

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
from typing import Any, Protocol

from llmhost.errors import LlmhostError
from llmhost_local.extractive import (
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


class EngineTemplateError(LlmhostError):
    """The model's chat template refused the conversation (TGI's ``InferError::TemplateError``:
    HTTP 422, ``error_type`` ``template_error``), e.g. roles that do not alternate."""

    code = "template_error"
    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(f"Template error: {message}")


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


# ---- backends: what generates the tokens ---------------------------------------------------


@dataclass(frozen=True)
class EngineToken:
    """One generated token as TGI reports it (``special``: an end-of-generation or control
    token, left out of the generated text)."""

    id: int
    text: str
    logprob: float = 0.0
    special: bool = False

    def as_tgi(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


@dataclass(frozen=True)
class Step:
    """A token as it is produced; ``finish`` is TGI's finish reason (``length``,
    ``eos_token``, ``stop_sequence``) on the last one, None before."""

    token: EngineToken
    finish: str | None = None


@dataclass(frozen=True)
class Prompt:
    """What a backend generates from: the prompt text as the model reads it (the request's
    ``inputs``, or the chat messages rendered with the model's template), its token count,
    and whether it holds anything to answer (TGI: "`inputs` cannot be empty")."""

    text: str
    input_tokens: int
    empty: bool = False
    turns: tuple[Turn, ...] = ()
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Sampling:
    """How to pick each token, as TGI decides it: greedy (``temperature`` 0) unless the
    request samples. ``/generate`` samples when it sets ``do_sample`` or any of
    ``temperature``, ``top_k``, ``top_p``, ``typical_p``; the chat route samples unless
    ``temperature`` is 0 (TGI's ``chat_completions``). ``top_k`` 0 and ``top_p`` 1 mean off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    @classmethod
    def of(cls, params: Mapping[str, Any], *, chat: bool) -> Sampling:
        temperature = params.get("temperature")
        if chat:
            sampling = temperature is None or temperature > 0
        else:
            sampling = params.get("do_sample") is True or any(
                params.get(name) is not None
                for name in ("temperature", "top_k", "top_p", "typical_p")
            )
        return cls(
            temperature=float(temperature if temperature is not None else 1.0) if sampling else 0,
            top_p=float(params.get("top_p") or 1.0) if sampling else 1.0,
            top_k=int(params.get("top_k") or 0) if sampling else 0,
            repetition_penalty=float(params.get("repetition_penalty") or 1.0),
            seed=params.get("seed"),
        )


class EngineBackend(Protocol):
    """What generates an engine's tokens. ``complete`` returns a lazy iterator (a generator)
    that does the work as it is consumed, so a client that hangs up stops it; it must hold
    nothing (no lock, no model state) before its first ``next`` and release all on
    ``close``."""

    model_id: str
    compute_type: str
    #: Appended to limit errors when token counts are not the model's own ("" otherwise).
    tokenizer_note: str

    def prompt(self, inputs: str) -> Prompt: ...

    def chat_prompt(self, turns: list[Turn]) -> Prompt: ...

    def prefill(self, prompt: Prompt) -> list[dict[str, Any]]: ...

    def complete(
        self, prompt: Prompt, max_new_tokens: int, stop: list[str], sampling: Sampling
    ) -> Iterator[Step]: ...


class ExtractiveBackend:
    """Not an LLM: answers by quoting the prompt's passages (``llmhost_local.extractive``).
    Token counts are approximations (``count_tokens``), token ids a hash of the text."""

    model_id = MODEL_ID
    compute_type = "local-extractive"
    tokenizer_note = TOKENIZER_NOTE

    def prompt(self, inputs: str) -> Prompt:
        turns = tuple(parse_prompt(inputs))
        return Prompt(inputs, count_tokens(inputs), not any(t.text for t in turns), turns)

    def chat_prompt(self, turns: list[Turn]) -> Prompt:
        return Prompt(
            "",
            sum(count_tokens(t.text) for t in turns),
            not any(t.text for t in turns),
            tuple(turns),
        )

    def prefill(self, prompt: Prompt) -> list[dict[str, Any]]:
        tokens = prompt_tokens(prompt.text)
        return [
            {"id": token_id(t), "text": t, "logprob": None if i == 0 else 0.0}
            for i, t in enumerate(tokens)
        ]

    def complete(
        self, prompt: Prompt, max_new_tokens: int, stop: list[str], sampling: Sampling
    ) -> Iterator[Step]:
        result = generate(list(prompt.turns), prompt.input_tokens, max_new_tokens, stop)
        last = len(result.tokens) - 1
        for index, text in enumerate(result.tokens):
            token = EngineToken(token_id(text), text)
            yield Step(token, result.finish_reason if index == last else None)


# ---- the engine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    prompt: Prompt
    max_new_tokens: int
    stop: list[str]
    sampling: Sampling

    @property
    def input_tokens(self) -> int:
        return self.prompt.input_tokens


@dataclass
class _Outcome:
    """A finished (or cut short) generation: its tokens and finish reason."""

    input_tokens: int
    tokens: list[EngineToken] = field(default_factory=list)
    finish_reason: str = "length"

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens if not t.special)


class LocalEngine:
    """The TGI-compatible engine. Thread-safe; call ``handle`` in-process or serve it over
    HTTP with ``serve_engine``. ``backend`` generates the tokens: the extractive stand-in
    unless given (see the module docstring).

    ``latency_ms``: total time of a non-streamed reply; ``token_interval_ms``: wait before
    each streamed token (the first included); ``first_token_ms``: extra wait before the first
    token. Token limits are checked with the backend's token counts.
    """

    def __init__(
        self,
        latency_ms: float = 0,
        token_interval_ms: float = 0,
        first_token_ms: float = 0,
        max_input_tokens: int = 4096,
        max_total_tokens: int = 8192,
        sleep: Callable[[float], None] = time.sleep,
        backend: EngineBackend | None = None,
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
        self.backend: EngineBackend = backend or ExtractiveBackend()
        self._sleep = sleep

    @property
    def model_id(self) -> str:
        return self.backend.model_id

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
        """TGI's ``/info`` (the fields a TGI 3 router reports), plus how tokens are counted."""
        return {
            "model_id": self.backend.model_id,
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
            "tokenizer": self.backend.tokenizer_note or "the model's own",
        }

    def _get(self, route: str) -> EngineReply:
        if route in ("/health", "/ping"):
            return EngineReply(200, content_type="text/plain")
        if route == "/info":
            return EngineReply(200, body=_json(self.info()))
        if route == "/v1/models":
            model = {
                "id": self.backend.model_id,
                "object": "model",
                "created": 0,
                "owned_by": "llmhost",
            }
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
            lambda: self.backend.prompt(inputs),
            params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
            params.get("stop") or [],
            params,
            chat=False,
        ), params

    def _checked(
        self,
        prompt_of: Callable[[], Prompt],
        max_new_tokens: Any,
        stop: Any,
        params: Mapping[str, Any],
        *,
        chat: bool,
    ) -> _Request:
        """TGI's validation, in TGI's order and wording (limits use the backend's token
        counts); the prompt is tokenized only once the parameters passed."""
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise EngineRequestInvalid("`stop` must be a list of strings")
        best_of = params.get("best_of")
        if best_of not in (None, 1):
            raise EngineRequestInvalid("`best_of` != 1 is not allowed for this endpoint")
        # TGI (router/src/validation.rs) refuses temperature <= 0 and top_p, typical_p outside
        # (0, 1), open at both ends; its chat route first turns temperature 0 into greedy.
        temperature = params.get("temperature")
        if temperature is not None and (
            not _number(temperature) or temperature < 0 or (temperature == 0 and not chat)
        ):
            raise EngineRequestInvalid("`temperature` must be strictly positive")
        for name in ("top_p", "typical_p"):
            value = params.get(name)
            if value is not None and (not _number(value) or not 0 < value < 1):
                raise EngineRequestInvalid(f"`{name}` must be > 0.0 and < 1.0")
        frequency_penalty = params.get("frequency_penalty")
        if frequency_penalty is not None and (
            not _number(frequency_penalty) or not -2 <= frequency_penalty <= 2
        ):
            raise EngineRequestInvalid("`frequency_penalty` must be >= -2.0 and <= 2.0")
        top_k = params.get("top_k")
        if top_k is not None and (
            not isinstance(top_k, int) or isinstance(top_k, bool) or top_k <= 0
        ):
            raise EngineRequestInvalid("`top_k` must be strictly positive")
        penalty = params.get("repetition_penalty")
        if penalty is not None and (not _number(penalty) or penalty <= 0):
            raise EngineRequestInvalid("`repetition_penalty` must be strictly positive")
        seed = params.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise EngineBodyInvalid("`seed` must be a non-negative integer")
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
        prompt = prompt_of()
        if prompt.empty:
            raise EngineRequestInvalid("`inputs` cannot be empty")
        note = f" ({self.backend.tokenizer_note})" if self.backend.tokenizer_note else ""
        input_tokens = prompt.input_tokens
        if input_tokens + max_new_tokens > self.max_total_tokens:
            raise EngineRequestInvalid(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {input_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
                f"{note}"
            )
        if input_tokens > self.max_input_tokens:
            raise EngineRequestInvalid(
                f"`inputs` must have less than {self.max_input_tokens} tokens. "
                f"Given: {input_tokens}{note}"
            )
        return _Request(prompt, max_new_tokens, stop, Sampling.of(params, chat=chat))

    def _run(self, request: _Request) -> Iterator[Step]:
        return self.backend.complete(
            request.prompt, request.max_new_tokens, request.stop, request.sampling
        )

    def _drain(self, request: _Request) -> _Outcome:
        outcome = _Outcome(request.input_tokens)
        steps = self._run(request)
        try:
            for step in steps:
                outcome.tokens.append(step.token)
                if step.finish is not None:
                    outcome.finish_reason = step.finish
        finally:
            _close(steps)
        return outcome

    def _generate(self, payload: dict[str, Any], started: float, *, wrap: bool) -> EngineReply:
        request, params = self._generate_request(payload)
        result = self._drain(request)
        text = result.text
        if params.get("return_full_text"):
            text = request.prompt.text + text
        reply: dict[str, Any] = {"generated_text": text}
        if params.get("details"):
            reply["details"] = {
                "finish_reason": result.finish_reason,
                "generated_tokens": len(result.tokens),
                "seed": params.get("seed"),
                "prefill": (
                    self.backend.prefill(request.prompt)
                    if params.get("decoder_input_details")
                    else []
                ),
                "tokens": [t.as_tgi() for t in result.tokens],
            }
        self._wait_until(started)
        # TGI's compat route (/ and /invocations) wraps the reply in a list; /generate doesn't.
        return EngineReply(
            200, body=_json([reply] if wrap else reply), headers=self._usage_headers(result)
        )

    def _generate_stream(self, payload: dict[str, Any]) -> EngineReply:
        try:
            request, params = self._generate_request(payload)
            if params.get("decoder_input_details"):
                raise EngineRequestInvalid(
                    "`decoder_input_details` == true is not supported when streaming tokens"
                )
        except (EngineRequestInvalid, EngineTemplateError) as error:
            # TGI reports validation failures of a stream inside the stream, with HTTP 200.
            return _stream_reply(iter([_sse({"error": error.message, "error_type": error.code})]))

        def events() -> Iterator[bytes]:
            text: list[str] = []
            steps = self._run(request)
            try:
                for index, step in enumerate(self._paced(steps)):
                    token = step.token
                    if not token.special:
                        text.append(token.text)
                    done = step.finish is not None
                    yield _sse(
                        {
                            "index": index + 1,
                            "token": token.as_tgi(),
                            "generated_text": "".join(text) if done else None,
                            "details": {
                                "finish_reason": step.finish,
                                "generated_tokens": index + 1,
                                "seed": params.get("seed"),
                                "input_length": request.input_tokens,
                            }
                            if done and params.get("details")
                            else None,
                        }
                    )
            except Exception as error:
                yield _failed_event(error)
            finally:
                _close(steps)

        return _stream_reply(events())

    # -- chat

    def _chat(self, payload: dict[str, Any], started: float) -> EngineReply:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise EngineBodyInvalid('`messages` must be a list of {"role", "content"} objects')
        for index, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                # TGI's Message has a required string `role` (a serde error, as TGI words it).
                raise EngineBodyInvalid(f"messages[{index}]: missing field `role`")
        turns = [Turn(m["role"], message_text(m.get("content"))) for m in messages]
        stream = payload.get("stream") is True
        options = payload.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        created = int(time.time())
        ident = "chatcmpl-" + hashlib.sha1(_json(payload)).hexdigest()[:24]
        try:
            request = self._checked(
                lambda: self.backend.chat_prompt(turns),
                payload.get("max_tokens", payload.get("max_completion_tokens")),
                payload.get("stop") or [],
                payload,
                chat=True,
            )
        except (EngineRequestInvalid, EngineTemplateError) as error:
            if not stream:
                raise
            return _stream_reply(iter([_sse({"error": error.message, "error_type": error.code})]))
        common = {
            "id": ident,
            "created": created,
            "model": self.backend.model_id,
            "system_fingerprint": f"{VERSION}-{self.backend.compute_type}",
        }
        if not stream:
            result = self._drain(request)
            self._wait_until(started)
            reply = {
                "object": "chat.completion",
                **common,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "logprobs": None,
                        "finish_reason": _chat_finish(result.finish_reason),
                    }
                ],
                "usage": _usage(result.input_tokens, len(result.tokens)),
            }
            return EngineReply(200, body=_json(reply), headers=self._usage_headers(result))

        def events() -> Iterator[bytes]:
            generated = 0
            steps = self._run(request)
            try:
                for step in self._paced(steps):
                    generated += 1
                    chunk = {
                        "object": "chat.completion.chunk",
                        **common,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {
                                    "role": "assistant",
                                    # TGI leaves special tokens (end of turn) out of the text.
                                    "content": "" if step.token.special else step.token.text,
                                },
                                "logprobs": None,
                                "finish_reason": _chat_finish(step.finish) if step.finish else None,
                            }
                        ],
                        "usage": None,
                    }
                    yield _sse(chunk)
            except Exception as error:
                yield _failed_event(error)
                return
            finally:
                _close(steps)
            if include_usage:
                # OpenAI's shape: a last chunk with no choices that carries the usage.
                yield _sse(
                    {
                        "object": "chat.completion.chunk",
                        **common,
                        "choices": [],
                        "usage": _usage(request.input_tokens, generated),
                    }
                )
            yield SSE_DONE

        return _stream_reply(events())

    def _usage_headers(self, result: _Outcome) -> dict[str, str]:
        return {
            "x-compute-type": self.backend.compute_type,
            "x-prompt-tokens": str(result.input_tokens),
            "x-generated-tokens": str(len(result.tokens)),
        }

    # -- timing

    def _paced(self, steps: Iterator[Step]) -> Iterator[Step]:
        for index, step in enumerate(steps):
            delay = self.token_interval_ms + (self.first_token_ms if index == 0 else 0)
            if delay > 0:
                self._sleep(delay / 1000)
            yield step

    def _wait_until(self, started: float) -> None:
        left = self.latency_ms / 1000 - (time.perf_counter() - started)
        if left > 0:
            self._sleep(left)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _close(steps: Iterator[Step]) -> None:
    close = getattr(steps, "close", None)
    if close is not None:
        close()


def _chat_finish(reason: str) -> str:
    return "stop" if reason == "eos_token" else reason


def _failed_event(error: Exception) -> bytes:
    # A generation that fails after the stream began: TGI ends the stream with an error event.
    return _sse({"error": f"Request failed during generation: {error}", "error_type": "generation"})


def _usage(input_tokens: int, generated: int) -> dict[str, int]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": generated,
        "total_tokens": input_tokens + generated,
    }


def _stream_reply(events: Iterator[bytes]) -> EngineReply:
    return EngineReply(200, content_type="text/event-stream", stream=events)
