"""Which SageMaker endpoint (and component) serves a model name, and with what limits.

A model name is a deployment name. The directory reads the registry at most every few
seconds per process (serving must not pay a DynamoDB read per request) and turns a record
into a ``ModelRoute``: where to invoke, which engine codec and chat template to use, and the
token limits the engine was started with.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from llmhost.clock import REAL, CloudClock
from llmhost.errors import LlmhostError
from llmhost.specs import GenerationDefaults

if TYPE_CHECKING:
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.lifecycle.registry import Registry
    from llmhost.serving.wake import WakeDispatcher
    from llmhost.sizing.plan import Plan
    from llmhost.specs import DeploymentSpec

# A child of the function's Powertools Logger (POWERTOOLS_SERVICE_NAME): its records go out
# through the handler and format the function's own Logger set up.
logger = Logger(child=True)

CACHE_SECONDS = 10.0
FALLBACK_INPUT_TOKENS = 2048
FALLBACK_TOTAL_TOKENS = 4096
# Until a deployment has recorded wake times, the typical SageMaker startup durations.
DEFAULT_WAKE_SECONDS = {"dedicated": 600, "shared": 300, "serverless": 30, "async": 600}
# History events that open and close a wake (names fixed by the scaling contract).
WAKE_REQUESTED = "WakeRequested"
WOKEN = "Woken"
WAKE_REFUSED = "WakeRefused"
# Retry-After once a wake has outlived its estimate: poll, but not hard.
LATE_WAKE_POLL_S = 15
# A wake still unanswered after this many estimated wake times (and at least this many
# seconds) is presumed lost, and a refused request may ask for another.
STALE_WAKE_FACTOR = 3
STALE_WAKE_MIN_S = 60


class ModelNotFound(LlmhostError):
    code = "model_not_found"
    status = 404


class AsyncOnlyModel(LlmhostError):
    """A synchronous request for an async deployment, whose endpoint answers queued jobs only
    (SageMaker refuses InvokeEndpoint on an asynchronous endpoint)."""

    code = "model_answers_jobs_only"
    status = 409

    def __init__(self, model: str) -> None:
        super().__init__(
            f"model '{model}' is an async deployment (hosting.kind 'async'): it answers jobs, "
            "not synchronous requests; submit this body as a job with POST /v1/jobs and read "
            "the answer from GET /v1/jobs/{id}"
        )


class ModelNotReady(LlmhostError):
    """The model exists but cannot serve now; ``retry_after`` seconds is a fair wait."""

    code = "model_not_ready"
    status = 503

    def __init__(self, message: str, retry_after: int, state: str = "waking up") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.state = state  # what it is doing, in a few words (a held stream's keep-alives)


class ModelAsleep(ModelNotReady):
    """Asleep: the request that finds it so wakes it (see ``ModelDirectory.route``)."""


class ModelWillNotWake(ModelNotReady):
    """Waiting will not bring it up: it failed to deploy, or its wake was refused (the GPU
    cap). Still 503 with Retry-After: an operator or freed capacity may change that."""


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
    # The model's tokenizer has its own chat template (unknown models: assumed, since only
    # the engine can template them); ``chat_template`` is llmhost's rendering of it.
    ships_chat_template: bool = True
    # What a request's trace and cost say about the copy that answered.
    generation: int | None = None
    instance_type: str | None = None
    model_id: str | None = None  # the model's hub or catalog id
    copy_concurrency: int = 1  # requests one copy runs at once (its engine's batch)
    memory_mb: int | None = None  # a serverless endpoint's memory


def route_for(record: DeploymentRecord) -> ModelRoute:
    """The route of an IN_SERVICE deployment (pure)."""
    from llmhost import catalog
    from llmhost.sizing.plan import Plan
    from llmhost.sizing.plan import plan as plan_for

    spec = record.spec
    pinned = record.pinned_plan()
    # The limits the engine was started with: the plan pinned when it was built.
    plan = Plan.from_dict(pinned) if pinned is not None else plan_for(spec)
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
        ships_chat_template=model.ships_chat_template if model else True,
        generation=record.generation,
        instance_type=plan.instance_type,
        model_id=spec.catalog_id,
        copy_concurrency=_copy_concurrency(spec, plan),
        memory_mb=spec.hosting.memory_mb if spec.hosting.kind == "serverless" else None,
    )


def _copy_concurrency(spec: DeploymentSpec, plan: Plan) -> int:
    """Requests one copy of ``spec`` runs at once, as its engine was configured (at least 1)."""
    from llmhost.engines import copy_capacity_of

    return max(1, copy_capacity_of(spec, plan).concurrency)


def wake_estimate_s(record: DeploymentRecord, clock: CloudClock = REAL) -> int:
    """Seconds a wake takes for this deployment: the median of its recorded wakes, else
    SageMaker's typical startup for its hosting kind (on ``clock``: compressed locally).

    A wake starts at a WakeRequested entry and ends at the first later entry that either
    brings the status back to IN_SERVICE (a slept deployment recreated) or is ``Woken`` (a
    zero-copy component whose first request after the wake was answered: its status never
    left IN_SERVICE).
    """
    durations = [_seconds_between(start, end) for start, end in _wakes(record) if end]
    durations = [d for d in durations if d >= 0]
    if not durations:
        return max(1, math.ceil(clock.seconds(DEFAULT_WAKE_SECONDS[record.spec.hosting.kind])))
    durations.sort()
    return max(1, round(durations[len(durations) // 2]))


def pending_wake(record: DeploymentRecord) -> str | None:
    """When the wake still under way was requested (ISO-8601 UTC), or None (pure)."""
    pending: str | None = None
    for start, end in _wakes(record, include_pending=True):
        pending = start if end is None else None
    return pending


def _wakes(
    record: DeploymentRecord, include_pending: bool = False
) -> Iterator[tuple[str, str | None]]:
    """(requested at, ended at) for each wake in the history, oldest first; the last one has
    ``None`` as its end while it is still under way (only with ``include_pending``)."""
    requested: str | None = None
    previous_status: str | None = None
    for entry in record.history:
        if entry.event == WAKE_REQUESTED:
            # A repeated request (the first one was lost) restarts the measurement.
            requested = entry.at
        elif requested and (
            entry.event == WOKEN
            or (entry.status == "IN_SERVICE" and previous_status not in (None, "IN_SERVICE"))
        ):
            yield requested, entry.at
            requested = None
        previous_status = entry.status
    if requested and include_pending:
        yield requested, None


def capacity_retry_after_s(
    record: DeploymentRecord, now: datetime, clock: CloudClock = REAL
) -> int:
    """Retry-After (seconds) for a request refused for want of a copy (pure).

    The wake's estimated time left; once the estimate has passed (a slow wake), a short poll.
    """
    estimate = wake_estimate_s(record, clock)
    requested = pending_wake(record)
    if requested is None:
        return estimate
    left = estimate - (now - _parse(requested)).total_seconds()
    if left >= 1:
        return math.ceil(left)
    return max(1, min(estimate, math.ceil(clock.seconds(LATE_WAKE_POLL_S))))


def refused_wake(record: DeploymentRecord) -> str | None:
    """Why the scaling hook refused the wake still under way (its WakeRefused entry after
    the wake's WakeRequested), or None (pure)."""
    if pending_wake(record) is None:
        return None
    for entry in reversed(record.history):
        if entry.event == WAKE_REFUSED:
            return entry.reason or "refused by the scaling hook"
        if entry.event == WAKE_REQUESTED:
            return None
    return None


def wake_is_recent(record: DeploymentRecord, now: datetime, clock: CloudClock = REAL) -> bool:
    """Whether a wake is under way and young enough to wait for (pure).

    A wake unanswered for ``STALE_WAKE_FACTOR`` estimated wake times (at least
    ``STALE_WAKE_MIN_S``) is presumed lost (the dispatch failed, the hook refused it), so the
    next refused request may ask again.
    """
    requested = pending_wake(record)
    if requested is None:
        return False
    stale_after = max(
        clock.seconds(STALE_WAKE_MIN_S), STALE_WAKE_FACTOR * wake_estimate_s(record, clock)
    )
    return (now - _parse(requested)).total_seconds() < stale_after


def wake_just_ended(record: DeploymentRecord, now: datetime, clock: CloudClock = REAL) -> bool:
    """Whether the last wake ended (the copy answered, or the model is back in service)
    less than STALE_WAKE_MIN_S ago (pure).

    A request SageMaker refused for want of a copy in that moment raced the copy (a burst of
    held requests polls right across it); asking again would be a second wake for one
    burst. A model cannot be idle again that soon (idle_minutes is at least 5).
    """
    ends = [end for _, end in _wakes(record) if end]
    if not ends:
        return False
    # The history's times are whole seconds (cut down): up to one more may have passed.
    window = clock.seconds(STALE_WAKE_MIN_S) + 1
    return (now - _parse(ends[-1])).total_seconds() < window


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _seconds_between(start: str, end: str) -> float:
    return (_parse(end) - _parse(start)).total_seconds()


def _ask_tag() -> str:
    """Tells one request's WakeRequested entry from another's written in the same second."""
    return f" (ask {secrets.token_hex(4)})"


def _is_write_of(stored: DeploymentRecord | None, written: DeploymentRecord) -> bool:
    """Whether ``stored`` is what saving ``written`` stored (its version, its own newest
    entry): a write whose answer was lost may have landed, and botocore's retry of it then
    fails its version condition, so its writer would otherwise take its own wake for another
    request's and hand it to no one."""
    return (
        stored is not None
        and stored.version == written.version + 1
        and stored.history[-1:] == written.history[-1:]
    )


def check_ready(record: DeploymentRecord, clock: CloudClock = REAL) -> None:
    """Raise ModelNotReady (with Retry-After) unless the deployment can take requests."""
    status = record.status
    wake = wake_estimate_s(record, clock)
    if status in {"IN_SERVICE", "UPDATING"} and record.desired_state != "sleeping":
        return
    if record.desired_state == "in_service" and status == "SLEEPING":
        raise ModelNotReady(f"model '{record.name}' is waking up", retry_after=wake)
    if status == "SLEEPING" or record.desired_state == "sleeping":
        raise ModelAsleep(
            f"model '{record.name}' is asleep and is being woken by this request; retry in "
            f"about {wake} s",
            retry_after=wake,
            state="asleep, waking up",
        )
    if status in {"PENDING", "CREATING"}:
        # A wake is under way until the model serves again, whatever the scaling hook and
        # the reconciler recorded after the request that asked for it.
        if pending_wake(record) is not None or "waking" in record.status_reason:
            raise ModelNotReady(f"model '{record.name}' is waking up", retry_after=wake)
        raise ModelNotReady(
            f"model '{record.name}' is still being created; SageMaker takes 10-30 minutes",
            retry_after=wake,
            state="being created",
        )
    if status == "FAILED":
        raise ModelWillNotWake(
            f"model '{record.name}' failed to deploy: {record.status_reason}", retry_after=wake
        )
    raise ModelNotFound(f"model '{record.name}' is being deleted")


class ModelDirectory:
    """Model name -> route, cached briefly per process; also where a cold model is woken."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        ttl_s: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wake: Callable[[], WakeDispatcher] | None = None,
        now: Callable[[], datetime] | None = None,
        cloud_clock: CloudClock = REAL,
    ) -> None:
        self._registry = registry
        # How stale the registry view may be, relative to the cloud's own pace: seconds next
        # to AWS's minutes-long wakes, so compressed with them on a local clock (a 10 s view
        # would otherwise outlast a local wake and its Retry-After twice over).
        self._ttl = cloud_clock.seconds(ttl_s)
        self._clock = clock
        self._wake_dispatcher = wake
        self._cloud = cloud_clock
        self._now = now or cloud_clock.now
        self._records: dict[str, DeploymentRecord] = {}
        self._routes: dict[tuple[str, int], ModelRoute] = {}
        # Models with a zero-copy wake under way: their next answered request ends it.
        self._waking: set[str] = set()
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def route(self, model: str, fresh: bool = False) -> ModelRoute:
        """Where to send a request for ``model``. Raises ModelNotFound or ModelNotReady.

        ``fresh``: read this model's record now (one GetItem), not the process's view of
        the registry: a held request polling for its wake. A wake the scaling hook refused
        is then ModelWillNotWake, and a deployment deleted meanwhile ModelNotFound.
        """
        record = self._fresh(model) if fresh else self._records_now().get(model)
        if record is None and not fresh:
            # A deployment created seconds ago: look again before saying no.
            record = self._records_now(refresh=True).get(model)
        if record is None:
            names = ", ".join(sorted(self._records_now())) or "none yet"
            raise ModelNotFound(
                f"no model named '{model}'; GET /v1/models lists them (available: {names})"
            )
        if record.spec.hosting.kind == "async":
            raise AsyncOnlyModel(model)
        if fresh and (refused := refused_wake(record)) is not None:
            raise ModelWillNotWake(
                f"model '{model}' could not be woken: {refused}",
                retry_after=wake_estimate_s(record, self._cloud),
                state="wake refused",
            )
        try:
            check_ready(record, self._cloud)
        except ModelAsleep:
            self._wake(record)
            raise
        key = (record.name, record.generation)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = route_for(record)
        return route

    def refused_for_capacity(self, model: str) -> int:
        """SageMaker refused a request for ``model`` for want of a copy (an inference
        component autoscaled to zero while IN_SERVICE). Makes sure exactly one wake is under
        way and returns the Retry-After seconds for the client.

        Every refused request in every container may come here at once: each tries one
        registry write of a WakeRequested entry, conditional on the version it read, unless
        a recent wake is already pending; only the request whose write lands hands the wake
        to the scaling function (contract event 4). A failed hand-over is logged and left to
        AWS's no-capacity alarm; the wake counts as stale after a while and is asked again.
        """
        from llmhost.errors import ConcurrentModification, RegistryError

        with self._lock:
            self._waking.add(model)
        record = self._records_now().get(model)
        for _ in range(5):
            if record is None:
                return max(1, math.ceil(self._cloud.seconds(DEFAULT_WAKE_SECONDS["shared"])))
            now = self._now()
            if wake_is_recent(record, now, self._cloud):
                return capacity_retry_after_s(record, now, self._cloud)
            if wake_just_ended(record, now, self._cloud):
                return 1  # the copy is there: retry at once
            woken = record.with_event(
                WAKE_REQUESTED,
                reason=f"a request found no copy; asking the scaling hook for one{_ask_tag()}",
                repeat=True,  # asked again: the wake's clock restarts
            )
            try:
                saved = self._registry().save(woken)
            except ConcurrentModification:
                # Someone wrote first (maybe this same wake): decide again on what they wrote.
                read = record
                try:
                    record = self._registry().find(model)
                except RegistryError as error:
                    logger.warning("wake of %s not re-read: %s", model, error.log_detail)
                    return wake_estimate_s(read, self._cloud)  # someone's wake just started
                if record is None or not _is_write_of(record, woken):
                    continue
                saved = record  # ours after all: hand it over, no one else will
            except RegistryError as error:
                landed = self._landed(woken)
                if landed is None:
                    # The client still gets its 503 (not a 500): no wake is recorded, so
                    # AWS's no-capacity alarm adds the copy and the next refused request
                    # asks again.
                    logger.warning("wake of %s not recorded: %s", model, error.log_detail)
                    return capacity_retry_after_s(record, now, self._cloud)
                saved = landed
            self._remember(saved)
            self._dispatch(saved)
            return wake_estimate_s(saved, self._cloud)  # the wake starts now: all of it is left
        return capacity_retry_after_s(record, self._now(), self._cloud) if record else 1

    def answered(self, model: str) -> None:
        """A request for ``model`` was answered. If a zero-copy wake was pending, record its
        end (a ``Woken`` entry, once: the registry's optimistic lock settles races), which is
        what ``wake_estimate_s`` measures. Costs nothing unless a wake is pending here."""
        if model not in self._waking:
            return
        from llmhost.errors import RegistryError

        try:
            self._record_woken(model)
        except RegistryError as error:
            # The client has its answer: bookkeeping must not turn it into a 500. The wake
            # stays pending, and the next answered request records its end.
            with self._lock:
                self._waking.add(model)
            logger.warning("end of the wake of %s not recorded: %s", model, error.log_detail)

    def _record_woken(self, model: str) -> None:
        from llmhost.errors import ConcurrentModification

        with self._lock:
            self._waking.discard(model)
        for _ in range(5):
            record = self._registry().find(model)
            requested = pending_wake(record) if record is not None else None
            if record is None or requested is None:
                return
            seconds = round((self._now() - _parse(requested)).total_seconds())
            woken = record.with_event(
                WOKEN, reason=f"answered its first request {seconds} s after the wake request"
            )
            try:
                self._remember(self._registry().save(woken))
                return
            except ConcurrentModification:
                continue

    def _dispatch(self, record: DeploymentRecord) -> None:
        from llmhost.serving.wake import WakeDispatchFailed, wake_event

        if self._wake_dispatcher is None:
            return
        requested = pending_wake(record) or record.updated_at
        try:
            self._wake_dispatcher().dispatch(wake_event(record.name, requested))
        except WakeDispatchFailed as error:
            # The client gets its 503 either way; AWS's no-capacity alarm still adds a copy,
            # only later, and the next refused request re-asks once this wake goes stale.
            logger.warning("wake of %s not dispatched: %s", record.name, error.message)

    def _wake(self, record: DeploymentRecord) -> None:
        """Record one wake. Concurrent requests (in this process or others) all try; the
        registry's optimistic lock lets exactly one write land, the rest see it was done.

        With a scaling function, the wake is only asked for here: the hook admits it under
        the GPU cap (or records WakeRefused) and sets the desired state. Without one, or if
        handing it over fails, the request wakes the model itself.
        """
        from llmhost.errors import ConcurrentModification, RegistryError
        from llmhost.serving.wake import NoWakeDispatch, WakeDispatchFailed, wake_event

        if record.desired_state != "sleeping":
            return  # already waking
        dispatcher = self._wake_dispatcher() if self._wake_dispatcher is not None else None
        try:
            if dispatcher is not None and not isinstance(dispatcher, NoWakeDispatch):
                saved = None
                for _ in range(3):
                    if record.desired_state != "sleeping":
                        return  # already waking
                    if wake_is_recent(record, self._now(), self._cloud):
                        return  # asked already; the hook is deciding
                    asked = record.with_event(
                        WAKE_REQUESTED,
                        reason=f"a request arrived while asleep; asking to wake{_ask_tag()}",
                        repeat=True,  # asked again: the wake's clock restarts
                    )
                    try:
                        saved = self._registry().save(asked)
                        break
                    except ConcurrentModification:
                        # Someone asked first, or changed something else (the reconciler):
                        # read it again, so a write unrelated to waking never loses the wake.
                        record = self._registry().get(record.name)
                        if _is_write_of(record, asked):
                            saved = record  # ours after all: hand it over
                            break
                    except RegistryError:
                        saved = self._landed(asked)
                        if saved is None:
                            raise
                        break
                if saved is None:
                    return
                try:
                    dispatcher.dispatch(wake_event(saved.name, saved.updated_at))
                    return
                except WakeDispatchFailed as error:
                    logger.warning("wake of %s not dispatched: %s", record.name, error.message)
                    record = saved
            woken = record.with_event(
                WAKE_REQUESTED,
                reason="woken by a request",
                desired_state="in_service",
                repeat=True,  # asked again: the wake's clock restarts
            )
            # A lost race means someone else woke it (or changed it): not ours to write.
            with contextlib.suppress(ConcurrentModification):
                self._registry().save(woken)
        except Exception:  # the registry is unreachable: the client still gets its 503
            logger.exception("wake of %s not recorded", record.name)
        finally:
            with self._lock:
                self._loaded_at = float("-inf")  # re-read: the next request sees it waking

    def _landed(self, asked: DeploymentRecord) -> DeploymentRecord | None:
        """The stored record if the wake write ``asked``, which failed, landed after all (a
        5xx or a timeout may come after DynamoDB applied it), else None (also when the
        registry cannot be read)."""
        from llmhost.errors import RegistryError

        try:
            stored = self._registry().find(asked.name)
        except RegistryError:
            return None
        return stored if stored is not None and _is_write_of(stored, asked) else None

    def _fresh(self, model: str) -> DeploymentRecord | None:
        """``model``'s record as the registry holds it now (also cached), or None."""
        from llmhost.errors import RegistryError

        try:
            record = self._registry().find(model)
        except RegistryError as error:
            logger.warning("registry read failed: %s", error.log_detail)
            raise
        if record is not None and record.status != "DELETED":
            self._remember(record)
        return record

    def records(self) -> list[DeploymentRecord]:
        return sorted(self._records_now().values(), key=lambda r: r.name)

    def _remember(self, record: DeploymentRecord) -> None:
        """Cache a record this process just wrote (newer than any it read)."""
        with self._lock:
            cached = self._records.get(record.name)
            if cached is None or cached.version < record.version:
                self._records = {**self._records, record.name: record}

    def _read_registry(self) -> list[DeploymentRecord]:
        """Every deployment record; a throttled, slow or failing DynamoDB is the registry's
        typed error (503/504 with Retry-After), logged here with botocore's detail."""
        from llmhost.errors import RegistryError

        try:
            return self._registry().deployments()
        except RegistryError as error:
            logger.warning("registry read failed: %s", error.log_detail)
            raise

    def _records_now(self, refresh: bool = False) -> dict[str, DeploymentRecord]:
        with self._lock:
            if refresh or self._clock() - self._loaded_at > self._ttl:
                records = self._read_registry()
                self._records = {r.name: r for r in records}
                self._loaded_at = self._clock()
                # Another container's wake: this one may answer the first request after it.
                self._waking.update(
                    r.name for r in records if r.status == "IN_SERVICE" and pending_wake(r)
                )
            return self._records
