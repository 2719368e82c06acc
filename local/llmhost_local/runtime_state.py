"""The local SageMaker runtime's state, apart from its wire protocol (``runtime_front``):
where each invocation goes (``RouteTarget``, chosen by a ``Routes`` callable) and what was
invoked (``InvocationLog``: the ``Invocations`` and ``NoCapacityInvocationFailures`` counts
CloudWatch keeps, which the local alarm evaluator reads).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from llmhost_local.engine import LocalEngine

RouteKind = Literal[
    "engine",
    "upstream",
    "no_capacity",
    "not_ready",
    "component_required",
    "component_not_found",
    "throttled",
]


@dataclass(frozen=True)
class RouteTarget:
    """Where one invocation goes. Build it with the class methods:

    - ``local(engine)``: an in-process ``LocalEngine``;
    - ``upstream(url)``: a TGI/vLLM/LMI server (its ``/invocations``), waiting at most
      ``timeout_s`` seconds for each read (SageMaker allows a container 60 s);
    - ``no_capacity()``: an inference component scaled to zero (ValidationError, AWS's text);
    - ``not_ready()``: a model still loading (ModelNotReadyException, HTTP 429);
    - ``component_required()``: an endpoint with components invoked without naming one;
    - ``component_not_found()``: no such component on the endpoint (ValidationError; this
      wording is llmhost's guess, AWS's was not found in public sources);
    - ``throttled()``: ``ThrottlingException`` (botocore's retry mode will retry it).
    """

    kind: RouteKind
    engine: LocalEngine | None = None
    url: str | None = None
    timeout_s: float = 60.0
    variant: str = "AllTraffic"

    @classmethod
    def local(cls, engine: LocalEngine, variant: str = "AllTraffic") -> RouteTarget:
        return cls("engine", engine=engine, variant=variant)

    @classmethod
    def upstream(
        cls, url: str, timeout_s: float = 60.0, variant: str = "AllTraffic"
    ) -> RouteTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"upstream engine URL {url!r} must look like http://host:port (for example "
                "LLMHOST_ENGINE_URL=http://127.0.0.1:8080 for a local TGI server)"
            )
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive seconds, got {timeout_s}")
        return cls("upstream", url=url.rstrip("/"), timeout_s=timeout_s, variant=variant)

    @classmethod
    def no_capacity(cls) -> RouteTarget:
        return cls("no_capacity")

    @classmethod
    def not_ready(cls) -> RouteTarget:
        return cls("not_ready")

    @classmethod
    def component_required(cls) -> RouteTarget:
        return cls("component_required")

    @classmethod
    def component_not_found(cls) -> RouteTarget:
        return cls("component_not_found")

    @classmethod
    def throttled(cls) -> RouteTarget:
        return cls("throttled")


Routes = Callable[[str, str | None], RouteTarget | None]
Outcome = Literal["invoked", "no_capacity"]


class InvocationLog:
    """What CloudWatch counts for llmhost's alarms, per metric dimension: requests that
    reached a container (``Invocations``) and requests refused for want of a copy
    (``NoCapacityInvocationFailures``), with their ``clock`` times (seconds).

    Each request is filed under ``("EndpointName", endpoint)`` and, when it names one,
    ``("InferenceComponentName", component)``: the dimensions llmhost's alarms use. Entries
    older than ``keep_s`` are dropped. Thread-safe.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, keep_s: float = 3600) -> None:
        self._clock = clock
        self._keep_s = keep_s
        self._entries: dict[tuple[str, str], deque[tuple[float, Outcome]]] = {}
        self._lock = threading.Lock()

    def record(self, endpoint: str, component: str | None, outcome: Outcome) -> None:
        now = self._clock()
        keys = [("EndpointName", endpoint)]
        if component:
            keys.append(("InferenceComponentName", component))
        with self._lock:
            for key in keys:
                entries = self._entries.setdefault(key, deque())
                entries.append((now, outcome))
                while entries and entries[0][0] < now - self._keep_s:
                    entries.popleft()

    def count(self, dimensions: Mapping[str, str], outcome: Outcome, since: float) -> int:
        """Requests with ``outcome`` at or after ``since`` (clock seconds) for the metric with
        these dimensions (an alarm's; ``InferenceComponentName`` wins over ``EndpointName``)."""
        key = _log_key(dimensions)
        if key is None:
            return 0
        with self._lock:
            return sum(
                1 for at, seen in self._entries.get(key, ()) if seen == outcome and at >= since
            )


def _log_key(dimensions: Mapping[str, str]) -> tuple[str, str] | None:
    for name in ("InferenceComponentName", "EndpointName"):
        if name in dimensions:
            return name, dimensions[name]
    return None
