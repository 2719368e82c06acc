"""The deployment API: routes, request models and the one place errors become HTTP.

Routes only translate HTTP to calls on the registry and sizing; every rule lives in the
library. Validation uses Powertools' OpenAPI support, so the OpenAPI document served at
``GET /v1/openapi.json`` is generated from the same pydantic models that validate requests.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from llmhost.api.http import install_error_handlers, json_api, json_response
from llmhost.api.openapi import document_responses
from llmhost.errors import ConflictingChange, FieldIssue, LlmhostError, SpecInvalid
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.lifecycle.registry import Registry
from llmhost.scaling.guardrails import admission, required_units
from llmhost.specs import (
    NAME_MAX,
    NAME_PATTERN,
    DeploymentPatch,
    DeploymentSpec,
)

API_TITLE = "llmhost"
API_VERSION = "1.0.0"

DeploymentName = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=NAME_MAX, description="The deployment's name.")
]


def build_app(
    registry: Callable[[], Registry],
    *,
    logger: Any = None,
    metrics: Any = None,
    gpu_capacity_cap: Callable[[], int | None] | None = None,
    endpoint_conflict: Callable[[DeploymentSpec], str | None] | None = None,
    token_secret_problem: Callable[[str], str | None] | None = None,
) -> APIGatewayRestResolver:
    """Create the resolver with every route. ``registry`` is called lazily per request.

    ``gpu_capacity_cap`` gives the account's GPU cap per request (default: the function's
    GPU_CAPACITY_CAP); a create, update or wake whose minimum does not fit is refused (409).
    ``endpoint_conflict`` says why a spec's endpoint (or shared pool) name is taken in
    SageMaker by a resource this stack did not create (default: asks SageMaker); a create,
    update or wake that would use it is refused (409). ``token_secret_problem`` says why a
    secret may not be a model's token (default: ``llmhost.token_secrets``); such a spec is
    refused (422 on ``model.token_secret_arn``).
    """
    app = json_api()
    cap = gpu_capacity_cap or _env_gpu_capacity_cap
    conflict = endpoint_conflict or _sagemaker_endpoint_conflict
    secret_problem = token_secret_problem or _env_token_secret_problem

    def check_token_secret(spec: DeploymentSpec) -> None:
        arn = getattr(spec.model, "token_secret_arn", None)
        problem = secret_problem(arn) if arn else None
        if problem is not None:
            from llmhost.token_secrets import FIELD

            raise SpecInvalid([FieldIssue(FIELD, problem)])

    def check_region(spec: DeploymentSpec) -> None:
        """A spec whose image the stack's region lacks would only fail in the reconciler."""
        from llmhost import aws
        from llmhost.sizing.issues import region_issues

        issues = region_issues(spec, aws.region())
        if issues:
            raise SpecInvalid(issues)

    def check_endpoint_owned(spec: DeploymentSpec) -> None:
        problem = conflict(spec)
        if problem is not None:
            raise EndpointNotOwned(spec, problem)

    def count(metric: str) -> None:
        if metrics is not None:
            from aws_lambda_powertools.metrics import MetricUnit

            metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)

    @app.post("/v1/deployments", summary="Create a deployment")
    def create_deployment(spec: DeploymentSpec):
        reg = registry()
        check_region(spec)
        check_token_secret(spec)
        spec = _pin_pool_instance(reg, spec)
        _check_names_free(reg, spec)
        record = DeploymentRecord(name=spec.name, spec=spec).with_event(
            "Created",
            status="PENDING",
            reason="waiting for the reconciler",
        )
        with admission(reg, cap(), spec):
            check_endpoint_owned(spec)
            saved = reg.create(record)
        count("DeploymentCreated")
        return _json(HTTPStatus.CREATED, saved.public_view())

    @app.get("/v1/deployments", summary="List deployments")
    def list_deployments(
        include_deleted: Annotated[bool, Query(description="Include DELETED deployments")] = False,
    ):
        records = registry().deployments(include_deleted=include_deleted)
        items = [_summary(r) for r in records]
        return _json(HTTPStatus.OK, {"deployments": items, "count": len(items)})

    @app.get(
        "/v1/deployments/<name>",
        summary="Get a deployment: spec, status, resources, history",
        description="A deleted deployment reads DELETED until its name is used again.",
    )
    def get_deployment(name: DeploymentName):
        # DELETED records too: a client that sent DELETE polls here until it reads DELETED.
        return _json(HTTPStatus.OK, registry().get(name).public_view())

    @app.patch("/v1/deployments/<name>", summary="Change a deployment's spec")
    def patch_deployment(name: DeploymentName, patch: DeploymentPatch):
        reg = registry()
        record = _live(reg, name)
        if record.desired_state == "deleted":
            raise ConflictingChange(f"deployment '{name}' is being deleted; it cannot change now")
        spec = patch.apply_to(record.spec)
        _check_immutable(record.spec, spec)
        if spec == record.spec:
            return _json(HTTPStatus.OK, record.public_view())
        check_region(spec)
        check_token_secret(spec)
        # Only a larger minimum is checked: other edits stay possible on an account already
        # over a lowered cap.
        grows = (
            record.desired_state == "in_service"
            and required_units(spec)[0] > required_units(record.spec)[0]
        )
        updated = record.model_copy(
            update={"spec": spec, "generation": record.generation + 1}
        ).with_event("SpecUpdated", reason="spec changed; reconciling")
        with admission(reg, cap() if grows else None, spec):
            if record.desired_state == "in_service":
                check_endpoint_owned(spec)
            saved = reg.save(updated)
        count("DeploymentUpdated")
        return _json(HTTPStatus.OK, saved.public_view())

    @app.delete("/v1/deployments/<name>", summary="Delete a deployment (asynchronous)")
    def delete_deployment(name: DeploymentName):
        reg = registry()
        record = _live(reg, name)
        if record.desired_state != "deleted":
            record = reg.save(
                record.with_event(
                    "DeleteRequested",
                    status="DELETING",
                    reason="removing SageMaker resources",
                    desired_state="deleted",
                )
            )
            count("DeploymentDeleted")
        return _json(HTTPStatus.ACCEPTED, record.public_view())

    @app.post("/v1/deployments/<name>/sleep", summary="Sleep: release the GPUs, keep the spec")
    def sleep_deployment(name: DeploymentName):
        return _set_desired(registry(), name, "sleeping")

    @app.post("/v1/deployments/<name>/wake", summary="Wake a sleeping deployment")
    def wake_deployment(name: DeploymentName):
        return _set_desired(registry(), name, "in_service", cap(), check_endpoint_owned)

    @app.get(
        "/v1/deployments/<name>/scaling",
        summary="Capacity, policies and alarms in force, next scheduled change, recent activity",
    )
    def get_scaling(name: DeploymentName):
        from llmhost import aws
        from llmhost.scaling.view import scaling_view

        record = _live(registry(), name)
        view = scaling_view(
            record,
            aws.client("application-autoscaling"),
            aws.client("cloudwatch"),
            aws.client("sagemaker"),
        )
        return _json(HTTPStatus.OK, view)

    @app.post("/v1/plan", summary="Dry run: sizing and cost of a spec; nothing is created")
    def plan_spec(spec: DeploymentSpec):
        from llmhost.sizing.plan import plan

        check_region(spec)
        return _json(HTTPStatus.OK, {"name": spec.name, "plan": plan(spec).as_dict()})

    @app.get("/v1/openapi.json", summary="This API's OpenAPI document (every route)")
    def openapi():
        return json_response(HTTPStatus.OK, whole_openapi(app))

    install_error_handlers(app, logger)
    return app


