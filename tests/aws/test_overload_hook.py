"""The scaling hook on llmhost's overload alarm: a real-shaped "CloudWatch Alarm State Change"
(events/cloudwatch-alarm-overload.json) raises desired capacity to what the demand ratio
asks for, counting copies already starting, never lowering it, within the GPU cap, and not
from a datapoint measured while capacity changed; then it sets the alarm back to OK.
Deployments come from the reconciler (stand-in SageMaker and Application Auto Scaling, moto
CloudWatch and DynamoDB); the decision itself is ``llmhost.scaling.policy.overload``, the
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

from conftest import load_event
from llmhost import aws, runtime
from llmhost.scaling.capacity_guard import Capacity
from llmhost.scaling.hook import plan_overload
from llmhost.scaling.hook_events import Datapoint, parse_alarm_event
from llmhost.scaling.policy import TARGET_UTILIZATION, policy_from_spec
from llmhost.specs import Scaling
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext

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
ALARM = "llmhost-zephyr-overload"


@pytest.fixture
def harness(standin: Any, clock: Any) -> Harness:
    return Harness(standin, clock)


def deploy(harness: Harness, spec: dict[str, Any] = SHARED) -> None:
    harness.create(spec)
    assert harness.settle(spec["name"]).status == "IN_SERVICE"
    # The alarm fired (the hook is what sets it back)
    aws.client("cloudwatch").set_alarm_state(
        AlarmName=ALARM, StateValue="ALARM", StateReason="demand ratio above 1.05"
    )


def overload_event(ratio: float, start: float) -> dict[str, Any]:
    """The sample event with a datapoint of ``ratio`` for the minute starting at ``start``."""
    event = copy.deepcopy(load_event("cloudwatch-alarm-overload.json"))
    at = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    reason = json.loads(event["detail"]["state"]["reasonData"])
    reason["startDate"] = at
    reason["recentDatapoints"] = [ratio]
    reason["evaluatedDatapoints"] = [{"timestamp": at, "value": ratio}]
    event["detail"]["state"]["reasonData"] = json.dumps(reason)
    return event


def fire(event: dict[str, Any]) -> dict[str, Any]:
    hook = load_handler("scaling", "llmhost-scaling")
    return hook.handler(event, LambdaContext("scaling"))  # type: ignore[no-any-return]


def copies() -> dict[str, Any]:
    found = aws.client("sagemaker").describe_inference_component(InferenceComponentName="zephyr")
    return {"status": found["InferenceComponentStatus"], **found["RuntimeConfig"]}


def alarm_state() -> str:
    found = aws.client("cloudwatch").describe_alarms(AlarmNames=[ALARM])["MetricAlarms"]
    return str(found[0]["StateValue"])


def test_the_sample_is_a_metric_math_alarm_whose_datapoint_the_hook_reads() -> None:
    change = parse_alarm_event(load_event("cloudwatch-alarm-overload.json"))
    assert change is not None
    assert (change.deployment, change.kind, change.state) == ("zephyr", "overload", "ALARM")
    assert change.datapoint == Datapoint(1.6, datetime(2026, 11, 21, 9, 11, tzinfo=UTC))


def test_overload_raises_desired_copies_to_what_demand_needs_and_resets_the_alarm(
    harness: Harness, clock: Any
) -> None:
    # Given zephyr in service with one copy, and a minute since with nothing changing
    deploy(harness)
    clock.advance(120)
    assert copies() == {"status": "InService", "DesiredCopyCount": 1, "CurrentCopyCount": 1}
    # When the overload alarm reports 1.6 times what that copy accepted
    result = fire(overload_event(1.6, clock.now - 60))
    # Then SageMaker is asked for ceil(1 x 1.6 / utilization) copies
    wanted = math.ceil(1 * 1.6 / TARGET_UTILIZATION)
    assert wanted > 1
    assert result["decision"] == "OverloadScaleOut"
    clock.advance(180)
    harness.standin.tick()
    assert copies()["DesiredCopyCount"] == wanted
    # And the history says why, with the ratio and desired before -> after
    entry = runtime.registry().get("zephyr").history[-1]
    assert entry.event == "OverloadScaleOut"
    assert "demand ratio 1.60 on 1 in service" in entry.reason
    assert f"desired copies 1 -> {wanted}" in entry.reason
    # And the alarm is back to OK, so a lasting overload is reported again next minute
    assert alarm_state() == "OK"
    # And the deployment's scaling view lists it among its recent activity
    from llmhost.scaling.view import SCALING_EVENTS

    assert entry.event.startswith(SCALING_EVENTS)
    # And when CloudWatch re-evaluates the same datapoint (a metric alarm set to OK returns
    # to its actual state, often within seconds), nothing more is asked for
    history = runtime.registry().get("zephyr").history
    assert fire(overload_event(1.6, clock.now - 240))["decision"] == "OverloadWait"
    assert copies()["DesiredCopyCount"] == wanted
    assert runtime.registry().get("zephyr").history == history


def test_a_datapoint_measured_while_capacity_changed_waits_for_the_next(
    harness: Harness, clock: Any
) -> None:
    deploy(harness)
    # Given a second copy that came into service 30 s into the minute measured
    aws.client("sagemaker").update_inference_component_runtime_config(
        InferenceComponentName="zephyr", DesiredRuntimeConfig={"CopyCount": 2}
    )
    clock.advance(180)
    harness.standin.tick()
    clock.advance(30)
    assert copies() == {"status": "InService", "DesiredCopyCount": 2, "CurrentCopyCount": 2}
    result = fire(overload_event(3.0, clock.now - 60))
    # Then nothing is asked for, the reason is given, and the alarm is reset to be seen again
    assert result["decision"] == "OverloadWait"
    assert copies() == {"status": "InService", "DesiredCopyCount": 2, "CurrentCopyCount": 2}
    assert alarm_state() == "OK"
    # And the next minute's datapoint is acted on
    clock.advance(120)
    assert fire(overload_event(3.0, clock.now - 60))["decision"] == "OverloadScaleOut"


def test_copies_starting_are_counted_and_capacity_is_never_lowered() -> None:
    policy = policy_from_spec(Scaling(min_capacity=1, max_capacity=8))
    assert policy.overload is not None
    start = datetime(2026, 11, 21, 9, 11, tzinfo=UTC)
    settled = start - timedelta(minutes=5)
    # Given 1 copy in service and 3 asked for (2 starting): 1.6 x 1 needs fewer than 3
    starting = Capacity(in_service=1, desired=3, status="InService", changed_at=settled)
    plan = plan_overload(policy, starting, Datapoint(1.6, start), settled)
    assert plan.wanted is None and "already covers" in plan.why
    # Given 4 in service and 4 desired: a ratio of 1.06 needs more, computed as the replay does
    full = Capacity(in_service=4, desired=4, status="InService", changed_at=settled)
    plan = plan_overload(policy, full, Datapoint(1.06, start), settled)
    assert plan.wanted == policy.overload.wanted(4, 1.06) > 4
    # Given the maximum already desired: nothing more to ask for
    at_max = Capacity(in_service=8, desired=8, status="InService", changed_at=settled)
    assert plan_overload(policy, at_max, Datapoint(3.0, start), settled).wanted is None


def test_while_copies_start_a_new_datapoint_asks_for_nothing(harness: Harness, clock: Any) -> None:
    deploy(harness)
    clock.advance(120)
    assert fire(overload_event(1.6, clock.now - 60))["decision"] == "OverloadScaleOut"
    asked = copies()
    assert asked["status"] == "Updating"
    # When the alarm fires again a minute later, copies still starting
    clock.advance(60)
    result = fire(overload_event(1.6, clock.now - 60))
    # Then the hook waits (no call SageMaker would refuse, nothing asked twice)
    assert result["decision"] == "OverloadWait"
    assert copies() == asked


def test_the_gpu_cap_bounds_what_overload_asks_for(
    harness: Harness, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cap of 2 GPU units and zephyr the only deployment
    monkeypatch.setenv("GPU_CAPACITY_CAP", "2")
    deploy(harness)
    clock.advance(120)
    # When demand asks for 5 copies (1 x 3.0 / utilization)
    result = fire(overload_event(3.0, clock.now - 60))
    # Then it gets what the cap leaves, and the history says it was capped
    assert result["decision"] == "OverloadScaleOut"
    clock.advance(180)
    harness.standin.tick()
    assert copies()["DesiredCopyCount"] == 2
    assert "capped" in runtime.registry().get("zephyr").history[-1].reason


@pytest.mark.parametrize(
    "reason_data",
    [None, "", "not json", "[]", '{"version":"1.0","recentDatapoints":[]}'],
)
def test_an_event_without_a_readable_datapoint_changes_nothing_and_says_why(
    harness: Harness, clock: Any, reason_data: str | None
) -> None:
    deploy(harness)
    clock.advance(120)
    event = overload_event(3.0, clock.now - 60)
    if reason_data is None:
        del event["detail"]["state"]["reasonData"]
    else:
        event["detail"]["state"]["reasonData"] = reason_data
    result = fire(event)
    assert result["decision"] == "OverloadIgnored"
    assert copies()["DesiredCopyCount"] == 1 and copies()["status"] == "InService"
    entry = runtime.registry().get("zephyr").history[-1]
    assert entry.event == "OverloadIgnored" and "without a datapoint" in entry.reason
    assert alarm_state() == "OK"


def test_a_deployment_not_in_service_is_left_alone(harness: Harness, clock: Any) -> None:
    deploy(harness)
    harness.set_desired("zephyr", "sleeping")
    clock.advance(120)
    before = runtime.registry().get("zephyr").history
    result = fire(overload_event(3.0, clock.now - 60))
    assert not result.get("decision", "").startswith("Overload")
    assert copies()["DesiredCopyCount"] == 1
    assert runtime.registry().get("zephyr").history == before


def test_a_dedicated_endpoint_gets_more_instances(harness: Harness, clock: Any) -> None:
    spec = copy.deepcopy(SHARED)
    spec["hosting"] = {"kind": "dedicated", "instance_type": "ml.g6.xlarge"}
    spec["scaling"]["target_metric"] = "concurrent-requests-per-instance"
    deploy(harness, spec)
    clock.advance(120)
    result = fire(overload_event(1.6, clock.now - 60))
    assert result["decision"] == "OverloadScaleOut"
    sm = aws.client("sagemaker")
    (variant,) = sm.describe_endpoint(EndpointName="zephyr")["ProductionVariants"]
    wanted = math.ceil(1.6 / TARGET_UTILIZATION)
    assert (variant["CurrentInstanceCount"], variant["DesiredInstanceCount"]) == (1, wanted)
    clock.advance(900)
    harness.standin.tick()
    (variant,) = sm.describe_endpoint(EndpointName="zephyr")["ProductionVariants"]
    assert variant["CurrentInstanceCount"] == wanted
    assert "desired instances 1 -> " in runtime.registry().get("zephyr").history[-1].reason


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["2026-11-21T09:11:00.000+0000", "2026-11-21T09:11:00Z", "9999-12-31"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["evaluatedDatapoints", "recentDatapoints", "startDate", "period", "timestamp", "value"]
)
SHAPED = st.dictionaries(KEYS, JSON, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, SHAPED).map(json.dumps) | st.text(max_size=60) | JSON)
def test_any_reason_data_gives_a_finite_datapoint_or_a_reason_never_an_error(data: Any) -> None:
    from llmhost.scaling.hook_events import read_datapoint

    datapoint, why = read_datapoint({"state": {"reasonData": data}})
    if datapoint is None:
        assert why
    else:
        assert math.isfinite(datapoint.value) and datapoint.start.tzinfo is not None


# ---- holding MaxCapacity while the copies asked for start ---------------------------------

TICK = {"source": "llmhost.budget", "action": "tick"}


def max_capacity() -> int:
    (target,) = aws.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=["inference-component/zephyr"]
    )["ScalableTargets"]
    return int(target["MaxCapacity"])


def tracking_after(desired: int, metric: float) -> int:
    """What target tracking sets desired copies to, within the registered scalable target's
    bounds, for ``metric`` (as the replay computes it: llmhost_local.replay.autoscaling's
    scale_out)."""
    from dataclasses import replace

    from llmhost.scaling import policy as aas
    from llmhost_local.replay import autoscaling

    (target,) = aws.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=["inference-component/zephyr"]
    )["ScalableTargets"]
    spec = runtime.registry().get("zephyr").spec
    bounds = replace(
        policy_from_spec(spec.scaling),
        min_capacity=int(target["MinCapacity"]),
        max_capacity=int(target["MaxCapacity"]),
    )
    return autoscaling.scale_out(bounds, aas.ScalingState(desired=desired), 0.0, metric).desired


def held_overload(harness: Harness, clock: Any) -> int:
    """zephyr in service with 1 copy; an overload of 1.6 asks for more. Returns them."""
    deploy(harness)
    clock.advance(120)
    assert max_capacity() == 6
    assert fire(overload_event(1.6, clock.now - 60))["decision"] == "OverloadScaleOut"
    return math.ceil(1.6 / TARGET_UTILIZATION)


def serve(harness: Harness, clock: Any) -> None:
    clock.advance(180)
    harness.standin.tick()
    assert copies()["status"] == "InService"
    assert copies()["CurrentCopyCount"] == copies()["DesiredCopyCount"]


def test_an_overload_raise_holds_max_capacity_so_target_tracking_cannot_ask_again(
    harness: Harness, clock: Any
) -> None:
    wanted = held_overload(harness, clock)
    # Then MaxCapacity is held at what the hook asked for, and the history says so
    assert copies()["status"] == "Updating"
    assert max_capacity() == wanted
    entry = runtime.registry().get("zephyr").history[-1]
    assert entry.event == "OverloadScaleOut"
    assert f"max capacity held at {wanted} (was 6) while copies start" in entry.reason
    # And target tracking, multiplying desired copies (the starting ones included) by the
    # queue-inflated concurrency of the one copy in service, cannot ask for more
    assert tracking_after(wanted, metric=30.0) == wanted
    # And target tracking's scale-out alarm does not get the lease raised meanwhile
    result = fire(load_event("cloudwatch-alarm-target-tracking-high.json"))
    assert result["decision"] == "ScaleOutHeld"
    assert max_capacity() == wanted
    assert runtime.registry().get("zephyr").history[-1].event == "ScaleOutHeld"


def test_the_tick_gives_the_lease_back_once_the_copies_serve_not_before(
    harness: Harness, clock: Any
) -> None:
    wanted = held_overload(harness, clock)
    # When the tick runs while the copies still start
    fire(TICK)
    # Then the hold stays, and nothing is recorded
    assert max_capacity() == wanted
    assert runtime.registry().get("zephyr").history[-1].event == "OverloadScaleOut"
    # When they serve and the next tick runs
    serve(harness, clock)
    result = fire(TICK)
    # Then MaxCapacity is the lease again (no cap: the spec's maximum), recorded
    assert max_capacity() == 6
    assert {"deployment": "zephyr", "decision": "CapacityHoldReleased"} in result["decisions"]
    record = runtime.registry().get("zephyr")
    assert record.history[-1].event == "CapacityHoldReleased"
    assert f"{wanted} copies in service: max capacity {wanted} -> 6" in record.history[-1].reason
    from llmhost.scaling.view import SCALING_EVENTS

    assert record.history[-1].event.startswith(SCALING_EVENTS)
    # And once: the next tick has nothing to release
    fire(TICK)
    assert runtime.registry().get("zephyr").history == record.history
    # And a later target-tracking scale-out may use the whole lease again
    assert tracking_after(wanted, metric=30.0) == 6
    high = fire(load_event("cloudwatch-alarm-target-tracking-high.json"))
    assert high["decision"].startswith("ScaleOut") and high["decision"] != "ScaleOutHeld"


def test_the_release_gives_back_the_lease_under_the_gpu_cap(
    harness: Harness, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cap of 4 GPU units: zephyr's lease is 4, not its spec's 6
    monkeypatch.setenv("GPU_CAPACITY_CAP", "4")
    deploy(harness)
    clock.advance(120)
    assert max_capacity() == 4
    # When an overload asks for 3 and they serve
    assert fire(overload_event(1.6, clock.now - 60))["decision"] == "OverloadScaleOut"
    assert max_capacity() == 3
    serve(harness, clock)
    fire(TICK)
    # Then the tick gives back the lease the cap allows, never the spec's maximum
    assert max_capacity() == 4
    assert runtime.registry().get("zephyr").history[-1].event == "CapacityHoldReleased"


def test_the_release_never_undoes_a_budget_cut(
    harness: Harness, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.scaling.budget import BudgetLedger
    from llmhost.scaling.hook_events import BudgetTick

    # Given a $1 daily budget, and copies the overload asked for now serving under the hold
    monkeypatch.setenv("DAILY_BUDGET_USD", "1")
    wanted = held_overload(harness, clock)
    serve(harness, clock)
    assert max_capacity() == wanted
    # When $5 were already spent today and the tick runs
    now = datetime.now(UTC)
    BudgetLedger(runtime.registry()).bill(None, now.timestamp() - 300, now.date(), 5.0)
    runtime.reset()
    outcomes = runtime.scaling_hook().handle_event(BudgetTick(), now=now)
    # Then the budget lowers MaxCapacity to the minimum, and the release leaves it there
    assert max_capacity() == 1
    events = [o.decision.event for o in outcomes if o.deployment == "zephyr"]
    assert events == ["BudgetExceeded", "CapacityHoldReleased"]
    entry = runtime.registry().get("zephyr").history[-1]
    assert "max capacity is 1" in entry.reason and "left as it is" in entry.reason
    # And no later tick of the spent day raises it
    runtime.scaling_hook().handle_event(BudgetTick(), now=now + timedelta(minutes=5))
    assert max_capacity() == 1
    assert runtime.registry().get("zephyr").capacity_held is None


def test_a_hold_released_while_the_budget_is_spent_gives_back_the_minimum(
    harness: Harness, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.scaling.budget import BudgetLedger
    from llmhost.scaling.hook_events import BudgetTick

    # Given a hold at 3, the copies serving, and today's budget marked spent by a tick that
    # has not lowered zephyr's MaxCapacity
    monkeypatch.setenv("DAILY_BUDGET_USD", "1")
    held_overload(harness, clock)
    serve(harness, clock)
    now = datetime.now(UTC)
    BudgetLedger(runtime.registry()).mark_exceeded(now.date(), "today's GPU budget is spent")
    runtime.reset()
    # When the tick gives the lease back
    runtime.scaling_hook().handle_event(BudgetTick(), now=now)
    # Then the lease in force is the budget's minimum, not the spec's maximum
    assert max_capacity() == 1
    entry = runtime.registry().get("zephyr").history[-1]
    assert entry.event == "CapacityHoldReleased" and "max capacity 3 -> 1" in entry.reason


@pytest.mark.parametrize("state", ["sleeping", "deleted"])
def test_a_sleeping_or_deleted_deployment_has_nothing_to_release(
    harness: Harness, clock: Any, state: str
) -> None:
    wanted = held_overload(harness, clock)
    assert runtime.registry().get("zephyr").capacity_held == wanted == max_capacity()
    # Given the deployment put to sleep or deleted while it held MaxCapacity
    harness.set_desired("zephyr", state)
    harness.settle("zephyr")
    before = runtime.registry().find("zephyr")
    # When the tick runs
    result = fire(TICK)
    # Then it does nothing to it and fails nothing
    assert result["handled"] is True
    assert "CapacityHoldReleased" not in {d["decision"] for d in result.get("decisions", [])}
    after = runtime.registry().find("zephyr")
    assert (after.history if after else None) == (before.history if before else None)


@pytest.mark.parametrize(
    ("status", "in_service", "desired", "changed_s_ago", "releasable"),
    [
        ("InService", 3, 3, 300, True),  # served for 5 minutes
        ("InService", 3, 3, 60, True),  # a minute of datapoints on the new copies
        ("InService", 3, 3, 10, False),  # just served: target tracking's datapoints predate
        ("Updating", 1, 3, 300, False),  # still starting
        ("InService", 2, 3, 300, False),  # one still to come
    ],
)
def test_the_hold_lasts_until_a_minute_of_metrics_was_measured_on_the_new_copies(
    status: str, in_service: int, desired: int, changed_s_ago: int, releasable: bool
) -> None:
    from datetime import UTC, datetime, timedelta

    from llmhost.scaling.capacity_guard import Capacity
    from llmhost.scaling.hook import hold_releasable
    from llmhost.scaling.policy import HOLD_SETTLE_S

    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    capacity = Capacity(in_service, desired, status, now - timedelta(seconds=changed_s_ago))
    assert hold_releasable(capacity, now, timedelta(seconds=HOLD_SETTLE_S)) is releasable
