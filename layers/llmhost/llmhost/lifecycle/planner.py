"""The reconciler's brain: (desired, observed) -> the next action. Pure; no I/O.

``plan_next_action`` is called again after every applied action, with a fresh snapshot,
until it returns an action that needs no AWS call (``Wait`` or ``Settle``). Because each
decision depends only on what SageMaker reports now, a crash or retry between any two
steps simply re-plans from the real state: nothing is remembered that could go stale,
except ``record.attempt``, which tells a failure of the current spec from an older one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmhost.lifecycle.desired import DesiredResources
from llmhost.lifecycle.observed import Observed, ObservedComponent, ObservedEndpoint
from llmhost.lifecycle.ownership import alarm_prefix
from llmhost.lifecycle.record import DeploymentRecord, Status

if TYPE_CHECKING:
    from llmhost.scaling.policy import AlarmSpec, ScalingPolicy

# SageMaker endpoint statuses grouped by what the reconciler can do while they hold.
ENDPOINT_BUSY = {"Creating", "Updating", "SystemUpdating", "RollingBack"}
ENDPOINT_BROKEN = {"Failed", "UpdateRollbackFailed", "OutOfService"}


@dataclass(frozen=True)
class Action:
    """Base class. ``target`` is the resource the action is about."""

    target: str

    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def calls_aws(self) -> bool:
        return True


@dataclass(frozen=True)
class CreateModel(Action):
    pass


@dataclass(frozen=True)
class CreateEndpointConfig(Action):
    pass


@dataclass(frozen=True)
class CreateEndpoint(Action):
    config: str


@dataclass(frozen=True)
class UpdateEndpoint(Action):
    config: str


@dataclass(frozen=True)
class DeleteEndpoint(Action):
    pass


@dataclass(frozen=True)
class DeleteEndpointConfig(Action):
    pass


@dataclass(frozen=True)
class DeleteModel(Action):
    pass


@dataclass(frozen=True)
class CreateComponent(Action):
    copies: int


@dataclass(frozen=True)
class UpdateComponent(Action):
    pass


@dataclass(frozen=True)
class SetComponentCopies(Action):
    copies: int


@dataclass(frozen=True)
class DeleteComponent(Action):
    pass


@dataclass(frozen=True)
class ApplyScaling(Action):
    """Register the scalable target, its policies and llmhost's alarms (idempotent puts).

    ``target`` is the Application Auto Scaling resource id; ``config`` the hash applied."""

    config: str


@dataclass(frozen=True)
class DeleteScalingPolicy(Action):
    """``target`` is the policy name; ``resource`` its scalable target's resource id."""

    resource: str


@dataclass(frozen=True)
class DeregisterScalableTarget(Action):
    """``target`` is the Application Auto Scaling resource id; policies go with it."""


@dataclass(frozen=True)
class DeleteAlarm(Action):
    pass


@dataclass(frozen=True)
class CreateSchedule(Action):
    """``target`` is the EventBridge Scheduler schedule name (a sleep or wake rule)."""


@dataclass(frozen=True)
class DeleteSchedule(Action):
    """``target`` is the EventBridge Scheduler schedule name."""


@dataclass(frozen=True)
class Wait(Action):
    """Nothing to do until SageMaker reports a change (an event or the schedule)."""

    @property
    def calls_aws(self) -> bool:
        return False


@dataclass(frozen=True)
class Settle(Action):
    """Record a status; the deployment is where it should be (or stopped on a failure)."""

    failed: bool = False

    @property
    def calls_aws(self) -> bool:
        return False


@dataclass(frozen=True)
class Step:
    action: Action
    status: Status
    reason: str


def plan_next_action(
    record: DeploymentRecord, desired: DesiredResources, observed: Observed
) -> Step:
    """Decide the single next step that moves SageMaker towards the record's desired state."""
    if record.desired_state == "deleted":
        # Resources that are not llmhost's are not in ``observed``: nothing touches them.
        return _plan_delete(desired, observed)
    if observed.conflicts:
        return _not_ours(record, desired, observed)
    if desired.is_shared:
        return _plan_shared(record, desired, observed)
    return _plan_endpoint(record, desired, observed)


# ------------------------------------------------------------------- dedicated and serverless


