"""What one chat or RAG request did, collected as it runs, for its ``RequestObservation``.

A front (the API Gateway app, the OpenAI-compatible server, the jobs worker) starts a
``RequestWatch`` when a request arrives and hands it to ``ServingService``, which notes the
route, the stages (embed, retrieve, generate, wake, wait), the prompt exactly as sent to
the engine, the sources, the answer and its tokens. The front ends it with the status the
client got (``finish``) and hands the observation to the runtime's observers. A request
refused before the service saw it (a bad body, an unknown key) still gets one.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmhost.observe import RequestKind, RequestObservation, RetrievedSource, SpanName, StageTiming

if TYPE_CHECKING:
    from llmhost.serving.routing import ModelRoute

# What a trace keeps of a name sent by a client that was refused (a model, a collection).
MAX_NAME_CHARS = 256
REQUEST_ID_PREFIX = {"chat": "chatcmpl", "rag": "rag", "job": "job"}


def new_request_id(kind: RequestKind) -> str:
    return f"{REQUEST_ID_PREFIX[kind]}-{uuid.uuid4().hex}"


@dataclass
class RequestWatch:
    """One request's facts so far (see the module's docstring). Not thread-safe: one
    thread at a time notes into it (a stream's reader after the thread that opened it)."""

    kind: RequestKind
    request_id: str = ""
    caller: str | None = None
    stream: bool = False
    started_at: float = field(default_factory=time.time)
    _started: float = field(default_factory=time.perf_counter, repr=False)
    _claim_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    model: str | None = None
    collection: str | None = None
    query: str | None = None
    prompt: str | list[dict[str, Any]] | None = None
    answer: str | None = None
    sources: tuple[RetrievedSource, ...] = ()
    stages: list[StageTiming] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    ttft_ms: float | None = None
    cold: bool = False
    generation: int | None = None
    hosting: str | None = None
    instance_type: str | None = None
    copy_concurrency: int = 1
    memory_mb: int | None = None
    engine: str | None = None
    status: int | None = None  # set when the outcome is known before the front's response
    error_code: str | None = None
    done: bool = False

    def __post_init__(self) -> None:
        if not self.request_id:
            self.request_id = new_request_id(self.kind)

    def elapsed_ms(self) -> float:
        """Milliseconds since the request arrived."""
        return (time.perf_counter() - self._started) * 1000

    def stage(self, name: SpanName, start_ms: float, duration_ms: float, **attributes: Any) -> None:
        self.stages.append(
            StageTiming(name, round(start_ms, 3), round(duration_ms, 3), dict(attributes))
        )

    def asked(
        self,
        model: str | None,
        *,
        query: str | None = None,
        collection: str | None = None,
        **parameters: Any,
    ) -> None:
        """What the client asked for (set from the validated request)."""
        self.model = model
        self.query = query
        self.collection = collection
        self.parameters.update({k: v for k, v in parameters.items() if v is not None})

    def asked_raw(self, body: Any) -> None:
        """What a refused body named, when it is a JSON object naming a model."""
        if not isinstance(body, dict):
            return
        model = body.get("model")
        if self.model is None and isinstance(model, str):
            self.model = model[:MAX_NAME_CHARS] or None

    def routed(self, route: ModelRoute) -> None:
        self.model = route.name
        self.generation = route.generation
        self.hosting = route.hosting
        self.engine = route.engine
        self.instance_type = route.instance_type
        self.copy_concurrency = route.copy_concurrency
        self.memory_mb = route.memory_mb
        if route.model_id:
            self.parameters["model_id"] = route.model_id

    def ended(self, status: int, error_code: str | None = None) -> None:
        """The outcome, when the service knows it before the front does (a stream's error
        event after its 200)."""
        self.status, self.error_code = status, error_code

    def claim(self) -> bool:
        """True for the one caller that ends this watch (it then observes it), False for
        every later one: a stream's end and its client going away may race on two threads,
        and the request is observed once, by the first."""
        with self._claim_lock:
            if self.done:
                return False
            self.done = True
            return True

    def finish(self, status: int, error_code: str | None = None) -> RequestObservation:
        """The observation of this request, which got ``status`` (unless ``ended`` said
        otherwise). Marks the watch done."""
        self.done = True
        if self.status is not None:
            status, error_code = self.status, self.error_code
        return RequestObservation(
            request_id=self.request_id,
            kind=self.kind,
            started_at=self.started_at,
            duration_ms=round(self.elapsed_ms(), 3),
            status=status,
            model=self.model,
            error_code=error_code if status >= 400 else None,
            generation=self.generation,
            caller=self.caller,
            collection=self.collection,
            stream=self.stream,
            cold=self.cold,
            ttft_ms=None if self.ttft_ms is None else round(self.ttft_ms, 3),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            finish_reason=self.finish_reason,
            query=self.query,
            prompt=self.prompt,
            answer=self.answer,
            sources=self.sources,
            stages=tuple(self.stages),
            parameters=dict(self.parameters),
            hosting=self.hosting,
            instance_type=self.instance_type,
            copy_concurrency=self.copy_concurrency,
            memory_mb=self.memory_mb,
            engine=self.engine,
        )


def start_watch(kind: RequestKind, **fields: Any) -> RequestWatch | None:
    """A watch for a new request, or None when nobody observes requests (no traces, no
    usage: the request then pays nothing for being watched)."""
    from llmhost import runtime

    try:
        watched = bool(runtime.request_observers())
    except Exception:  # an observer's settings are broken: the request goes on unwatched
        from aws_lambda_powertools import Logger

        Logger(child=True).exception("request observers unavailable")
        return None
    return RequestWatch(kind, **fields) if watched else None


def watching(watch: RequestWatch | None) -> dict[str, Any]:
    """The ``watch=`` argument for a service call, none when nothing is watched."""
    return {"watch": watch} if watch is not None else {}


def observe(
    watch: RequestWatch, status: int, error_code: str | None = None, *, claimed: bool = False
) -> None:
    """End ``watch`` with ``status`` and hand its observation to the runtime's observers
    (never raises: see ``llmhost.observe.notify``); a watch already ended is not sent again.
    ``claimed``: the caller has ended it already (``RequestWatch.claim``)."""
    if not claimed and not watch.claim():
        return
    from llmhost import runtime
    from llmhost.observe import notify

    try:
        observation = watch.finish(status, error_code)
        observers = runtime.request_observers()
    except Exception:  # watching must never fail the request
        from aws_lambda_powertools import Logger

        Logger(child=True).exception("request observation failed")
        return
    notify(observers, observation)
