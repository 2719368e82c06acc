"""LMI (DJL Serving, rolling batch with its vLLM backend): its own generate schema and chat.

From LMI's "Inference API Schema" (``serving/docs/lmi/user_guides/lmi_input_output_schema.md``
and ``chat_input_output_schema.md`` in deepjavalibrary/djl-serving):

- Generate: ``{"inputs", "parameters": {"max_new_tokens", "do_sample", "temperature",
  "top_p", "stop_sequences", "repetition_penalty", "seed", "details",
  "return_full_text"}, "stream"}``. Up to LMI 0.31 sampling needs ``do_sample: true``.
  The reply is ``{"generated_text", "details": {"finish_reason", "generated_tokens",
  "inputs"}}`` (a one-element list with ``option.tgi_compat``).
- Streaming defaults to JSON lines (llmhost does not set ``option.output_formatter``):
  ``{"token": {"id", "text", "log_prob"}}`` per line, the last line adding
  ``generated_text`` and ``details``.
- A failure during generation is not an HTTP error once streaming began: it arrives as
  ``finish_reason: "error"`` (token id -1, empty text), and so do some invalid parameters
  on a plain call. Payload validation errors are ``{"error", "code": 424}``.
- ``messages`` bodies get OpenAI chat replies (with ``usage``), the model's own chat
  template applied (the guide: "make sure that the model you are serving has a chat
  template"); streamed chat is JSON lines of ``chat.completion.chunk`` objects, one per
  token, without usage. Its request schema takes ``max_tokens``, ``temperature``,
  ``top_p``, ``stop``, ``seed`` (and the OpenAI penalties), not ``repetition_penalty``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llmhost.engines.codecs import (
    ChatMessage,
    Completion,
    GenerationParams,
    OpenAiOptions,
    StreamDelta,
    StreamFraming,
    Usage,
    error_in,
    finish_reason,
    is_openai_reply,
    load_json,
    openai_chat_payload,
    parse_openai_chunk,
    parse_openai_reply,
)
from llmhost.serving.errors import (
    GenerationParamsInvalid,
    ModelFailed,
    ModelInvocationError,
    ModelReplyInvalid,
    engine_error,
)


class LmiCodec:
    """Payloads and replies of AWS's Large Model Inference container."""

    name = "lmi"
    stream_framing: StreamFraming = "jsonlines"
    chat_api = True
    # djl_python/output_formatter.py: a streamed chat is one chat.completion.chunk line per
    # token and none carries usage (the plain reply does); its schema has no
    # repetition_penalty.
    chat_stream_usage = False
    chat_repetition_penalty = False

    def __init__(self) -> None:
        self._chat = OpenAiOptions()

    def build_generate(
        self, prompt: str, params: GenerationParams, stream: bool, model: str | None = None
    ) -> dict[str, Any]:
        """LMI's generate payload; ``model`` is ignored (LMI serves one model)."""
        if not prompt:
            raise GenerationParamsInvalid("prompt", "cannot be empty")
        parameters: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": not params.greedy,
        }
        if not params.greedy:
            parameters["temperature"] = params.temperature
            parameters["top_p"] = params.top_p
            if params.seed is not None:
                parameters["seed"] = params.seed
        if params.repetition_penalty is not None:
            parameters["repetition_penalty"] = params.repetition_penalty
        if params.stop:
            parameters["stop_sequences"] = list(params.stop)
        parameters["details"] = True
        parameters["return_full_text"] = False
        return {"inputs": prompt, "parameters": parameters, "stream": stream}

    def build_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, stream: bool, model: str
    ) -> dict[str, Any]:
        return openai_chat_payload(messages, params, stream, model, self._chat)

    def parse_reply(self, body: bytes | str | Mapping[str, Any] | list[Any]) -> Completion:
        payload = load_json(body, "LMI's reply")
        if (error := error_in(payload)) is not None:
            raise error
        if is_openai_reply(payload):
            return parse_openai_reply(payload)
        if isinstance(payload, list) and payload:
            payload = payload[0]
        if not isinstance(payload, dict) or not isinstance(payload.get("generated_text"), str):
            raise ModelReplyInvalid("no generated_text", log_detail=str(payload)[:500])
        raw_details = payload.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        reason = finish_reason(details.get("finish_reason") or details.get("finish reason"))
        if reason == "error":
            raise ModelFailed("the model failed while generating", log_detail=json.dumps(payload))
        generated = details.get("generated_tokens")
        return Completion(
            text=payload["generated_text"],
            finish_reason=reason,
            completion_tokens=generated if isinstance(generated, int) else None,
        )

    def parse_stream_event(self, data: str) -> StreamDelta | None:
        line = data.strip()
        if line == "[DONE]":
            return None
        # With option.output_formatter=sse the same objects arrive behind 'data:'.
        payload = load_json(line.removeprefix("data:"), "an LMI stream line")
        if (error := error_in(payload)) is not None:
            raise error
        if isinstance(payload, dict) and "choices" in payload:
            return parse_openai_chunk(payload)
        if not isinstance(payload, dict) or not isinstance(payload.get("token"), dict):
            raise ModelReplyInvalid("a stream line without a token", log_detail=line[:500])
        token = payload["token"]
        details = payload.get("details")
        if isinstance(details, dict):
            reason = finish_reason(details.get("finish_reason"))
            if reason == "error":
                raise ModelFailed("the model failed while generating", log_detail=line[:500])
            generated = details.get("generated_tokens")
            return StreamDelta(
                text=_token_text(token),
                finish_reason=reason,
                usage=Usage(completion_tokens=generated if isinstance(generated, int) else None),
            )
        return StreamDelta(text=_token_text(token))

    def parse_error(self, status: int, body: Any) -> ModelInvocationError:
        return engine_error(status, body)


def _token_text(token: Mapping[str, Any]) -> str:
    if token.get("special_token") or token.get("special"):
        return ""
    return str(token.get("text") or "")