def _plan_endpoint(record: DeploymentRecord, d: DesiredResources, o: Observed) -> Step:
    asleep = record.desired_state == "sleeping"
    if record.failed_generation == record.generation and not asleep:
        return Step(Settle(d.endpoint_name, failed=True), "FAILED", record.status_reason)
    if d.kind == "async" and d.async_target.missing:
        # Not a failed generation: once the stack provides them, the next reconcile goes on.
        reason = (
            f"an async endpoint needs the reconcile function's {', '.join(d.async_target.missing)} "
            "setting(s) (where results go and how they are announced); deploy the stack's "
            "template, which sets them"
        )
        return Step(Settle(d.endpoint_name), "FAILED", reason)
    if d.model_name not in o.models:
        return Step(CreateModel(d.model_name), _progress(record), "creating the SageMaker model")
    if d.config_name not in o.configs:
        return Step(
            CreateEndpointConfig(d.config_name), _progress(record), "creating the endpoint config"
        )
    schedules = _schedule_step(record, d, o)
    if schedules:
        return schedules
    ep = o.endpoint
    if asleep:
        return _plan_sleep_endpoint(d, ep)
    if ep is None:
        reason = (
            "waking: recreating the endpoint"
            if record.status == "SLEEPING"
            else ("creating the endpoint (SageMaker takes 10-30 minutes)")
        )
        return Step(CreateEndpoint(d.endpoint_name, config=d.config_name), "CREATING", reason)
    if ep.status == "Creating":
        return Step(Wait(ep.name), "CREATING", "SageMaker is creating the endpoint")
    if ep.status in ENDPOINT_BUSY:
        return Step(Wait(ep.name), "UPDATING", f"SageMaker reports the endpoint {ep.status}")
    if ep.status == "Deleting":
        return Step(Wait(ep.name), _progress(record), "waiting for the old endpoint to go away")
    if ep.status in ENDPOINT_BROKEN:
        return _on_broken(record, ep.name, ep.failure_reason, "endpoint", DeleteEndpoint)
    # InService
    if ep.config_name != d.config_name:
        if _attempted(record):
            return _rolled_back(ep.failure_reason, ep.name)
        return Step(
            UpdateEndpoint(ep.name, config=d.config_name),
            "UPDATING",
            "rolling the endpoint to the new config (the old one serves until it is ready)",
        )
    stale = _collect_garbage(
        o, keep_configs={d.config_name}, keep_models={d.model_name} | ep.config_models
    )
    if stale:
        return Step(stale, "IN_SERVICE", "removing resources of earlier generations")
    scaling = _scaling_step(record, d, o, "IN_SERVICE")
    if scaling:
        return scaling
    return Step(Settle(ep.name), "IN_SERVICE", _with_schedule_note("", d))


def _plan_sleep_endpoint(d: DesiredResources, ep: ObservedEndpoint | None) -> Step:
    if ep is None:
        reason = _with_schedule_note("endpoint deleted; its config is kept for waking", d)
        return Step(Settle(d.endpoint_name), "SLEEPING", reason)
    if ep.status == "Deleting":
        return Step(Wait(ep.name), "SLEEPING", "deleting the endpoint to sleep")
    if ep.status in ENDPOINT_BUSY:
        return Step(Wait(ep.name), "SLEEPING", f"will sleep once the endpoint is not {ep.status}")
    return Step(DeleteEndpoint(ep.name), "SLEEPING", "deleting the endpoint to sleep")


# ------------------------------------------------------------------------------------ shared


