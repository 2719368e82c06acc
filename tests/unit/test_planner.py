"""The reconcile planner as a table: (desired, observed) -> next action. No AWS at all."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmhost.lifecycle import planner as p
from llmhost.lifecycle.desired import (
    AsyncTarget,
    DesiredResources,
    ScheduleTarget,
    SleepWakeSchedule,
)
from llmhost.lifecycle.observed import Observed, ObservedComponent, ObservedEndpoint
from llmhost.lifecycle.record import Attempt, DeploymentRecord
from llmhost.specs import parse_spec

DEDICATED = {
    "name": "llama",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}
SHARED = {
    "name": "zephyr",
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "shared", "pool": "pool", "instance_type": "ml.g5.12xlarge"},
}


def record(spec: dict = DEDICATED, **changes) -> DeploymentRecord:
    base = DeploymentRecord(name=spec["name"], spec=parse_spec(spec))
    return base.model_copy(update=changes)


def dedicated(**overrides) -> DesiredResources:
    values = dict(
        deployment="llama",
        kind="dedicated",
        model_name="llama-aaaaaaaa",
        container={},
        config_name="llama-cccccccc",
        config_body={},
        endpoint_name="llama",
    )
    values.update(overrides)
    return DesiredResources(**values)


def shared() -> DesiredResources:
    return DesiredResources(
        deployment="zephyr",
        kind="shared",
        model_name="zephyr-aaaaaaaa",
        container={},
        config_name="pool-11111111",
        config_body={},
        endpoint_name="pool",
        component_name="zephyr",
        component_spec={
            "ModelName": "zephyr-aaaaaaaa",
            "ComputeResourceRequirements": {
                "NumberOfAcceleratorDevicesRequired": 1.0,
                "MinMemoryRequiredInMb": 8192,
            },
        },
        copies=1,
    )


def endpoint(status="InService", config="llama-cccccccc", reason="", models=("llama-aaaaaaaa",)):
    return ObservedEndpoint(
        name="llama",
        status=status,
        config_name=config,
        failure_reason=reason,
        config_models=frozenset(models),
    )


def component(status="InService", model="zephyr-aaaaaaaa", copies=1, reason=""):
    return ObservedComponent(
        name="zephyr",
        status=status,
        endpoint_name="pool",
        model_name=model,
        compute={"NumberOfAcceleratorDevicesRequired": 1.0, "MinMemoryRequiredInMb": 8192.0},
        desired_copies=copies,
        current_copies=copies,
        failure_reason=reason,
    )


BOTH = frozenset({"llama-aaaaaaaa"}), frozenset({"llama-cccccccc"})


@pytest.mark.parametrize(
    ("rec", "observed", "action", "target", "status"),
    [
        # Given nothing exists, the model comes first, then the config, then the endpoint.
        (record(), Observed(), p.CreateModel, "llama-aaaaaaaa", "CREATING"),
        (record(), Observed(models=BOTH[0]), p.CreateEndpointConfig, "llama-cccccccc", "CREATING"),
        (record(), Observed(*BOTH), p.CreateEndpoint, "llama", "CREATING"),
        # While SageMaker works, the reconciler waits instead of polling.
        (record(), Observed(*BOTH, endpoint=endpoint("Creating")), p.Wait, "llama", "CREATING"),
        (record(), Observed(*BOTH, endpoint=endpoint()), p.Settle, "llama", "IN_SERVICE"),
        # A spec change (new config name) rolls the endpoint with UpdateEndpoint.
        (
            record(status="IN_SERVICE", generation=2),
            Observed(*BOTH, endpoint=endpoint(config="llama-00000000", models=("llama-0ld00000",))),
            p.UpdateEndpoint,
            "llama",
            "UPDATING",
        ),
        # The update was asked for and the endpoint is back on the old config: rolled back.
        (
            record(
                status="UPDATING",
                generation=2,
                attempt=Attempt(generation=2, target="llama-cccccccc"),
            ),
            Observed(
                *BOTH, endpoint=endpoint(config="llama-00000000", reason="health check failed")
            ),
            p.Settle,
            "llama",
            "FAILED",
        ),
        # A failure of this generation's attempt stops retrying.
        (
            record(attempt=Attempt(generation=1, target="llama-cccccccc")),
            Observed(*BOTH, endpoint=endpoint("Failed", reason="CUDA out of memory")),
            p.Settle,
            "llama",
            "FAILED",
        ),
        # A failure left from an older spec is replaced.
        (
            record(generation=3, failed_generation=2, attempt=Attempt(generation=2, target="x")),
            Observed(*BOTH, endpoint=endpoint("Failed", config="llama-00000000")),
            p.DeleteEndpoint,
            "llama",
            "CREATING",
        ),
        # Leftovers of an earlier generation are collected once in service: configs first.
        (
            record(status="IN_SERVICE"),
            Observed(
                models=frozenset({"llama-aaaaaaaa", "llama-0ld00000"}),
                configs=frozenset({"llama-cccccccc", "llama-0ldc0000"}),
                endpoint=endpoint(),
            ),
            p.DeleteEndpointConfig,
            "llama-0ldc0000",
            "IN_SERVICE",
        ),
        (
            record(status="IN_SERVICE"),
            Observed(
                models=frozenset({"llama-aaaaaaaa", "llama-0ld00000"}),
                configs=BOTH[1],
                endpoint=endpoint(),
            ),
            p.DeleteModel,
            "llama-0ld00000",
            "IN_SERVICE",
        ),
        # Sleep deletes the endpoint but keeps model and config; wake recreates it.
        (
            record(desired_state="sleeping"),
            Observed(*BOTH, endpoint=endpoint()),
            p.DeleteEndpoint,
            "llama",
            "SLEEPING",
        ),
        (record(desired_state="sleeping"), Observed(*BOTH), p.Settle, "llama", "SLEEPING"),
        (record(status="SLEEPING"), Observed(*BOTH), p.CreateEndpoint, "llama", "CREATING"),
    ],
)
def test_dedicated_plan(rec, observed, action, target, status):
    # When the planner looks at the snapshot
    step = p.plan_next_action(rec, dedicated(), observed)
    # Then it picks exactly the expected next step
    assert type(step.action) is action
    assert step.action.target == target
    assert step.status == status


def test_failed_step_names_sagemakers_reason():
    rec = record(attempt=Attempt(generation=1, target="llama-cccccccc"))
    step = p.plan_next_action(
        rec, dedicated(), Observed(*BOTH, endpoint=endpoint("Failed", reason="CUDA out of memory"))
    )
    assert "CUDA out of memory" in step.reason
    assert step.action.failed


def test_stopped_after_failure_until_spec_changes():
    # Given a deployment already marked failed for its current generation
    rec = record(status="FAILED", failed_generation=1, status_reason="boom")
    # When anything is observed, nothing is retried
    step = p.plan_next_action(rec, dedicated(), Observed())
    assert isinstance(step.action, p.Settle) and step.status == "FAILED"
    # And after a spec change (new generation) the work resumes
    step = p.plan_next_action(rec.model_copy(update={"generation": 2}), dedicated(), Observed())
    assert isinstance(step.action, p.CreateModel)


@pytest.mark.parametrize(
    ("observed", "action", "target", "status"),
    [
        (
            Observed(
                scalable_targets=frozenset({"endpoint/llama/variant/AllTraffic"}),
                alarms=frozenset({"llmhost-llama-idle"}),
                endpoint=endpoint(),
                **dict(zip(("models", "configs"), BOTH, strict=True)),
            ),
            p.DeregisterScalableTarget,
            "endpoint/llama/variant/AllTraffic",
            "DELETING",
        ),
        (
            Observed(alarms=frozenset({"llmhost-llama-idle"}), endpoint=endpoint()),
            p.DeleteAlarm,
            "llmhost-llama-idle",
            "DELETING",
        ),
        (Observed(*BOTH, endpoint=endpoint()), p.DeleteEndpoint, "llama", "DELETING"),
        (Observed(*BOTH, endpoint=endpoint("Creating")), p.Wait, "llama", "DELETING"),
        (Observed(*BOTH), p.DeleteEndpointConfig, "llama-cccccccc", "DELETING"),
        (Observed(models=BOTH[0]), p.DeleteModel, "llama-aaaaaaaa", "DELETING"),
        (Observed(), p.Settle, "llama", "DELETED"),
    ],
)
def test_delete_order(observed, action, target, status):
    # Given a deployment marked for deletion
    rec = record(desired_state="deleted", status="DELETING")
    step = p.plan_next_action(rec, dedicated(), observed)
    # Then scaling goes first, then the endpoint, configs and models
    assert (type(step.action), step.action.target, step.status) == (action, target, status)


POOL_UP = ObservedEndpoint(name="pool", status="InService", config_name="pool-11111111")
SHARED_BASE = dict(
    models=frozenset({"zephyr-aaaaaaaa"}), configs=frozenset({"pool-11111111"}), endpoint=POOL_UP
)


@pytest.mark.parametrize(
    ("rec_changes", "observed", "action", "target", "status"),
    [
        ({}, Observed(), p.CreateEndpointConfig, "pool-11111111", "CREATING"),
        ({}, Observed(configs=frozenset({"pool-11111111"})), p.CreateEndpoint, "pool", "CREATING"),
        (
            {},
            Observed(configs=frozenset({"pool-11111111"}), endpoint=POOL_UP),
            p.CreateModel,
            "zephyr-aaaaaaaa",
            "CREATING",
        ),
        ({}, Observed(**SHARED_BASE), p.CreateComponent, "zephyr", "CREATING"),
        (
            {},
            Observed(**SHARED_BASE, component=component("Creating")),
            p.Wait,
            "zephyr",
            "CREATING",
        ),
        ({}, Observed(**SHARED_BASE, component=component()), p.Settle, "zephyr", "IN_SERVICE"),
        (
            {"status": "IN_SERVICE", "generation": 2},
            Observed(**SHARED_BASE, component=component(model="zephyr-0ld00000")),
            p.UpdateComponent,
            "zephyr",
            "UPDATING",
        ),
        (
            {"desired_state": "sleeping", "status": "IN_SERVICE"},
            Observed(**SHARED_BASE, component=component()),
            p.SetComponentCopies,
            "zephyr",
            "SLEEPING",
        ),
        (
            {"status": "SLEEPING"},
            Observed(**SHARED_BASE, component=component(copies=0)),
            p.SetComponentCopies,
            "zephyr",
            "CREATING",
        ),
        (
            {"desired_state": "deleted", "status": "DELETING"},
            Observed(**SHARED_BASE, component=component()),
            p.DeleteComponent,
            "zephyr",
            "DELETING",
        ),
        (
            {"desired_state": "deleted", "status": "DELETING"},
            Observed(**SHARED_BASE, component=component("Updating")),
            p.Wait,
            "zephyr",
            "DELETING",
        ),
        # The pool stays while other models use it ...
        (
            {"desired_state": "deleted", "status": "DELETING"},
            Observed(
                configs=frozenset({"pool-11111111"}),
                endpoint=POOL_UP,
                pool_components=frozenset({"other"}),
            ),
            p.Settle,
            "zephyr",
            "DELETED",
        ),
        # ... and goes with the last one.
        (
            {"desired_state": "deleted", "status": "DELETING"},
            Observed(configs=frozenset({"pool-11111111"}), endpoint=POOL_UP),
            p.DeleteEndpoint,
            "pool",
            "DELETING",
        ),
        (
            {"desired_state": "deleted", "status": "DELETING"},
            Observed(configs=frozenset({"pool-11111111"})),
            p.DeleteEndpointConfig,
            "pool-11111111",
            "DELETING",
        ),
    ],
)
def test_shared_plan(rec_changes, observed, action, target, status):
    step = p.plan_next_action(record(SHARED, **rec_changes), shared(), observed)
    assert (type(step.action), step.action.target, step.status) == (action, target, status)


def test_wake_restores_at_least_one_copy():
    rec = record(SHARED, status="SLEEPING")
    step = p.plan_next_action(rec, shared(), Observed(**SHARED_BASE, component=component(copies=0)))
    assert isinstance(step.action, p.SetComponentCopies) and step.action.copies == 1


# ------------------------------------------------------------------- sleep/wake schedules

SCHEDULER = ScheduleTarget(
    group="llmhost-schedules",
    function_arn="arn:aws:lambda:us-east-1:123456789012:function:llmhost-scaling",
    role_arn="arn:aws:iam::123456789012:role/llmhost-scheduler",
)
NIGHT = SleepWakeSchedule("llama-5eeb0000", "llama", "cron(0 20 ? * * *)", "UTC", "sleep")
MORNING = SleepWakeSchedule("llama-ab1e0000", "llama", "cron(0 7 ? * * *)", "UTC", "wake")


def with_schedules(d: DesiredResources, target: ScheduleTarget = SCHEDULER) -> DesiredResources:
    return replace(d, sleep_wake=(MORNING, NIGHT), schedule_target=target)


IN_SERVICE_OBS = dict(zip(("models", "configs"), BOTH, strict=True)) | {"endpoint": endpoint()}


@pytest.mark.parametrize(
    ("rec", "observed", "action", "target", "status"),
    [
        # Given a new deployment: schedules come once its endpoint config exists
        (record(), Observed(models=BOTH[0]), p.CreateEndpointConfig, "llama-cccccccc", "CREATING"),
        (record(), Observed(*BOTH), p.CreateSchedule, "llama-ab1e0000", "CREATING"),
        (
            record(),
            Observed(*BOTH, schedules=frozenset({"llama-ab1e0000"})),
            p.CreateSchedule,
            "llama-5eeb0000",
            "CREATING",
        ),
        (
            record(),
            Observed(*BOTH, schedules=frozenset({"llama-ab1e0000", "llama-5eeb0000"})),
            p.CreateEndpoint,
            "llama",
            "CREATING",
        ),
        # In service, a changed rule (new name) is created and the old one removed
        (
            record(status="IN_SERVICE"),
            Observed(**IN_SERVICE_OBS, schedules=frozenset({"llama-0ld00000", "llama-ab1e0000"})),
            p.CreateSchedule,
            "llama-5eeb0000",
            "IN_SERVICE",
        ),
        (
            record(status="IN_SERVICE"),
            Observed(
                **IN_SERVICE_OBS,
                schedules=frozenset({"llama-0ld00000", "llama-ab1e0000", "llama-5eeb0000"}),
            ),
            p.DeleteSchedule,
            "llama-0ld00000",
            "IN_SERVICE",
        ),
        # Sleeping: the wake schedule must still exist to fire
        (
            record(status="SLEEPING", desired_state="sleeping"),
            Observed(*BOTH, schedules=frozenset({"llama-5eeb0000"})),
            p.CreateSchedule,
            "llama-ab1e0000",
            "SLEEPING",
        ),
        (
            record(status="SLEEPING", desired_state="sleeping"),
            Observed(*BOTH, schedules=frozenset({"llama-5eeb0000", "llama-ab1e0000"})),
            p.Settle,
            "llama",
            "SLEEPING",
        ),
    ],
)
def test_sleep_wake_schedules_are_kept_in_step_with_the_spec(rec, observed, action, target, status):
    # When the planner looks at a deployment whose spec has a night sleep and a morning wake
    step = p.plan_next_action(rec, with_schedules(dedicated()), observed)
    # Then the schedules are created/removed at the expected point, in the expected status
    assert (type(step.action), step.action.target, step.status) == (action, target, status)


def test_schedules_the_spec_no_longer_has_are_removed():
    # Given a spec without sleep/wake rules and a leftover schedule of this deployment
    observed = Observed(**IN_SERVICE_OBS, schedules=frozenset({"llama-5eeb0000"}))
    step = p.plan_next_action(
        record(status="IN_SERVICE"), replace(dedicated(), schedule_target=SCHEDULER), observed
    )
    # Then it is deleted before the deployment settles
    assert (type(step.action), step.action.target) == (p.DeleteSchedule, "llama-5eeb0000")


def test_delete_removes_schedules_before_anything_else():
    rec = record(desired_state="deleted", status="DELETING")
    observed = Observed(
        *BOTH,
        endpoint=endpoint(),
        scalable_targets=frozenset({"endpoint/llama/variant/AllTraffic"}),
        schedules=frozenset({"llama-ab1e0000"}),
    )
    # When a deployment with a wake schedule is deleted, the schedule goes first (it must not
    # wake a deployment that is being torn down)
    step = p.plan_next_action(rec, with_schedules(dedicated()), observed)
    assert (type(step.action), step.action.target, step.status) == (
        p.DeleteSchedule,
        "llama-ab1e0000",
        "DELETING",
    )


@pytest.mark.parametrize("desired_state", ["in_service", "sleeping"])
def test_missing_scheduler_settings_are_named_and_nothing_is_created(desired_state):
    # Given sleep/wake rules but a reconcile function without SCHEDULE_GROUP / role settings
    target = ScheduleTarget(function_arn=SCHEDULER.function_arn)
    rec = record(status="IN_SERVICE", desired_state=desired_state)
    observed = Observed(*BOTH) if desired_state == "sleeping" else Observed(**IN_SERVICE_OBS)
    step = p.plan_next_action(rec, with_schedules(dedicated(), target), observed)
    # Then the deployment settles (no crash, no Scheduler call) and says what to set
    assert isinstance(step.action, p.Settle) and not step.action.failed
    assert "SCHEDULE_GROUP" in step.reason and "SCHEDULER_ROLE_ARN" in step.reason
    assert "SCALING_FUNCTION_ARN" not in step.reason


def test_shared_schedules_follow_the_pool_config():
    d = replace(
        shared(), sleep_wake=(replace(MORNING, name="zephyr-ab1e0000"),), schedule_target=SCHEDULER
    )
    step = p.plan_next_action(record(SHARED), d, Observed(configs=frozenset({"pool-11111111"})))
    assert (type(step.action), step.action.target) == (p.CreateSchedule, "zephyr-ab1e0000")


# ------------------------------------------------- shared deployments at zero copies


def autoscaled_shared(min_capacity: int) -> DesiredResources:
    from llmhost.scaling.policy import policy_from_spec
    from llmhost.specs import Scaling

    scaling = Scaling(min_capacity=min_capacity, max_capacity=4, scale_to_zero=min_capacity == 0)
    return replace(shared(), scaling=policy_from_spec(scaling))


# Everything ApplyScaling puts for a min-0 TGI component: target, tracking and step policies,
# no-capacity, idle, overload and underload alarms.
APPLIED_MIN_0 = {
    "scalable_targets": frozenset({"inference-component/zephyr"}),
    "scaling_policies": frozenset(
        ("inference-component/zephyr", f"llmhost-zephyr-{name}") for name in ("target", "wake")
    ),
    "alarms": frozenset(
        f"llmhost-zephyr-{kind}" for kind in ("idle", "no-capacity", "overload", "underload")
    ),
}


@pytest.mark.parametrize(
    "lost",
    [
        {"scaling_policies": {("inference-component/zephyr", "llmhost-zephyr-wake")}},
        {"scaling_policies": {("inference-component/zephyr", "llmhost-zephyr-target")}},
        {"alarms": {"llmhost-zephyr-no-capacity"}},
        {"alarms": {"llmhost-zephyr-idle"}},
        {"alarms": {"llmhost-zephyr-overload"}},
        {"alarms": {"llmhost-zephyr-underload"}},
    ],
)
def test_a_scaling_piece_lost_out_of_band_is_applied_again(lost):
    # Given autoscaling applied, and one of its pieces deleted behind llmhost's back
    d = autoscaled_shared(0)
    rec = record(SHARED, status="IN_SERVICE", scaling_applied=d.scaling_hash)
    pieces = {key: value - lost.get(key, set()) for key, value in APPLIED_MIN_0.items()}
    observed = Observed(**SHARED_BASE, component=component(copies=1), **pieces)
    step = p.plan_next_action(rec, d, observed)
    # Then the planner applies the scaling again, naming what it restores
    assert isinstance(step.action, p.ApplyScaling) and step.status == "IN_SERVICE"
    (missing,) = [name for _, name in lost.get("scaling_policies", set())] or lost["alarms"]
    assert step.reason.endswith(f"restoring {missing}")
    # And with every piece in place, it settles
    whole = Observed(**SHARED_BASE, component=component(copies=1), **APPLIED_MIN_0)
    assert isinstance(p.plan_next_action(rec, d, whole).action, p.Settle)


def test_zero_copies_under_autoscaling_settle_in_service():
    # Given autoscaling with min 0 applied, and AAS scaled the component in to zero copies
    d = autoscaled_shared(0)
    rec = record(SHARED, status="IN_SERVICE", scaling_applied=d.scaling_hash)
    observed = Observed(**SHARED_BASE, component=component(copies=0), **APPLIED_MIN_0)
    step = p.plan_next_action(rec, d, observed)
    # Then the planner does not fight it: IN_SERVICE, with the reason a user reads
    assert isinstance(step.action, p.Settle)
    assert step.status == "IN_SERVICE"
    assert step.reason == "scaled to zero copies; the next request wakes it"


@pytest.mark.parametrize(
    ("rec_changes", "min_capacity"),
    [
        # waking from SLEEPING always adds a copy, even under min-0 autoscaling
        ({"status": "SLEEPING", "scaling_applied": "x"}, 0),
        # autoscaling not applied yet (creation): a copy is added
        ({"status": "CREATING"}, 0),
        # min above zero: zero copies is not autoscaling's doing
        ({"status": "IN_SERVICE", "scaling_applied": "x"}, 1),
    ],
)
def test_zero_copies_get_a_copy_when_waking_or_not_autoscaled(rec_changes, min_capacity):
    d = autoscaled_shared(min_capacity)
    observed = Observed(**SHARED_BASE, component=component(copies=0))
    step = p.plan_next_action(record(SHARED, **rec_changes), d, observed)
    assert isinstance(step.action, p.SetComponentCopies) and step.action.copies == 1


def test_a_wake_landing_while_the_sleep_was_under_way_still_adds_a_copy():
    # Given a component that went SLEEPING (zero copies), was woken by a request while
    # SageMaker was still updating it, and so passed through CREATING, never IN_SERVICE
    d = autoscaled_shared(0)
    rec = (
        record(SHARED, status="IN_SERVICE", scaling_applied=d.scaling_hash)
        .with_event("SetComponentCopies zephyr", status="SLEEPING")
        .with_event("WakeRequested", desired_state="in_service")
        .with_event("Wait zephyr", status="CREATING")
    )
    observed = Observed(**SHARED_BASE, component=component(copies=0), **APPLIED_MIN_0)
    # When the planner sees it at zero copies
    step = p.plan_next_action(rec, d, observed)
    # Then it wakes it (this zero is a sleep's, not autoscaling's)
    assert isinstance(step.action, p.SetComponentCopies) and step.action.copies == 1
    # And once it has been back IN_SERVICE, a later zero is autoscaling's again
    back = rec.with_event("Settle zephyr", status="IN_SERVICE")
    assert isinstance(p.plan_next_action(back, d, observed).action, p.Settle)


# ------------------------------------------------------------- asynchronous endpoints

ASYNC = {
    "name": "llama",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "async", "instance_type": "ml.g5.2xlarge"},
    "scaling": {"min_capacity": 0, "max_capacity": 2},
}
ASYNC_TARGET = AsyncTarget(
    bucket="llmhost-jobs",
    success_topic="arn:aws:sns:us-east-1:123456789012:llmhost-async-success",
    error_topic="arn:aws:sns:us-east-1:123456789012:llmhost-async-error",
)


def async_desired(target: AsyncTarget = ASYNC_TARGET) -> DesiredResources:
    from llmhost.scaling.policy import async_policy
    from llmhost.specs import Scaling

    policy = async_policy(Scaling(min_capacity=0, max_capacity=2), concurrency=4)
    return dedicated(kind="async", async_target=target, scaling=policy)


ASYNC_SCALING = {
    "scalable_targets": frozenset({"endpoint/llama/variant/AllTraffic"}),
    "scaling_policies": frozenset(
        ("endpoint/llama/variant/AllTraffic", f"llmhost-llama-{name}")
        for name in ("target", "wake")
    ),
    "alarms": frozenset({"llmhost-llama-no-capacity"}),
}


@pytest.mark.parametrize(
    ("rec", "observed", "action", "target", "status"),
    [
        # The same order as a dedicated endpoint: model, config, endpoint.
        (record(ASYNC), Observed(), p.CreateModel, "llama-aaaaaaaa", "CREATING"),
        (
            record(ASYNC),
            Observed(models=BOTH[0]),
            p.CreateEndpointConfig,
            "llama-cccccccc",
            "CREATING",
        ),
        (record(ASYNC), Observed(*BOTH), p.CreateEndpoint, "llama", "CREATING"),
        # In service: the backlog autoscaling (min 0) is applied once.
        (
            record(ASYNC, status="IN_SERVICE"),
            Observed(*BOTH, endpoint=endpoint()),
            p.ApplyScaling,
            "endpoint/llama/variant/AllTraffic",
            "IN_SERVICE",
        ),
        # Sleep deletes the endpoint like any other.
        (
            record(ASYNC, desired_state="sleeping"),
            Observed(*BOTH, endpoint=endpoint()),
            p.DeleteEndpoint,
            "llama",
            "SLEEPING",
        ),
        # Delete: scaling pieces first, then the endpoint.
        (
            record(ASYNC, desired_state="deleted"),
            Observed(*BOTH, endpoint=endpoint(), **ASYNC_SCALING),
            p.DeleteScalingPolicy,
            "llmhost-llama-target",
            "DELETING",
        ),
    ],
)
def test_async_plan(rec, observed, action, target, status):
    step = p.plan_next_action(rec, async_desired(), observed)
    assert type(step.action) is action
    assert step.action.target == target
    assert step.status == status


def test_async_with_its_scaling_in_place_settles_even_at_zero_instances():
    # Given the backlog autoscaling applied (the endpoint may be at zero instances: the
    # planner never reads the count, so it does not fight the scale-in)
    d = async_desired()
    rec = record(ASYNC, status="IN_SERVICE", scaling_applied=d.scaling_hash)
    step = p.plan_next_action(rec, d, Observed(*BOTH, endpoint=endpoint(), **ASYNC_SCALING))
    assert isinstance(step.action, p.Settle) and step.status == "IN_SERVICE"
    # And a lost no-capacity alarm (the one that brings the first instance up) is restored
    lost = {**ASYNC_SCALING, "alarms": frozenset()}
    step = p.plan_next_action(rec, d, Observed(*BOTH, endpoint=endpoint(), **lost))
    assert isinstance(step.action, p.ApplyScaling)
    assert step.reason.endswith("restoring llmhost-llama-no-capacity")


def test_async_without_its_settings_names_them_and_creates_nothing():
    # Given a reconcile function without the topics (the stack's template sets them)
    d = async_desired(AsyncTarget(bucket="llmhost-jobs"))
    step = p.plan_next_action(record(ASYNC), d, Observed())
    # Then nothing is created and the status says what to set; not a failed generation
    assert isinstance(step.action, p.Settle) and not step.action.failed
    assert step.status == "FAILED"
    assert "ASYNC_SUCCESS_TOPIC_ARN, ASYNC_ERROR_TOPIC_ARN" in step.reason
    assert "JOBS_BUCKET" not in step.reason
    # And a delete still goes ahead without them
    gone = p.plan_next_action(record(ASYNC, desired_state="deleted"), d, Observed(*BOTH))
    assert isinstance(gone.action, p.DeleteEndpointConfig)
