"""Typed errors for calling a model, each with its HTTP status and a message safe for clients.

Everything that can go wrong between llmhost and a model's engine ends up as one of these:
SageMaker runtime errors (mapped in ``llmhost.serving.invoke``), engine error bodies and
error events inside a stream (mapped by the engine codecs through ``engine_error``).

``message`` is what a client sees: it names the problem and what to do, and never carries
raw SageMaker text (ARNs, log-stream links, stack traces). ``log_detail`` keeps the original
text, with ARNs and links removed, for the operator's logs. ``retry_after`` (seconds) is set
when retrying later can succeed; ``headers()`` turns it into a ``Retry-After`` header.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from llmhost.errors import LlmhostError

# Seconds to suggest in Retry-After. They are polling hints, not promises: bringing an
# inference component back from zero copies needs an instance (minutes), recreating a slept
# endpoint needs 10-30 minutes, a throttled call usually succeeds a second later.
RETRY_AFTER_SLEEPING_S = 60
RETRY_AFTER_STARTING_S = 30
RETRY_AFTER_NOT_DEPLOYED_S = 60
RETRY_AFTER_SERVICE_S = 5
RETRY_AFTER_THROTTLED_S = 2

_MAX_ENGINE_MESSAGE = 300
_ARN = re.compile(r"arn:aws[a-zA-Z-]*:[^\s\"',;)]+")
_URL = re.compile(r"https?://\S+")


def sanitize(text: str, limit: int = _MAX_ENGINE_MESSAGE) -> str:
    """``text`` without ARNs, links or control characters, cut to ``limit`` characters."""
    cleaned = _URL.sub("<link>", _ARN.sub("<arn>", text))
    cleaned = "".join(ch if ch.isprintable() else " " for ch in cleaned)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


class ModelInvocationError(LlmhostError):
    """Calling the model failed. Subclasses say how; the base class means 'bad gateway'."""

    code = "model_error"
    status = 502

    def __init__(
        self, message: str, *, log_detail: str = "", retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.log_detail = sanitize(log_detail, limit=2000) if log_detail else ""
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """HTTP headers the response for this error should carry."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class GenerationParamsInvalid(LlmhostError):
    """The generation parameters cannot be sent to this engine (caught before any call)."""

    code = "invalid_generation_parameters"
    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelInputRejected(ModelInvocationError):
    """The engine refused the request as invalid (its HTTP 4xx): retrying it unchanged fails.

    ``engine_message`` is the engine's own validation text, sanitized; it is part of the
    client message because it says what to change (a parameter range, a length).
    """

    code = "model_rejected_input"
    status = 422

    def __init__(self, engine_message: str, *, log_detail: str = "") -> None:
        self.engine_message = sanitize(engine_message) or "no reason given"
        super().__init__(
            f"the model rejected the request: {self.engine_message}",
            log_detail=log_detail,
        )


@dataclass(frozen=True)
class TokenLimits:
    """Token counts an engine reported when it refused an input as too long.

    ``input_tokens`` is the engine's own count of the prompt. The limits are whatever the
    message stated: TGI states ``max_total_tokens`` with ``max_new_tokens`` or
    ``max_input_tokens``; vLLM states the model's context length as ``max_total_tokens``.
    """

    input_tokens: int
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_new_tokens: int | None = None

    @property
    def allowed_input_tokens(self) -> int | None:
        """The largest prompt the engine would have accepted with the same max_new_tokens."""
        candidates = []
        if self.max_input_tokens is not None:
            # TGI: "`inputs` must have less than N tokens" accepts N itself (it checks >).
            candidates.append(self.max_input_tokens)
        if self.max_total_tokens is not None:
            candidates.append(self.max_total_tokens - (self.max_new_tokens or 0))
        return min(candidates) if candidates else None


class PromptTooLong(ModelInputRejected):
    """The prompt did not fit the model's input limit; ``limits`` has the engine's counts.

    The caller can shrink the context by ``limits.input_tokens - limits.allowed_input_tokens``
    real tokens and retry once (see ``llmhost.rag.prompt.budget_after_rejection``).
    """

    code = "prompt_too_long"

    def __init__(self, engine_message: str, limits: TokenLimits, *, log_detail: str = "") -> None:
        super().__init__(engine_message, log_detail=log_detail)
        self.limits = limits


