"""The deployment operations without HTTP: what each writes, what it refuses, and when it
asks SageMaker and the GPU cap (moto's DynamoDB holds the registry)."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost import runtime
from llmhost.deployments import (
    DeploymentDeleting,
    Deployments,
    EndpointNotOwned,
)
from llmhost.scaling.leases import GpuCapacityExceeded
from llmhost.specs import DeploymentPatch, DeploymentSpec, parse_spec

SPEC = {
    "name": "llama",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}


class Seams:
    """What the operations ask outside the registry, answered and counted here."""

    def __init__(self) -> None:
        self.cap: int | None = None
        self.foreign: set[str] = set()
        self.asked: list[str] = []

    def conflict(self, spec: DeploymentSpec) -> str | None:
        self.asked.append(spec.name)
        return f"'{spec.name}' is someone else's" if spec.name in self.foreign else None


@pytest.fixture
def seams() -> Seams:
    return Seams()


@pytest.fixture
def ops(moto_aws: None, seams: Seams) -> Deployments:
    return Deployments(
        runtime.registry(),
        gpu_capacity_cap=lambda: seams.cap,
        endpoint_conflict=seams.conflict,
        token_secret_problem=lambda arn: None,
    )


def test_create_stores_a_pending_record_with_its_first_event(ops: Deployments) -> None:
    saved = ops.create(parse_spec(SPEC))
    assert saved.status == "PENDING" and saved.generation == 1 and saved.version == 1
    assert [(h.event, h.reason) for h in saved.history] == [
        ("Created", "waiting for the reconciler")
    ]
    assert ops.get("llama") == saved


def test_create_over_an_endpoint_llmhost_did_not_create_stores_nothing(
    ops: Deployments, seams: Seams
) -> None:
    seams.foreign.add("llama")
    with pytest.raises(EndpointNotOwned) as refused:
        ops.create(parse_spec(SPEC))
    assert refused.value.code == "endpoint_not_owned" and "choose another name" in str(
        refused.value
    )
    assert ops.list() == []


def test_an_update_that_changes_nothing_writes_nothing(ops: Deployments, seams: Seams) -> None:
    ops.create(parse_spec(SPEC))
    change = ops.update("llama", DeploymentPatch.model_validate({"hosting": SPEC["hosting"]}))
    assert not change.changed and change.record.version == 1
    # A real change is a new generation, with its history entry
    change = ops.update(
        "llama", DeploymentPatch.model_validate({"generation": {"temperature": 0.2}})
    )
    assert change.changed and change.record.generation == 2
    assert change.record.history[-1].event == "SpecUpdated"


def test_only_a_larger_minimum_meets_the_cap(ops: Deployments, seams: Seams) -> None:
    ops.create(parse_spec(SPEC))
    # Given an account already over a lowered cap
    ops.create(parse_spec({**SPEC, "name": "other"}))
    seams.cap = 1
    # Then an edit that keeps the minimum still lands, one that raises it does not
    assert ops.update(
        "llama", DeploymentPatch.model_validate({"generation": {"temperature": 0.2}})
    ).changed
    grow = DeploymentPatch.model_validate({"hosting": {**SPEC["hosting"], "instance_count": 2}})
    with pytest.raises(GpuCapacityExceeded) as refused:
        ops.update("llama", grow)
    assert refused.value.field == "hosting.instance_count"
    assert ops.get("llama").generation == 2


def test_sleep_and_wake_write_once_and_only_a_wake_asks_the_cap_and_sagemaker(
    ops: Deployments, seams: Seams
) -> None:
    ops.create(parse_spec(SPEC))
    seams.asked.clear()
    slept = ops.sleep("llama")
    assert slept.changed and slept.record.desired_state == "sleeping"
    assert slept.record.history[-1].event == "SleepRequested"
    assert not ops.sleep("llama").changed
    assert seams.asked == []
    # When another deployment takes the only unit, the wake is refused and nothing changes
    ops.create(parse_spec({**SPEC, "name": "other"}))
    seams.cap = 1
    with pytest.raises(GpuCapacityExceeded, match="waking it needs 1 GPU unit"):
        ops.wake("llama")
    assert ops.get("llama").desired_state == "sleeping"
    seams.cap = None
    seams.asked.clear()
    woken = ops.wake("llama")
    assert woken.changed and woken.record.history[-1].event == "WakeRequested"
    assert seams.asked == ["llama"]


def test_a_deployment_being_deleted_cannot_change(ops: Deployments) -> None:
    ops.create(parse_spec(SPEC))
    assert ops.delete("llama").changed
    again = ops.delete("llama")
    assert not again.changed and again.record.desired_state == "deleted"
    patch: Any = DeploymentPatch.model_validate({"generation": {"temperature": 0.2}})
    for change in (lambda: ops.update("llama", patch), lambda: ops.wake("llama")):
        with pytest.raises(DeploymentDeleting, match="'llama' is being deleted"):
            change()