def _plan_shared(record: DeploymentRecord, d: DesiredResources, o: Observed) -> Step:
    asleep = record.desired_state == "sleeping"
    if record.failed_generation == record.generation:
        return Step(Settle(d.deployment, failed=True), "FAILED", record.status_reason)
    if d.config_name not in o.configs:
        return Step(
            CreateEndpointConfig(d.config_name), _progress(record), "creating the pool's config"
        )
    schedules = _schedule_step(record, d, o)
    if schedules:
        return schedules
    pool = o.endpoint
    if pool is None:
        return Step(
            CreateEndpoint(d.endpoint_name, config=d.config_name),
            _progress(record),
            f"creating the shared endpoint '{d.endpoint_name}'",
        )
    if pool.status == "Deleting":
        return Step(Wait(pool.name), _progress(record), "the pool endpoint is being deleted")
    if pool.status in ENDPOINT_BUSY:
        return Step(Wait(pool.name), _progress(record), f"the pool endpoint is {pool.status}")
    if pool.status in ENDPOINT_BROKEN:
        return _on_broken(record, pool.name, pool.failure_reason, "pool endpoint", DeleteEndpoint)
    if d.model_name not in o.models:
        return Step(CreateModel(d.model_name), _progress(record), "creating the SageMaker model")
    ic = o.component
    wanted_copies = 0 if asleep else d.copies
    if ic is None:
        return Step(
            CreateComponent(d.deployment, copies=wanted_copies),
            "CREATING",
            "creating the inference component",
        )
    if ic.status == "Creating":
        return Step(Wait(ic.name), "CREATING", "SageMaker is creating the inference component")
    if ic.status == "Updating":
        return Step(Wait(ic.name), _progress(record), "SageMaker is updating the component")
    if ic.status == "Deleting":
        return Step(Wait(ic.name), _progress(record), "waiting for the old component to go")
    if ic.status == "Failed":
        return _on_broken(
            record, ic.name, ic.failure_reason, "inference component", DeleteComponent
        )
    if _component_differs(ic, d):
        if _attempted(record):
            return _rolled_back(ic.failure_reason, ic.name)
        return Step(UpdateComponent(ic.name), "UPDATING", "updating the inference component")
    if asleep and ic.desired_copies > 0:
        return Step(SetComponentCopies(ic.name, copies=0), "SLEEPING", "scaling to zero copies")
    if not asleep and ic.desired_copies == 0 and not _scaled_to_zero(record, d):
        return Step(
            SetComponentCopies(ic.name, copies=max(1, d.copies)),
            "CREATING",
            "waking: adding a copy",
        )
    stale = _collect_garbage(o, keep_configs=o.configs, keep_models={d.model_name, ic.model_name})
    if stale:
        return Step(stale, "SLEEPING" if asleep else "IN_SERVICE", "removing old models")
    if asleep:
        reason = _with_schedule_note("zero copies; the next request wakes it", d)
        return Step(Settle(ic.name), "SLEEPING", reason)
    scaling = _scaling_step(record, d, o, "IN_SERVICE")
    if scaling:
        return scaling
    reason = "scaled to zero copies; the next request wakes it" if ic.desired_copies == 0 else ""
    return Step(Settle(ic.name), "IN_SERVICE", _with_schedule_note(reason, d))


def _scaled_to_zero(record: DeploymentRecord, d: DesiredResources) -> bool:
    """Zero copies are autoscaling's decision, not a sleep to wake from.

    With min 0 applied, target tracking scales an idle component in to zero and the
    no-capacity alarm (or the serving hook) brings it back: adding a copy here would fight
    it. Copies are added only when waking from SLEEPING, or while autoscaling that may
    reach zero is not in force (creation, min above 0).
    """
    return (
        not _waking_from_sleep(record)
        and d.scaling is not None
        and d.scaling.min_capacity == 0
        and record.scaling_applied is not None
    )


def _waking_from_sleep(record: DeploymentRecord) -> bool:
    """Has the deployment been SLEEPING since it was last IN_SERVICE? (A wake that lands
    while the sleep is still under way passes through CREATING, never IN_SERVICE.)"""
    if record.status == "SLEEPING":
        return True
    for entry in reversed(record.history):
        if entry.status == "IN_SERVICE":
            return False
        if entry.status == "SLEEPING":
            return True
    return False


def _component_differs(ic: ObservedComponent, d: DesiredResources) -> bool:
    want = d.component_spec["ComputeResourceRequirements"]
    have = ic.compute
    return ic.model_name != d.model_name or any(
        float(have.get(key, -1)) != float(value) for key, value in want.items()
    )


def _not_ours(record: DeploymentRecord, d: DesiredResources, o: Observed) -> Step:
    """A name this deployment needs is taken by a resource llmhost did not create: stop,
    and leave that resource alone (never update, adopt or delete it)."""
    field = "hosting.pool" if d.is_shared else "name"
    reason = (
        f"{'; '.join(o.conflicts)}; llmhost never changes or deletes resources it did not "
        f"create: delete that resource (llmhost then goes on by itself), or delete this "
        f"deployment and create it under another {field}"
    )
    # Not a failed generation: once the name is free again, the next reconcile goes on.
    return Step(Settle(d.endpoint_name), "FAILED", reason)


# ------------------------------------------------------------------------------------ delete


