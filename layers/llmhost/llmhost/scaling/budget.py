"""The optional daily GPU budget: estimated spend per UTC day, and what happens when it is spent.

Every budget tick (an EventBridge schedule, every 5 minutes) adds, for each deployment, the
GPU units it runs x the unit's on-demand $/h x the hours since the last tick to today's
ledger. The elapsed time is bounded by ``MAX_TICK_S`` (15 minutes): after a gap (ticks
failed, the budget was switched on) llmhost bills at most that, rather than billing hours
at whatever is running now. The very first tick bills one interval, ``DEFAULT_TICK_S``.
A tick bills the whole interval to the UTC day it runs in.

When today's spend passes the budget, every autoscaled deployment's MaxCapacity is lowered
to its MinCapacity (Application Auto Scaling scales in to it) and the guardrail refuses
scale-outs for the rest of the day; the first tick of the next UTC day restores the leases
(as much as the GPU cap allows).

The ledger lives in the registry table under keys no deployment name can take
(``#budget#state``, ``#budget#<YYYY-MM-DD>``). A tick moves the state's ``last_tick`` with a
compare-and-set and adds its spend in the same DynamoDB transaction, so two concurrent ticks
never bill the same minutes twice.

Prices are estimates (``llmhost.instances``: us-east-1 on-demand list prices), not a bill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from botocore.exceptions import ClientError

from llmhost.lifecycle.registry import INTERNAL_PREFIX, Registry, is_condition_failure, table_errors
from llmhost.scaling.capacity_guard import CapacityGuard
from llmhost.scaling.leases import Holding, Usage, lease_for
from llmhost.specs import DeploymentSpec

STATE_KEY = f"{INTERNAL_PREFIX}budget#state"
DEFAULT_TICK_S = 300.0
MAX_TICK_S = 900.0
BUDGET_PARAMETER = "DailyBudgetUsd"


def day_key(day: date) -> str:
    """The ledger item of one UTC day, e.g. '#budget#2026-11-21'."""
    return f"{INTERNAL_PREFIX}budget#{day.isoformat()}"


# ------------------------------------------------------------------------------ pure core


def unit_price(spec: DeploymentSpec) -> float:
    """USD per GPU unit-hour: an instance of a dedicated deployment, or one copy of a shared
    one (its share of the pool instance: accelerators / GPUs per instance). 0 when unknown."""
    from llmhost import instances

    hosting = spec.hosting
    if hosting.kind == "serverless":
        return 0.0
    name = hosting.instance_type
    if name is None:
        from llmhost.sizing.plan import plan

        name = plan(spec).instance_type
    instance = instances.get(name) if name else None
    if instance is None:
        return 0.0
    if hosting.kind == "shared":
        return instance.price_per_hour * hosting.accelerators / max(1, instance.gpu_count)
    return instance.price_per_hour


def tick_seconds(previous: float | None, now: float) -> float:
    """Seconds one tick bills: since the last tick, at most MAX_TICK_S (first tick: one
    interval)."""
    if previous is None:
        return DEFAULT_TICK_S
    return min(max(0.0, now - previous), MAX_TICK_S)


def spend(units_and_prices: list[tuple[int, float]], seconds: float) -> float:
    """USD for running each (units, $/unit-hour) for ``seconds``."""
    return sum(units * price for units, price in units_and_prices) * seconds / 3600.0


# ------------------------------------------------------------------------------ ledger


@dataclass(frozen=True)
class BudgetState:
    last_tick: float | None = None
    exceeded_day: str | None = None
    exceeded_reason: str = ""


class BudgetLedger:
    """The budget's items in the registry table (conditional writes and atomic adds only)."""

    def __init__(self, registry: Registry) -> None:
        self._ddb = registry.client
        self._table = registry.table_name

    def state(self) -> BudgetState:
        with table_errors():
            item = self._ddb.get_item(
                TableName=self._table, Key={"name": {"S": STATE_KEY}}, ConsistentRead=True
            ).get("Item", {})
        return BudgetState(
            last_tick=float(item["last_tick"]["N"]) if "last_tick" in item else None,
            exceeded_day=item["exceeded_day"]["S"] if "exceeded_day" in item else None,
            exceeded_reason=item.get("exceeded_reason", {}).get("S", ""),
        )

    def block_reason(self, day: date) -> str | None:
        """Why scale-outs are refused on ``day`` (the budget was spent), or None."""
        state = self.state()
        if state.exceeded_day == day.isoformat():
            return state.exceeded_reason or "today's GPU budget is spent"
        return None

    def spent(self, day: date) -> float:
        with table_errors():
            item = self._ddb.get_item(
                TableName=self._table, Key={"name": {"S": day_key(day)}}, ConsistentRead=True
            ).get("Item", {})
        return float(item["spent_usd"]["N"]) if "spent_usd" in item else 0.0

    def bill(self, previous: float | None, now: float, day: date, usd: float) -> float | None:
        """Move the tick clock from ``previous`` to ``now`` and add ``usd`` to ``day``, in one
        transaction. Returns the day's new total, or None when another tick moved the clock
        first (it billed these minutes)."""
        clock: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"name": {"S": STATE_KEY}},
            "UpdateExpression": "SET last_tick = :now",
            "ExpressionAttributeValues": {":now": {"N": repr(now)}},
        }
        if previous is None:
            clock["ConditionExpression"] = "attribute_not_exists(last_tick)"
        else:
            clock["ConditionExpression"] = "last_tick = :prev"
            clock["ExpressionAttributeValues"][":prev"] = {"N": repr(previous)}
        with table_errors():
            try:
                self._ddb.transact_write_items(
                    TransactItems=[
                        {"Update": clock},
                        {
                            "Update": {
                                "TableName": self._table,
                                "Key": {"name": {"S": day_key(day)}},
                                "UpdateExpression": "ADD spent_usd :usd",
                                "ExpressionAttributeValues": {":usd": {"N": f"{usd:.6f}"}},
                            }
                        },
                    ]
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                    return None
                raise
        return self.spent(day)

    def mark_exceeded(self, day: date, reason: str) -> bool:
        """Record that ``day``'s budget is spent; False when already recorded."""
        return self._conditional(
            "SET exceeded_day = :day, exceeded_reason = :why",
            "attribute_not_exists(exceeded_day) OR exceeded_day <> :day",
            {":day": {"S": day.isoformat()}, ":why": {"S": reason}},
        )

    def mark_restored(self, exceeded_day: str) -> bool:
        """Clear the mark of a past day; False when another tick cleared it."""
        return self._conditional(
            "REMOVE exceeded_day, exceeded_reason",
            "exceeded_day = :day",
            {":day": {"S": exceeded_day}},
        )

    def _conditional(self, update: str, condition: str, values: dict[str, Any]) -> bool:
        with table_errors():
            try:
                self._ddb.update_item(
                    TableName=self._table,
                    Key={"name": {"S": STATE_KEY}},
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeValues=values,
                )
            except ClientError as error:
                if is_condition_failure(error):
                    return False
                raise
        return True


# ------------------------------------------------------------------------------ the tick


@dataclass(frozen=True)
class LeaseChange:
    deployment: str
    before: int
    after: int


@dataclass(frozen=True)
class TickResult:
    """What one tick did. ``billed_usd`` None: another tick billed this interval."""

    day: str
    seconds: float
    billed_usd: float | None
    spent_usd: float
    budget_usd: float
    reason: str = ""
    exceeded: list[LeaseChange] = field(default_factory=list)
    restored: list[LeaseChange] = field(default_factory=list)


class BudgetKeeper:
    """Runs budget ticks: bills, lowers leases when the day's budget is spent, restores them."""

    def __init__(
        self,
        registry: Registry,
        ledger: BudgetLedger,
        guard: CapacityGuard,
        daily_budget_usd: float,
        price: Callable[[DeploymentSpec], float] = unit_price,
    ) -> None:
        self._registry = registry
        self._ledger = ledger
        self._guard = guard
        self._budget = daily_budget_usd
        self._price = price

    def tick(self, now: datetime) -> TickResult:
        """One tick at ``now`` (timezone-aware). Safe to run twice or concurrently."""
        today = now.date()
        state = self._ledger.state()
        restored: list[LeaseChange] = []
        if state.exceeded_day is not None and state.exceeded_day < today.isoformat():

            def restore(usage: Usage, holding: Holding) -> int:
                lease = holding.lease or 0
                wanted = lease_for(usage, holding.deployment, holding.target_min, holding.maximum)
                return max(lease, wanted)

            restored = _changes(self._guard.set_leases(restore))
            self._ledger.mark_restored(state.exceeded_day)
            state = BudgetState(state.last_tick)

        seconds = tick_seconds(state.last_tick, now.timestamp())
        specs = {r.name: r.spec for r in self._registry.deployments()}
        usage = self._guard.usage()
        billed = spend(
            [
                (h.current, self._price(specs[h.deployment]))
                for h in usage.holdings
                if h.current and h.deployment in specs
            ],
            seconds,
        )
        spent = self._ledger.bill(state.last_tick, now.timestamp(), today, billed)
        result = TickResult(
            day=today.isoformat(),
            seconds=seconds,
            billed_usd=None if spent is None else billed,
            spent_usd=self._ledger.spent(today) if spent is None else spent,
            budget_usd=self._budget,
            restored=restored,
        )
        if not self._budget or result.spent_usd <= self._budget:
            return result
        reason = state.exceeded_reason if state.exceeded_day == today.isoformat() else ""
        if not reason:
            reason = (
                f"today's estimated GPU spend ${result.spent_usd:.2f} is over the daily budget "
                f"of ${self._budget:.2f} ({BUDGET_PARAMETER}); scale-outs resume at 00:00 UTC"
            )
            self._ledger.mark_exceeded(today, reason)
        # Every tick of a spent day holds the leases at their minimum (idempotent: only
        # leases something raised since are changed and recorded).
        exceeded = _changes(self._guard.set_leases(lambda usage, holding: holding.target_min))
        return TickResult(
            day=result.day,
            seconds=seconds,
            billed_usd=result.billed_usd,
            spent_usd=result.spent_usd,
            budget_usd=self._budget,
            reason=reason,
            exceeded=exceeded,
            restored=restored,
        )


def _changes(changed: list[tuple[Holding, int]]) -> list[LeaseChange]:
    return [LeaseChange(h.deployment, h.lease or 0, after) for h, after in changed]
