"""What every engine codec shares: the request and reply types, and the OpenAI chat shape.

A codec turns llmhost's request (a prompt or chat messages plus ``GenerationParams``) into
one engine's ``/invocations`` payload and reads that engine's replies, stream events and
error bodies back into ``Completion``, ``StreamDelta`` and the typed errors of
``llmhost.serving.errors``. Codecs are pure: no I/O, no clients. One module per engine:
``llmhost.engines.tgi`` (default), ``vllm``, ``lmi`` and ``hf_inference``; ``codec_for``
picks one by the engine name a deployment spec uses.

TGI (since 2.4), the AWS vLLM container and LMI all accept OpenAI chat payloads at
``/invocations``; the helpers for that shape live here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from llmhost.engines.sse import JsonLinesDecoder, SseDecoder, SseEvent, StreamDecodeError
from llmhost.serving.errors import (
    GenerationParamsInvalid,
    ModelFailed,
    ModelInvocationError,
    ModelReplyInvalid,
    StreamInterrupted,
    engine_error,
)

if TYPE_CHECKING:
    from llmhost.specs import GenerationDefaults

FinishReason = Literal["stop", "length", "error"]
Role = Literal["system", "user", "assistant"]
StreamFraming = Literal["sse", "jsonlines"]


@dataclass(frozen=True)
class GenerationParams:
    """How to generate: the knobs every engine understands, validated once here.

    ``temperature`` 0 means greedy decoding (each codec spells that its engine's way);
    ``top_p`` 1.0 means no nucleus filtering. ``stop`` holds stop sequences. Raises
    ``GenerationParamsInvalid`` (422) naming the field when a value is out of range.
    """

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise GenerationParamsInvalid("max_new_tokens", "must be at least 1")
        if not 0 <= self.temperature <= 2:
            raise GenerationParamsInvalid("temperature", "must be between 0 and 2")
        if not 0 < self.top_p <= 1:
            raise GenerationParamsInvalid("top_p", "must be above 0 and at most 1")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise GenerationParamsInvalid("repetition_penalty", "must be above 0")
        if any(not s for s in self.stop):
            raise GenerationParamsInvalid("stop", "stop sequences cannot be empty strings")
        if self.seed is not None and self.seed < 0:
            raise GenerationParamsInvalid("seed", "must be 0 or more")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_defaults(cls, defaults: GenerationDefaults, **overrides: Any) -> GenerationParams:
        """A deployment's ``generation`` defaults with per-request ``overrides`` applied."""
        values: dict[str, Any] = {
            "max_new_tokens": defaults.max_new_tokens,
            "temperature": defaults.temperature,
            "top_p": defaults.top_p,
            "stop": tuple(defaults.stop),
            "repetition_penalty": defaults.repetition_penalty,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        return cls(**values)


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class Usage:
    """Token counts as the engine reported them (None when it did not)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Completion:
    """A whole (non-streamed) answer."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class StreamDelta:
    """One step of a streamed answer: new text, and on the last steps why it ended / usage."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


class EngineCodec(Protocol):
    """The contract every engine module implements (see the module docstring)."""

    name: str
    stream_framing: StreamFraming
    # Whether the engine has a chat API (``build_chat``) that applies the model's own chat
    # template; whether a streamed chat reports the prompt's and the answer's token counts
    # (``stream_options.include_usage``); whether that chat API takes repetition_penalty.
    chat_api: bool
    chat_stream_usage: bool
    chat_repetition_penalty: bool

    def build_generate(
        self, prompt: str, params: GenerationParams, stream: bool, model: str | None = None
    ) -> dict[str, Any]:
        """Payload that generates from an already templated ``prompt``."""
        ...

    def build_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, stream: bool, model: str
    ) -> dict[str, Any]:
        """OpenAI chat payload; the engine applies the model's chat template itself."""
        ...

    def parse_reply(self, body: bytes | str | Mapping[str, Any] | list[Any]) -> Completion:
        """A whole reply (generate or chat); raises a typed error for an error reply."""
        ...

    def parse_stream_event(self, data: str) -> StreamDelta | None:
        """One stream event's data; None for events that carry nothing (``[DONE]``, role
        announcements). Raises a typed error when the event reports an engine error."""
        ...

    def parse_error(self, status: int, body: Any) -> ModelInvocationError:
        """The typed error for an HTTP error reply of this engine."""
        ...


def stream_decoder(framing: StreamFraming) -> SseDecoder | JsonLinesDecoder:
    """A fresh decoder for a stream in ``framing``."""
    return SseDecoder() if framing == "sse" else JsonLinesDecoder()


def iter_deltas(codec: EngineCodec, chunks: Iterable[bytes]) -> Iterator[StreamDelta]:
    """Decode a streamed reply's byte chunks into deltas, in order, as they arrive.

    Stops at ``[DONE]``. A stream that breaks off mid-event raises ``StreamInterrupted``; an
    error event (``event: error``, or data in the engine's error shape) raises the typed error.
    """
    decoder = stream_decoder(codec.stream_framing)
    for chunk in chunks:
        for event in decoder.feed(chunk):
            if event.is_done:
                return
            if (delta := _delta(codec, event)) is not None:
                yield delta
    try:
        tail = decoder.finish()
    except StreamDecodeError as error:
        raise StreamInterrupted(log_detail=str(error)) from error
    for event in tail:
        if event.is_done:
            return
        if (delta := _delta(codec, event)) is not None:
            yield delta


def _delta(codec: EngineCodec, event: SseEvent) -> StreamDelta | None:
    if event.event == "error":
        # A named error event: its data may be JSON in the engine's error shape or text.
        raise engine_error(None, event.data)
    return codec.parse_stream_event(event.data)


def load_json(body: bytes | str | Mapping[str, Any] | list[Any], what: str) -> Any:
    """``body`` parsed as JSON (already parsed values pass through)."""
    if isinstance(body, Mapping | list):
        return body
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        raise ModelReplyInvalid(f"{what} is not JSON", log_detail=text[:500]) from error


def finish_reason(raw: Any) -> FinishReason:
    """An engine's finish reason in llmhost's three words.

    TGI says 'eos_token' / 'stop_sequence' / 'length'; OpenAI-style engines 'stop' /
    'length'; LMI also 'error'. Tool calls and unknown reasons count as a normal stop.
    """
    value = str(raw or "").lower()
    if value == "length":
        return "length"
    if value in ("error", "abort"):
        return "error"
    return "stop"


def error_in(payload: Any) -> ModelInvocationError | None:
    """The typed error if a parsed reply or stream event is an engine error report."""
    if isinstance(payload, dict) and ("error" in payload or payload.get("object") == "error"):
        return engine_error(None, payload)
    return None


# --------------------------------------------------------------------- the OpenAI chat shape


@dataclass(frozen=True)
class OpenAiOptions:
    """How one engine bends the OpenAI shape.

    TGI rejects ``top_p`` >= 1 and treats any sampling parameter as 'sample', so greedy
    requests must leave ``top_p`` out; vLLM takes ``repetition_penalty`` as an extra field.
    """

    omit_top_p_at_one: bool = False
    repetition_penalty: bool = False
    max_stop: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def openai_sampling(params: GenerationParams, options: OpenAiOptions) -> dict[str, Any]:
    """The sampling fields of an OpenAI completions or chat payload."""
    if options.max_stop is not None and len(params.stop) > options.max_stop:
        raise GenerationParamsInvalid(
            "stop", f"this engine accepts at most {options.max_stop} stop sequences"
        )
    payload: dict[str, Any] = {"max_tokens": params.max_new_tokens}
    payload["temperature"] = params.temperature
    if not params.greedy and not (options.omit_top_p_at_one and params.top_p >= 1):
        payload["top_p"] = params.top_p
    if params.stop:
        payload["stop"] = list(params.stop)
    if params.seed is not None and not params.greedy:
        payload["seed"] = params.seed
    if options.repetition_penalty and params.repetition_penalty is not None:
        payload["repetition_penalty"] = params.repetition_penalty
    payload.update(options.extra)
    return payload


def openai_chat_payload(
    messages: Sequence[ChatMessage],
    params: GenerationParams,
    stream: bool,
    model: str | None,
    options: OpenAiOptions,
) -> dict[str, Any]:
    """An OpenAI ``chat.completions`` request body."""
    if not messages:
        raise GenerationParamsInvalid("messages", "at least one message is required")
    payload: dict[str, Any] = {}
    if model:
        payload["model"] = model
    payload["messages"] = [{"role": m.role, "content": m.content} for m in messages]
    payload.update(openai_sampling(params, options))
    payload["stream"] = stream
    if stream:
        # Without it the stream carries no token counts at all.
        payload["stream_options"] = {"include_usage": True}
    return payload


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
    )


def is_openai_reply(payload: Any) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("choices"), list)