# --------------------------------------------------------------------------------- helpers


def whole_openapi(app: APIGatewayRestResolver) -> dict[str, Any]:
    """The deployment routes' document merged with the serving routes' (another function
    serves those, but users see one API)."""
    import json

    from llmhost.api.serving import build_serving_app

    def unused() -> Any:
        raise RuntimeError("documentation only")

    serving = build_serving_app(unused, unused, unused)
    doc = json.loads(app.get_openapi_json_schema(title=API_TITLE, version=API_VERSION))
    extra = json.loads(serving.get_openapi_json_schema(title=API_TITLE, version=API_VERSION))
    doc["paths"].update(extra.get("paths", {}))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(extra.get("components", {}).get("schemas", {}))
    return document_responses(doc)


def _live(registry: Registry, name: str) -> DeploymentRecord:
    """The record of a deployment that still exists (404 for unknown or deleted names)."""
    from llmhost.errors import DeploymentDeleted

    record = registry.get(name)
    if record.status == "DELETED":
        raise DeploymentDeleted(name)
    return record


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


def _sagemaker_endpoint_conflict(spec: DeploymentSpec) -> str | None:
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


def _set_desired(
    registry: Registry,
    name: str,
    state: str,
    cap: int | None = None,
    check_endpoint_owned: Callable[[DeploymentSpec], None] | None = None,
) -> Response:
    record = _live(registry, name)
    if record.desired_state == "deleted":
        raise ConflictingChange(f"deployment '{name}' is being deleted")
    if record.spec.hosting.kind == "serverless":
        raise ConflictingChange(
            f"deployment '{name}' is serverless: SageMaker already scales it to zero when idle, "
            "so there is nothing to sleep or wake"
        )
    if record.desired_state != state:
        event = "SleepRequested" if state == "sleeping" else "WakeRequested"
        changed = record.with_event(
            event,
            reason=f"{'sleep' if state == 'sleeping' else 'wake'} requested",
            desired_state=state,
        )
        waking = state == "in_service"
        with admission(registry, cap if waking else None, record.spec, waking=True):
            if waking and check_endpoint_owned is not None:
                check_endpoint_owned(record.spec)
            record = registry.save(changed)
    return _json(HTTPStatus.ACCEPTED, record.public_view())


