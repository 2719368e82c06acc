"""The capacity history: copies desired and in service over time, and the scaling decisions.

The scaling function records it (``CapacityRecorder``): at every 5-minute tick a point per
deployment (what SageMaker reports, with the unit price then), and at every scaling decision
the decision and a fresh point. ``GET /v1/deployments/{name}/capacity`` reads it back for the
console's chart; ``GET /v1/usage`` integrates it into cost (``unit_hours``). The same tick
emits the dashboard's CopiesDesired, CopiesInService, CostPerHour and SpendToday metrics.

A point holds until the next one, for at most ``MAX_HOLD_S`` (15 minutes, as the budget
bills at most 15 minutes after a gap): after a gap in the record, llmhost charges what it
knows rather than hours at a count it no longer sees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from llmhost.usage.store import CapacityPoint, ScalingDecision, UsageStore

if TYPE_CHECKING:
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.scaling.capacity_guard import CapacityGuard
    from llmhost.scaling.hook import Outcome

logger = Logger(child=True)

MAX_HOLD_S = 900.0
# The metrics the tick and the decisions emit (besides the request metrics).
CAPACITY_METRICS = ("CopiesDesired", "CopiesInService", "CostPerHour", "SpendToday")
DECISION_METRIC = "ScalingDecisions"
# "desired copies 1 -> 3", "capacity 2 -> 0": the numbers a decision's reason gives.
_BEFORE_AFTER = re.compile(r"(\d+)\s*->\s*(\d+)")


# ------------------------------------------------------------------------------ pure core


def unit_hours(
    points: Sequence[CapacityPoint],
    start: datetime,
    end: datetime,
    max_hold: timedelta = timedelta(seconds=MAX_HOLD_S),
) -> list[tuple[datetime, datetime, int, float | None]]:
    """The spans of ``[start, end)`` during which one deployment ran a known number of
    units: (from, to, units, unit $/h) per span, from its points (sorted by time; the one
    before ``start`` included if known). Units are the larger of desired and in service:
    SageMaker bills an instance from its launch, not from when it serves."""
    spans: list[tuple[datetime, datetime, int, float | None]] = []
    for index, point in enumerate(points):
        following = points[index + 1].at if index + 1 < len(points) else None
        stop = point.at + max_hold
        if following is not None and following < stop:
            stop = following
        low, high = max(point.at, start), min(stop, end)
        units = max(0, point.desired, point.in_service)
        if high > low and units:
            spans.append((low, high, units, point.unit_usd_per_hour))
    return spans


def cost_between(
    points: Sequence[CapacityPoint],
    start: datetime,
    end: datetime,
    max_hold: timedelta = timedelta(seconds=MAX_HOLD_S),
) -> float:
    """USD one deployment's units cost in ``[start, end)`` (unknown prices count 0)."""
    return sum(
        units * (price or 0.0) * (high - low).total_seconds() / 3600.0
        for low, high, units, price in unit_hours(points, start, end, max_hold)
    )


def before_after(reason: str) -> tuple[int | None, int | None]:
    """Copies before -> after as a decision's reason states them (the last such pair)."""
    found = _BEFORE_AFTER.findall(reason)
    if not found:
        return None, None
    before, after = found[-1]
    return int(before), int(after)


# ------------------------------------------------------------------------------ recording


@dataclass(frozen=True)
class Sample:
    deployment: str
    desired: int
    in_service: int
    unit_usd_per_hour: float | None

    @property
    def usd_per_hour(self) -> float:
        return max(self.desired, self.in_service) * (self.unit_usd_per_hour or 0.0)


def unit_price(record: DeploymentRecord) -> float | None:
    """USD per unit-hour of ``record``'s deployment (an instance, a copy's share of the pool
    instance, a serverless provisioned slot), None when its instance type has no price."""
    from llmhost.lifecycle.reconciler import plan_of
    from llmhost.usage.cost import rate_of

    try:
        rate = rate_of(record.spec, plan_of(record))
    except Exception:  # a spec that no longer sizes (FAILED): no price, still a point
        logger.warning("cannot price deployment", extra={"deployment": record.name})
        return None
    if rate is None:
        return None
    if rate.serverless:
        slots = record.spec.hosting.provisioned_concurrency or 0  # type: ignore[union-attr]
        return rate.provisioned_usd_per_hour / slots if slots else 0.0
    return rate.unit_usd_per_hour


