"""The events the scaling hook acts on, read from what EventBridge delivers.

``parse_event`` accepts: llmhost's alarms ("CloudWatch Alarm State Change",
``llmhost-<name>-idle|no-capacity|overload|underload``); target tracking's
``TargetTracking-<resource id>-AlarmHigh-<uuid>``; ``{"source": "llmhost.schedule",
"deployment", "action": "sleep"|"wake", "schedule"}``; ``{"source": "llmhost.serving",
"action": "wake", "deployment", "requested_at"}``; ``{"source": "llmhost.budget",
"action": "tick"}``. Anything else, or a known event with fields of the wrong shape, is
None. The overload and underload alarms' datapoints are read from the JSON CloudWatch puts
in ``state.reasonData`` (``read_datapoint``, ``read_peak``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from llmhost.eventfields import get, items, text
from llmhost.lifecycle.ownership import ALARM_KINDS, AlarmKind, alarm_prefix
from llmhost.lifecycle.triggers import is_deployment_name

KINDS: tuple[AlarmKind, ...] = ALARM_KINDS


@dataclass(frozen=True)
class Datapoint:
    """The value an alarm evaluated, and the start of the period it measures."""

    value: float
    start: datetime


@dataclass(frozen=True)
class AlarmChange:
    """``datapoint``: what the hook acts on, read from the state change (``read_datapoint``
    for overload alarms: the newest datapoint; ``read_peak`` for underload alarms: the
    window's highest, from the window's start), None with ``unreadable`` saying why when
    the event carries none that can be read; None for the other kinds. ``at``: when the
    state changed (None if the event does not say)."""

    deployment: str
    kind: AlarmKind
    state: str
    previous: str
    reason: str
    datapoint: Datapoint | None = None
    unreadable: str = ""
    at: datetime | None = None


@dataclass(frozen=True)
class TargetAlarm:
    """A state change of an alarm Application Auto Scaling created for target tracking."""

    deployment: str
    resource_id: str
    which: Literal["AlarmHigh", "AlarmLow"]
    state: str
    previous: str
    reason: str


@dataclass(frozen=True)
class ScheduleFired:
    deployment: str
    action: Literal["sleep", "wake"]
    schedule: str


@dataclass(frozen=True)
class RequestWake:
    deployment: str
    requested_at: str


@dataclass(frozen=True)
class BudgetTick:
    pass


HookEvent = AlarmChange | TargetAlarm | ScheduleFired | RequestWake | BudgetTick

_TARGET_ALARM = re.compile(
    r"^TargetTracking-(?P<rid>inference-component/(?P<ic>[^/]+)"
    r"|endpoint/(?P<ep>[^/]+)/variant/[^/]+)-(?P<which>AlarmHigh|AlarmLow)-[0-9a-fA-F-]+$"
)


def _alarm_state(detail: Any) -> dict[str, str]:
    return {
        "state": text(detail, "state", "value"),
        "previous": text(detail, "previousState", "value"),
        "reason": text(detail, "state", "reason")[:300],
    }


def parse_alarm_event(event: dict[str, Any]) -> AlarmChange | None:
    """A "CloudWatch Alarm State Change" for one of llmhost's alarms, else None."""
    if get(event, "detail-type") != "CloudWatch Alarm State Change":
        return None
    detail = get(event, "detail")
    name = text(detail, "alarmName")
    if not name.startswith("llmhost-"):
        return None
    for kind in KINDS:
        if name.endswith(f"-{kind}"):
            deployment = name[len("llmhost-") : -len(kind) - 1]
            if is_deployment_name(deployment) and alarm_prefix(deployment) + kind == name:
                state = _alarm_state(detail)
                reader = DATAPOINT_READERS.get(kind)
                datapoint, unreadable = reader(detail) if reader else (None, "")
                return AlarmChange(
                    deployment=deployment,
                    kind=kind,
                    state=state["state"],
                    previous=state["previous"],
                    reason=state["reason"],
                    datapoint=datapoint,
                    unreadable=unreadable,
                    at=_cloudwatch_time(get(detail, "state", "timestamp")),
                )
    return None