def _pin_pool_instance(registry: Registry, spec: DeploymentSpec) -> DeploymentSpec:
    """A shared spec without an instance type joins its pool's, or the cheapest that fits.

    The choice is stored in the spec: the pool's config must not change when prices or the
    catalog do.
    """
    hosting = spec.hosting
    if hosting.kind != "shared" or hosting.instance_type:
        return spec
    from llmhost.sizing.plan import plan

    pool_types = [
        r.spec.hosting.instance_type
        for r in registry.deployments()
        if r.pool == hosting.pool and r.spec.hosting.instance_type
    ]
    chosen = pool_types[0] if pool_types else plan(spec).instance_type
    data = spec.model_dump(mode="json")
    data["hosting"]["instance_type"] = chosen
    from llmhost.specs import parse_spec

    return parse_spec(data)


def _check_names_free(registry: Registry, spec: DeploymentSpec) -> None:
    """Deployment names and pool names share SageMaker's endpoint namespace."""
    for other in registry.deployments():
        if other.name == spec.name:
            continue  # create() reports a live duplicate with 409 already_exists
        if other.pool == spec.name:
            raise ConflictingChange(
                f"'{spec.name}' is the name of a shared pool used by '{other.name}'; "
                "choose another deployment name"
            )
        hosting = spec.hosting
        if hosting.kind == "shared":
            if other.pool is None and other.name == hosting.pool:
                raise ConflictingChange(
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
                raise ConflictingChange(
                    f"pool '{hosting.pool}' runs on {other_hosting.instance_type}; set "
                    f"hosting.instance_type to it or use another pool"
                )


def _check_immutable(old: DeploymentSpec, new: DeploymentSpec) -> None:
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


def _summary(record: DeploymentRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "status": record.status,
        "status_reason": record.status_reason,
        "desired_state": record.desired_state,
        "hosting": record.spec.hosting.kind,
        "model": record.spec.model.model_dump(mode="json", exclude={"token_secret_arn"}),
        "endpoint_name": record.endpoint_name,
        "generation": record.generation,
        "updated_at": record.updated_at,
    }


def _json(status: HTTPStatus, body: Any) -> Response:
    return json_response(status, body)