def sample(record: DeploymentRecord, guard: CapacityGuard) -> Sample:
    """What ``record``'s deployment runs now (one describe call; serverless: none)."""
    hosting = record.spec.hosting
    if hosting.kind == "serverless":
        units = (hosting.provisioned_concurrency or 0) if record.status == "IN_SERVICE" else 0
        return Sample(record.name, units, units, unit_price(record))
    capacity = guard.capacity(record.name, hosting.kind == "shared")
    desired = capacity.desired if capacity is not None else 0
    in_service = capacity.in_service if capacity is not None else 0
    return Sample(record.name, desired, in_service, unit_price(record))


class CapacityRecorder:
    """Writes the capacity history and its metrics from the scaling function."""

    def __init__(
        self,
        store: UsageStore,
        records: Callable[[], Iterable[DeploymentRecord]],
        find: Callable[[str], DeploymentRecord | None],
        guard: Callable[[], CapacityGuard],
        spent_today: Callable[[datetime], float] | None = None,
        emit: Callable[[str, str, float, dict[str, str]], None] | None = None,
        stack: str | None = None,
    ) -> None:
        self._store = store
        self._records = records
        self._find = find
        self._guard = guard
        self._spent_today = spent_today
        self._emit = emit or emf_metric
        self._stack = stack

    def after_scaling(self, outcomes: Sequence[Outcome], now: datetime) -> None:
        """What the scaling function calls after each event: a point per deployment on a
        budget tick, and each decision. Never raises: the history must not fail scaling."""
        try:
            if any(o.decision.event == "BudgetTick" for o in outcomes):
                self.tick(now)
            self.decisions(outcomes, now)
        except Exception:
            logger.exception("capacity history not recorded")

    def tick(self, now: datetime) -> list[Sample]:
        """A point per live deployment, and the capacity metrics."""
        guard = self._guard()
        samples = []
        for record in self._records():
            if record.status == "DELETED":
                continue
            taken = sample(record, guard)
            self._point(taken, now)
            samples.append(taken)
        stack = {"Stack": self._stack} if self._stack else {}
        if stack:
            total = sum(s.usd_per_hour for s in samples)
            self._emit("CostPerHour", "None", total, stack)
            if self._spent_today is not None:
                self._emit("SpendToday", "None", self._spent_today(now), stack)
        return samples

    def decisions(self, outcomes: Iterable[Outcome], now: datetime) -> list[ScalingDecision]:
        """Record each recorded decision about a deployment, with a point taken after it."""
        written = []
        for outcome in outcomes:
            decision = outcome.decision
            if not outcome.deployment or not decision.recorded:
                continue
            before, after = before_after(decision.reason)
            made = ScalingDecision(
                outcome.deployment, now, decision.event, decision.reason, before, after
            )
            self._store.add_decision(made)
            written.append(made)
            self._emit(
                DECISION_METRIC,
                "Count",
                1,
                {"Deployment": outcome.deployment, "Decision": decision.event},
            )
            record = self._find(outcome.deployment)
            if record is not None and record.status != "DELETED":
                self._point(sample(record, self._guard()), now)
        return written

    def _point(self, taken: Sample, now: datetime) -> None:
        self._store.add_point(
            CapacityPoint(
                taken.deployment, now, taken.desired, taken.in_service, taken.unit_usd_per_hour
            )
        )
        dimensions = {"Deployment": taken.deployment}
        self._emit("CopiesDesired", "Count", taken.desired, dimensions)
        self._emit("CopiesInService", "Count", taken.in_service, dimensions)
        self._emit("CostPerHour", "None", taken.usd_per_hour, dimensions)


def emf_metric(name: str, unit: str, value: float, dimensions: dict[str, str]) -> None:
    """One metric as one EMF line (namespace ``llmhost``, exactly these dimensions)."""
    from aws_lambda_powertools.metrics import EphemeralMetrics

    metrics: Any = EphemeralMetrics(namespace="llmhost", service="")
    for key, val in dimensions.items():
        metrics.add_dimension(name=key, value=val)
    metrics.add_metric(name=name, unit=unit, value=value)
    metrics.flush_metrics()


def now_utc() -> datetime:
    return datetime.now(UTC)
