"""The GPU cap's adapter: reads usage from the registry, SageMaker and Application Auto
Scaling and applies the leases ``llmhost.scaling.leases`` decides.

``CapacityGuard`` holds a lock item in the registry table while it decides and applies, so
two writers (the hook, the reconciler, the API's admissions) never hand out the same unit.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from llmhost.errors import SageMakerBusy
from llmhost.lifecycle.registry import INTERNAL_PREFIX, Registry, is_condition_failure, table_errors
from llmhost.scaling.leases import (
    Grant,
    Holding,
    Usage,
    check_admission,
    lease_for,
    owed_units,
    plan_scale_out,
    plan_wake,
    required_units,
)
from llmhost.specs import DeploymentSpec

if TYPE_CHECKING:
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.scaling.budget import BudgetLedger

NAMESPACE = "sagemaker"
LOCK_KEY = f"{INTERNAL_PREFIX}capacity#lock"


class CapacityBusy(SageMakerBusy):
    """Another scaling decision holds the capacity lock; retry (the reconciler and Lambda's
    async retries do)."""


def _is_missing(error: ClientError) -> bool:
    message = str(error.response.get("Error", {}).get("Message", ""))
    return "Could not find" in message or "does not exist" in message or "not found" in message


class CapacityLock:
    """The capacity lock: one item in the registry table, taken with a conditional put (so
    DynamoDB, not a read, decides who holds it) and with an expiry, so a crashed holder
    blocks others for ``ttl_s`` at most. Everything that hands out GPU units holds it: the
    API's admissions, the hook's grants and wakes, the reconciler's leases."""

    def __init__(
        self,
        registry: Registry,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        ttl_s: float = 30.0,
        attempts: int = 25,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._sleep = sleep
        self._lock_ttl_s = ttl_s
        self._lock_attempts = attempts

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the capacity lock. Raises CapacityBusy when it stays taken, and the registry's
        typed errors (RegistryBusy...) when DynamoDB fails."""
        ddb, table = self._registry.client, self._registry.table_name
        owner = uuid.uuid4().hex
        for attempt in range(self._lock_attempts):
            if self._take(ddb, table, owner):
                break
            if attempt + 1 == self._lock_attempts:
                raise CapacityBusy(
                    "another scaling decision holds the GPU capacity lock; retry shortly"
                )
            self._sleep(0.2)
        try:
            yield
        finally:
            # A release that fails leaves the lock to expire (ttl_s); it must not replace the
            # outcome of what was done under it.
            with contextlib.suppress(ClientError, BotoCoreError):
                ddb.delete_item(
                    TableName=table,
                    Key={"name": {"S": LOCK_KEY}},
                    ConditionExpression="#o = :me",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":me": {"S": owner}},
                )

    def _take(self, ddb: Any, table: str, owner: str) -> bool:
        """Put the lock item for ``owner``; False while someone else holds it."""
        now = self._clock()
        with table_errors():
            try:
                ddb.put_item(
                    TableName=table,
                    Item={
                        "name": {"S": LOCK_KEY},
                        "owner": {"S": owner},
                        "expires_at": {"N": str(now + self._lock_ttl_s)},
                    },
                    ConditionExpression="attribute_not_exists(#n) OR expires_at < :now",
                    ExpressionAttributeNames={"#n": "name"},
                    ExpressionAttributeValues={":now": {"N": str(now)}},
                )
            except ClientError as error:
                if is_condition_failure(error):
                    return False
                raise
        return True


@contextlib.contextmanager
def admission(
    registry: Registry, cap: int | None, spec: DeploymentSpec, *, waking: bool = False
) -> Iterator[None]:
    """Admit ``spec`` under the GPU cap and keep the capacity lock while the caller writes.

    The check reads every deployment's minimum and the caller's write adds one: both happen
    under the lock, so two requests can never both take the last units. Raises
    GpuCapacityExceeded (409) as ``check_admission`` does, CapacityBusy if the lock stays
    taken. Without a cap nothing is checked or locked.
    """
    if not cap:
        yield
        return
    with CapacityLock(registry).held():
        check_admission(cap, registry.deployments(), spec, waking=waking)
        yield


@dataclass(frozen=True)
class Capacity:
    """One deployment's capacity as SageMaker reports it now, in copies (a component) or
    instances (a dedicated endpoint): ``in_service`` serve requests, ``desired`` includes
    those still starting; ``status`` is the component's or endpoint's; ``changed_at`` the
    last time its capacity was changed or settled (its LastModifiedTime)."""

    in_service: int
    desired: int
    status: str
    changed_at: datetime | None


class CapacityGuard:
    """Reads GPU usage and sets leases (scalable targets' MaxCapacity) under one lock.

    ``cap`` None: no cap (leases are spec maxima; the budget still applies). ``budget``:
    today's budget state, read before any lease grows. The lock is an item in the registry
    table with an expiry, so a crashed holder blocks others for ``lock_ttl_s`` at most.
    """

    def __init__(
        self,
        registry: Registry,
        sagemaker: Any,
        autoscaling: Any,
        cap: int | None,
        *,
        budget: BudgetLedger | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        lock_ttl_s: float = 30.0,
        lock_attempts: int = 25,
    ) -> None:
        self._registry = registry
        self._sm = sagemaker
        self._aas = autoscaling
        self.cap = cap or None
        self._budget = budget
        self._lock = CapacityLock(
            registry, clock=clock, sleep=sleep, ttl_s=lock_ttl_s, attempts=lock_attempts
        )

    # ---- reading ------------------------------------------------------------------------

    def usage(self) -> Usage:
        """Every live deployment's holding (serverless and DELETED ones hold nothing)."""
        targets = self._targets()
        holdings = []
        for record in self._registry.deployments():
            if record.spec.hosting.kind == "serverless":
                continue
            holdings.append(self._holding(record, targets))
        return Usage(self.cap, tuple(holdings))

    def _holding(self, record: DeploymentRecord, targets: dict[str, dict[str, Any]]) -> Holding:
        shared = record.spec.hosting.kind == "shared"
        rid = (
            f"inference-component/{record.name}"
            if shared
            else f"endpoint/{record.name}/variant/AllTraffic"
        )
        target = targets.get(rid)
        units, _ = required_units(record.spec)
        return Holding(
            deployment=record.name,
            current=self._running(record.name, shared),
            # Before its target is registered, a deployment wanted in service is owed its
            # initial count; afterwards its lease (at least MinCapacity) covers it.
            floor=0 if target else owed_units(record),
            maximum=max(record.spec.scaling.max_capacity, units) if target else units,
            lease=int(target["MaxCapacity"]) if target else None,
            target_min=int(target["MinCapacity"]) if target else 0,
            resource_id=rid,
            dimension=str(target["ScalableDimension"]) if target else "",
        )

    def _running(self, name: str, shared: bool) -> int:
        try:
            if shared:
                runtime = self._sm.describe_inference_component(InferenceComponentName=name).get(
                    "RuntimeConfig", {}
                )
                return max(
                    int(runtime.get("CurrentCopyCount", 0)),
                    int(runtime.get("DesiredCopyCount", 0)),
                )
            variants = self._sm.describe_endpoint(EndpointName=name).get("ProductionVariants", [])
        except ClientError as error:
            if _is_missing(error):
                return 0
            raise
        return sum(
            max(int(v.get("CurrentInstanceCount", 0)), int(v.get("DesiredInstanceCount", 0)))
            for v in variants
        )

    def desired_copies(self, name: str) -> int | None:
        """A settled component's desired copy count; None when it does not exist or is
        changing (a change under way, such as a wake already asked for, is left alone)."""
        try:
            found = self._sm.describe_inference_component(InferenceComponentName=name)
        except ClientError as error:
            if _is_missing(error):
                return None
            raise
        if found.get("InferenceComponentStatus") != "InService":
            return None
        return int(found.get("RuntimeConfig", {}).get("DesiredCopyCount", 0))

    def _targets(self) -> dict[str, dict[str, Any]]:
        """Scalable targets of SageMaker capacity, by resource id (one paged call)."""
        found: dict[str, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"ServiceNamespace": NAMESPACE}
        while True:
            page = self._aas.describe_scalable_targets(**kwargs)
            for target in page.get("ScalableTargets", []):
                if target["ScalableDimension"] != "sagemaker:variant:DesiredProvisionedConcurrency":
                    found[target["ResourceId"]] = target
            if not page.get("NextToken"):
                return found
            kwargs["NextToken"] = page["NextToken"]

    def budget_block(self, now: datetime | None = None) -> str | None:
        """Why today's budget forbids growth, or None."""
        if self._budget is None:
            return None
        return self._budget.block_reason((now or datetime.now(UTC)).date())

    # ---- deciding and applying ------------------------------------------------------------

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the capacity lock. Raises CapacityBusy when it stays taken."""
        return self._lock.held()

    def lease_for(self, name: str, minimum: int, maximum: int) -> int:
        """MaxCapacity to register for ``name`` now (call under ``locked()``)."""
        return lease_for(
            self.usage(), name, minimum, maximum, budget_exceeded=self.budget_block() is not None
        )

    def scale_out(self, name: str) -> Grant:
        """AlarmHigh for ``name``: reclaim, grant and apply (or refuse)."""
        with self.locked():
            usage = self.usage()
            grant = plan_scale_out(usage, name, budget_block=self.budget_block())
            self._apply(grant, usage)
            return grant

    def grow_to(self, name: str, wanted: int) -> Grant:
        """Lease ``name`` room for ``wanted`` units under the cap and the budget, reclaiming
        others' slack as a scale-out does but no more than asked (call under ``locked()``)."""
        usage = self.usage()
        grant = plan_scale_out(
            usage, name, budget_block=self.budget_block(), wanted=wanted, why="overload"
        )
        self._apply(grant, usage)
        return grant

    def hold_lease(self, resource_id: str, dimension: str, units: int) -> tuple[int, int] | None:
        """Hold a scalable target's MaxCapacity at ``units`` (call under ``locked()``).

        Target tracking multiplies desired capacity, copies still starting included, by a
        metric measured on the copies in service: while the copies the overload hook asked
        for start, it would ask again for them. Returns (MaxCapacity before, held), None when
        nothing was held (no target registered, or MaxCapacity below ``units``). A MaxCapacity
        already at ``units`` (a lease the guard just grew to it) is held as it is.
        """
        page = self._aas.describe_scalable_targets(
            ServiceNamespace=NAMESPACE, ResourceIds=[resource_id], ScalableDimension=dimension
        )
        target = next(iter(page.get("ScalableTargets", [])), None)
        if target is None or int(target["MaxCapacity"]) < units:
            return None
        low = int(target["MinCapacity"])
        held = max(units, low)
        if held == int(target["MaxCapacity"]):
            return held, held
        self._aas.register_scalable_target(
            ServiceNamespace=NAMESPACE,
            ResourceId=resource_id,
            ScalableDimension=dimension,
            MinCapacity=low,
            MaxCapacity=held,
        )
        return int(target["MaxCapacity"]), held

    def release_hold(self, name: str, held: int) -> tuple[int | None, int | None]:
        """Give ``name`` back the lease in force, if its MaxCapacity is still the ``held``
        one (call under ``locked()``).

        The lease is what the reconciler registers and the budget restores (``lease_for``:
        the spec maximum less what the others hold under the cap, the minimum while today's
        budget is spent). Returns (MaxCapacity now, lease after): (None, None) without a
        scalable target; (now, None) when something else set MaxCapacity since (the budget,
        a scheduled action, the reconciler), which is then left as it is.
        """
        usage = self.usage()
        holding = usage.get(name)
        if holding is None or holding.lease is None:
            return None, None
        if holding.lease != held:
            return holding.lease, None
        lease = max(
            holding.target_min,
            lease_for(
                usage,
                name,
                holding.target_min,
                holding.maximum,
                budget_exceeded=self.budget_block() is not None,
            ),
        )
        if lease != holding.lease:
            self._register(holding, lease)
        return holding.lease, lease

    def capacity(self, name: str, shared: bool) -> Capacity | None:
        """``name``'s copies (shared) or instances (dedicated), None when it does not exist."""
        try:
            if shared:
                found = self._sm.describe_inference_component(InferenceComponentName=name)
                runtime = found.get("RuntimeConfig", {})
                return Capacity(
                    in_service=int(runtime.get("CurrentCopyCount", 0)),
                    desired=int(runtime.get("DesiredCopyCount", 0)),
                    status=str(found.get("InferenceComponentStatus", "")),
                    changed_at=found.get("LastModifiedTime"),
                )
            found = self._sm.describe_endpoint(EndpointName=name)
        except ClientError as error:
            if _is_missing(error):
                return None
            raise
        variants = found.get("ProductionVariants") or [{}]
        return Capacity(
            in_service=int(variants[0].get("CurrentInstanceCount", 0)),
            desired=int(variants[0].get("DesiredInstanceCount", 0)),
            status=str(found.get("EndpointStatus", "")),
            changed_at=found.get("LastModifiedTime"),
        )

    def last_scaling_end(self, resource_id: str, dimension: str) -> datetime | None:
        """When Application Auto Scaling last finished changing this target's capacity (its
        newest successful activity), None when it never did (in the last page)."""
        page = self._aas.describe_scaling_activities(
            ServiceNamespace=NAMESPACE, ResourceId=resource_id, ScalableDimension=dimension
        )
        ends = [
            a["EndTime"]
            for a in page.get("ScalingActivities", [])
            if a.get("StatusCode") == "Successful" and isinstance(a.get("EndTime"), datetime)
        ]
        return max(ends, default=None)

    def min_capacity(self, resource_id: str, dimension: str) -> int:
        """The scalable target's MinCapacity now (a scheduled action may have raised it above
        the spec's), 0 when none is registered."""
        page = self._aas.describe_scalable_targets(
            ServiceNamespace=NAMESPACE, ResourceIds=[resource_id], ScalableDimension=dimension
        )
        return max((int(t["MinCapacity"]) for t in page.get("ScalableTargets", [])), default=0)

    def set_desired(self, name: str, shared: bool, units: int) -> None:
        """Ask SageMaker for ``units`` copies (shared) or instances (dedicated) of ``name``."""
        if shared:
            self._sm.update_inference_component_runtime_config(
                InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": units}
            )
        else:
            self._sm.update_endpoint_weights_and_capacities(
                EndpointName=name,
                DesiredWeightsAndCapacities=[
                    {"VariantName": "AllTraffic", "DesiredInstanceCount": units}
                ],
            )

    def admit_wake(self, name: str, units: int) -> Grant:
        """Make room for ``name`` to run ``units`` units and lease them, or refuse."""
        if self.cap is None:
            return Grant(name, "WakeAdmitted", True, f"no GPU cap; capacity -> {units}")
        with self.locked():
            usage = self.usage()
            grant = plan_wake(usage, name, units)
            self._apply(grant, usage)
            return grant

    def wake_component(self, name: str, copies: int) -> Grant | None:
        """Set a zero-copy component to ``copies`` copies if the cap allows.

        None when the component already has copies, is changing or no longer exists:
        nothing to do (so a burst of wakes asks for copies once).
        """
        with self.locked():
            desired = self.desired_copies(name)
            if desired is None or desired > 0:
                return None
            if self.cap is None:
                grant = Grant(name, "WakeAdmitted", True, "no GPU cap")
            else:
                usage = self.usage()
                grant = plan_wake(usage, name, copies)
                self._apply(grant, usage)
            if grant.granted:
                self._sm.update_inference_component_runtime_config(
                    InferenceComponentName=name, DesiredRuntimeConfig={"CopyCount": copies}
                )
            return grant

    def set_leases(self, leases: Callable[[Usage, Holding], int]) -> list[tuple[Holding, int]]:
        """Set every autoscaled deployment's lease to ``leases(usage, holding)``.

        Returns (holding before, lease after) for each lease that changed. Leases are set one
        at a time, each seeing the ones set before it.
        """
        changed = []
        with self.locked():
            usage = self.usage()
            for holding in usage.holdings:
                if holding.lease is None:
                    continue
                after = max(holding.target_min, leases(usage, holding))
                if after != holding.lease:
                    self._register(holding, after)
                    changed.append((holding, after))
                    usage = Usage(
                        usage.cap,
                        tuple(
                            replace(h, lease=after) if h.deployment == holding.deployment else h
                            for h in usage.holdings
                        ),
                    )
        return changed

    def _apply(self, grant: Grant, usage: Usage) -> None:
        if not grant.granted:
            return
        # Shrink others first: at no moment do the leases add up to more than the cap.
        for reclaim in grant.reclaims:
            self._register(reclaim.holding, reclaim.lease_after)
        if grant.lease_after is not None and grant.lease_after != grant.lease_before:
            holding = usage.get(grant.deployment)
            if holding is not None and holding.lease is not None:
                self._register(holding, grant.lease_after)

    def _register(self, holding: Holding, lease: int) -> None:
        self._aas.register_scalable_target(
            ServiceNamespace=NAMESPACE,
            ResourceId=holding.resource_id,
            ScalableDimension=holding.dimension,
            MinCapacity=holding.target_min,
            MaxCapacity=max(lease, holding.target_min),
        )