def _cloudwatch_time(value: Any) -> datetime | None:
    """CloudWatch's event timestamps: 2026-11-21T03:10:00.000+0000."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return at if at.tzinfo is not None else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


def _reason_data(detail: Any) -> tuple[dict[str, Any] | None, str]:
    """``detail.state.reasonData``, the JSON object CloudWatch puts there as a string, or
    (None, why) when the event has none that can be read."""
    raw = get(detail, "state", "reasonData")
    if not isinstance(raw, str) or not raw:
        return None, "the event has no state.reasonData"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None, "state.reasonData is not JSON"
    if not isinstance(data, dict):
        return None, "state.reasonData is not a JSON object"
    return data, ""


def _read(
    detail: Any, reader: Callable[[dict[str, Any]], tuple[Datapoint | None, str]]
) -> tuple[Datapoint | None, str]:
    data, why = _reason_data(detail)
    if data is None:
        return None, why
    try:
        return reader(data)
    except (OverflowError, ValueError):
        return None, "state.reasonData has a datapoint out of range"


def read_datapoint(detail: Any) -> tuple[Datapoint | None, str]:
    """The newest datapoint of an alarm state change, from ``detail.state.reasonData``.

    CloudWatch puts a JSON string there: ``evaluatedDatapoints`` (each with its period's
    ``timestamp`` and, when one was measured, its ``value``) and ``recentDatapoints`` (values
    only, oldest first, the range starting at ``startDate``). Returns (None, why) when the
    event has no datapoint that can be read.
    """
    return _read(detail, _newest)


def read_peak(detail: Any) -> tuple[Datapoint | None, str]:
    """The highest datapoint of the window an alarm state change was decided on
    (``recentDatapoints`` in ``detail.state.reasonData``), with the window's ``startDate``.

    Every value must be a concurrency (a finite number, 0 or more): a peak read past one
    that is not could be lower than the real one and release copies still needed, so such
    a window is unreadable, as is one without values or a start. Returns (None, why) then.
    """
    return _read(detail, _peak)


def _newest(data: dict[str, Any]) -> tuple[Datapoint | None, str]:
    evaluated = [
        (at, value)
        for point in items(data, "evaluatedDatapoints")
        if (at := _cloudwatch_time(get(point, "timestamp"))) is not None
        and (value := _number(get(point, "value"))) is not None
    ]
    if evaluated:
        at, value = max(evaluated, key=lambda p: p[0])
        return Datapoint(value, at), ""
    recent = [_number(v) for v in items(data, "recentDatapoints")]
    start = _cloudwatch_time(get(data, "startDate"))
    period = _number(get(data, "period"))
    if recent and recent[-1] is not None and start is not None and period and period > 0:
        # Oldest first from startDate, one per period: the last is the newest.
        at = start + timedelta(seconds=period * (len(recent) - 1))
        return Datapoint(recent[-1], at), ""
    return None, "state.reasonData has no datapoint with a value and a time"


def _peak(data: dict[str, Any]) -> tuple[Datapoint | None, str]:
    if not isinstance(get(data, "recentDatapoints"), list):
        return None, "state.reasonData has no recentDatapoints"
    recent = [_number(v) for v in items(data, "recentDatapoints")]
    values = [v for v in recent if v is not None and v >= 0]
    if len(values) != len(recent):
        return None, "state.reasonData.recentDatapoints holds a value that is not a concurrency"
    start = _cloudwatch_time(get(data, "startDate"))
    if start is None:
        return None, "state.reasonData has no startDate (when the window measured began)"
    # The alarm treats a missing minute as breaching: no datapoint, no request in flight.
    return Datapoint(max(values, default=0.0), start), ""


DATAPOINT_READERS: dict[str, Callable[[Any], tuple[Datapoint | None, str]]] = {
    "overload": read_datapoint,
    "underload": read_peak,
}


def parse_target_alarm(event: dict[str, Any]) -> TargetAlarm | None:
    """A state change of a target-tracking alarm on a SageMaker scalable target, else None."""
    if get(event, "detail-type") != "CloudWatch Alarm State Change":
        return None
    detail = get(event, "detail")
    match = _TARGET_ALARM.match(text(detail, "alarmName"))
    if match is None or not is_deployment_name(match["ic"] or match["ep"]):
        return None
    which: Literal["AlarmHigh", "AlarmLow"] = (
        "AlarmHigh" if match["which"] == "AlarmHigh" else "AlarmLow"
    )
    return TargetAlarm(
        deployment=match["ic"] or match["ep"],
        resource_id=match["rid"],
        which=which,
        **_alarm_state(detail),
    )


def parse_event(event: Any) -> HookEvent | None:
    """Any event the scaling function accepts, or None for one it does not know (including
    one whose fields have the wrong shape, or that names no possible deployment)."""
    source, action = get(event, "source"), get(event, "action")
    name = text(event, "deployment")
    if source == "llmhost.schedule" and action in ("sleep", "wake") and is_deployment_name(name):
        return ScheduleFired(
            name, "sleep" if action == "sleep" else "wake", text(event, "schedule")[:300]
        )
    if source == "llmhost.serving" and action == "wake" and is_deployment_name(name):
        return RequestWake(name, text(event, "requested_at")[:64])
    if source == "llmhost.budget" and action == "tick":
        return BudgetTick()
    return parse_alarm_event(event) or parse_target_alarm(event)
