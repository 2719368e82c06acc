"""What may be done to a deployment, and the rules each change keeps.

The deployment API's routes, the local runner and anything else that changes deployments
call these operations: create, update, delete, sleep and wake write the registry; get, list,
plan and scaling read. Each takes plain values (a spec, a patch, a name), returns records
and raises typed errors (``llmhost.errors`` and the ones below), which the API turns into
HTTP in one place (``llmhost.api.http``).

The rules that need no I/O are pure functions over the registry's records
(``pin_pool_instance``, ``check_names_free``, ``check_immutable``, ``check_can_sleep``);
``Deployments`` reads the registry once, applies them, admits the change under the GPU cap
(``llmhost.scaling.capacity_guard.admission``) and writes the record with its history entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llmhost.errors import (
    ConflictingChange,
    DeploymentDeleted,
    FieldIssue,
    LlmhostError,
    SpecInvalid,
)
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.lifecycle.registry import Registry
from llmhost.specs import DeploymentPatch, DeploymentSpec

if TYPE_CHECKING:
    from llmhost.sizing.plan import Plan

# ------------------------------------------------------------------------------------ errors


class DeploymentDeleting(ConflictingChange):
    """The deployment is being deleted: it cannot change any more."""

    def __init__(self, name: str, what: str = "") -> None:
        super().__init__(f"deployment '{name}' is being deleted{what}")
        self.name = name


class NothingToSleep(ConflictingChange):
    """A serverless deployment has no capacity of its own to sleep or wake."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"deployment '{name}' is serverless: SageMaker already scales it to zero when idle, "
            "so there is nothing to sleep or wake"
        )
        self.name = name


class NameInUse(ConflictingChange):
    """A deployment or pool name is taken in SageMaker's one endpoint namespace, or a pool
    runs on another instance type than the spec asks for."""


class EndpointNotOwned(ConflictingChange):
    """The spec's endpoint (or pool) name is an existing SageMaker endpoint llmhost did not
    create for this stack."""

    code = "endpoint_not_owned"

    def __init__(self, spec: DeploymentSpec, problem: str) -> None:
        field = "hosting.pool" if spec.hosting.kind == "shared" else "name"
        super().__init__(
            f"{problem}; llmhost never changes or deletes endpoints it did not create: "
            f"choose another {field}, or delete that endpoint first"
        )


class EndpointOwnershipUnknown(LlmhostError):
    """SageMaker could not say who owns the endpoint (throttled, unavailable): retry."""

    code = "sagemaker_unavailable"
    status = 503
    retry_after = 5

    def __init__(self, endpoint: str, code: str) -> None:
        super().__init__(
            f"could not check the SageMaker endpoint '{endpoint}' ({code}); nothing was "
            f"changed: retry in {self.retry_after} s"
        )


# ------------------------------------------------------------------------------- pure rules


def pin_pool_instance(records: list[DeploymentRecord], spec: DeploymentSpec) -> DeploymentSpec:
    """A shared spec without an instance type joins its pool's, or the cheapest that fits.

    ``records``: the registry's live deployments. The choice is stored in the spec: the
    pool's config must not change when prices or the catalog do.
    """
    hosting = spec.hosting
    if hosting.kind != "shared" or hosting.instance_type:
        return spec
    from llmhost.sizing.issues import check_capacity
    from llmhost.sizing.plan import plan
    from llmhost.specs import parse_spec

    pool_types = [
        r.spec.hosting.instance_type
        for r in records
        if r.pool == hosting.pool and r.spec.hosting.instance_type
    ]
    chosen = pool_types[0] if pool_types else plan(spec).instance_type
    data = spec.model_dump(mode="json")
    data["hosting"]["instance_type"] = chosen
    pinned = parse_spec(data)
    check_capacity(pinned)  # the pool's instance type may be smaller than the cheapest fit
    return pinned