def _plan_delete(d: DesiredResources, o: Observed) -> Step:
    """Tear down in dependency order: schedules, scaling, component, endpoint, configs,
    models, pool. Schedules go first so none fires a sleep or wake into a deletion."""
    for schedule in sorted(o.schedules):
        return Step(DeleteSchedule(schedule), "DELETING", "removing sleep/wake schedules")
    for resource, policy in sorted(o.scaling_policies):
        return Step(
            DeleteScalingPolicy(policy, resource=resource), "DELETING", "removing autoscaling"
        )
    for target in sorted(o.scalable_targets):
        return Step(DeregisterScalableTarget(target), "DELETING", "removing autoscaling")
    for alarm in sorted(o.alarms):
        return Step(DeleteAlarm(alarm), "DELETING", "removing alarms")
    if d.is_shared:
        ic = o.component
        if ic is not None:
            if ic.status in {"Creating", "Updating", "Deleting"}:
                return Step(Wait(ic.name), "DELETING", f"the component is {ic.status}")
            return Step(DeleteComponent(ic.name), "DELETING", "deleting the inference component")
        for model in sorted(o.models):
            return Step(DeleteModel(model), "DELETING", "deleting models")
        if o.pool_components or o.pool_wanted_by_others:
            return Step(Settle(d.deployment), "DELETED", "the shared pool stays for other models")
        step = _delete_endpoint_step(o.endpoint)
        if step:
            return step
        for config in sorted(o.configs):
            return Step(DeleteEndpointConfig(config), "DELETING", "deleting the pool's config")
        return Step(Settle(d.deployment), "DELETED", "all resources removed")
    step = _delete_endpoint_step(o.endpoint)
    if step:
        return step
    for config in sorted(o.configs):
        return Step(DeleteEndpointConfig(config), "DELETING", "deleting endpoint configs")
    for model in sorted(o.models):
        return Step(DeleteModel(model), "DELETING", "deleting models")
    return Step(Settle(d.deployment), "DELETED", "all resources removed")


def _delete_endpoint_step(ep: ObservedEndpoint | None) -> Step | None:
    if ep is None:
        return None
    if ep.status in ENDPOINT_BUSY or ep.status == "Deleting":
        return Step(Wait(ep.name), "DELETING", f"the endpoint is {ep.status}; deleting after")
    return Step(DeleteEndpoint(ep.name), "DELETING", "deleting the endpoint")


# ----------------------------------------------------------------------------------- helpers


def _scaling_step(
    record: DeploymentRecord, d: DesiredResources, o: Observed, status: Status
) -> Step | None:
    """Apply the spec's autoscaling once in service, re-apply it when it changes, and remove
    it when the spec no longer asks for any."""
    if d.scaling is None:
        return _remove_scaling(o, status)
    config = d.scaling_hash or ""
    reason = f"autoscaling {d.scaling.min_capacity}-{d.scaling.max_capacity}"
    if record.scaling_applied != config or d.scaling_resource_id not in o.scalable_targets:
        return Step(ApplyScaling(d.scaling_resource_id, config=config), status, reason)
    missing = _missing_scaling(d, o)
    if missing:
        # Drift: a piece was deleted out of band. The puts are idempotent, so all are redone.
        return Step(
            ApplyScaling(d.scaling_resource_id, config=config),
            status,
            f"{reason}: restoring {', '.join(missing)}",
        )
    return None


def hook_alarms(policy: ScalingPolicy) -> tuple[tuple[str, AlarmSpec | None], ...]:
    """llmhost's alarms without an action, by kind (``llmhost-<name>-<kind>``), None where
    the policy has none (it must then be deleted): their state changes reach the scaling
    hook through EventBridge. Idle: sleep; overload: ask for the copies demand needs;
    underload: release copies down to the window's peak."""
    return (
        ("idle", policy.idle_alarm),
        ("overload", policy.overload.alarm if policy.overload else None),
        ("underload", policy.underload.alarm if policy.underload else None),
    )


