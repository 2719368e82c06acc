"""A local CloudWatch for llmhost's own alarms, time-compressed: what moto does not do.

moto stores the alarms the reconciler puts (``llmhost-<deployment>-idle`` and
``-no-capacity``; ``-overload`` and ``-underload`` watch metrics the invocation log does not
measure, so they are left alone and nothing scales in locally but by the idle alarm) but
never evaluates them. ``AlarmEvaluator.tick`` does: it reads them back
(``DescribeAlarms`` with the ``llmhost-`` prefix), computes each one's datapoints from the
runtime front's ``InvocationLog`` (``Invocations`` and ``NoCapacityInvocationFailures``, the
metrics those alarms watch), and on a state change sets the state in moto
(``SetAlarmState``) and delivers the "CloudWatch Alarm State Change" event EventBridge would
send (the shape of ``events/cloudwatch-alarm-*.json``) to the scaling function.

Time is compressed by ``speed``: a 60 s period lasts ``60 / speed`` seconds, so at the
runner's default 60x an idle alarm of 5 minutes fires after 5 s without a request.

What CloudWatch does and this does too: M-of-N datapoints, ``TreatMissingData`` (a period
without requests has no datapoint, as a Sum of nothing is missing in CloudWatch), no
verdict before the alarm has been watched for its whole window, and events only on a change
of state. Not emulated: metric math, and statistics other than Sum (counts) and Average
(the gauges).

Gauges: an async endpoint's backlog metrics (``HasBacklogWithoutCapacity``,
``ApproximateBacklogSize[PerInstance]``) come from ``gauge`` (``AsyncInference.gauge``:
each period's Average of its samples; a period without one is a missing datapoint).

Alarm actions that are Application Auto Scaling policies (ARNs ``arn:aws:autoscaling:``)
are handed to ``act`` (``llmhost_local.scaling_actions``) when the alarm enters ALARM and
again every period while it stays there, as CloudWatch does for Auto Scaling actions
("continue to be invoked once per minute while the alarm remains in the ALARM state",
docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarm-evaluation.html). Only the
async endpoints' step policy is acted on this way; for inference components llmhost's own
wake path adds the copy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from llmhost_local.runtime_state import InvocationLog, Outcome

# A gauge metric's value over [start, end) for these dimensions (None: no datapoint).
Gauge = Callable[[Mapping[str, str], str, float, float], float | None]
GAUGE_METRICS = frozenset(
    {"HasBacklogWithoutCapacity", "ApproximateBacklogSize", "ApproximateBacklogSizePerInstance"}
)
AUTOSCALING_ACTION = "arn:aws:autoscaling:"

PREFIX = "llmhost-"
# The metric each of llmhost's alarms watches, as the invocation log records it.
METRIC_OUTCOMES: dict[str, Outcome] = {
    "Invocations": "invoked",
    "NoCapacityInvocationFailures": "no_capacity",
}
_COMPARISON_WORDS = {
    "GreaterThanThreshold": "greater than",
    "GreaterThanOrEqualToThreshold": "greater than or equal to",
    "LessThanThreshold": "less than",
    "LessThanOrEqualToThreshold": "less than or equal to",
}


@dataclass(frozen=True)
class Verdict:
    """The state an alarm should be in now, and CloudWatch's sentence for why."""

    state: str
    reason: str


def evaluate(
    alarm: Mapping[str, Any],
    log: InvocationLog,
    now: float,
    watched_since: float,
    speed: float,
    gauge: Gauge | None = None,
) -> Verdict | None:
    """The state of one metric alarm at ``now`` (clock seconds), or None while it has not
    been watched for its whole window (CloudWatch would still say INSUFFICIENT_DATA).

    Raises KeyError for an alarm on a metric neither the invocation log counts nor
    ``gauge`` measures.
    """
    metric = alarm["MetricName"]
    outcome = None if metric in GAUGE_METRICS and gauge else METRIC_OUTCOMES[metric]
    period = float(alarm["Period"]) / speed
    periods = int(alarm["EvaluationPeriods"])
    needed = int(alarm.get("DatapointsToAlarm") or periods)
    if now - watched_since < period * periods:
        return None
    dimensions = {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}
    values: list[float | None] = []
    for i in range(periods, 0, -1):  # oldest first
        start = now - i * period
        if outcome is None:
            assert gauge is not None
            values.append(gauge(dimensions, metric, start, start + period))
            continue
        count = log.count(dimensions, outcome, start) - log.count(
            dimensions, outcome, start + period
        )
        values.append(float(count) if count else None)  # no request, no datapoint
    breaching = sum(_breaches(alarm, value) for value in values)
    words = _COMPARISON_WORDS[alarm["ComparisonOperator"]]
    threshold = float(alarm["Threshold"])
    shown = ", ".join("missing" if v is None else f"{v:g}" for v in values)
    if breaching >= needed:
        return Verdict(
            "ALARM",
            f"Threshold Crossed: {breaching} out of the last {periods} datapoints [{shown}] "
            f"were {words} the threshold ({threshold}).",
        )
    return Verdict(
        "OK",
        f"Threshold Crossed: {periods - breaching} out of the last {periods} datapoints "
        f"[{shown}] were not {words} the threshold ({threshold}).",
    )