def check_names_free(records: list[DeploymentRecord], spec: DeploymentSpec) -> None:
    """Deployment names and pool names share SageMaker's endpoint namespace, and a pool runs
    on one instance type. Raises NameInUse (409)."""
    for other in records:
        if other.name == spec.name:
            continue  # Registry.create reports a live duplicate with 409 already_exists
        if other.pool == spec.name:
            raise NameInUse(
                f"'{spec.name}' is the name of a shared pool used by '{other.name}'; "
                "choose another deployment name"
            )
        hosting = spec.hosting
        if hosting.kind == "shared":
            if other.pool is None and other.name == hosting.pool:
                raise NameInUse(
                    f"hosting.pool '{hosting.pool}' is already the endpoint of deployment "
                    f"'{other.name}'; choose another pool name"
                )
            other_hosting = other.spec.hosting
            if (
                other.pool == hosting.pool
                and other_hosting.kind == "shared"
                and hosting.instance_type
                and other_hosting.instance_type
                and hosting.instance_type != other_hosting.instance_type
            ):
                raise NameInUse(
                    f"pool '{hosting.pool}' runs on {other_hosting.instance_type}; set "
                    f"hosting.instance_type to it or use another pool"
                )


def check_immutable(old: DeploymentSpec, new: DeploymentSpec) -> None:
    """The hosting kind, a pool and a pool's instance type never change. Raises SpecInvalid
    (422) naming each field."""
    issues: list[FieldIssue] = []
    if old.hosting.kind != new.hosting.kind:
        issues.append(
            FieldIssue(
                "hosting.kind",
                f"cannot change from '{old.hosting.kind}' to '{new.hosting.kind}'; create a new "
                "deployment with the new hosting and delete this one",
            )
        )
    elif old.hosting.kind == "shared" and new.hosting.kind == "shared":
        if old.hosting.pool != new.hosting.pool:
            issues.append(
                FieldIssue("hosting.pool", "cannot change; create a new deployment in the new pool")
            )
        if old.hosting.instance_type != new.hosting.instance_type:
            issues.append(
                FieldIssue(
                    "hosting.instance_type",
                    "a pool's instance type cannot change; use a new pool",
                )
            )
    if issues:
        raise SpecInvalid(issues)


def check_can_sleep(record: DeploymentRecord) -> None:
    """Whether the deployment's desired state may switch between in service and sleeping.
    Raises DeploymentDeleting or NothingToSleep (409)."""
    if record.desired_state == "deleted":
        raise DeploymentDeleting(record.name)
    if record.spec.hosting.kind == "serverless":
        raise NothingToSleep(record.name)


def live(record: DeploymentRecord) -> DeploymentRecord:
    """``record`` if its deployment still exists. Raises DeploymentDeleted (404)."""
    if record.status == "DELETED":
        raise DeploymentDeleted(record.name)
    return record


# ------------------------------------------------------------------------------ operations


@dataclass(frozen=True)
class Change:
    """A write's outcome: the record as stored, and whether anything was written (False: the
    request asked for what already was)."""

    record: DeploymentRecord
    changed: bool


