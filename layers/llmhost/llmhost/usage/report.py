"""Usage and cost over a period, per deployment or per caller (``GET /v1/usage``), and a
deployment's capacity history (``GET /v1/deployments/{name}/capacity``).

How cost is shared (``METHOD``): each hour, a deployment's estimated cost (its units'
on-demand price x the units it ran, from the capacity history; serverless: its requests'
inference time x memory x the GB-second price, plus provisioned concurrency) is shared over
the requests it served in that hour, in proportion to their tokens (input + output), or by
the count of answered requests in an hour whose requests carry no tokens. An hour with cost
and no requests answered is idle cost: reported per deployment and in the total, never
spread over other hours. A caller's cost is the sum of its requests' shares, so the
callers' costs and the idle cost add up to the deployments' cost.

The pure part (``share_costs``) takes rows and points and returns the report; ``UsageReports``
reads them from the usage table and the registry.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from llmhost.errors import DeploymentNotFound, FieldIssue, SpecInvalid
from llmhost.usage.capacity import MAX_HOLD_S, cost_between
from llmhost.usage.store import (
    ERROR_CLASSES,
    NO_NAME,
    CapacityPoint,
    UsageRow,
    UsageStore,
    hour_of,
    iso,
)

if TYPE_CHECKING:
    from llmhost.lifecycle.record import DeploymentRecord

By = Literal["deployment", "key"]
MAX_RANGE = timedelta(days=31)
DEFAULT_RANGE = timedelta(hours=24)
HOUR = timedelta(hours=1)
METHOD = (
    "Each hour, a deployment's estimated cost (on-demand price x copies or instances running, "
    "from its capacity history; serverless: inference time x memory) is shared over the "
    "requests it served that hour in proportion to their tokens (input + output; by answered "
    "requests when they carry none); hours without answered requests are idle cost."
)


# ------------------------------------------------------------------------------ period


def parse_time(value: str, name: str) -> datetime:
    """ISO 8601 (a naive time is UTC) or epoch seconds; SpecInvalid naming ``name`` if not."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds) and 0 <= seconds < 253370764800:  # 9999-01-01
            return datetime.fromtimestamp(seconds, UTC)
        raise SpecInvalid([FieldIssue(name, "must be a time after 1970 and before 9999")])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SpecInvalid(
            [
                FieldIssue(
                    name,
                    "must be an ISO 8601 time (e.g. 2026-12-03T00:00:00Z) or epoch seconds",
                )
            ]
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if not 1970 <= moment.year <= 9998:  # and the UTC conversion cannot overflow
        raise SpecInvalid([FieldIssue(name, "must be a time after 1970 and before 9999")])
    return moment.astimezone(UTC)


def period(
    start: str | None, end: str | None, now: datetime, *, whole_hours: bool
) -> tuple[datetime, datetime]:
    """The period ``from``/``to`` ask for (default: the last 24 hours up to now), checked:
    from before to, at most MAX_RANGE long. ``whole_hours``: widened to hour boundaries."""
    stop = parse_time(end, "to") if end is not None else now
    begin = parse_time(start, "from") if start is not None else stop - DEFAULT_RANGE
    if begin > stop:
        raise SpecInvalid([FieldIssue("from", f"must be before to ({iso(stop)})")])
    if whole_hours:
        begin = hour_of(begin)
        stop = hour_of(stop) + (HOUR if hour_of(stop) != stop.astimezone(UTC) else timedelta(0))
        if stop == begin:
            stop = begin + HOUR
    if stop - begin > MAX_RANGE:
        raise SpecInvalid(
            [FieldIssue("to", f"the period is at most {MAX_RANGE.days} days; move from or to")]
        )
    return begin.astimezone(UTC), stop.astimezone(UTC)


# ------------------------------------------------------------------------------ pure core


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    errors_by_class: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_CLASSES, 0))
    cold: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    busy_ms: int = 0
    cost_usd: float = 0.0
    idle_cost_usd: float = 0.0
    deployments: set[str] = field(default_factory=set)

    def add(self, row: UsageRow) -> None:
        self.requests += row.requests
        self.errors += row.errors
        for name, count in row.errors_by_class.items():
            self.errors_by_class[name] = self.errors_by_class.get(name, 0) + count
        self.cold += row.cold
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        self.busy_ms += row.busy_ms
        self.deployments.add(row.deployment)

    def view(self) -> dict[str, Any]:
        cost = _money(self.cost_usd + self.idle_cost_usd)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_class": dict(self.errors_by_class),
            "cold_requests": self.cold,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "busy_ms": self.busy_ms,
            "cost_usd": cost,
            "served_cost_usd": _money(self.cost_usd),
            "idle_cost_usd": _money(self.idle_cost_usd),
            "cost_per_request_usd": _money(self.cost_usd / self.requests)
            if self.requests
            else None,
        }


