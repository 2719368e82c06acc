"""The scaling hook on llmhost's underload alarm: a real-shaped "CloudWatch Alarm State Change"
(events/cloudwatch-alarm-underload.json) lowers desired capacity to what the window's peak
of concurrency per copy needs at the target, never below the minimum, not while copies start
and not from a window measured while capacity changed; then it sets the alarm back to OK.
Deployments come from the reconciler (stand-in SageMaker and Application Auto Scaling, moto
CloudWatch and DynamoDB); the decision itself is ``llmhost.scaling.policy.underload``, the
function the trace replay runs."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_lifecycle import Harness
from test_overload_hook import JSON

from conftest import load_event
from llmhost import aws, runtime
from llmhost.scaling import policy as aas
from llmhost.scaling.capacity_guard import Capacity
from llmhost.scaling.hook import plan_underload
from llmhost.scaling.hook_events import Datapoint, parse_alarm_event, read_peak
from llmhost.scaling.policy import TARGET_UTILIZATION, policy_from_spec
from llmhost.specs import Scaling
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext

# zephyr on ml.g6.xlarge: 21 requests at once per copy, so the default target is 0.7 x 21
TARGET = round(TARGET_UTILIZATION * 21, 2)
SHARED: dict[str, Any] = {
    "name": "zephyr",
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {
        "kind": "shared",
        "pool": "gpu-pool",
        "instance_type": "ml.g6.xlarge",
        "pool_max_instances": 6,
    },
    "scaling": {"min_capacity": 1, "max_capacity": 6},
}
ALARM = "llmhost-zephyr-underload"
WINDOW_S = 15 * 60


@pytest.fixture
def harness(standin: Any, clock: Any) -> Harness:
    return Harness(standin, clock)


def dedicated() -> dict[str, Any]:
    spec = copy.deepcopy(SHARED)
    spec["hosting"] = {"kind": "dedicated", "instance_type": "ml.g6.xlarge"}
    spec["scaling"]["target_metric"] = "concurrent-requests-per-instance"
    return spec


def deploy(harness: Harness, copies: int, spec: dict[str, Any] = SHARED) -> None:
    """``spec`` in service with ``copies`` copies (or instances), settled; its alarm fired."""
    harness.create(spec)
    assert harness.settle(spec["name"]).status == "IN_SERVICE"
    sm = aws.client("sagemaker")
    if spec["hosting"]["kind"] == "shared":
        sm.update_inference_component_runtime_config(
            InferenceComponentName="zephyr", DesiredRuntimeConfig={"CopyCount": copies}
        )
    else:
        sm.update_endpoint_weights_and_capacities(
            EndpointName="zephyr",
            DesiredWeightsAndCapacities=[
                {"VariantName": "AllTraffic", "DesiredInstanceCount": copies}
            ],
        )
    # settled (a component in 3 minutes, an endpoint in 5): its capacity changed then
    harness.clock.advance(300)
    harness.standin.tick()
    assert capacity() == ("InService", copies, copies)
    aws.client("cloudwatch").set_alarm_state(
        AlarmName=ALARM, StateValue="ALARM", StateReason="15 minutes below the threshold"
    )


def _at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def underload_event(peaks: list[float], now: float) -> dict[str, Any]:
    """The sample event, decided at ``now`` on one datapoint per minute (oldest first) for
    the minutes before it."""
    event = copy.deepcopy(load_event("cloudwatch-alarm-underload.json"))
    start = (now // 60 - len(peaks) - 1) * 60
    reason = json.loads(event["detail"]["state"]["reasonData"])
    reason["startDate"] = _at(start)
    reason["recentDatapoints"] = peaks
    reason["evaluatedDatapoints"] = [
        {"timestamp": _at(start + 60 * i), "value": v} for i, v in reversed(list(enumerate(peaks)))
    ]
    event["detail"]["state"]["reasonData"] = json.dumps(reason)
    event["detail"]["state"]["timestamp"] = _at(now)
    return event


def quiet(peak: float) -> list[float]:
    """Fifteen minutes whose busiest one peaked at ``peak`` concurrent requests per copy."""
    return [peak / 2] * 7 + [peak] + [peak / 3] * 7


def fire(event: dict[str, Any]) -> dict[str, Any]:
    hook = load_handler("scaling", "llmhost-scaling")
    return hook.handler(event, LambdaContext("scaling"))  # type: ignore[no-any-return]


def capacity() -> tuple[str, int, int]:
    """(status, in service, desired) of zephyr's copies or instances."""
    sm = aws.client("sagemaker")
    if runtime.registry().get("zephyr").spec.hosting.kind == "shared":
        ic = sm.describe_inference_component(InferenceComponentName="zephyr")
        runtime_config = ic["RuntimeConfig"]
        return (
            ic["InferenceComponentStatus"],
            runtime_config["CurrentCopyCount"],
            runtime_config["DesiredCopyCount"],
        )
    endpoint = sm.describe_endpoint(EndpointName="zephyr")
    (variant,) = endpoint["ProductionVariants"]
    return (
        endpoint["EndpointStatus"],
        variant["CurrentInstanceCount"],
        variant.get("DesiredInstanceCount", variant["CurrentInstanceCount"]),
    )


