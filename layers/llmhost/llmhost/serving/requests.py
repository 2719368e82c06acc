"""Request bodies of the serving API, with the limits every request is checked against.

``ChatCompletionRequest`` accepts what the OpenAI client sends (unknown OpenAI fields are
ignored, so newer clients keep working) plus one extension, ``rag``, that retrieves context
from a collection before generating. ``RagRequest`` is llmhost's own ``POST /v1/rag``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_QUERY_CHARS = 4_000
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 32_000
MAX_NEW_TOKENS_CAP = 4_096
MAX_K = 50
MAX_STOP = 4

CollectionName = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$", examples=["docs"])


def reject_lone_surrogates(value: Any) -> Any:
    """The one check that text is Unicode: a JSON escape like "\\ud800" without its pair
    parses to a lone surrogate, which no encoder (UTF-8, the tokenizer, SageMaker) accepts."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise PydanticCustomError(
                "lone_surrogate",
                "contains a lone UTF-16 surrogate (\\u{code:04x} at character {at}), which is "
                "not text; send the character itself or its full surrogate pair",
                {"code": ord(value[error.start]), "at": error.start},
            ) from None
    return value


Text = Annotated[str, BeforeValidator(reject_lone_surrogates)]


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

    query: Text = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    model: str = Field(min_length=1, max_length=63, description="A deployment name.")
    collection: str = CollectionName
    k: int = Field(default=5, ge=1, le=MAX_K)
    filters: dict[str, Any] | None = None
    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_CAP)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[Text] | None = Field(default=None, max_length=MAX_STOP)
    system: Text | None = Field(default=None, max_length=MAX_QUERY_CHARS)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("blank", "must contain text, not only whitespace")
        return value


def _text_part(value: Any) -> Any:
    """Say plainly what is wrong with a content part before pydantic's generic errors."""
    if not isinstance(value, dict):
        raise PydanticCustomError(
            "content_part", 'must be an object such as {"type": "text", "text": "..."}'
        )
    if "type" not in value:
        raise PydanticCustomError(
            "content_part", 'has no "type"; text parts are {"type": "text", "text": "..."}'
        )
    if value["type"] != "text":
        raise PydanticCustomError(
            "content_part",
            'is a \'{kind}\' part; only text parts ("type": "text") are supported: this is a '
            "text model, it cannot take images, audio or files",
            {"kind": str(value["type"])[:40]},
        )
    return value


class TextPart(BaseModel):
    """OpenAI's text content part."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: Text


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "string-content"
    if isinstance(value, list):
        return "content-parts"
    return None


MessageContent = Annotated[
    Annotated[Text, Tag("string-content")]
    | Annotated[
        list[Annotated[TextPart, BeforeValidator(_text_part)]],
        Tag("content-parts"),
        Field(min_length=1),
    ],
    Discriminator(
        _content_kind,
        custom_error_type="content_type",
        custom_error_message='must be a string or a list of text parts ({"type": "text", '
        '"text": "..."})',
    ),
]


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: MessageContent = Field(
        description=f"The message's text, or text parts; at most {MAX_MESSAGE_CHARS:,} "
        "characters in all."
    )

    @field_validator("content")
    @classmethod
    def _total_length(cls, value: str | list[TextPart]) -> str | list[TextPart]:
        size = len(value) if isinstance(value, str) else sum(len(p.text) for p in value)
        if size > MAX_MESSAGE_CHARS:
            raise PydanticCustomError(
                "message_too_long",
                f"the message's text is {size:,} characters; at most {MAX_MESSAGE_CHARS:,} are "
                "accepted (text parts count together): shorten it or split the conversation",
            )
        return value

    def text(self) -> str:
        """The message as plain text (OpenAI's content parts: text parts are joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


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