@dataclass(frozen=True)
class Shares:
    """The shared costs, unrounded: per deployment (served, idle) and per caller."""

    deployments: dict[str, Totals]
    keys: dict[str, Totals]
    total: Totals


def share_costs(
    rows: Iterable[UsageRow],
    points: Iterable[CapacityPoint],
    start: datetime,
    end: datetime,
    *,
    serverless_usd_per_busy_ms: dict[str, float] | None = None,
    max_hold: timedelta = timedelta(seconds=MAX_HOLD_S),
    until: datetime | None = None,
) -> Shares:
    """Share each deployment's hourly cost over its requests of that hour (pure).

    ``rows``: usage counters of the whole hours of ``[start, end)``; ``points``: capacity
    points from ``max_hold`` before ``start`` on; ``serverless_usd_per_busy_ms``: a
    serverless deployment's price of one ms of inference; ``until`` (now): no capacity is
    charged after it, however long the last point would hold."""
    per_ms = serverless_usd_per_busy_ms or {}
    by_deployment: dict[str, list[CapacityPoint]] = defaultdict(list)
    for point in sorted(points, key=lambda p: p.at):
        by_deployment[point.deployment].append(point)
    hours: dict[tuple[str, datetime], list[UsageRow]] = defaultdict(list)
    for row in rows:
        hours[(row.deployment, row.hour)].append(row)
    deployments: dict[str, Totals] = defaultdict(Totals)
    keys: dict[str, Totals] = defaultdict(Totals)
    total = Totals()
    names = set(by_deployment) | {d for d, _ in hours}
    hour = start
    while hour < end:
        for name in names:
            served = hours.get((name, hour), [])
            stop = hour + HOUR if until is None else min(hour + HOUR, until)
            cost = cost_between(by_deployment.get(name, []), hour, stop, max_hold)
            cost += sum(r.busy_ms for r in served) * per_ms.get(name, 0.0)
            cost = cost if math.isfinite(cost) and cost > 0 else 0.0
            if name == NO_NAME:
                cost = 0.0  # refused before routing: no deployment's capacity
            deployment = deployments[name]
            for row in served:
                deployment.add(row)
                keys[row.caller].add(row)
                total.add(row)
            weights = [r.input_tokens + r.output_tokens for r in served]
            if not any(weights):
                # By the requests answered: one refused (a bad body, a 429, a cold 503) used
                # no capacity, so an hour of refusals alone is idle, not its callers' cost.
                weights = [max(0, r.requests - r.errors) for r in served]
            whole = sum(weights)
            if not whole:
                deployment.idle_cost_usd += cost
                total.idle_cost_usd += cost
                continue
            deployment.cost_usd += cost
            total.cost_usd += cost
            for row, weight in zip(served, weights, strict=True):
                keys[row.caller].cost_usd += cost * weight / whole
        hour += HOUR
    return Shares(dict(deployments), dict(keys), total)