def parse_openai_reply(payload: dict[str, Any]) -> Completion:
    """A ``chat.completion`` or ``text_completion`` reply (first choice)."""
    choices = payload.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise ModelReplyInvalid("no choices in the reply", log_detail=json.dumps(payload)[:500])
    choice = choices[0]
    message = choice.get("message")
    # Chat replies carry a message; text completions carry the text on the choice.
    source = message if isinstance(message, dict) else {"content": choice.get("text")}
    text = source.get("content") or ""
    reason = finish_reason(choice.get("finish_reason"))
    if reason == "error":
        raise ModelFailed("the model failed while generating", log_detail=json.dumps(choice))
    usage = _usage(payload.get("usage")) or Usage()
    return Completion(
        text=str(text),
        finish_reason=reason,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )


def parse_openai_chunk(payload: dict[str, Any]) -> StreamDelta | None:
    """A ``chat.completion.chunk`` (or text completion chunk); None when it carries nothing.

    The last chunk of a stream requested with ``include_usage`` has no choices and the
    usage of the whole request.
    """
    usage = _usage(payload.get("usage"))
    choices = payload.get("choices") or []
    text = ""
    reason: FinishReason | None = None
    if choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        text = (delta.get("content") or "") if isinstance(delta, dict) else ""
        text = text or choice.get("text") or ""
        if choice.get("finish_reason") is not None:
            reason = finish_reason(choice["finish_reason"])
    if reason == "error":
        raise ModelFailed("the model failed while generating", log_detail=json.dumps(payload))
    if not text and reason is None and usage is None:
        return None
    return StreamDelta(text=str(text), finish_reason=reason, usage=usage)


# ------------------------------------------------------------------------------- selection


def codec_for(engine: str, *, seq2seq: bool = False) -> EngineCodec:
    """The codec for an engine named as in a spec: 'tgi', 'vllm', 'lmi' or 'hf-inference'.

    ``seq2seq`` matters for 'hf-inference' only (``CatalogModel.seq2seq``: its pipeline
    differs). Raises ``KeyError`` naming the known engines for any other name.
    """
    from llmhost.engines.hf_inference import HfInferenceCodec
    from llmhost.engines.lmi import LmiCodec
    from llmhost.engines.tgi import TgiCodec
    from llmhost.engines.vllm import VllmCodec

    codecs: dict[str, EngineCodec] = {
        "tgi": TgiCodec(),
        "vllm": VllmCodec(),
        "lmi": LmiCodec(),
        "hf-inference": HfInferenceCodec(seq2seq=seq2seq),
    }
    try:
        return codecs[engine]
    except KeyError:
        raise KeyError(
            f"no codec for engine '{engine}'; known engines: {', '.join(sorted(codecs))}"
        ) from None