class ModelThrottled(ModelInvocationError):
    """SageMaker throttled the call, or the engine said it is overloaded."""

    code = "throttled"
    status = 429

    def __init__(self, *, log_detail: str = "", retry_after: int = RETRY_AFTER_THROTTLED_S):
        super().__init__(
            "the model is receiving more requests than it can take; retry after "
            f"{retry_after} s or lower the request rate",
            log_detail=log_detail,
            retry_after=retry_after,
        )


UnavailableReason = Literal["sleeping", "starting", "not_deployed", "service_unavailable"]

_UNAVAILABLE_HINTS: dict[str, str] = {
    "sleeping": "the model is scaled to zero and is waking up",
    "starting": "the model's endpoint is starting or updating",
    "not_deployed": "the model's endpoint does not exist (it may be asleep or deleted); "
    "GET /v1/deployments shows its state, and a request to a sleeping deployment wakes it",
    "service_unavailable": "SageMaker is temporarily unavailable",
}
_UNAVAILABLE_RETRY: dict[str, int] = {
    "sleeping": RETRY_AFTER_SLEEPING_S,
    "starting": RETRY_AFTER_STARTING_S,
    "not_deployed": RETRY_AFTER_NOT_DEPLOYED_S,
    "service_unavailable": RETRY_AFTER_SERVICE_S,
}


class ModelUnavailable(ModelInvocationError):
    """The model cannot take requests now (asleep, starting, absent); retrying later helps.

    ``reason`` lets the caller act on it: 'sleeping' and 'not_deployed' are the cases where
    the API layer should make sure the deployment is waking up.
    """

    code = "model_unavailable"
    status = 503

    def __init__(
        self, reason: UnavailableReason, *, log_detail: str = "", retry_after: int | None = None
    ) -> None:
        wait = _UNAVAILABLE_RETRY[reason] if retry_after is None else retry_after
        super().__init__(
            f"{_UNAVAILABLE_HINTS[reason]}; retry after {wait} s",
            log_detail=log_detail,
            retry_after=wait,
        )
        self.reason: UnavailableReason = reason


class ModelTimeout(ModelInvocationError):
    """The model did not answer in time."""

    code = "model_timeout"
    status = 504

    def __init__(self, *, log_detail: str = "") -> None:
        super().__init__(
            "the model did not answer in time; ask for fewer tokens (max_tokens), send a "
            "shorter prompt, or use streaming",
            log_detail=log_detail,
        )


class ModelFailed(ModelInvocationError):
    """The model or SageMaker failed on its side (engine crash, internal failure)."""

    code = "model_failed"
    status = 502

    def __init__(self, what: str = "the model failed to answer", *, log_detail: str = ""):
        super().__init__(
            f"{what}; retry, and if it persists check the deployment's logs",
            log_detail=log_detail,
        )


class ModelReplyInvalid(ModelFailed):
    """The engine answered with something its codec cannot read (wrong engine configured?)."""

    code = "model_reply_invalid"

    def __init__(self, what: str, *, log_detail: str = "") -> None:
        super().__init__(
            f"the model's reply could not be read ({what}); check that the deployment's "
            "engine matches its container",
            log_detail=log_detail,
        )


class StreamInterrupted(ModelFailed):
    """A streamed answer broke off before it ended (connection lost, engine died)."""

    code = "stream_interrupted"

    def __init__(self, *, log_detail: str = "") -> None:
        super().__init__("the model's streamed answer broke off", log_detail=log_detail)


# ------------------------------------------------------------------------ engine error bodies

_TGI_TOTAL = re.compile(
    r"`inputs` tokens \+ `max_new_tokens` must be <= (\d+)\. Given: (\d+) `inputs` tokens "
    r"and (\d+) `max_new_tokens`"
)
_TGI_INPUT = re.compile(r"`inputs` must have less than (\d+) tokens\. Given: (\d+)")
_VLLM_CONTEXT = re.compile(r"maximum context length is (\d+) tokens")
_VLLM_SPLIT = re.compile(r"\((\d+) in the messages, (\d+) in the completion\)")
_VLLM_PROMPT = re.compile(r"(?:prompt contains at least|request has|prompt has) (\d+) input tokens")
_VLLM_OUTPUT = re.compile(r"requested (\d+) output tokens")


