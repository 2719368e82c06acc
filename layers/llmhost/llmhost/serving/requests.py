"""Request bodies of the serving API, with the limits every request is checked against.

``ChatCompletionRequest`` accepts what the OpenAI client sends (unknown OpenAI fields are
ignored, so newer clients keep working) plus one extension, ``rag``, that retrieves context
from a collection before generating. ``RagRequest`` is llmhost's own ``POST /v1/rag``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

MAX_QUERY_CHARS = 4_000
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 32_000
MAX_NEW_TOKENS_CAP = 4_096
MAX_K = 50
MAX_STOP = 4

CollectionName = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$", examples=["docs"])


class RetrievalOptions(BaseModel):
    """Where to find context and how much of it."""

    model_config = ConfigDict(extra="forbid")

    collection: str = CollectionName
    k: int = Field(default=5, ge=1, le=MAX_K, description="Passages to retrieve.")
    filters: dict[str, Any] | None = Field(
        default=None,
        description='Metadata filters: {"field": value | [values] | {"gte": x, "lte": y}}.',
    )


class RagRequest(BaseModel):
    """``POST /v1/rag``: retrieve, then answer with the sources."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    model: str = Field(min_length=1, max_length=63, description="A deployment name.")
    collection: str = CollectionName
    k: int = Field(default=5, ge=1, le=MAX_K)
    filters: dict[str, Any] | None = None
    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_CAP)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | None = Field(default=None, max_length=MAX_STOP)
    system: str | None = Field(default=None, max_length=MAX_QUERY_CHARS)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("blank", "must contain text, not only whitespace")
        return value


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]] = Field(max_length=MAX_MESSAGE_CHARS)

    def text(self) -> str:
        """The message as plain text (OpenAI's content parts: text parts are joined)."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise PydanticCustomError(
                    "content_part", "only text content parts are supported (no images or audio)"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completions body (the subset a text model can honour) plus ``rag``."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=63)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_CAP)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_CAP)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is supported.")
    seed: int | None = None
    rag: RetrievalOptions | None = Field(
        default=None, description="llmhost extension: answer from a collection's passages."
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP:
            raise PydanticCustomError("stop", "at most 4 stop sequences")
        return stops

    @model_validator(mode="after")
    def _has_user_turn(self) -> ChatCompletionRequest:
        if not any(m.role == "user" for m in self.messages):
            raise PydanticCustomError("messages", "messages must include a 'user' message")
        return self

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