def alarm_state() -> str:
    found = aws.client("cloudwatch").describe_alarms(AlarmNames=[ALARM])["MetricAlarms"]
    return str(found[0]["StateValue"])


def test_the_sample_is_a_window_whose_peak_and_start_the_hook_reads() -> None:
    change = parse_alarm_event(load_event("cloudwatch-alarm-underload.json"))
    assert change is not None
    assert (change.deployment, change.kind, change.state) == ("zephyr", "underload", "ALARM")
    # The busiest of the fifteen minutes, and the start of the first
    assert change.datapoint == Datapoint(7.0, datetime(2026, 11, 21, 9, 0, tzinfo=UTC))
    assert change.at == datetime(2026, 11, 21, 9, 16, 5, 415000, tzinfo=UTC)


def test_underload_lowers_desired_copies_to_what_the_peak_needs_and_resets_the_alarm(
    harness: Harness, clock: Any
) -> None:
    # Given zephyr with 4 copies in service, unchanged for more than the window
    deploy(harness, copies=4)
    clock.advance(WINDOW_S + 120)
    # When the underload alarm reports 15 minutes whose busiest peaked at 5 per copy
    result = fire(underload_event(quiet(5.0), clock.now))
    # Then SageMaker is asked for ceil(4 x 5 / target) copies
    wanted = math.ceil(4 * 5.0 / TARGET)
    assert 1 < wanted < 4
    assert result["decision"] == "UnderloadScaleIn"
    assert capacity() == ("Updating", 4, 4)
    clock.advance(900)
    harness.standin.tick()
    assert capacity() == ("InService", wanted, wanted)
    # And the history says why: the peak, the copies in service, desired before -> after
    entry = runtime.registry().get("zephyr").history[-1]
    assert entry.event == "UnderloadScaleIn"
    assert "peak 5.00 concurrent requests per copy on 4 in service" in entry.reason
    assert f"desired copies 4 -> {wanted}" in entry.reason
    # And the alarm is back to OK, so a lasting underload is evaluated again
    assert alarm_state() == "OK"
    # And the deployment's scaling view lists it among its recent activity
    from llmhost.scaling.view import SCALING_EVENTS

    assert entry.event.startswith(SCALING_EVENTS)
    # And when the alarm fires again (its datapoints are still low), the window includes
    # the scale-in: nothing more is done or recorded until a window is measured on these
    history = runtime.registry().get("zephyr").history
    assert fire(underload_event(quiet(1.0), clock.now))["decision"] == "UnderloadWait"
    assert capacity() == ("InService", wanted, wanted)
    assert runtime.registry().get("zephyr").history == history
    # And a window later, a lasting underload releases what is left above the minimum
    clock.advance(WINDOW_S + 120)
    assert fire(underload_event(quiet(1.0), clock.now))["decision"] == "UnderloadScaleIn"
    clock.advance(900)
    harness.standin.tick()
    assert capacity() == ("InService", 1, 1)


