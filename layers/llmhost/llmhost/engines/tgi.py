"""Hugging Face TGI: the generate payload and (TGI >= 2.4) the OpenAI chat payload.

Verified against TGI's router (``router/src/sagemaker.rs``, ``lib.rs``, ``server.rs``,
``validation.rs``): ``/invocations`` on SageMaker tries the body as a generate request
(``inputs``), then chat (``messages``), then completions (``prompt``).

- Generate: ``{"inputs", "parameters", "stream"}``. The reply is a JSON array
  ``[{"generated_text", "details": {"finish_reason", "generated_tokens", ...}}]``; finish
  reasons are 'length', 'eos_token', 'stop_sequence'. Validation refuses ``temperature``
  <= 0 and ``top_p`` outside (0, 1), and any of temperature/top_p switches sampling on, so
  greedy requests send ``do_sample: false`` and neither. ``stop`` holds at most 4 sequences
  unless the container sets ``MAX_STOP_SEQUENCES``. The generate route always adds the
  tokenizer's special tokens (BOS) itself: templated prompts must not start with BOS.
- Streams are SSE: ``data:{"index", "token": {"id", "text", "logprob", "special"},
  "generated_text", "details"}``; the last event carries ``generated_text`` and ``details``.
  Chat streams send ``chat.completion.chunk`` events and end with ``data: [DONE]``.
- Chat (``messages``) goes through the Messages API: the router renders the tokenizer's
  ``chat_template`` (a model without one is refused, "Template error: template not found"),
  validates the rendered prompt with the same limits and messages as generate, and answers
  ``chat.completion`` with ``usage``; ``stream_options.include_usage`` adds a last chunk
  with the usage (``router/src/chat.rs``). Its ``ChatRequest`` has ``stop`` (the same cap)
  but no ``repetition_penalty``.
- Errors: ``{"error", "error_type"}`` with HTTP 422 (validation), 424 (generation), 429
  (overloaded), 500 (incomplete generation); inside a stream the same object arrives as a
  plain ``data:`` event.
"""

from __future__ import annotations

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
    ModelInvocationError,
    ModelReplyInvalid,
    engine_error,
)

TGI_MAX_STOP_SEQUENCES = 4


class TgiCodec:
    """Payloads and replies of Hugging Face Text Generation Inference."""

    name = "tgi"
    stream_framing: StreamFraming = "sse"
    chat_api = True
    # router/src/chat.rs: with include_usage the stream ends with a chunk carrying the
    # usage (input_length and generated_tokens of the last token's details).
    chat_stream_usage = True
    chat_repetition_penalty = False

    def __init__(self, max_stop_sequences: int = TGI_MAX_STOP_SEQUENCES) -> None:
        self.max_stop_sequences = max_stop_sequences
        self._chat = OpenAiOptions(omit_top_p_at_one=True, max_stop=max_stop_sequences)

    def build_generate(
        self, prompt: str, params: GenerationParams, stream: bool, model: str | None = None
    ) -> dict[str, Any]:
        """The generate payload; ``model`` is ignored (TGI serves one model)."""
        if not prompt:
            raise GenerationParamsInvalid("prompt", "cannot be empty")
        self._check_stop(params)
        parameters: dict[str, Any] = {"max_new_tokens": params.max_new_tokens}
        if params.greedy:
            parameters["do_sample"] = False
        else:
            parameters["do_sample"] = True
            parameters["temperature"] = params.temperature
            if params.top_p < 1:
                parameters["top_p"] = params.top_p
            if params.seed is not None:
                parameters["seed"] = params.seed
        if params.repetition_penalty is not None:
            parameters["repetition_penalty"] = params.repetition_penalty
        if params.stop:
            parameters["stop"] = list(params.stop)
        parameters["details"] = True
        parameters["return_full_text"] = False
        return {"inputs": prompt, "parameters": parameters, "stream": stream}

    def build_chat(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        stream: bool,
        model: str = "tgi",
    ) -> dict[str, Any]:
        """An OpenAI chat payload. TGI's chat API has no ``repetition_penalty``: it is left
        out (use ``build_generate`` with a rendered prompt when it matters)."""
        return openai_chat_payload(messages, params, stream, model or "tgi", self._chat)

    def parse_reply(self, body: bytes | str | Mapping[str, Any] | list[Any]) -> Completion:
        payload = load_json(body, "TGI's reply")
        if (error := error_in(payload)) is not None:
            raise error
        if is_openai_reply(payload):
            return parse_openai_reply(payload)
        if isinstance(payload, list):
            if not payload:
                raise ModelReplyInvalid("an empty list")
            payload = payload[0]
        if not isinstance(payload, dict) or not isinstance(payload.get("generated_text"), str):
            raise ModelReplyInvalid("no generated_text", log_detail=str(payload)[:500])
        raw_details = payload.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        return Completion(
            text=payload["generated_text"],
            finish_reason=finish_reason(details.get("finish_reason")),
            prompt_tokens=_prompt_tokens(details),
            completion_tokens=_int(details.get("generated_tokens")),
        )

    def parse_stream_event(self, data: str) -> StreamDelta | None:
        if data.strip() == "[DONE]":
            return None
        payload = load_json(data, "a TGI stream event")
        if (error := error_in(payload)) is not None:
            raise error
        if isinstance(payload, dict) and "choices" in payload:
            return parse_openai_chunk(payload)
        if not isinstance(payload, dict) or not isinstance(payload.get("token"), dict):
            raise ModelReplyInvalid("a stream event without a token", log_detail=data[:500])
        token = payload["token"]
        text = "" if token.get("special") else str(token.get("text") or "")
        details = payload.get("details")
        if not isinstance(details, dict):
            return StreamDelta(text=text)
        return StreamDelta(
            text=text,
            finish_reason=finish_reason(details.get("finish_reason")),
            usage=Usage(
                prompt_tokens=_prompt_tokens(details),
                completion_tokens=_int(details.get("generated_tokens")),
            ),
        )

    def parse_error(self, status: int, body: Any) -> ModelInvocationError:
        return engine_error(status, body)

    def _check_stop(self, params: GenerationParams) -> None:
        if len(params.stop) > self.max_stop_sequences:
            raise GenerationParamsInvalid(
                "stop",
                f"TGI accepts at most {self.max_stop_sequences} stop sequences "
                f"(got {len(params.stop)}); send fewer",
            )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _prompt_tokens(details: Mapping[str, Any]) -> int | None:
    # Newer TGI releases report the prompt length ('input_length' in stream details,
    # 'prompt_tokens' in some forks); older ones only list prefill tokens when asked to.
    for key in ("input_length", "prompt_tokens"):
        if (value := _int(details.get(key))) is not None:
            return value
    prefill = details.get("prefill")
    return len(prefill) if isinstance(prefill, list) and prefill else None