class Deployments:
    """The deployment operations over one registry.

    ``gpu_capacity_cap`` gives the account's GPU cap (default: the function's
    GPU_CAPACITY_CAP); a create, update or wake whose minimum does not fit is refused (409).
    ``endpoint_conflict`` says why a spec's endpoint (or shared pool) name is taken in
    SageMaker by a resource this stack did not create (default: asks SageMaker); a create,
    update or wake that would use it is refused (409). ``token_secret_problem`` says why a
    secret may not be a model's token (default: ``llmhost.token_secrets``); such a spec is
    refused (422 on ``model.token_secret_arn``). ``region`` is the stack's (default:
    ``llmhost.aws.region``): a spec whose engine image is not listed there is refused (422 on
    ``engine.version``). ``aws_client`` builds the clients the scaling view reads (default:
    ``llmhost.aws.client``). Each is called when needed, never at construction.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        gpu_capacity_cap: Callable[[], int | None] | None = None,
        endpoint_conflict: Callable[[DeploymentSpec], str | None] | None = None,
        token_secret_problem: Callable[[str], str | None] | None = None,
        region: Callable[[], str] | None = None,
        aws_client: Callable[[str], Any] | None = None,
    ) -> None:
        self.registry = registry
        self._cap = gpu_capacity_cap or _env_gpu_capacity_cap
        self._conflict = endpoint_conflict or sagemaker_endpoint_conflict
        self._secret_problem = token_secret_problem or _env_token_secret_problem
        self._region = region or _aws_region
        self._aws_client = aws_client or _aws_client

    # ---- reads ---------------------------------------------------------------------------

    def get(self, name: str) -> DeploymentRecord:
        """The record, DELETED ones too (a client that sent DELETE polls until it reads
        DELETED). Raises DeploymentNotFound."""
        return self.registry.get(name)

    def list(self, include_deleted: bool = False) -> list[DeploymentRecord]:
        """Every deployment, sorted by name."""
        return self.registry.deployments(include_deleted=include_deleted)

    def plan(self, spec: DeploymentSpec) -> Plan:
        """Sizing and cost of ``spec``; nothing is read or created. Raises SpecInvalid (it
        cannot run as written, or its engine image is not listed for the stack's region)."""
        from llmhost.sizing.issues import check_capacity
        from llmhost.sizing.plan import plan

        check_capacity(spec)
        self._check_region(spec)
        return plan(spec)

    def scaling(self, name: str) -> dict[str, Any]:
        """Capacity, policies and alarms in force, the next scheduled change and recent
        activity (``llmhost.scaling.view``). Raises DeploymentNotFound."""
        from llmhost.scaling.view import scaling_view

        record = self._live(name)
        client = self._aws_client
        return scaling_view(
            record, client("application-autoscaling"), client("cloudwatch"), client("sagemaker")
        )

    # ---- writes --------------------------------------------------------------------------

    def create(self, spec: DeploymentSpec) -> DeploymentRecord:
        """Register a new deployment (PENDING, for the reconciler to build).

        Raises SpecInvalid (a spec that cannot run as written, an engine image the stack's
        region lacks, a token secret llmhost may not read), NameInUse, GpuCapacityExceeded,
        EndpointNotOwned, DeploymentExists, CapacityBusy.
        """
        from llmhost.scaling.capacity_guard import admission
        from llmhost.sizing.issues import check_capacity

        check_capacity(spec)
        self._check_region(spec)
        self._check_token_secret(spec)
        records = self.registry.deployments()
        spec = pin_pool_instance(records, spec)
        check_names_free(records, spec)
        record = DeploymentRecord(name=spec.name, spec=spec).with_event(
            "Created",
            status="PENDING",
            reason="waiting for the reconciler",
        )
        with admission(self.registry, self._cap(), spec):
            self._check_endpoint_owned(spec)
            return self.registry.create(record)

    def update(self, name: str, patch: DeploymentPatch) -> Change:
        """Apply ``patch`` to the spec (a new generation, for the reconciler to roll out).

        Only a larger minimum is checked against the GPU cap: other edits stay possible on
        an account already over a lowered cap. Raises DeploymentNotFound, DeploymentDeleting,
        SpecInvalid, GpuCapacityExceeded, EndpointNotOwned, ConcurrentModification.
        """
        from llmhost.scaling.capacity_guard import admission
        from llmhost.scaling.leases import required_units
        from llmhost.sizing.issues import check_capacity

        record = self._live(name)
        if record.desired_state == "deleted":
            raise DeploymentDeleting(name, "; it cannot change now")
        spec = patch.apply_to(record.spec)
        check_capacity(spec)
        check_immutable(record.spec, spec)
        if spec == record.spec:
            return Change(record, changed=False)
        self._check_region(spec)
        self._check_token_secret(spec)
        in_service = record.desired_state == "in_service"
        grows = in_service and required_units(spec)[0] > required_units(record.spec)[0]
        updated = record.model_copy(
            update={"spec": spec, "generation": record.generation + 1}
        ).with_event("SpecUpdated", reason="spec changed; reconciling")
        with admission(self.registry, self._cap() if grows else None, spec):
            if in_service:
                self._check_endpoint_owned(spec)
            return Change(self.registry.save(updated), changed=True)

    def delete(self, name: str) -> Change:
        """Ask for the deployment's removal (the reconciler deletes its SageMaker resources,
        then the record reads DELETED). Raises DeploymentNotFound, ConcurrentModification."""
        record = self._live(name)
        if record.desired_state == "deleted":
            return Change(record, changed=False)
        return Change(
            self.registry.save(
                record.with_event(
                    "DeleteRequested",
                    status="DELETING",
                    reason="removing SageMaker resources",
                    desired_state="deleted",
                )
            ),
            changed=True,
        )

    def sleep(self, name: str) -> Change:
        """Release the GPUs, keep the spec. Raises DeploymentNotFound, DeploymentDeleting,
        NothingToSleep, ConcurrentModification."""
        return self._set_desired(name, "sleeping")

    def wake(self, name: str) -> Change:
        """Bring a sleeping deployment back. Raises DeploymentNotFound, DeploymentDeleting,
        NothingToSleep, GpuCapacityExceeded, EndpointNotOwned, ConcurrentModification."""
        return self._set_desired(name, "in_service")

    # ---- internals -----------------------------------------------------------------------

    def _live(self, name: str) -> DeploymentRecord:
        return live(self.registry.get(name))

    def _set_desired(self, name: str, state: Literal["in_service", "sleeping"]) -> Change:
        from llmhost.scaling.capacity_guard import admission

        record = self._live(name)
        check_can_sleep(record)
        if record.desired_state == state:
            return Change(record, changed=False)
        waking = state == "in_service"
        changed = record.with_event(
            "WakeRequested" if waking else "SleepRequested",
            reason="wake requested" if waking else "sleep requested",
            desired_state=state,
        )
        with admission(self.registry, self._cap() if waking else None, record.spec, waking=True):
            if waking:
                self._check_endpoint_owned(record.spec)
            return Change(self.registry.save(changed), changed=True)

    def _check_region(self, spec: DeploymentSpec) -> None:
        """A spec whose image the stack's region lacks would only fail in the reconciler."""
        from llmhost.sizing.issues import region_issues

        issues = region_issues(spec, self._region())
        if issues:
            raise SpecInvalid(issues)

    def _check_token_secret(self, spec: DeploymentSpec) -> None:
        arn = getattr(spec.model, "token_secret_arn", None)
        problem = self._secret_problem(arn) if arn else None
        if problem is not None:
            from llmhost.token_secrets import FIELD

            raise SpecInvalid([FieldIssue(FIELD, problem)])

    def _check_endpoint_owned(self, spec: DeploymentSpec) -> None:
        problem = self._conflict(spec)
        if problem is not None:
            raise EndpointNotOwned(spec, problem)


# ------------------------------------------------------------------- default dependencies


def sagemaker_endpoint_conflict(spec: DeploymentSpec) -> str | None:
    """Why the endpoint ``spec`` would use is not this stack's to use (None: free, or ours),
    asking SageMaker. Raises EndpointOwnershipUnknown when SageMaker cannot say."""
    from botocore.exceptions import BotoCoreError, ClientError

    from llmhost import aws, runtime
    from llmhost.lifecycle.ownership import DEPLOYMENT_TAG, POOL_TAG, endpoint_conflict

    hosting = spec.hosting
    if hosting.kind == "shared":
        endpoint, owner = hosting.pool, (POOL_TAG, hosting.pool)
    else:
        endpoint, owner = spec.name, (DEPLOYMENT_TAG, spec.name)
    try:
        return endpoint_conflict(aws.client("sagemaker"), endpoint, runtime.stack_name(), owner)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", "error"))
        raise EndpointOwnershipUnknown(endpoint, code) from None
    except BotoCoreError as error:
        raise EndpointOwnershipUnknown(endpoint, type(error).__name__) from None


def _env_token_secret_problem(arn: str) -> str | None:
    from llmhost import aws, runtime
    from llmhost.token_secrets import secret_problem

    return secret_problem(aws.client("secretsmanager"), arn, runtime.secrets_prefix(), aws.region())


def _env_gpu_capacity_cap() -> int | None:
    from llmhost import runtime

    return runtime.gpu_capacity_cap()


def _aws_region() -> str:
    from llmhost import aws

    return aws.region()


def _aws_client(service: str) -> Any:
    from llmhost import aws

    return aws.client(service)