def usage_view(by: By, shares: Shares, start: datetime, end: datetime) -> dict[str, Any]:
    """The API's answer for ``shares`` (costs rounded to micro-dollars)."""
    rows: list[dict[str, Any]] = []
    if by == "deployment":
        for name in sorted(shares.deployments):
            if name == NO_NAME and not shares.deployments[name].requests:
                continue
            rows.append({"deployment": None if name == NO_NAME else name, **_row(shares, name)})
    else:
        for key in sorted(shares.keys):
            totals = shares.keys[key]
            view = totals.view()
            del view["idle_cost_usd"], view["served_cost_usd"]
            rows.append(
                {
                    "key": None if key == NO_NAME else key,
                    **view,
                    "deployments": sorted(d for d in totals.deployments if d != NO_NAME),
                }
            )
    rows.sort(key=lambda r: (-r["cost_usd"], -r["requests"]))
    return {
        "by": by,
        "from": iso(start),
        "to": iso(end),
        "currency": "USD",
        "rows": rows,
        "total": shares.total.view(),
        "method": METHOD,
        "prices": "estimates from us-east-1 on-demand list prices (llmhost.instances), not a bill",
    }


def _row(shares: Shares, name: str) -> dict[str, Any]:
    return shares.deployments[name].view()


def capacity_view(
    name: str,
    points: list[CapacityPoint],
    decisions: list[Any],
    start: datetime,
    end: datetime,
) -> dict[str, Any]:
    """``GET /v1/deployments/{name}/capacity``'s answer."""
    return {
        "deployment": name,
        "from": iso(start),
        "to": iso(end),
        "points": [
            {
                "at": iso(p.at),
                "desired": p.desired,
                "in_service": p.in_service,
                "usd_per_hour": _money(max(p.desired, p.in_service) * p.unit_usd_per_hour)
                if p.unit_usd_per_hour is not None
                else None,
            }
            for p in points
            if p.deployment == name
        ],
        "decisions": [
            {"at": iso(d.at), "from": d.before, "to": d.after, "event": d.event, "reason": d.reason}
            for d in decisions
            if d.deployment == name
        ],
    }


def _money(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else 0.0


# ------------------------------------------------------------------------------ reads


class UsageReports:
    """Reads the usage table (and the registry, for serverless prices) into reports."""

    def __init__(
        self,
        store: UsageStore,
        find: Callable[[str], DeploymentRecord | None],
        now: Callable[[], datetime],
        max_hold: timedelta = timedelta(seconds=MAX_HOLD_S),
    ) -> None:
        self._store = store
        self._find = find
        self._now = now
        self._max_hold = max_hold

    def usage(self, by: By, start: str | None, end: str | None) -> dict[str, Any]:
        now = self._now()
        begin, stop = period(start, end, now, whole_hours=True)
        rows = self._store.usage(begin, stop)
        points, _ = self._store.capacity(begin - self._max_hold, stop)
        per_ms = {}
        for name in {r.deployment for r in rows if r.busy_ms and r.deployment != NO_NAME}:
            price = self._serverless_per_ms(name)
            if price:
                per_ms[name] = price
        shares = share_costs(
            rows,
            points,
            begin,
            stop,
            serverless_usd_per_busy_ms=per_ms,
            max_hold=self._max_hold,
            until=now,
        )
        return usage_view(by, shares, begin, stop)

    def capacity(self, name: str, start: str | None, end: str | None) -> dict[str, Any]:
        if self._find(name) is None:
            raise DeploymentNotFound(name)
        begin, stop = period(start, end, self._now(), whole_hours=False)
        points, decisions = self._store.capacity(begin, stop, name)
        return capacity_view(name, points, decisions, begin, stop)

    def _serverless_per_ms(self, name: str) -> float:
        from llmhost.usage.cost import rate_of

        record = self._find(name)
        if record is None or record.spec.hosting.kind != "serverless":
            return 0.0
        rate = rate_of(record.spec)
        return rate.memory_gb * rate.gb_second_usd / 1000.0 if rate is not None else 0.0
