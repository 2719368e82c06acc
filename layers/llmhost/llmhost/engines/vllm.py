"""vLLM on SageMaker (the AWS vLLM container): the OpenAI API at ``/invocations``.

The container's ``/invocations`` takes OpenAI ``completions`` bodies (``prompt``) and
``chat.completions`` bodies (``messages``) and answers in the same shapes (vLLM's
``entrypoints/sagemaker/api_router.py`` validates the body against each request type in
turn; a chat request is rendered with the tokenizer's chat template, and one for a model
without a template is refused); streams are SSE
``data:`` chunks ending with ``data: [DONE]``, and ``stream_options.include_usage`` adds a
last chunk with no choices and the request's usage. ``model`` must be the served model name,
which in that container is the ``SM_VLLM_MODEL`` value llmhost sets (the Hub id, or
``/opt/ml/model`` for S3 weights); recent vLLM releases accept a request without it.

vLLM takes ``temperature`` 0 as greedy and ``top_p`` 1.0 as-is, and ``repetition_penalty``
as an extra field. Its completions endpoint adds BOS to a raw prompt like TGI does, so
templated prompts must not start with BOS. Errors are ``{"object": "error", "message",
"type", "code"}`` (older) or ``{"error": {"message", "type", "code"}}`` (newer); a prompt
over the context length reads "This model's maximum context length is N tokens...".
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
    error_in,
    is_openai_reply,
    load_json,
    openai_chat_payload,
    openai_sampling,
    parse_openai_chunk,
    parse_openai_reply,
)
from llmhost.serving.errors import (
    GenerationParamsInvalid,
    ModelInvocationError,
    ModelReplyInvalid,
    engine_error,
)


class VllmCodec:
    """Payloads and replies of vLLM's OpenAI-compatible server."""

    name = "vllm"
    stream_framing: StreamFraming = "sse"
    chat_api = True
    chat_stream_usage = True
    chat_repetition_penalty = True

    def __init__(self) -> None:
        self._options = OpenAiOptions(repetition_penalty=True)

    def build_generate(
        self, prompt: str, params: GenerationParams, stream: bool, model: str | None = None
    ) -> dict[str, Any]:
        """An OpenAI completions payload for an already templated ``prompt``."""
        if not prompt:
            raise GenerationParamsInvalid("prompt", "cannot be empty")
        payload: dict[str, Any] = {}
        if model:
            payload["model"] = model
        payload["prompt"] = prompt
        payload.update(openai_sampling(params, self._options))
        payload["stream"] = stream
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return payload

    def build_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, stream: bool, model: str
    ) -> dict[str, Any]:
        return openai_chat_payload(messages, params, stream, model, self._options)

    def parse_reply(self, body: bytes | str | Mapping[str, Any] | list[Any]) -> Completion:
        payload = load_json(body, "vLLM's reply")
        if (error := error_in(payload)) is not None:
            raise error
        if not is_openai_reply(payload):
            raise ModelReplyInvalid("not an OpenAI completion", log_detail=str(payload)[:500])
        return parse_openai_reply(payload)

    def parse_stream_event(self, data: str) -> StreamDelta | None:
        if data.strip() == "[DONE]":
            return None
        payload = load_json(data, "a vLLM stream event")
        if (error := error_in(payload)) is not None:
            raise error
        if not isinstance(payload, dict):
            raise ModelReplyInvalid("a stream event that is not an object", log_detail=data)
        return parse_openai_chunk(payload)

    def parse_error(self, status: int, body: Any) -> ModelInvocationError:
        return engine_error(status, body)
