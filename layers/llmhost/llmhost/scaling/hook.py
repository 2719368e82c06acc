"""The scaling hook: what llmhost does when one of its CloudWatch alarms changes state.

AWS acts alone on target tracking and on the scale-from-zero step policy. llmhost acts where
AWS cannot: an idle deployment goes to sleep (a dedicated endpoint cannot scale below one
instance), and a refused request wakes a sleeping model at once. Every transition is recorded
in the deployment's history, with what was done and why. Decisions are pure
(``decide``); ``ScalingHook`` applies them to the registry, and the reconciler does the rest.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from llmhost.errors import ConcurrentModification, DeploymentNotFound
from llmhost.lifecycle.observer import alarm_prefix
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.lifecycle.registry import Registry

AlarmKind = Literal["idle", "no-capacity"]
KINDS: tuple[AlarmKind, ...] = ("idle", "no-capacity")


@dataclass(frozen=True)
class AlarmChange:
    deployment: str
    kind: AlarmKind
    state: str
    previous: str
    reason: str


@dataclass(frozen=True)
class Decision:
    """``desired_state`` None: only record the transition."""

    event: str
    reason: str
    desired_state: Literal["in_service", "sleeping"] | None = None


def parse_alarm_event(event: dict[str, Any]) -> AlarmChange | None:
    """A "CloudWatch Alarm State Change" for one of llmhost's alarms, else None."""
    if event.get("detail-type") != "CloudWatch Alarm State Change":
        return None
    detail = event.get("detail", {})
    name = str(detail.get("alarmName", ""))
    if not name.startswith("llmhost-"):
        return None
    for kind in KINDS:
        if name.endswith(f"-{kind}"):
            deployment = name[len("llmhost-") : -len(kind) - 1]
            if deployment and alarm_prefix(deployment) + kind == name:
                return AlarmChange(
                    deployment=deployment,
                    kind=kind,
                    state=str(detail.get("state", {}).get("value", "")),
                    previous=str(detail.get("previousState", {}).get("value", "")),
                    reason=str(detail.get("state", {}).get("reason", ""))[:300],
                )
    return None


def decide(record: DeploymentRecord, change: AlarmChange, now: datetime) -> Decision:
    """What the alarm transition means for this deployment (pure)."""
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
        if woke_at and now - woke_at < timedelta(minutes=scaling.idle_minutes):
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


def _last_wake(record: DeploymentRecord) -> datetime | None:
    for entry in reversed(record.history):
        if entry.event in {"WakeRequested", "CapacityWake"}:
            return datetime.fromisoformat(entry.at.replace("Z", "+00:00"))
    return None


class ScalingHook:
    def __init__(self, registry: Registry, history_limit: int = 50) -> None:
        self._registry = registry
        self._history_limit = history_limit

    def handle(self, change: AlarmChange, now: datetime | None = None) -> Decision | None:
        """Record the transition and apply the decision; None for unknown deployments."""
        for _ in range(5):
            try:
                record = self._registry.get(change.deployment)
            except DeploymentNotFound:
                return None
            decision = decide(record, change, now or datetime.now(UTC))
            changes: dict[str, Any] = {}
            if decision.desired_state and decision.desired_state != record.desired_state:
                changes["desired_state"] = decision.desired_state
            updated = record.with_event(
                decision.event,
                reason=decision.reason,
                history_limit=self._history_limit,
                **changes,
            )
            with contextlib.suppress(ConcurrentModification):
                self._registry.save(updated)
                return decision
        return None
