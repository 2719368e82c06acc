"""The scaling hook: what llmhost does on its alarms, its schedules, cold requests and budget ticks.

AWS acts alone on target tracking and on the scale-from-zero step policy. llmhost acts where
AWS cannot: an idle deployment goes to sleep (a dedicated endpoint cannot scale below one
instance), a refused request wakes a sleeping model at once, sleep/wake schedules run, a
request for a zero-copy component gets a copy without waiting for the alarm's evaluation,
and the cost guardrails (``leases`` and ``capacity_guard``: the GPU cap; ``budget``: the
daily budget) grant or refuse capacity. Every decision is recorded in the deployment's
history, with what was done, why, and capacity before -> after. Alarm decisions are pure
(``decide``); ``ScalingHook`` applies them to the registry (and, through the guard, to
Application Auto Scaling and SageMaker), and the reconciler does the rest.

The events themselves (what ``parse_event`` accepts) are read in
``llmhost.scaling.hook_events``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from llmhost.clock import REAL, CloudClock
from llmhost.errors import ConcurrentModification, DeploymentNotFound
from llmhost.lifecycle.ownership import alarm_prefix
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.lifecycle.registry import Registry
from llmhost.scaling.hook_events import (
    DATAPOINT_READERS,
    AlarmChange,
    Datapoint,
    HookEvent,
    RequestWake,
    ScheduleFired,
    TargetAlarm,
)

if TYPE_CHECKING:
    from llmhost.scaling.budget import BudgetKeeper
    from llmhost.scaling.capacity_guard import Capacity, CapacityGuard
    from llmhost.scaling.leases import Grant
    from llmhost.scaling.policy import ScalingPolicy


@dataclass(frozen=True)
class Decision:
    """``desired_state`` None: only record the transition. ``recorded`` False: a no-op that
    is reported (and counted) but not written to the history. ``hold``: the MaxCapacity the
    hook now holds the scalable target at (``DeploymentRecord.capacity_held``); ``release``:
    the hold it ended (cleared only if no newer hold replaced it meanwhile)."""

    event: str
    reason: str
    desired_state: Literal["in_service", "sleeping"] | None = None
    recorded: bool = True
    hold: int | None = None
    release: int | None = None


@dataclass(frozen=True)
class Outcome:
    """One decision about one deployment (``deployment`` empty: about none in particular)."""

    deployment: str
    decision: Decision


# How SageMaker words "not now, a change is under way" (as the reconciler's applier reads it).
_BUSY = re.compile(r"in-progress|IN_PROGRESS|while it is|in status (Creating|Updating)")


def decide(
    record: DeploymentRecord, change: AlarmChange, now: datetime, clock: CloudClock = REAL
) -> Decision:
    """What the alarm transition means for this deployment (pure); ``clock`` says how long
    the spec's minutes last (compressed in the local runner, as its CloudWatch's are)."""
    transition = f"{change.kind} alarm {change.previous or '?'} -> {change.state}"
    scaling = record.spec.scaling
    if change.state != "ALARM":
        return Decision(f"Alarm {transition}", change.reason)
    if change.kind == "idle":
        if not scaling.scale_to_zero:
            return Decision(f"Alarm {transition}", "scale to zero is off; nothing to do")
        if record.desired_state != "in_service" or record.status != "IN_SERVICE":
            return Decision(f"Alarm {transition}", f"ignored: the deployment is {record.status}")
        woke_at = _last_wake(record)
        if woke_at and now - woke_at < clock.span(scaling.idle_minutes * 60):
            # The idle window started before the wake: its silence is not idleness.
            return Decision(f"Alarm {transition}", "ignored: woken less than idle_minutes ago")
        return Decision(
            "IdleSleep",
            f"no invocations for {scaling.idle_minutes} minutes; sleeping",
            desired_state="sleeping",
        )
    # no-capacity: a request was refused for want of a copy
    if record.desired_state == "sleeping":
        return Decision("CapacityWake", "a request found no capacity; waking", "in_service")
    return Decision(
        f"Alarm {transition}",
        "the scale-from-zero policy is adding a copy (AWS acts on this alarm)",
    )


@dataclass(frozen=True)
class CapacityPlan:
    """What an overload datapoint or an underload window asks for: ``wanted`` copies (or
    instances), or None with ``why`` when nothing is to be done now."""

    wanted: int | None
    why: str


def plan_overload(
    policy: ScalingPolicy,
    capacity: Capacity,
    datapoint: Datapoint,
    changed_at: datetime | None,
) -> CapacityPlan:
    """The overload alarm is in ALARM with ``datapoint`` (pure).

    The demand ratio measures demand in units of the capacity in service during its
    minute: if that capacity changed during the minute (``changed_at``, the last time it
    changed, is after the minute started), the ratio belongs to no one capacity and the next
    datapoint is awaited. Otherwise what demand needs is what the replay computes
    (``llmhost.scaling.policy.overload``: ceil(in service x ratio / utilization), within
    the policy's bounds), asked for only if more than desired (copies starting included).
    """
    from llmhost.scaling import policy as aas

    ratio, in_service, desired = datapoint.value, capacity.in_service, capacity.desired
    measured = f"demand ratio {ratio:.2f} on {in_service} in service"
    if changed_at is not None and changed_at >= datapoint.start:
        return CapacityPlan(
            None,
            f"{measured}: capacity changed at {changed_at.isoformat()}, during the minute "
            f"measured (from {datapoint.start.isoformat()}); waiting for the next datapoint",
        )
    if in_service <= 0:
        return CapacityPlan(None, f"{measured}: no copy in service to measure demand by")
    state = aas.overload(policy, aas.ScalingState(desired=desired), 0.0, ratio, in_service)
    if state.desired <= desired:
        return CapacityPlan(
            None, f"{measured}: desired {desired} (copies starting included) already covers it"
        )
    return CapacityPlan(state.desired, f"{measured} needs {state.desired}")


def plan_underload(
    policy: ScalingPolicy,
    capacity: Capacity,
    peak: Datapoint,
    changed_at: datetime | None,
    at: datetime | None = None,
    *,
    floor: int = 0,
    unit: str = "copy",
) -> CapacityPlan:
    """The underload alarm went to ALARM at ``at`` with ``peak``: the highest concurrency per
    copy (or instance) of the window that began at ``peak.start`` (pure).

    The peak is per copy in service: if capacity changed since the window began (or within
    the scale-in and scale-out cooldowns, if longer) it was measured on other copies and
    nothing is done until a whole window is measured on these. Otherwise the copies that
    hold the peak at the target are what the replay computes
    (``llmhost.scaling.policy.underload``: ceil(in service x peak / target), never below
    min_capacity nor one, nothing while copies start or stop), never below ``floor`` (the
    scalable target's MinCapacity now, which a scheduled action may have raised), asked for
    only if fewer than desired.
    """
    from llmhost.scaling import policy as aas

    value, in_service, desired = peak.value, capacity.in_service, capacity.desired
    measured = f"peak {value:.2f} concurrent requests per {unit} on {in_service} in service"
    tracking = policy.target_tracking
    window = max(tracking.scale_in_cooldown_s, tracking.scale_out_cooldown_s)
    if policy.underload is not None:
        alarm = policy.underload.alarm
        window = max(window, alarm.period_s * alarm.evaluation_periods)
    since = peak.start
    if at is not None:
        with contextlib.suppress(OverflowError):  # a state change dated at the calendar's edge
            since = min(since, at - timedelta(seconds=window))
    if changed_at is not None and changed_at >= since:
        return CapacityPlan(
            None,
            f"{measured}: capacity changed at {changed_at.isoformat()}, within the window "
            f"measured (from {since.isoformat()}); waiting for a window measured on these",
        )
    if in_service <= 0:
        return CapacityPlan(None, f"{measured}: no copy in service to measure by")
    if desired != in_service:
        return CapacityPlan(
            None, f"{measured}: desired {desired}, so some are starting or stopping; waiting"
        )
    state = aas.underload(policy, aas.ScalingState(desired=desired), 0.0, value, in_service)
    wanted = max(state.desired, floor)
    if wanted >= desired:
        bound = f" (the scalable target's minimum is {floor})" if floor >= state.desired else ""
        return CapacityPlan(None, f"{measured}: desired {desired} is what it needs{bound}")
    return CapacityPlan(wanted, f"{measured} needs {wanted}")


SCALE_OUT_EVENTS = frozenset(
    {"ScaleOutRefused", "ScaleOutGranted", "ScaleOutAtMax", "ScaleOutHeld"}
)
# Entries that start a wake: an idle alarm's silence before one of them is not idleness.
WAKE_EVENTS = frozenset(
    {"WakeRequested", "WakeAdmitted", "CapacityWake", "ScheduledWake", "CopiesRequested"}
)


def _resource_id(record: DeploymentRecord) -> str:
    """The Application Auto Scaling resource id of a deployment's capacity."""
    if record.spec.hosting.kind == "shared":
        return f"inference-component/{record.name}"
    return f"endpoint/{record.name}/variant/AllTraffic"


def _units(record: DeploymentRecord) -> str:
    return "copies" if record.spec.hosting.kind == "shared" else "instances"


def _last_wake(record: DeploymentRecord) -> datetime | None:
    for entry in reversed(record.history):
        if entry.event in WAKE_EVENTS:
            return datetime.fromisoformat(entry.at.replace("Z", "+00:00"))
    return None


def _grant_decision(grant: Grant, event: str, reason: str, **changes: Any) -> Decision:
    """A wake the guardrail admitted (``event``) or refused (WakeRefused)."""
    if not grant.granted:
        return Decision("WakeRefused", f"{reason}: refused: {grant.reason}")
    return Decision(event, f"{reason} ({grant.reason})", **changes)


def hold_releasable(capacity: Capacity, now: datetime, settle: timedelta) -> bool:
    """Whether the overload hook's hold on MaxCapacity may end (pure): the units it asked for
    serve (InService, in service == desired) and ``settle`` has passed since capacity last
    changed, so target tracking's datapoints were measured on them."""
    serving = capacity.status == "InService" and capacity.in_service == capacity.desired
    changed = capacity.changed_at
    return serving and (changed is None or now - changed >= settle)


class ScalingHook:
    """Applies decisions to the registry; ``guard`` and ``budget`` enable the guardrails
    (without a guard, target-tracking alarms are not handled and wakes are not checked)."""

    def __init__(
        self,
        registry: Registry,
        *,
        guard: CapacityGuard | None = None,
        budget: BudgetKeeper | None = None,
        clock: CloudClock = REAL,
        cloudwatch: Callable[[], Any] | None = None,
    ) -> None:
        """``cloudwatch``: a CloudWatch client factory, to set the overload and underload
        alarms back to OK once acted on (None: left as they are)."""
        self._registry = registry
        self._guard = guard
        self._budget = budget
        self._clock = clock
        self._cloudwatch = cloudwatch

    def handle_event(self, event: HookEvent, now: datetime | None = None) -> list[Outcome]:
        """Act on one event; an empty list means it was not for llmhost (or not actionable)."""
        now = now or self._clock.now()
        if isinstance(event, AlarmChange):
            decision = self.handle(event, now)
            return [Outcome(event.deployment, decision)] if decision else []
        if isinstance(event, TargetAlarm):
            return self._target_alarm(event)
        if isinstance(event, ScheduleFired):
            return self._schedule(event)
        if isinstance(event, RequestWake):
            return self._request_wake(event)
        return self._budget_tick(now)

    # ---- llmhost's own alarms -----------------------------------------------------------

    def handle(self, change: AlarmChange, now: datetime | None = None) -> Decision | None:
        """Record the transition and apply the decision; None for unknown deployments."""
        record = self._registry.find(change.deployment)
        if record is None:
            return None
        if change.kind in DATAPOINT_READERS:
            decision = self._act_on_datapoint(record, change)
            return decision if self._record(change.deployment, decision) else None
        decision = decide(record, change, now or self._clock.now(), self._clock)
        if self._guard is not None and change.kind == "no-capacity" and change.state == "ALARM":
            decision = self._guard_capacity_alarm(record, decision)
        return decision if self._record(change.deployment, decision) else None

    def _guard_capacity_alarm(self, record: DeploymentRecord, decision: Decision) -> Decision:
        assert self._guard is not None
        if decision.event == "CapacityWake":
            return self._wake(record, "CapacityWake", "a request found no capacity; waking")
        if record.desired_state != "in_service" or record.spec.hosting.kind != "shared":
            return decision
        # The step policy adds a copy from zero, but only up to MaxCapacity: a lease
        # reclaimed to 0 must come back to at least one for it to work.
        grant = self._guard.admit_wake(record.name, 1)
        if not grant.granted:
            return Decision("ScaleOutRefused", f"scale from zero: {grant.reason}")
        if grant.lease_after != grant.lease_before:
            return Decision(
                "ScaleOutGranted",
                f"scale from zero: lease {grant.lease_before} -> {grant.lease_after} "
                f"({grant.reason})",
            )
        return decision

    # ---- overload and underload: the copies demand needs, no more ------------------------

    def _act_on_datapoint(self, record: DeploymentRecord, change: AlarmChange) -> Decision:
        """An overload or underload alarm's transition. Into ALARM: raise desired capacity to
        what the demand ratio asks for (overload), or lower it to what the window's peak
        needs (underload), within the policy's bounds (and for more, the GPU cap and the
        budget); then set the alarm back to OK, so a lasting overload or underload is
        reported again at its next evaluation (EventBridge reports changes only).

        Only entries that change something (or that a person must see) are recorded: the
        alarms can fire every minute while copies start or a window is not yet measured on
        the copies in service.
        """
        kind = change.kind
        transition = f"{kind} alarm {change.previous or '?'} -> {change.state}"
        if change.state != "ALARM":
            return Decision(f"Alarm {transition}", change.reason, recorded=False)
        if record.desired_state != "in_service" or record.status != "IN_SERVICE":
            return Decision(
                f"Alarm {transition}", f"ignored: the deployment is {record.status}", recorded=False
            )
        if change.datapoint is None:
            decision = Decision(
                f"{kind.capitalize()}Ignored",
                f"{transition} without a datapoint: {change.unreadable}",
            )
        else:
            decision = self._act_on_capacity(record, change, change.datapoint)
        self._reset_alarm(record.name, kind, decision.reason)
        return decision

    def _act_on_capacity(
        self, record: DeploymentRecord, change: AlarmChange, datapoint: Datapoint
    ) -> Decision:
        from llmhost.lifecycle.desired import wanted_scaling
        from llmhost.lifecycle.reconciler import plan_of

        event = change.kind.capitalize()
        if self._guard is None:
            return Decision(f"{event}Ignored", "no capacity guard to act through", recorded=False)
        policy = wanted_scaling(record.spec, plan_of(record))
        acts = (
            policy is not None
            and (policy.overload if change.kind == "overload" else policy.underload) is not None
        )
        if policy is None or not acts:
            return Decision(
                f"{event}Ignored",
                f"the deployment's scaling has no {change.kind} alarm (its engine or metric "
                "needs none); the alarm is removed on the next reconcile",
                recorded=False,
            )
        shared = record.spec.hosting.kind == "shared"
        with self._guard.locked():
            capacity = self._guard.capacity(record.name, shared)
            if capacity is None or capacity.status != "InService":
                status = capacity.status if capacity else "gone"
                return Decision(
                    f"{event}Wait",
                    f"{change.kind} datapoint {datapoint.value:.2f}: the capacity is {status}; "
                    "waiting for the next datapoint",
                    recorded=False,
                )
            # When capacity last changed: its LastModifiedTime, or Application Auto
            # Scaling's last successful activity if later.
            changed = [
                capacity.changed_at,
                self._guard.last_scaling_end(_resource_id(record), policy.dimension),
            ]
            changed_at = max((c for c in changed if c is not None), default=None)
            if change.kind == "overload":
                return self._overload_scale_out(record, policy, capacity, datapoint, changed_at)
            return self._underload_scale_in(
                record, policy, capacity, datapoint, changed_at, change.at
            )

    def _overload_scale_out(
        self,
        record: DeploymentRecord,
        policy: ScalingPolicy,
        capacity: Capacity,
        datapoint: Datapoint,
        changed_at: datetime | None,
    ) -> Decision:
        assert self._guard is not None
        plan = plan_overload(policy, capacity, datapoint, changed_at)
        if plan.wanted is None:
            return Decision("OverloadWait", plan.why, recorded=False)
        grant = self._guard.grow_to(record.name, plan.wanted)
        limit = grant.lease_after if grant.lease_after is not None else grant.lease_before
        after = min(plan.wanted, limit if limit is not None else capacity.desired)
        if after <= capacity.desired:
            # Said once while it lasts: the alarm may fire every minute until then.
            again = bool(record.history) and record.history[-1].event == "OverloadRefused"
            return Decision("OverloadRefused", f"{plan.why}; {grant.reason}", recorded=not again)
        busy = self._set_desired(record, after)
        if busy:
            return Decision(
                "OverloadWait", f"{plan.why}; SageMaker is busy: {busy}", recorded=False
            )
        capped = "" if after == plan.wanted else f" (capped: {grant.reason})"
        # Target tracking multiplies desired capacity (the units just asked for included) by
        # a metric of the units in service only: while they start it would ask for them
        # again. MaxCapacity stays at what was asked for until the budget tick sees them
        # serve and gives the lease back.
        held = self._guard.hold_lease(_resource_id(record), policy.dimension, after)
        hold = ""
        if held is not None:
            was = "" if held[0] == held[1] else f" (was {held[0]})"
            hold = f"; max capacity held at {held[1]}{was} while {_units(record)} start"
        return Decision(
            "OverloadScaleOut",
            f"{plan.why}: desired {_units(record)} {capacity.desired} -> {after}{capped}{hold}",
            hold=held[1] if held is not None else None,
        )

    def _underload_scale_in(
        self,
        record: DeploymentRecord,
        policy: ScalingPolicy,
        capacity: Capacity,
        peak: Datapoint,
        changed_at: datetime | None,
        at: datetime | None,
    ) -> Decision:
        assert self._guard is not None
        floor = self._guard.min_capacity(_resource_id(record), policy.dimension)
        unit = "copy" if record.spec.hosting.kind == "shared" else "instance"
        plan = plan_underload(policy, capacity, peak, changed_at, at, floor=floor, unit=unit)
        if plan.wanted is None:
            return Decision("UnderloadWait", plan.why, recorded=False)
        busy = self._set_desired(record, plan.wanted)
        if busy:
            return Decision(
                "UnderloadWait", f"{plan.why}; SageMaker is busy: {busy}", recorded=False
            )
        # Nothing to tell the GPU guard: it keeps no holdings of its own but reads what
        # SageMaker runs at every decision, so the units released become slack under this
        # deployment's lease (MaxCapacity), which others' scale-outs reclaim.
        return Decision(
            "UnderloadScaleIn",
            f"{plan.why}: desired {_units(record)} {capacity.desired} -> {plan.wanted}",
        )

    def _set_desired(self, record: DeploymentRecord, units: int) -> str:
        """Ask SageMaker for ``units`` copies or instances: "" once asked, SageMaker's
        message when a change is under way (the next datapoint decides again)."""
        assert self._guard is not None
        try:
            self._guard.set_desired(record.name, record.spec.hosting.kind == "shared", units)
        except ClientError as error:
            err = error.response.get("Error", {})
            message = str(err.get("Message", ""))
            if err.get("Code") == "ValidationException" and _BUSY.search(message):
                return message
            raise
        return ""

    def _reset_alarm(self, name: str, kind: str, why: str) -> None:
        if self._cloudwatch is None:
            return
        try:
            self._cloudwatch().set_alarm_state(
                AlarmName=f"{alarm_prefix(name)}{kind}",
                StateValue="OK",
                StateReason=f"llmhost scaling hook acted on the datapoint: {why}"[:1023],
            )
        except ClientError as error:
            # Deleted meanwhile (the deployment went away or changed engine): nothing to reset.
            if error.response.get("Error", {}).get("Code") != "ResourceNotFound":
                raise

    # ---- target tracking: the GPU cap ----------------------------------------------------

    def _target_alarm(self, alarm: TargetAlarm) -> list[Outcome]:
        # AlarmLow (scale in) needs nothing from llmhost; AlarmHigh leaving ALARM neither.
        if alarm.which != "AlarmHigh" or alarm.state != "ALARM" or self._guard is None:
            return []
        record = self._registry.find(alarm.deployment)
        if record is None:
            return []
        if record.capacity_held is not None:
            # Raising the lease now would let target tracking ask again for the units the
            # overload hook asked for, which are still starting; the budget tick gives the
            # lease back once they serve, and then asks again for this scale-out.
            held = Decision(
                "ScaleOutHeld",
                f"AlarmHigh: max capacity held at {record.capacity_held} while the "
                f"{_units(record)} the overload alarm asked for start",
            )
            return [Outcome(record.name, held)] if self._record(record.name, held) else []
        grant = self._guard.scale_out(alarm.deployment)
        outcomes = [Outcome(alarm.deployment, Decision(grant.event, grant.reason))]
        for reclaim in grant.reclaims if grant.granted else ():
            outcomes.append(
                Outcome(
                    reclaim.deployment,
                    Decision(
                        "LeaseReclaimed",
                        f"max capacity {reclaim.holding.lease} -> {reclaim.lease_after} "
                        f"(running {reclaim.holding.current}): unused GPU units lent to "
                        f"{alarm.deployment}, which is scaling out; asks back when it needs them",
                    ),
                )
            )
        return [o for o in outcomes if self._record(o.deployment, o.decision)]

    # ---- schedules ----------------------------------------------------------------------

    def _schedule(self, fired: ScheduleFired) -> list[Outcome]:
        record = self._registry.find(fired.deployment)
        if record is None or record.status == "DELETED" or record.desired_state == "deleted":
            return []
        what = f"schedule {fired.schedule or '?'}"
        if record.spec.hosting.kind == "serverless":
            decision = Decision(
                "ScheduledSleep" if fired.action == "sleep" else "ScheduledWake",
                f"{what}: serverless endpoints scale to zero themselves; nothing to do",
            )
        elif fired.action == "sleep":
            if record.desired_state == "sleeping":
                decision = Decision("ScheduledSleep", f"{what}: already sleeping")
            else:
                running = self._running(record.name)
                decision = Decision(
                    "ScheduledSleep",
                    f"{what}: sleeping (capacity {running} -> 0)",
                    desired_state="sleeping",
                )
        elif record.desired_state == "in_service":
            decision = Decision("ScheduledWake", f"{what}: already in service")
        else:
            decision = self._wake(record, "ScheduledWake", f"{what}: waking")
        return [Outcome(record.name, decision)] if self._record(record.name, decision) else []

    def _wake(self, record: DeploymentRecord, event: str, why: str) -> Decision:
        from llmhost.scaling.leases import required_units

        units = required_units(record.spec)[0]
        if self._guard is None:
            return Decision(event, f"{why} (capacity 0 -> {units})", desired_state="in_service")
        grant = self._guard.admit_wake(record.name, units)
        return _grant_decision(grant, event, why, desired_state="in_service")

    def _running(self, name: str) -> str:
        if self._guard is None:
            return "?"
        holding = self._guard.usage().get(name)
        return str(holding.current) if holding else "0"

    # ---- a request for a cold model ------------------------------------------------------

    def _request_wake(self, wake: RequestWake) -> list[Outcome]:
        record = self._registry.find(wake.deployment)
        if record is None or record.status == "DELETED" or record.desired_state == "deleted":
            return []
        at = f" at {wake.requested_at}" if wake.requested_at else ""
        if record.desired_state == "sleeping":
            decision = self._wake(
                record, "WakeAdmitted", f"a request arrived{at} while sleeping; waking"
            )
        elif record.spec.hosting.kind == "shared" and self._guard is not None:
            copies = max(1, record.spec.scaling.min_capacity)
            grant = self._guard.wake_component(record.name, copies)
            if grant is None:
                decision = Decision(
                    "CopiesPresent", "the component already has copies", recorded=False
                )
            elif grant.granted:
                decision = Decision(
                    "CopiesRequested",
                    f"a request{at} found no copy; copies 0 -> {copies} ({grant.reason})",
                )
            else:
                decision = Decision("WakeRefused", f"a request{at} found no copy: {grant.reason}")
        else:
            decision = Decision(
                "WakeNotNeeded", f"the deployment is {record.status}", recorded=False
            )
        return [Outcome(record.name, decision)] if self._record(record.name, decision) else []

    # ---- the daily budget ----------------------------------------------------------------

    def _retry_refused_scale_outs(self) -> list[Outcome]:
        """Scale-outs refused for want of GPU units, asked again now that some may be free.

        A refusal leaves target tracking's AlarmHigh in ALARM, and EventBridge reports only
        state changes, so no new alarm event would ever ask again. A repeated refusal is
        not recorded again (the history keeps the first, with its reason).
        """
        if self._guard is None or not self._guard.cap:
            return []
        outcomes: list[Outcome] = []
        for record in self._registry.deployments():
            last = next(
                (h.event for h in reversed(record.history) if h.event in SCALE_OUT_EVENTS), None
            )
            if (
                last not in ("ScaleOutRefused", "ScaleOutHeld")
                or record.desired_state != "in_service"
                or record.capacity_held is not None
            ):
                continue
            grant = self._guard.scale_out(record.name)
            if grant.granted:
                decision = Decision(grant.event, f"retried after a refusal: {grant.reason}")
                if self._record(record.name, decision):
                    outcomes.append(Outcome(record.name, decision))
        return outcomes

    def _release_holds(self, now: datetime) -> list[Outcome]:
        """Give back the lease of each deployment whose MaxCapacity the overload hook held,
        once the units it asked for serve (in service == desired, the component or endpoint
        InService) and a minute of metrics was measured on them (``HOLD_SETTLE_S`` since its
        capacity last changed: target tracking's datapoints from before would ask again).
        One still starting stays held; one sleeping or deleted is left (a wake re-registers
        its target); one whose MaxCapacity something else set since (the budget, a scheduled
        action, the reconciler) keeps that value."""
        from llmhost.scaling.policy import HOLD_SETTLE_S

        if self._guard is None:
            return []
        outcomes: list[Outcome] = []
        for record in self._registry.deployments():
            held = record.capacity_held
            if held is None or record.desired_state != "in_service":
                continue
            shared = record.spec.hosting.kind == "shared"
            units = _units(record)
            with self._guard.locked():
                capacity = self._guard.capacity(record.name, shared)
                if capacity is None:
                    continue
                if not hold_releasable(capacity, now, self._clock.span(HOLD_SETTLE_S)):
                    continue
                now_max, lease = self._guard.release_hold(record.name, held)
            in_service = f"{capacity.in_service} {units} in service"
            if now_max is None:
                why = f"{in_service}; no scalable target is registered: nothing held"
            elif lease is None:
                why = (
                    f"{in_service}; max capacity is {now_max}, set since by the budget, a "
                    "schedule or the reconciler: left as it is"
                )
            else:
                why = f"{in_service}: max capacity {now_max} -> {lease} (the lease in force)"
            decision = Decision("CapacityHoldReleased", why, release=held)
            if self._record(record.name, decision):
                outcomes.append(Outcome(record.name, decision))
        return outcomes

    def _budget_tick(self, now: datetime) -> list[Outcome]:
        # A scale-out deferred while a hold lasted is asked again on the tick after its
        # release.
        retried = self._retry_refused_scale_outs()
        if self._budget is None:
            return retried + self._release_holds(now)
        result = self._budget.tick(now)
        outcomes = [
            Outcome(
                change.deployment,
                Decision(
                    "BudgetRestored",
                    f"a new UTC day: max capacity {change.before} -> {change.after}",
                ),
            )
            for change in result.restored
        ] + [
            Outcome(
                change.deployment,
                Decision(
                    "BudgetExceeded",
                    f"{result.reason}; max capacity {change.before} -> {change.after}",
                ),
            )
            for change in result.exceeded
        ]
        recorded = [o for o in outcomes if self._record(o.deployment, o.decision)]
        # After the budget's own changes, so a lease given back is the one in force today.
        released = self._release_holds(now)
        billed = (
            "already billed by another tick"
            if result.billed_usd is None
            else f"${result.billed_usd:.4f} for {result.seconds:.0f} s"
        )
        summary = Decision(
            "BudgetTick",
            f"{result.day}: {billed}; spent ${result.spent_usd:.2f} of ${result.budget_usd:.2f}",
            recorded=False,
        )
        return [Outcome("", summary), *retried, *recorded, *released]

    # ---- history ------------------------------------------------------------------------

    def _record(self, name: str, decision: Decision) -> bool:
        """Append the decision to ``name``'s history (and set its desired state); False when
        the deployment is gone."""
        if not decision.recorded:
            return True
        for _ in range(5):
            try:
                record = self._registry.get(name)
            except DeploymentNotFound:
                return False
            changes: dict[str, Any] = {}
            if decision.desired_state and decision.desired_state != record.desired_state:
                changes["desired_state"] = decision.desired_state
            if decision.hold is not None:
                changes["capacity_held"] = decision.hold
            elif decision.release is not None and record.capacity_held == decision.release:
                changes["capacity_held"] = None
            updated = record.with_event(
                decision.event,
                reason=decision.reason,
                # A wake marks a moment (the idle alarm measures from the last one).
                repeat=decision.event in WAKE_EVENTS,
                **changes,
            )
            with contextlib.suppress(ConcurrentModification):
                self._registry.save(updated)
                return True
        raise ConcurrentModification(name)