def _missing_scaling(d: DesiredResources, o: Observed) -> list[str]:
    """The policies, alarms and scheduled actions the spec's autoscaling has and AWS lacks."""
    assert d.scaling is not None
    prefix = alarm_prefix(d.deployment)
    policies = {f"{prefix}target"}
    alarms = set()
    if d.scaling.scale_from_zero is not None:
        policies.add(f"{prefix}wake")
        alarms.add(f"{prefix}no-capacity")
    alarms.update(f"{prefix}{kind}" for kind, alarm in hook_alarms(d.scaling) if alarm)
    observed = {name for rid, name in o.scaling_policies if rid == d.scaling_resource_id}
    scheduled = {name for name, *_ in d.schedules}
    return [
        *sorted(policies - observed),
        *sorted(alarms - o.alarms),
        *sorted(scheduled - o.scheduled_actions),
    ]


def _schedule_step(record: DeploymentRecord, d: DesiredResources, o: Observed) -> Step | None:
    """Create the spec's missing sleep/wake schedules and delete the ones it no longer has.

    Runs from the moment the endpoint config exists, in every state but deletion: the wake
    schedule of a SLEEPING deployment is what brings it back. Without the Scheduler settings
    nothing is created (``_with_schedule_note`` says why in the settled status).
    """
    status: Status
    if record.desired_state == "sleeping":
        status = "SLEEPING"
    elif record.status == "IN_SERVICE":
        status = "IN_SERVICE"
    else:
        status = _progress(record)
    if not d.schedule_target.missing:
        for schedule in d.sleep_wake:
            if schedule.name not in o.schedules:
                return Step(
                    CreateSchedule(schedule.name),
                    status,
                    f"scheduling {schedule.action} at {schedule.expression} {schedule.timezone}",
                )
    wanted = {schedule.name for schedule in d.sleep_wake}
    for name in sorted(o.schedules - wanted):
        return Step(DeleteSchedule(name), status, "removing a sleep/wake schedule")
    return None


def _with_schedule_note(reason: str, d: DesiredResources) -> str:
    """``reason``, plus why the spec's sleep/wake rules are not scheduled (if they are not)."""
    missing = d.schedule_target.missing
    if not d.sleep_wake or not missing:
        return reason
    note = (
        f"sleep/wake schedules not applied: the reconcile function has no {', '.join(missing)} "
        "setting; deploy the stack's template (it sets them) or remove the sleep/wake rules "
        "from scaling.schedules"
    )
    return f"{reason}; {note}" if reason else note


def _remove_scaling(o: Observed, status: Status) -> Step | None:
    """Policies first (not every backend drops them with their target), then targets, then
    llmhost's alarms."""
    for resource, policy in sorted(o.scaling_policies):
        return Step(DeleteScalingPolicy(policy, resource=resource), status, "removing autoscaling")
    for target in sorted(o.scalable_targets):
        return Step(DeregisterScalableTarget(target), status, "removing autoscaling")
    for alarm in sorted(o.alarms):
        return Step(DeleteAlarm(alarm), status, "removing alarms")
    return None


def _progress(record: DeploymentRecord) -> Status:
    """Status while preparing resources: CREATING before the first success, else UPDATING."""
    if record.status in {"IN_SERVICE", "UPDATING"}:
        return "UPDATING"
    if record.status == "SLEEPING" and record.desired_state == "sleeping":
        return "SLEEPING"
    return "CREATING"


def _attempted(record: DeploymentRecord) -> bool:
    """Did llmhost already ask SageMaker to move to this generation's resources?"""
    return record.attempt is not None and record.attempt.generation == record.generation


def _on_broken(
    record: DeploymentRecord, name: str, reason: str, what: str, delete: type[Action]
) -> Step:
    if _attempted(record):
        message = f"SageMaker reports the {what} failed: {reason or 'no reason given'}"
        return Step(Settle(name, failed=True), "FAILED", message + "; change the spec to retry")
    # A failure left over from an earlier spec: clear it and try the current one.
    return Step(delete(name), _progress(record), f"replacing the failed {what}")


def _rolled_back(reason: str, name: str) -> Step:
    message = (
        f"the update failed and SageMaker rolled back: {reason or 'no reason given'}; "
        "the previous version is still serving; change the spec to retry"
    )
    return Step(Settle(name, failed=True), "FAILED", message)


def _collect_garbage(
    o: Observed, keep_configs: set[str] | frozenset[str], keep_models: set[str] | frozenset[str]
) -> Action | None:
    """The next leftover of an earlier generation to delete: configs first, then models."""
    for config in sorted(o.configs - set(keep_configs)):
        return DeleteEndpointConfig(config)
    for model in sorted(o.models - set(keep_models)):
        return DeleteModel(model)
    return None
