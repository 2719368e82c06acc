"""The reconcile loop: observe, plan, apply, record — until SageMaker has to do the work.

One call takes as many steps as can be taken right now (create model, config, endpoint…)
and returns as soon as the next step is waiting on SageMaker. It never sleeps: the
"SageMaker Endpoint State Change" event or the drift-repair schedule calls it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmhost.errors import ConcurrentModification, LlmhostError, SageMakerBusy
from llmhost.lifecycle.applier import SageMakerApplier
from llmhost.lifecycle.desired import (
    AsyncTarget,
    DesiredResources,
    ScheduleTarget,
    desired_resources,
    teardown_resources,
)
from llmhost.lifecycle.observed import Observed
from llmhost.lifecycle.observer import SageMakerObserver
from llmhost.lifecycle.planner import (
    ApplyScaling,
    CreateComponent,
    CreateEndpoint,
    DeregisterScalableTarget,
    Step,
    UpdateComponent,
    UpdateEndpoint,
    Wait,
    plan_next_action,
)
from llmhost.lifecycle.record import Attempt, DeploymentRecord, PinnedPlan, Resources
from llmhost.lifecycle.registry import Registry
from llmhost.specs import DeploymentSpec

if TYPE_CHECKING:
    from llmhost.sizing.plan import Plan

_ATTEMPTS = (CreateEndpoint, UpdateEndpoint, CreateComponent, UpdateComponent)


@dataclass
class ReconcileResult:
    name: str
    status: str
    steps: list[str] = field(default_factory=list)


def resolve_desired(
    spec: DeploymentSpec,
    region: str,
    role_arn: str,
    schedule_target: ScheduleTarget | None = None,
    plan: Plan | None = None,
    async_target: AsyncTarget | None = None,
) -> DesiredResources:
    """Size the spec (unless ``plan`` is given), build its container (no secrets) and derive
    resource names.

    ``schedule_target``: where sleep/wake schedules go (None: Scheduler not configured);
    ``async_target``: where async endpoints' results go (None: not configured).
    """
    from llmhost.engines.containers import container_definition
    from llmhost.sizing.plan import plan as plan_for

    plan = plan or plan_for(spec)
    container = container_definition(spec, plan, region, hf_token=None)
    return desired_resources(spec, plan, role_arn, container, schedule_target, async_target)


def record_step(record: DeploymentRecord, step: Step) -> DeploymentRecord:
    """The record after ``step`` (pure). Unchanged when the step changes nothing visible."""
    action = step.action
    changes: dict[str, Any] = {}
    if isinstance(action, _ATTEMPTS):
        changes["attempt"] = Attempt(generation=record.generation, target=action.target)
    if isinstance(action, ApplyScaling):
        changes["scaling_applied"] = action.config
    elif isinstance(action, DeregisterScalableTarget) and record.desired_state != "deleted":
        changes["scaling_applied"] = None
    if getattr(action, "failed", False) and record.failed_generation != record.generation:
        changes["failed_generation"] = record.generation
    if action.calls_aws:
        event = f"{action.kind} {action.target}"
    elif step.status != record.status or step.reason != record.status_reason:
        event = "StatusChanged"
    elif not changes:
        return record
    else:
        event = action.kind
    return record.with_event(event, status=step.status, reason=step.reason, **changes)


def observed_resources(observed: Observed, desired: DesiredResources) -> Resources:
    """The SageMaker names this deployment uses, as observed (pure).

    The endpoint and the config it runs; the model that config (or, shared, the component)
    serves; the component. Without an endpoint (asleep, or not created yet), the model and
    config of this generation where they exist.
    """
    endpoint, component = observed.endpoint, observed.component
    if desired.is_shared:
        model = component.model_name if component is not None else None
    elif endpoint is not None:
        model = min(endpoint.config_models, default=None)
    else:
        model = None
    if model is None and desired.model_name in observed.models:
        model = desired.model_name
    config = endpoint.config_name if endpoint is not None else None
    if config is None and desired.config_name in observed.configs:
        config = desired.config_name
    return Resources(
        model=model,
        endpoint_config=config,
        endpoint=endpoint.name if endpoint is not None else None,
        inference_component=component.name if component is not None else None,
    )


def plan_of(record: DeploymentRecord) -> Plan:
    """The plan the record's generation was built with, sized now if none was pinned yet
    (what it was deployed with: the scaling hook derives the deployed policy from it too)."""
    from llmhost.sizing.plan import Plan, plan

    pinned = record.pinned_plan()
    return Plan.from_dict(pinned) if pinned is not None else plan(record.spec)


class Reconciler:
    """Drives one deployment at a time towards its record's desired state."""

    def __init__(
        self,
        registry: Registry,
        observer: SageMakerObserver,
        applier: SageMakerApplier,
        resolve: Callable[[DeploymentSpec, Plan], DesiredResources],
        max_steps: int = 25,
        schedule_target: ScheduleTarget | None = None,
    ) -> None:
        """``schedule_target``: where sleep/wake schedules live, for deletes to find them
        (the same target ``resolve`` builds with; None: Scheduler not configured)."""
        self._registry = registry
        self._observer = observer
        self._applier = applier
        self._resolve = resolve
        self._max_steps = max_steps
        self._schedule_target = schedule_target

    def reconcile(self, name: str) -> ReconcileResult:
        """Take every step possible now for deployment ``name``; returns its final status."""
        result = ReconcileResult(name=name, status="UNKNOWN")
        for _ in range(self._max_steps):
            record = self._registry.find(name)
            if record is None or (record.status == "DELETED" and record.desired_state == "deleted"):
                result.status = record.status if record else "ABSENT"
                return result
            result.status = record.status
            try:
                done = self._step(record, result)
            except ConcurrentModification:
                continue  # someone else wrote the record: re-read and re-plan
            if done:
                return result
        return result

    def _step(self, read: DeploymentRecord, result: ReconcileResult) -> bool:
        record = read
        if record.desired_state == "deleted":
            # Deleting needs names only, never a buildable spec: a spec that no longer
            # resolves (FAILED) must not keep its endpoint answering and billing.
            desired = teardown_resources(record.name, record.spec.hosting, self._schedule_target)
        else:
            try:
                plan = plan_of(record)
                if record.pinned_plan() is None:
                    # Sized once per generation: later catalogs and prices never re-size it.
                    pin = PinnedPlan(generation=record.generation, plan=plan.as_dict())
                    record = record.model_copy(update={"plan": pin})
                desired = self._resolve(record.spec, plan)
            except LlmhostError as error:
                self._fail(read, record, f"cannot build the SageMaker resources: {error.message}")
                result.status = "FAILED"
                return True
        others = desired.is_shared and any(
            r.name != record.name and r.desired_state != "deleted"
            for r in self._registry.using_endpoint(desired.endpoint_name)
        )
        observed = self._observer.observe(record, desired, others_in_pool=others)
        resources = observed_resources(observed, desired)
        if resources != record.resources:
            record = record.model_copy(update={"resources": resources})
        step = plan_next_action(record, desired, observed)
        if step.action.calls_aws:
            try:
                self._applier.apply(step.action, record, desired)
            except SageMakerBusy as busy:
                step = Step(Wait(step.action.target), step.status, f"waiting: {busy.message}")
            except LlmhostError as error:
                self._fail(read, record, error.message)
                result.status = "FAILED"
                return True
            else:
                result.steps.append(f"{step.action.kind} {step.action.target}")
        updated = record_step(record, step)
        if updated is not read:
            self._registry.save(updated)
        result.status = updated.status
        return not step.action.calls_aws

    def _fail(self, read: DeploymentRecord, record: DeploymentRecord, reason: str) -> None:
        """Record the failure, unless ``read`` (the stored record) already says exactly that:
        every write re-triggers the stream, so repeating it would loop."""
        failed = record.with_event(
            "Failed",
            status="FAILED",
            reason=f"{reason}; change the spec to retry",
            failed_generation=record.generation,
        )
        if failed is not read:
            self._registry.save(failed)
