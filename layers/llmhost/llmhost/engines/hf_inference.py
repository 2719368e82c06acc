"""The Hugging Face inference toolkit (CPU, serverless): a transformers pipeline, no more.

Its text-generation and text2text-generation pipelines take ``{"inputs", "parameters"}``
with transformers' ``generate`` keyword arguments and answer ``[{"generated_text"}]``. It
has no chat API, no streaming and no token counts; ``stop`` is not supported by the
pipeline, so a request with stop sequences is refused rather than silently ignored.
Prompts must be rendered by llmhost (``llmhost.engines.chat_templates.render_prompt``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmhost.engines.codecs import (
    ChatMessage,
    Completion,
    GenerationParams,
    StreamDelta,
    StreamFraming,
    error_in,
    load_json,
)
from llmhost.serving.errors import (
    GenerationParamsInvalid,
    ModelInvocationError,
    ModelReplyInvalid,
    engine_error,
)


class HfInferenceCodec:
    """Payloads and replies of the Hugging Face inference toolkit."""

    name = "hf-inference"
    stream_framing: StreamFraming = "sse"
    chat_api = False
    chat_stream_usage = False
    chat_repetition_penalty = False

    def __init__(self, seq2seq: bool = False) -> None:
        # text2text pipelines (Flan-T5) answer with the new text only and reject
        # return_full_text; text-generation pipelines echo the prompt unless told not to.
        self.seq2seq = seq2seq

    def build_generate(
        self, prompt: str, params: GenerationParams, stream: bool, model: str | None = None
    ) -> dict[str, Any]:
        if stream:
            raise GenerationParamsInvalid(
                "stream", "hf-inference deployments cannot stream; send stream: false"
            )
        if params.stop:
            raise GenerationParamsInvalid(
                "stop", "hf-inference deployments do not support stop sequences; remove them"
            )
        if not prompt:
            raise GenerationParamsInvalid("prompt", "cannot be empty")
        parameters: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": not params.greedy,
        }
        if not params.greedy:
            parameters["temperature"] = params.temperature
            parameters["top_p"] = params.top_p
        if params.repetition_penalty is not None:
            parameters["repetition_penalty"] = params.repetition_penalty
        if not self.seq2seq:
            parameters["return_full_text"] = False
        return {"inputs": prompt, "parameters": parameters}

    def build_chat(
        self, messages: Sequence[ChatMessage], params: GenerationParams, stream: bool, model: str
    ) -> dict[str, Any]:
        raise GenerationParamsInvalid(
            "messages",
            "hf-inference deployments have no chat API; render the prompt with the model's "
            "chat template and use the generate payload",
        )

    def parse_reply(self, body: bytes | str | Mapping[str, Any] | list[Any]) -> Completion:
        payload = load_json(body, "the inference toolkit's reply")
        if (error := error_in(payload)) is not None:
            raise error
        if isinstance(payload, list) and payload:
            payload = payload[0]
        if not isinstance(payload, dict) or not isinstance(payload.get("generated_text"), str):
            raise ModelReplyInvalid("no generated_text", log_detail=str(payload)[:500])
        # The pipeline does not say why it stopped; 'stop' is the honest default.
        return Completion(text=payload["generated_text"], finish_reason="stop")

    def parse_stream_event(self, data: str) -> StreamDelta | None:
        raise ModelReplyInvalid("hf-inference deployments do not stream")

    def parse_error(self, status: int, body: Any) -> ModelInvocationError:
        return engine_error(status, body)
