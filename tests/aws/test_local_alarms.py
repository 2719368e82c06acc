"""The local CloudWatch: llmhost's alarms in moto, evaluated on a manual clock, time-compressed,
their state changes set in moto and delivered as EventBridge events the scaling hook parses."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost import aws
from llmhost.scaling.policy import policy_from_spec
from llmhost.specs import Scaling
from llmhost_local.alarms import AlarmEvaluator
from llmhost_local.runtime_state import InvocationLog

SPEED = 60.0  # one minute lasts one second


def put_alarms(deployment: str = "zero") -> None:
    """The two alarms the applier puts for a shared model with scale to zero after 5 minutes."""
    policy = policy_from_spec(
        Scaling(min_capacity=0, max_capacity=2, scale_to_zero=True, idle_minutes=5)
    )
    assert policy.idle_alarm is not None and policy.scale_from_zero is not None
    dimensions = {"InferenceComponentName": deployment}
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        **policy.idle_alarm.put_metric_alarm_request(f"llmhost-{deployment}-idle", dimensions, [])
    )
    cloudwatch.put_metric_alarm(
        **policy.scale_from_zero.alarm.put_metric_alarm_request(
            f"llmhost-{deployment}-no-capacity", dimensions, []
        )
    )


def state(name: str) -> str:
    alarms = aws.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]
    return str(alarms[0]["StateValue"])


@pytest.fixture
def setup(moto_aws: None, clock: Any) -> tuple[AlarmEvaluator, InvocationLog, list[Any]]:
    log = InvocationLog(clock=clock)
    delivered: list[dict[str, Any]] = []
    evaluator = AlarmEvaluator(
        lambda: aws.client("cloudwatch"), log, delivered.append, speed=SPEED, clock=clock
    )
    return evaluator, log, delivered


def test_the_idle_alarm_fires_after_its_compressed_window_and_clears_on_a_request(
    setup: Any, clock: Any
) -> None:
    from llmhost.scaling.hook_events import parse_alarm_event

    evaluator, log, delivered = setup
    put_alarms()
    # Given the alarms were just put: no verdict before the idle window has been watched
    evaluator.tick()
    clock.advance(4.9)
    assert evaluator.tick() == []
    # When five compressed minutes (5 s) pass without a request
    clock.advance(0.2)
    events = evaluator.tick()
    # Then the idle alarm enters ALARM, in moto and as one EventBridge event the hook reads
    assert [e["detail"]["alarmName"] for e in events] == ["llmhost-zero-idle"]
    assert state("llmhost-zero-idle") == "ALARM" and delivered == events
    change = parse_alarm_event(events[0])
    assert change is not None
    assert (change.deployment, change.kind, change.previous, change.state) == (
        "zero",
        "idle",
        "OK",
        "ALARM",
    )
    assert "5 out of the last 5 datapoints" in events[0]["detail"]["state"]["reason"]
    metric = events[0]["detail"]["configuration"]["metrics"][0]["metricStat"]
    assert metric["metric"]["dimensions"] == {"InferenceComponentName": "zero"}
    # And it is not re-sent while nothing changes
    clock.advance(3)
    assert evaluator.tick() == []

    # When a request reaches the model
    log.record("pool", "zero", "invoked")
    clock.advance(0.5)
    events = evaluator.tick()
    # Then the idle alarm is OK again
    assert [(e["detail"]["alarmName"], e["detail"]["state"]["value"]) for e in events] == [
        ("llmhost-zero-idle", "OK")
    ]
    assert events[0]["detail"]["previousState"]["value"] == "ALARM"


def test_a_refused_request_trips_the_no_capacity_alarm_for_one_period(
    setup: Any, clock: Any
) -> None:
    evaluator, log, _ = setup
    put_alarms()
    evaluator.tick()
    clock.advance(1.5)
    log.record("pool", "zero", "invoked")  # keep the idle alarm quiet
    evaluator.tick()
    # When a request is refused for want of a copy
    log.record("pool", "zero", "no_capacity")
    clock.advance(0.5)
    events = evaluator.tick()
    # Then the no-capacity alarm (one datapoint > 0 in a minute, here a second) fires
    assert [(e["detail"]["alarmName"], e["detail"]["state"]["value"]) for e in events] == [
        ("llmhost-zero-no-capacity", "ALARM")
    ]
    assert state("llmhost-zero-no-capacity") == "ALARM"
    # And once a period passes without refusals it is OK again
    clock.advance(1.0)
    events = evaluator.tick()
    assert [(e["detail"]["alarmName"], e["detail"]["state"]["value"]) for e in events] == [
        ("llmhost-zero-no-capacity", "OK")
    ]


def test_other_deployments_requests_do_not_count(setup: Any, clock: Any) -> None:
    evaluator, log, _ = setup
    put_alarms("zero")
    evaluator.tick()
    # Given steady traffic to another component on the same pool
    for _ in range(6):
        clock.advance(1)
        log.record("pool", "busy", "invoked")
    # Then this one still goes idle
    events = evaluator.tick()
    assert [e["detail"]["alarmName"] for e in events] == ["llmhost-zero-idle"]


def test_the_overload_alarm_is_left_to_cloudwatch_and_never_stops_the_others(
    setup: Any, clock: Any
) -> None:
    # Given the idle alarms and llmhost's overload alarm (metric math over Invocations and
    # Invocation4XXErrors: the local engine never refuses, so there is nothing to evaluate)
    from llmhost.scaling.policy import overload_alarm

    evaluator, _, _ = setup
    put_alarms()
    request = overload_alarm().alarm.put_metric_alarm_request(
        "llmhost-zero-overload", {"InferenceComponentName": "zero"}, []
    )
    aws.client("cloudwatch").put_metric_alarm(**request)
    # When the idle window passes
    evaluator.tick()
    clock.advance(5.1)
    events = evaluator.tick()
    # Then the idle alarm fires as before and the overload alarm is untouched
    assert [e["detail"]["alarmName"] for e in events] == ["llmhost-zero-idle"]
    assert state("llmhost-zero-overload") == "OK"


def test_the_underload_alarm_is_left_to_cloudwatch_and_never_stops_the_others(
    setup: Any, clock: Any
) -> None:
    # Given the idle alarms and llmhost's underload alarm, as the applier puts them (the
    # peak of concurrency per copy, which the local invocation log does not measure)
    evaluator, _, delivered = setup
    put_alarms()
    underload = policy_from_spec(Scaling(min_capacity=0, max_capacity=2, scale_to_zero=True))
    assert underload.underload is not None
    request = underload.underload.alarm.put_metric_alarm_request(
        "llmhost-zero-underload", {"InferenceComponentName": "zero"}, []
    )
    aws.client("cloudwatch").put_metric_alarm(**request)
    # When more than its 15-minute window passes without a request
    evaluator.tick()
    clock.advance(16 * 60 / SPEED)
    events = evaluator.tick()
    # Then the idle alarm fires as before, and the underload alarm is neither evaluated nor
    # delivered (locally, nothing scales in but the idle alarm)
    assert [e["detail"]["alarmName"] for e in events] == ["llmhost-zero-idle"]
    assert all(e["detail"]["alarmName"] != "llmhost-zero-underload" for e in delivered)
    assert state("llmhost-zero-underload") == "OK"


def test_an_async_backlog_without_capacity_runs_the_alarms_scaling_action_each_period(
    moto_aws: None, clock: Any
) -> None:
    from llmhost.scaling.policy import async_policy

    # Given an async endpoint's no-capacity alarm, whose action is its step policy, and a
    # gauge that reports a request waiting with no instance from t=1 on
    policy = async_policy(Scaling(min_capacity=0, max_capacity=1), concurrency=2)
    assert policy.scale_from_zero is not None
    action = "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:x:resource/sagemaker/wake"
    aws.client("cloudwatch").put_metric_alarm(
        **policy.scale_from_zero.alarm.put_metric_alarm_request(
            "llmhost-jobs-no-capacity", {"EndpointName": "jobs"}, [action]
        )
    )
    waiting = [False]

    def gauge(dims: Any, metric: str, begin: float, end: float) -> float | None:
        assert (dims, metric) == ({"EndpointName": "jobs"}, "HasBacklogWithoutCapacity")
        return 1.0 if waiting[0] else 0.0

    acted: list[str] = []
    evaluator = AlarmEvaluator(
        lambda: aws.client("cloudwatch"),
        InvocationLog(clock=clock),
        lambda event: None,
        speed=SPEED,
        clock=clock,
        gauge=gauge,
        act=lambda alarm: acted.append(alarm["AlarmName"]),
    )
    evaluator.tick()
    clock.advance(2.5)
    evaluator.tick()
    assert state("llmhost-jobs-no-capacity") == "OK" and acted == []
    # When requests wait without capacity for its two periods (two compressed minutes)
    waiting[0] = True
    clock.advance(2.0)
    evaluator.tick()
    # Then it is in ALARM and its action ran once
    assert state("llmhost-jobs-no-capacity") == "ALARM" and acted == ["llmhost-jobs-no-capacity"]
    # And not again within the period, but again after it while still in ALARM
    clock.advance(0.5)
    evaluator.tick()
    assert len(acted) == 1
    clock.advance(0.6)
    evaluator.tick()
    assert len(acted) == 2
    # And once capacity runs, it clears and acts no more
    waiting[0] = False
    clock.advance(2.1)
    evaluator.tick()
    assert state("llmhost-jobs-no-capacity") == "OK" and len(acted) == 2
