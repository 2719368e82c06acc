"""The GPU cap and the daily budget against moto and the SageMaker / auto scaling stand-ins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import ROLE_ARN, load_event
from llmhost import aws, runtime
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.scaling.hook_events import BudgetTick
from llmhost.specs import parse_spec
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext

IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4"
COPIES = "sagemaker:inference-component:DesiredCopyCount"


class Pool:
    """One pool endpoint on the stand-in; components added with a registered target each."""

    def __init__(self, standin: Any, clock: Any) -> None:
        self.standin, self.clock = standin, clock
        self.sm = aws.client("sagemaker")
        self.aas = aws.client("application-autoscaling")
        self.sm.create_model(
            ModelName="m1", ExecutionRoleArn=ROLE_ARN, PrimaryContainer={"Image": IMAGE}
        )
        self.sm.create_endpoint_config(
            EndpointConfigName="pool-c1",
            ExecutionRoleArn=ROLE_ARN,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "InstanceType": "ml.g5.12xlarge",
                    "InitialInstanceCount": 2,
                    "ManagedInstanceScaling": {
                        "Status": "ENABLED",
                        "MinInstanceCount": 0,
                        "MaxInstanceCount": 2,
                    },
                }
            ],
        )
        self.sm.create_endpoint(EndpointName="pool", EndpointConfigName="pool-c1")
        self.settle(600)

    def settle(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.standin.tick()

    def component(self, name: str, copies: int, lease: int, low: int = 1, high: int = 4) -> None:
        self.sm.create_inference_component(
            InferenceComponentName=name,
            EndpointName="pool",
            VariantName="AllTraffic",
            Specification={
                "ModelName": "m1",
                "ComputeResourceRequirements": {
                    "MinMemoryRequiredInMb": 8192,
                    "NumberOfAcceleratorDevicesRequired": 1,
                },
            },
            RuntimeConfig={"CopyCount": max(1, copies)},
        )
        self.settle(240)
        if copies == 0:
            self.set_copies(name, 0)
        self.aas.register_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=f"inference-component/{name}",
            ScalableDimension=COPIES,
            MinCapacity=low,
            MaxCapacity=lease,
        )
        spec = parse_spec(
            {
                "name": name,
                "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"},
                "hosting": {
                    "kind": "shared",
                    "pool": "pool",
                    "instance_type": "ml.g5.12xlarge",
                    "copies": max(1, copies),
                },
                "scaling": {
                    "min_capacity": low,
                    "max_capacity": high,
                    "scale_to_zero": low == 0,
                },
            }
        )
        record = DeploymentRecord(name=name, spec=spec, status="IN_SERVICE")
        runtime.registry().create(record)

    def set_copies(self, name: str, copies: int) -> None:
        self.sm.update_inference_component_runtime_config(
            InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": copies}
        )
        self.settle(180)

    def lease(self, name: str) -> int:
        found = self.aas.describe_scalable_targets(
            ServiceNamespace="sagemaker",
            ResourceIds=[f"inference-component/{name}"],
            ScalableDimension=COPIES,
        )["ScalableTargets"]
        return int(found[0]["MaxCapacity"])


@pytest.fixture
def pool(standin: Any, clock: Any) -> Pool:
    return Pool(standin, clock)


@pytest.fixture
def hook(pool: Pool) -> Any:
    return load_handler("scaling", "llmhost-scaling")


def history(name: str) -> list[tuple[str, str]]:
    return [(e.event, e.reason) for e in runtime.registry().get(name).history]


def test_an_over_cap_scale_out_is_refused_and_recorded(
    pool: Pool, hook: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cap of 3 GPU units, all held: zephyr runs 2 (lease 2), mistral 1 (lease 1)
    monkeypatch.setenv("GPU_CAPACITY_CAP", "3")
    pool.component("zephyr", copies=2, lease=2)
    pool.component("mistral", copies=1, lease=1)
    # When zephyr's target tracking AlarmHigh goes to ALARM
    result = hook.handler(
        load_event("cloudwatch-alarm-target-tracking-high.json"), LambdaContext("scaling")
    )
    # Then the scale-out is refused, recorded with the cap and who holds the units
    assert result == {"handled": True, "deployment": "zephyr", "decision": "ScaleOutRefused"}
    event, reason = history("zephyr")[-1]
    assert event == "ScaleOutRefused"
    for words in ("cap of 3", "GpuCapacityCap", "zephyr 2", "mistral 1", "lease stays 2"):
        assert words in reason
    # And no lease moved: AWS still cannot scale zephyr past 2
    assert (pool.lease("zephyr"), pool.lease("mistral")) == (2, 1)


def test_a_refused_scale_out_is_asked_again_by_the_tick_once_units_are_free(
    pool: Pool, hook: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given zephyr's scale-out refused under a full cap of 3 (zephyr 2, mistral 1)
    monkeypatch.setenv("GPU_CAPACITY_CAP", "3")
    pool.component("zephyr", copies=2, lease=2, high=3)
    pool.component("mistral", copies=1, lease=1)
    alarm = load_event("cloudwatch-alarm-target-tracking-high.json")
    assert hook.handler(alarm, LambdaContext("scaling"))["decision"] == "ScaleOutRefused"
    # When a tick comes while the cap is still full
    tick = load_event("budget-tick.json")
    hook.handler(tick, LambdaContext("scaling"))
    # Then nothing changes and the refusal is not recorded twice
    assert [e for e, _ in history("zephyr")].count("ScaleOutRefused") == 1
    assert pool.lease("zephyr") == 2
    # When mistral is deleted (its unit is free) and the next tick comes
    runtime.registry().save(
        runtime.registry().get("mistral").model_copy(update={"status": "DELETED"})
    )
    pool.set_copies("mistral", 0)
    hook.handler(tick, LambdaContext("scaling"))
    # Then zephyr's alarm, still in ALARM, gets its unit: lease 2 -> 3, recorded
    event, reason = history("zephyr")[-1]
    assert event == "ScaleOutGranted" and "retried after a refusal" in reason
    assert pool.lease("zephyr") == 3


def test_a_scale_out_is_granted_from_reclaimed_slack(
    pool: Pool, hook: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cap of 4 where mistral leases 3 but runs 1
    monkeypatch.setenv("GPU_CAPACITY_CAP", "4")
    pool.component("zephyr", copies=1, lease=1, high=3)
    pool.component("mistral", copies=1, lease=3)
    # When zephyr asks to scale out
    result = hook.handler(
        load_event("cloudwatch-alarm-target-tracking-high.json"), LambdaContext("scaling")
    )
    # Then mistral's unused lease goes to zephyr, both recorded, the cap still holds
    assert result["decision"] == "ScaleOutGranted"
    assert (pool.lease("zephyr"), pool.lease("mistral")) == (3, 1)
    assert "lease 1 -> 3" in history("zephyr")[-1][1]
    assert history("mistral")[-1][0] == "LeaseReclaimed"
    assert "3 -> 1" in history("mistral")[-1][1]


def test_alarm_low_is_not_acted_on(pool: Pool, hook: Any) -> None:
    event = load_event("cloudwatch-alarm-target-tracking-high.json")
    event["detail"]["alarmName"] = event["detail"]["alarmName"].replace("AlarmHigh", "AlarmLow")
    assert hook.handler(event, LambdaContext("scaling")) == {"handled": False}


def test_apply_scaling_clamps_max_capacity_to_the_lease(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.lifecycle.applier import SageMakerApplier
    from llmhost.lifecycle.planner import ApplyScaling
    from llmhost.lifecycle.reconciler import resolve_desired

    # Given a cap of 4 with 3 units leased to mistral
    monkeypatch.setenv("GPU_CAPACITY_CAP", "4")
    pool.component("mistral", copies=1, lease=3)
    pool.component("zephyr", copies=1, lease=1, high=4)
    record = runtime.registry().get("zephyr")
    desired = resolve_desired(record.spec, "us-east-1", ROLE_ARN)
    applier = SageMakerApplier(
        pool.sm,
        lambda: pool.aas,
        lambda: aws.client("cloudwatch"),
        role_arn=ROLE_ARN,
        read_secret=lambda arn: "",
        # built per apply, so it reads the cap in force then
        guardrail=runtime.capacity_guard,
    )
    # When the reconciler applies zephyr's scaling (spec max 4)
    applier.apply(ApplyScaling(desired.scaling_resource_id, config="x"), record, desired)
    # Then MaxCapacity is what the cap leaves: 4 - 3 = 1, never the spec's 4
    assert pool.lease("zephyr") == 1
    # And with the cap lifted the spec's maximum is registered
    monkeypatch.setenv("GPU_CAPACITY_CAP", "0")
    applier.apply(ApplyScaling(desired.scaling_resource_id, config="x"), record, desired)
    assert pool.lease("zephyr") == 4


def test_a_spent_budget_lowers_max_capacity_and_the_next_day_restores_it(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a $1.00 daily budget and zephyr running 2 copies (~$1.77/h each) with lease 4
    monkeypatch.setenv("DAILY_BUDGET_USD", "1")
    pool.component("zephyr", copies=2, lease=4, low=1, high=4)
    hook = runtime.scaling_hook()
    day = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0)
    # When the first tick bills 5 minutes ($0.30) the budget still holds
    first = hook.handle_event(BudgetTick(), now=day)
    assert [o.decision.event for o in first] == ["BudgetTick"] and pool.lease("zephyr") == 4
    # When a tick an hour later bills (at most) 15 minutes more: $1.18 spent
    second = hook.handle_event(BudgetTick(), now=day + timedelta(hours=1))
    # Then MaxCapacity drops to MinCapacity, recorded with before -> after
    assert [o.decision.event for o in second] == ["BudgetTick", "BudgetExceeded"]
    assert pool.lease("zephyr") == 1
    event, reason = history("zephyr")[-1]
    assert event == "BudgetExceeded" and "4 -> 1" in reason and "$1.00" in reason
    assert "1.18" in second[0].decision.reason
    # And for the rest of the day a scale-out is refused for the budget
    grant = runtime.capacity_guard().scale_out("zephyr")
    assert grant.event == "ScaleOutRefused" and "daily budget" in grant.reason
    # When the first tick of the next UTC day runs (billing $0.89), the lease comes back
    third = hook.handle_event(BudgetTick(), now=day + timedelta(days=1))
    assert "BudgetRestored" in [o.decision.event for o in third]
    assert pool.lease("zephyr") == 4
    assert history("zephyr")[-1][0] == "BudgetRestored"
    # And the ledger's items never show up as deployments
    assert [r.name for r in runtime.registry().deployments()] == ["zephyr"]


def test_concurrent_ticks_bill_an_interval_once(pool: Pool) -> None:
    from llmhost.scaling.budget import BudgetLedger

    ledger = BudgetLedger(runtime.registry())
    day = datetime(2026, 11, 21, tzinfo=UTC).date()
    # Given two ticks that both read the clock before either wrote it
    assert ledger.bill(None, 1000.0, day, 0.25) == pytest.approx(0.25)
    # Then the second finds the clock moved and bills nothing
    assert ledger.bill(None, 1000.0, day, 0.25) is None
    assert ledger.spent(day) == pytest.approx(0.25)