def test_a_window_measured_while_capacity_changed_waits(harness: Harness, clock: Any) -> None:
    # Given zephyr's copies settled 5 minutes ago
    deploy(harness, copies=4)
    clock.advance(300)
    # When the alarm reports a window that began before that
    result = fire(underload_event(quiet(2.0), clock.now))
    # Then nothing is asked for, and the alarm is reset to be evaluated again
    assert result["decision"] == "UnderloadWait"
    assert capacity() == ("InService", 4, 4)
    assert alarm_state() == "OK"
    assert not any(
        h.event.startswith("Underload") for h in runtime.registry().get("zephyr").history
    )
    # And once a whole window is measured on these copies, it is acted on
    clock.advance(WINDOW_S)
    assert fire(underload_event(quiet(2.0), clock.now))["decision"] == "UnderloadScaleIn"


def test_a_late_event_whose_window_began_after_a_change_still_waits(
    harness: Harness, clock: Any
) -> None:
    # Given copies that settled 10 minutes ago, and an event whose reasonData claims a window
    # that began after that (a shortened or malformed window): the hook looks back the whole
    # window from the state change anyway
    deploy(harness, copies=4)
    clock.advance(600)
    event = underload_event(quiet(2.0)[-5:], clock.now)
    assert fire(event)["decision"] == "UnderloadWait"
    assert capacity() == ("InService", 4, 4)


def test_copies_starting_are_never_released(harness: Harness, clock: Any) -> None:
    # Given 4 copies in service and 2 more asked for (still starting)
    deploy(harness, copies=4)
    clock.advance(WINDOW_S + 120)
    aws.client("sagemaker").update_inference_component_runtime_config(
        InferenceComponentName="zephyr", DesiredRuntimeConfig={"CopyCount": 6}
    )
    # When the alarm fires on a quiet window
    result = fire(underload_event(quiet(1.0), clock.now))
    # Then the hook waits, and the copies asked for come
    assert result["decision"] == "UnderloadWait"
    assert capacity() == ("Updating", 4, 4)
    clock.advance(900)
    harness.standin.tick()
    assert capacity() == ("InService", 6, 6)


def test_the_minimum_is_kept(harness: Harness, clock: Any) -> None:
    # Given min_capacity 3 and 5 copies in service
    spec = copy.deepcopy(SHARED)
    spec["scaling"]["min_capacity"] = 3
    deploy(harness, copies=5, spec=spec)
    clock.advance(WINDOW_S + 120)
    # When the window was nearly idle (a peak of 0.5: one copy would do)
    assert fire(underload_event(quiet(0.5), clock.now))["decision"] == "UnderloadScaleIn"
    # Then it goes down to the minimum, not below
    clock.advance(900)
    harness.standin.tick()
    assert capacity() == ("InService", 3, 3)
    assert "desired copies 5 -> 3" in runtime.registry().get("zephyr").history[-1].reason


def test_a_minimum_raised_by_a_scheduled_action_is_kept(harness: Harness, clock: Any) -> None:
    deploy(harness, copies=5)
    # Given a scheduled action that raised the scalable target's MinCapacity to 4 for now
    target = aws.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=["inference-component/zephyr"]
    )["ScalableTargets"][0]
    aws.client("application-autoscaling").register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId="inference-component/zephyr",
        ScalableDimension=target["ScalableDimension"],
        MinCapacity=4,
        MaxCapacity=max(4, target["MaxCapacity"]),
    )
    clock.advance(WINDOW_S + 120)
    # When the window was nearly idle
    assert fire(underload_event(quiet(0.5), clock.now))["decision"] == "UnderloadScaleIn"
    # Then it keeps the scheduled minimum
    clock.advance(900)
    harness.standin.tick()
    assert capacity() == ("InService", 4, 4)
    # And at that minimum, a quiet window asks for nothing more
    clock.advance(WINDOW_S + 120)
    assert fire(underload_event(quiet(0.5), clock.now))["decision"] == "UnderloadWait"
    assert capacity() == ("InService", 4, 4)