def _breaches(alarm: Mapping[str, Any], value: float | None) -> bool:
    if value is None:
        return alarm.get("TreatMissingData", "missing") == "breaching"
    threshold = float(alarm["Threshold"])
    comparison = alarm["ComparisonOperator"]
    if comparison == "GreaterThanThreshold":
        return value > threshold
    if comparison == "GreaterThanOrEqualToThreshold":
        return value >= threshold
    if comparison == "LessThanThreshold":
        return value < threshold
    return value <= threshold


def state_change_event(
    alarm: Mapping[str, Any], verdict: Verdict, at: datetime, region: str = "us-east-1"
) -> dict[str, Any]:
    """The EventBridge "CloudWatch Alarm State Change" event for ``alarm`` entering
    ``verdict.state`` (``alarm`` as DescribeAlarms returned it, before the change)."""
    arn = str(alarm.get("AlarmArn") or "")
    account = arn.split(":")[4] if arn.count(":") >= 5 else "123456789012"
    previous_at = alarm.get("StateUpdatedTimestamp")
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": account,
        "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [arn],
        "detail": {
            "alarmName": alarm["AlarmName"],
            "state": {
                "value": verdict.state,
                "reason": verdict.reason,
                "timestamp": _timestamp(at),
            },
            "previousState": {
                "value": alarm.get("StateValue", "INSUFFICIENT_DATA"),
                "reason": alarm.get("StateReason", ""),
                "timestamp": _timestamp(previous_at) if isinstance(previous_at, datetime) else "",
            },
            "configuration": {
                "metrics": [
                    {
                        "id": "m1",
                        "metricStat": {
                            "metric": {
                                "namespace": alarm.get("Namespace", "AWS/SageMaker"),
                                "name": alarm["MetricName"],
                                "dimensions": {
                                    d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])
                                },
                            },
                            "period": alarm["Period"],
                            "stat": alarm.get("Statistic", "Sum"),
                        },
                        "returnData": True,
                    }
                ]
            },
        },
    }


def _timestamp(at: datetime) -> str:
    # CloudWatch's format in these events: 2026-11-21T03:10:00.000+0000
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"


class AlarmEvaluator:
    """Evaluates llmhost's alarms in moto against the runtime front's invocation log.

    ``cloudwatch`` returns a CloudWatch client (moto's); ``deliver`` receives each state
    change event (the runner queues it for the scaling function); ``clock`` is the
    invocation log's clock (seconds) and ``wall`` gives event times.
    """

    def __init__(
        self,
        cloudwatch: Callable[[], Any],
        invocations: InvocationLog,
        deliver: Callable[[dict[str, Any]], None],
        *,
        speed: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        region: str = "us-east-1",
        gauge: Gauge | None = None,
        act: Callable[[Mapping[str, Any]], object] | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be a positive factor, got {speed}")
        self._cloudwatch = cloudwatch
        self._log = invocations
        self._deliver = deliver
        self._speed = speed
        self._clock = clock
        self._wall = wall
        self._region = region
        self._gauge = gauge
        self._act = act
        self._acted: dict[str, float] = {}  # alarm name -> when its actions last ran
        # (alarm name, configuration time) -> when this evaluator first saw that alarm: a
        # re-put alarm starts its window again, as CloudWatch's does.
        self._watched: dict[tuple[str, str], float] = {}

    def tick(self) -> list[dict[str, Any]]:
        """Evaluate every llmhost alarm once; returns the state change events delivered."""
        now = self._clock()
        delivered: list[dict[str, Any]] = []
        client = self._cloudwatch()
        for alarm in self._alarms(client):
            metric = alarm.get("MetricName")
            gauged = self._gauge is not None and metric in GAUGE_METRICS
            if metric not in METRIC_OUTCOMES and not gauged:
                continue
            key = (alarm["AlarmName"], str(alarm.get("AlarmConfigurationUpdatedTimestamp", "")))
            watched_since = self._watched.setdefault(key, now)
            verdict = evaluate(alarm, self._log, now, watched_since, self._speed, self._gauge)
            state = verdict.state if verdict is not None else alarm.get("StateValue")
            if state == "ALARM":
                self._run_actions(alarm, now)
            else:
                self._acted.pop(alarm["AlarmName"], None)
            if verdict is None or verdict.state == alarm.get("StateValue"):
                continue
            client.set_alarm_state(
                AlarmName=alarm["AlarmName"], StateValue=verdict.state, StateReason=verdict.reason
            )
            event = state_change_event(alarm, verdict, self._wall(), self._region)
            self._deliver(event)
            delivered.append(event)
        return delivered

    def _run_actions(self, alarm: Mapping[str, Any], now: float) -> None:
        """Invoke the alarm's Auto Scaling actions on entering ALARM, then once a period."""
        if self._act is None:
            return
        if not any(a.startswith(AUTOSCALING_ACTION) for a in alarm.get("AlarmActions", [])):
            return
        last = self._acted.get(alarm["AlarmName"])
        if last is not None and now - last < float(alarm["Period"]) / self._speed:
            return
        self._acted[alarm["AlarmName"]] = now
        self._act(alarm)

    @staticmethod
    def _alarms(client: Any) -> list[dict[str, Any]]:
        alarms: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"AlarmNamePrefix": PREFIX, "AlarmTypes": ["MetricAlarm"]}
        while True:
            page = client.describe_alarms(**kwargs)
            alarms.extend(page.get("MetricAlarms", []))
            if not page.get("NextToken"):
                return alarms
            kwargs["NextToken"] = page["NextToken"]
