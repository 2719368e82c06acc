"""Which SageMaker endpoint (and component) serves a model name, and with what limits.

A model name is a deployment name. The directory reads the registry at most every few
seconds per process (serving must not pay a DynamoDB read per request) and turns a record
into a ``ModelRoute``: where to invoke, which engine codec and chat template to use, and the
token limits the engine was started with.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmhost.errors import LlmhostError
from llmhost.specs import GenerationDefaults

if TYPE_CHECKING:
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.lifecycle.registry import Registry

CACHE_SECONDS = 10.0
FALLBACK_INPUT_TOKENS = 2048
FALLBACK_TOTAL_TOKENS = 4096
# Until a deployment has recorded wake times, the typical SageMaker startup durations.
DEFAULT_WAKE_SECONDS = {"dedicated": 600, "shared": 300, "serverless": 30}


class ModelNotFound(LlmhostError):
    code = "model_not_found"
    status = 404


class ModelNotReady(LlmhostError):
    """The model exists but cannot serve now; ``retry_after`` seconds is a fair wait."""

    code = "model_not_ready"
    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelAsleep(ModelNotReady):
    """Asleep: the request that finds it so wakes it (see ``ModelDirectory.route``)."""


@dataclass(frozen=True)
class ModelRoute:
    name: str
    endpoint_name: str
    inference_component: str | None
    engine: str
    chat_template: str | None
    max_input_tokens: int
    max_total_tokens: int
    defaults: GenerationDefaults
    hosting: str


def route_for(record: DeploymentRecord) -> ModelRoute:
    """The route of an IN_SERVICE deployment (pure)."""
    from llmhost import catalog, sizing

    spec = record.spec
    plan = sizing.plan(spec)
    model = catalog.lookup(spec.catalog_id)
    return ModelRoute(
        name=record.name,
        endpoint_name=record.endpoint_name,
        inference_component=record.name if spec.hosting.kind == "shared" else None,
        engine=spec.engine.name,
        chat_template=model.chat_template if model else None,
        # Unknown models: budgets small enough for any engine's defaults.
        max_input_tokens=plan.tokens.max_input_tokens or FALLBACK_INPUT_TOKENS,
        max_total_tokens=plan.tokens.max_total_tokens or FALLBACK_TOTAL_TOKENS,
        defaults=spec.generation,
        hosting=spec.hosting.kind,
    )


def wake_estimate_s(record: DeploymentRecord) -> int:
    """Seconds a wake takes for this deployment: the median of its recorded wakes (from the
    wake request to IN_SERVICE in its history), else SageMaker's typical startup."""
    durations: list[float] = []
    requested: str | None = None
    for entry in record.history:
        if entry.event == "WakeRequested":
            requested = entry.at
        elif requested and entry.status == "IN_SERVICE":
            durations.append(_seconds_between(requested, entry.at))
            requested = None
    if not durations:
        return DEFAULT_WAKE_SECONDS[record.spec.hosting.kind]
    durations.sort()
    return max(1, round(durations[len(durations) // 2]))


def _seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    parse = lambda value: datetime.fromisoformat(value.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def check_ready(record: DeploymentRecord) -> None:
    """Raise ModelNotReady (with Retry-After) unless the deployment can take requests."""
    status = record.status
    wake = wake_estimate_s(record)
    if status in {"IN_SERVICE", "UPDATING"} and record.desired_state != "sleeping":
        return
    if record.desired_state == "in_service" and status == "SLEEPING":
        raise ModelNotReady(f"model '{record.name}' is waking up", retry_after=wake)
    if status == "SLEEPING" or record.desired_state == "sleeping":
        raise ModelAsleep(
            f"model '{record.name}' is asleep and is being woken by this request; retry in "
            f"about {wake} s",
            retry_after=wake,
        )
    if status in {"PENDING", "CREATING"}:
        if (record.history and record.history[-1].event == "WakeRequested") or (
            "waking" in record.status_reason
        ):
            raise ModelNotReady(f"model '{record.name}' is waking up", retry_after=wake)
        raise ModelNotReady(
            f"model '{record.name}' is still being created; SageMaker takes 10-30 minutes",
            retry_after=wake,
        )
    if status == "FAILED":
        raise ModelNotReady(
            f"model '{record.name}' failed to deploy: {record.status_reason}", retry_after=wake
        )
    raise ModelNotFound(f"model '{record.name}' is being deleted")


class ModelDirectory:
    """Model name -> route, cached briefly per process."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        ttl_s: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._ttl = ttl_s
        self._clock = clock
        self._records: dict[str, DeploymentRecord] = {}
        self._routes: dict[tuple[str, int], ModelRoute] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def route(self, model: str) -> ModelRoute:
        """Where to send a request for ``model``. Raises ModelNotFound or ModelNotReady."""
        record = self._records_now().get(model)
        if record is None:
            # A deployment created seconds ago: look again before saying no.
            record = self._records_now(refresh=True).get(model)
        if record is None:
            names = ", ".join(sorted(self._records_now())) or "none yet"
            raise ModelNotFound(
                f"no model named '{model}'; GET /v1/models lists them (available: {names})"
            )
        try:
            check_ready(record)
        except ModelAsleep:
            self._wake(record)
            raise
        key = (record.name, record.generation)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = route_for(record)
        return route

    def _wake(self, record: DeploymentRecord) -> None:
        """Record one wake. Concurrent requests (in this process or others) all try; the
        registry's optimistic lock lets exactly one write land, the rest see it was done."""
        from llmhost.errors import ConcurrentModification

        if record.desired_state != "sleeping":
            return  # already waking
        woken = record.with_event(
            "WakeRequested", reason="woken by a request", desired_state="in_service"
        )
        # A lost race means someone else woke it (or changed it): not ours to write.
        with contextlib.suppress(ConcurrentModification):
            self._registry().save(woken)
        with self._lock:
            self._loaded_at = float("-inf")  # re-read: the next request sees it waking

    def records(self) -> list[DeploymentRecord]:
        return sorted(self._records_now().values(), key=lambda r: r.name)

    def _records_now(self, refresh: bool = False) -> dict[str, DeploymentRecord]:
        with self._lock:
            if refresh or self._clock() - self._loaded_at > self._ttl:
                self._records = {r.name: r for r in self._registry().deployments()}
                self._loaded_at = self._clock()
            return self._records