@pytest.mark.parametrize(
    "reason_data",
    [
        None,
        "",
        "not json",
        "[]",
        '{"version":"1.0","startDate":"2026-11-21T09:00:00.000+0000"}',
        # a value that is not a concurrency: the real peak could be higher
        '{"startDate":"2026-11-21T09:00:00.000+0000","recentDatapoints":[1.0,null,2.0]}',
        '{"startDate":"2026-11-21T09:00:00.000+0000","recentDatapoints":[1.0,"9"]}',
        '{"startDate":"2026-11-21T09:00:00.000+0000","recentDatapoints":[1.0,-3.0]}',
        '{"startDate":"2026-11-21T09:00:00.000+0000","recentDatapoints":[1.0,1e999]}',
        # no start: the window cannot be checked against capacity changes
        '{"recentDatapoints":[1.0,2.0]}',
    ],
)
def test_an_event_without_a_readable_window_changes_nothing_and_says_why(
    harness: Harness, clock: Any, reason_data: str | None
) -> None:
    deploy(harness, copies=4)
    clock.advance(WINDOW_S + 120)
    event = underload_event(quiet(1.0), clock.now)
    if reason_data is None:
        del event["detail"]["state"]["reasonData"]
    else:
        event["detail"]["state"]["reasonData"] = reason_data
    assert fire(event)["decision"] == "UnderloadIgnored"
    assert capacity() == ("InService", 4, 4)
    entry = runtime.registry().get("zephyr").history[-1]
    assert entry.event == "UnderloadIgnored" and "without a datapoint" in entry.reason
    assert alarm_state() == "OK"


def test_a_sleeping_deployment_is_left_alone(harness: Harness, clock: Any) -> None:
    deploy(harness, copies=2)
    harness.set_desired("zephyr", "sleeping")
    clock.advance(WINDOW_S + 120)
    before = runtime.registry().get("zephyr").history
    result = fire(underload_event(quiet(0.5), clock.now))
    assert not result.get("decision", "").startswith("Underload")
    assert capacity() == ("InService", 2, 2)
    assert runtime.registry().get("zephyr").history == before


def test_a_dedicated_endpoint_releases_instances(harness: Harness, clock: Any) -> None:
    deploy(harness, copies=3, spec=dedicated())
    clock.advance(WINDOW_S + 120)
    result = fire(underload_event(quiet(4.0), clock.now))
    assert result["decision"] == "UnderloadScaleIn"
    wanted = math.ceil(3 * 4.0 / TARGET)
    assert capacity()[1:] == (3, wanted)
    clock.advance(900)
    harness.standin.tick()
    assert capacity() == ("InService", wanted, wanted)
    reason = runtime.registry().get("zephyr").history[-1].reason
    assert "per instance on 3 in service" in reason
    assert f"desired instances 3 -> {wanted}" in reason


# ------------------------------------------------------------------ the decision, pure

SETTLED = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
START = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
AT = START + timedelta(minutes=16)