def parse_token_limits(message: str) -> TokenLimits | None:
    """The counts in a TGI or vLLM 'input too long' message, or None when it is another error.

    TGI (router/src/validation.rs): "`inputs` tokens + `max_new_tokens` must be <= 4096.
    Given: 4000 `inputs` tokens and 200 `max_new_tokens`" and "`inputs` must have less than
    4095 tokens. Given: 5000". vLLM: "This model's maximum context length is 4096 tokens.
    However, you requested 4296 tokens (4096 in the messages, 200 in the completion)..." and
    the newer "...you requested 200 output tokens and your prompt contains at least 4097 input
    tokens...".
    """
    if match := _TGI_TOTAL.search(message):
        total, given, new = (int(g) for g in match.groups())
        return TokenLimits(input_tokens=given, max_total_tokens=total, max_new_tokens=new)
    if match := _TGI_INPUT.search(message):
        limit, given = (int(g) for g in match.groups())
        return TokenLimits(input_tokens=given, max_input_tokens=limit)
    if context := _VLLM_CONTEXT.search(message):
        total = int(context.group(1))
        if split := _VLLM_SPLIT.search(message):
            prompt, new = (int(g) for g in split.groups())
            return TokenLimits(input_tokens=prompt, max_total_tokens=total, max_new_tokens=new)
        if prompt_match := _VLLM_PROMPT.search(message):
            output = _VLLM_OUTPUT.search(message)
            return TokenLimits(
                input_tokens=int(prompt_match.group(1)),
                max_total_tokens=total,
                max_new_tokens=int(output.group(1)) if output else None,
            )
    return None


def engine_error_message(body: Any) -> tuple[str, str | None]:
    """The (message, error type) inside an engine's error body, whatever engine wrote it.

    Understands TGI ``{"error", "error_type"}``, OpenAI-style ``{"object": "error",
    "message", "type"}`` and ``{"error": {"message", "type"}}`` (vLLM, TGI chat), and LMI
    ``{"error", "code"}``. Plain text comes back as it is; bytes are decoded as UTF-8.
    """
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        text = body.strip()
        try:
            body = json.loads(text)
        except ValueError:
            return text, None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        return str(body), None
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error), _str_or_none(error.get("type"))
    if isinstance(error, str):
        return error, _str_or_none(body.get("error_type") or body.get("type"))
    if body.get("object") == "error" or "message" in body:
        return str(body.get("message", "")), _str_or_none(body.get("type"))
    return json.dumps(body)[:_MAX_ENGINE_MESSAGE], None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def engine_error(status: int | None, body: Any, *, log_detail: str = "") -> ModelInvocationError:
    """The typed error for an engine's HTTP error (``status``) with its error ``body``.

    ``status`` None means the error came inside a stream (HTTP 200 already sent); the
    engine's error type decides then. Validation failures become 422 (``PromptTooLong`` when
    the message carries token counts), overload 429, timeouts 504, anything else 502.
    """
    message, error_type = engine_error_message(body)
    detail = log_detail or message
    kind = (error_type or "").lower()
    if status is None:
        status = {
            "validation": 422,
            "badrequesterror": 422,
            "invalid_request_error": 422,
            "overloaded": 429,
        }.get(kind, 502)
    if status == 429 or kind == "overloaded":
        return ModelThrottled(log_detail=detail)
    if status in (408, 504) or "timed out" in message.lower():
        return ModelTimeout(log_detail=detail)
    if kind in ("generation", "incomplete_generation"):
        # TGI answers 424 for a failure during generation (a CUDA error, say): the request
        # was valid, so it is the model's failure, not the client's, whatever the 4xx says.
        return ModelFailed("the model failed while generating", log_detail=detail)
    if 400 <= status < 500:
        # Some engines strip the prefix TGI puts on validation errors; the counts are enough.
        limits = parse_token_limits(message)
        if limits is not None:
            return PromptTooLong(message, limits, log_detail=detail)
        return ModelInputRejected(message, log_detail=detail)
    if status == 503:
        return ModelUnavailable("starting", log_detail=detail)
    return ModelFailed("the model failed while generating", log_detail=detail)
