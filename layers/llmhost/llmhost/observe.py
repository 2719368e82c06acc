"""What one answered request looked like, handed to whoever watches requests.

Serving code (``/v1/rag``, chat, streamed chat, a job's model call) builds one
``RequestObservation`` when a request ends, answered or refused, and passes it to every
``RequestObserver`` the runtime holds: the trace recorder (sampled, redacted, stored), the
usage counters (every request, for cost per deployment and per key) and the metrics (every
request, for the dashboard). An observer must never fail the request it observes: the
caller wraps each one (``notify``), logs what went wrong and carries on.

The values are plain data, so observers and their tests need no serving stack.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aws_lambda_powertools import Logger

logger = Logger(child=True)

RequestKind = Literal["chat", "rag", "job"]
SpanName = Literal["embed", "retrieve", "generate", "wake", "wait"]
# What a deployment's and a collection's name may be (llmhost.specs.NAME_PATTERN, the
# collection routes' pattern): anything else a client asked for names neither.
_MODEL_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,53}")
_COLLECTION_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}")


@dataclass(frozen=True)
class StageTiming:
    """One stage of a request: where it started (ms after the request began) and how long
    it took. ``attributes`` are extra facts of that stage (for retrieve: how many hits)."""

    name: SpanName
    start_ms: float
    duration_ms: float
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrievedSource:
    """A passage retrieved for a RAG prompt, with its fused score."""

    id: str
    score: float
    collection: str | None = None
    text: str | None = None  # the passage as put into the prompt


@dataclass(frozen=True)
class RequestObservation:
    """One request, from the moment it arrived to its last byte.

    Times are epoch seconds (``started_at``) and milliseconds (durations). ``status`` is the
    HTTP status the client got (a stream that failed after its 200 counts as the status of
    its error event). ``caller`` is who asked: an API key's name on the OpenAI-compatible
    API, the IAM principal (user or role ARN) on the SigV4 API, the submitter for a job.
    ``prompt`` is exactly what was sent to the engine: the rendered prompt string for the
    generate API, or the list of chat messages for the chat API.
    """

    request_id: str
    kind: RequestKind
    started_at: float
    duration_ms: float
    status: int
    model: str | None = None  # the deployment name asked for
    error_code: str | None = None
    generation: int | None = None  # the deployment's spec generation that answered
    caller: str | None = None
    collection: str | None = None
    stream: bool = False
    cold: bool = False  # the model had no copy when the request came (a wake or a 503)
    ttft_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    query: str | None = None  # the user's question (RAG) or last user message (chat)
    prompt: str | list[dict[str, Any]] | None = None
    answer: str | None = None
    sources: tuple[RetrievedSource, ...] = ()
    stages: tuple[StageTiming, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)  # max_tokens, temperature, ...
    hosting: str | None = None  # dedicated | shared | serverless | async
    instance_type: str | None = None
    engine: str | None = None  # tgi | vllm | lmi | hf-inference
    # What prices the request (``llmhost.usage.cost``): requests one copy runs at once (its
    # busy time is shared by them), and a serverless endpoint's memory.
    copy_concurrency: int = 1
    memory_mb: int | None = None

    def __post_init__(self) -> None:
        # A name a client sent that no deployment or collection can have (a 404's typo, an
        # email address, a megabyte of text) is not kept: it would reach traces unredacted,
        # and the usage table and the metrics' dimensions as a row of its own.
        if self.model is not None and not _MODEL_NAME.fullmatch(self.model):
            object.__setattr__(self, "model", None)
        if self.collection is not None and not _COLLECTION_NAME.fullmatch(self.collection):
            object.__setattr__(self, "collection", None)

    @property
    def error_class(self) -> str | None:
        """The dashboard's error classes: 4xx, 429, 503, 5xx (None when answered)."""
        if self.status < 400:
            return None
        if self.status in (429, 503):
            return str(self.status)
        return "4xx" if self.status < 500 else "5xx"


class RequestObserver(Protocol):
    def observe(self, observation: RequestObservation) -> None: ...


def notify(observers: Iterable[RequestObserver], observation: RequestObservation) -> None:
    """Hand ``observation`` to each observer; one that fails is logged, never raised, so
    watching a request can neither fail it nor stop the other observers."""
    for observer in observers:
        try:
            observer.observe(observation)
        except Exception:
            logger.exception(
                "request observer failed",
                extra={"observer": type(observer).__name__, "request_id": observation.request_id},
            )