@settings(max_examples=300, deadline=None)
@given(
    in_service=st.integers(1, 40),
    lowest=st.integers(0, 40),
    highest=st.integers(1, 40),
    floor=st.integers(0, 40),
    peak=st.floats(0, 50, allow_nan=False),
)
def test_the_hook_asks_for_what_the_replay_computes_and_never_less_than_the_minimum(
    in_service: int, lowest: int, highest: int, floor: int, peak: float
) -> None:
    minimum, maximum = min(lowest, highest), max(lowest, highest)
    scale_to_zero = minimum == 0
    policy = policy_from_spec(
        Scaling(min_capacity=minimum, max_capacity=maximum, scale_to_zero=scale_to_zero)
    )
    settled = Capacity(
        in_service=in_service, desired=in_service, status="InService", changed_at=SETTLED
    )
    plan = plan_underload(policy, settled, Datapoint(peak, START), SETTLED, AT, floor=floor)
    replay = aas.underload(policy, aas.ScalingState(desired=in_service), 0.0, peak, in_service)
    if plan.wanted is None:
        assert max(replay.desired, floor) >= in_service
        return
    # Fewer copies, exactly what the replay computes (held at the target's minimum)
    assert plan.wanted == max(replay.desired, floor) < in_service
    assert plan.wanted >= max(1, minimum, floor)
    needed = math.ceil(in_service * peak / policy.target_tracking.target_value - 1e-9)
    assert plan.wanted >= min(maximum, needed)


def test_nothing_is_released_while_copies_start_or_stop() -> None:
    policy = policy_from_spec(Scaling(min_capacity=1, max_capacity=8))
    for in_service, desired in ((3, 4), (4, 3)):
        changing = Capacity(in_service, desired, "InService", SETTLED)
        plan = plan_underload(policy, changing, Datapoint(0.5, START), SETTLED, AT)
        assert plan.wanted is None and "starting or stopping" in plan.why


def test_a_cooldown_longer_than_the_window_is_waited_out() -> None:
    # Given a scale-in cooldown of an hour and copies changed 30 minutes before the event
    policy = policy_from_spec(Scaling(min_capacity=1, max_capacity=8, scale_in_cooldown_s=3600))
    changed = AT - timedelta(minutes=30)
    settled = Capacity(4, 4, "InService", changed)
    plan = plan_underload(policy, settled, Datapoint(0.5, START), changed, AT)
    assert plan.wanted is None and "capacity changed" in plan.why
    assert (
        plan_underload(policy, settled, Datapoint(0.5, START), AT - timedelta(hours=2), AT).wanted
        == 1
    )


def test_a_state_change_dated_at_the_edge_of_the_calendar_is_measured_from_its_window() -> None:
    policy = policy_from_spec(Scaling(min_capacity=1, max_capacity=8))
    settled = Capacity(4, 4, "InService", SETTLED)
    edge = datetime.min.replace(tzinfo=UTC)
    plan = plan_underload(policy, settled, Datapoint(0.5, START), SETTLED, edge)
    assert plan.wanted == 1


SHAPED = st.dictionaries(
    st.sampled_from(["recentDatapoints", "startDate", "period", "evaluatedDatapoints"]),
    JSON,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, SHAPED).map(json.dumps) | st.text(max_size=60) | JSON)
def test_any_reason_data_gives_a_concurrency_peak_or_a_reason_never_an_error(data: Any) -> None:
    peak, why = read_peak({"state": {"reasonData": data}})
    if peak is None:
        assert why
    else:
        assert math.isfinite(peak.value) and peak.value >= 0 and peak.start.tzinfo is not None


def test_a_window_without_datapoints_means_no_traffic_and_releases_to_the_minimum(
    harness: Harness, clock: Any
) -> None:
    # Given 4 copies whose traffic stopped: SageMaker published no concurrency datapoint for
    # the whole window, which the alarm treats as breaching
    deploy(harness, copies=4)
    clock.advance(WINDOW_S + 120)
    # When its state change arrives with no datapoints
    result = fire(underload_event([], clock.now))
    # Then nothing was in flight: the hook goes down to the minimum (1)
    assert result["decision"] == "UnderloadScaleIn"
    clock.advance(900)
    harness.standin.tick()
    assert capacity() == ("InService", 1, 1)
    assert "peak 0.00" in runtime.registry().get("zephyr").history[-1].reason
