"""The deployment API: routes that parse a request, call one operation of
``llmhost.deployments`` and shape its answer.

The rules live in the operations; typed errors become HTTP in ``llmhost.api.http``.
Validation uses Powertools' OpenAPI support, so the OpenAPI document served at
``GET /v1/openapi.json`` is generated from the same pydantic models that validate requests.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from llmhost.api.http import install_error_handlers, json_api, json_response
from llmhost.api.openapi import document_responses
from llmhost.specs import (
    NAME_MAX,
    NAME_PATTERN,
    DeploymentPatch,
    DeploymentSpec,
)

if TYPE_CHECKING:
    from llmhost.deployments import Change, Deployments
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.traces.store import TraceStore
    from llmhost.usage.report import UsageReports

API_TITLE = "llmhost"
API_VERSION = "1.0.0"

DeploymentName = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=NAME_MAX, description="The deployment's name.")
]


def build_app(
    deployments: Callable[[], Deployments],
    *,
    logger: Any = None,
    metrics: Any = None,
    usage: Callable[[], UsageReports] | None = None,
    traces: Callable[[], TraceStore] | None = None,
    trace_retention_days: Callable[[], int] | None = None,
) -> APIGatewayRestResolver:
    """Create the resolver with every route. ``deployments`` is called lazily per request
    (``llmhost.runtime.deployments``: the operations over the function's registry), and so
    are ``usage`` (default ``llmhost.runtime.usage_reports``) and ``traces`` (the traces
    table's store, default ``llmhost.runtime.trace_store``; ``llmhost.api.traces``)."""
    app = json_api()

    def count(metric: str) -> None:
        if metrics is not None:
            from aws_lambda_powertools.metrics import MetricUnit

            metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)

    def changed(change: Change, metric: str, status: HTTPStatus) -> Response:
        if change.changed:
            count(metric)
        return json_response(status, change.record.public_view())

    @app.post("/v1/deployments", summary="Create a deployment")
    def create_deployment(spec: DeploymentSpec):
        saved = deployments().create(spec)
        count("DeploymentCreated")
        return json_response(HTTPStatus.CREATED, saved.public_view())

    @app.get("/v1/deployments", summary="List deployments")
    def list_deployments(
        include_deleted: Annotated[bool, Query(description="Include DELETED deployments")] = False,
    ):
        items = [_summary(r) for r in deployments().list(include_deleted=include_deleted)]
        return json_response(HTTPStatus.OK, {"deployments": items, "count": len(items)})

    @app.get(
        "/v1/deployments/<name>",
        summary="Get a deployment: spec, status, resources, history",
        description="A deleted deployment reads DELETED until its name is used again.",
    )
    def get_deployment(name: DeploymentName):
        return json_response(HTTPStatus.OK, deployments().get(name).public_view())

    @app.patch("/v1/deployments/<name>", summary="Change a deployment's spec")
    def patch_deployment(name: DeploymentName, patch: DeploymentPatch):
        return changed(deployments().update(name, patch), "DeploymentUpdated", HTTPStatus.OK)

    @app.delete("/v1/deployments/<name>", summary="Delete a deployment (asynchronous)")
    def delete_deployment(name: DeploymentName):
        return changed(deployments().delete(name), "DeploymentDeleted", HTTPStatus.ACCEPTED)

    @app.post("/v1/deployments/<name>/sleep", summary="Sleep: release the GPUs, keep the spec")
    def sleep_deployment(name: DeploymentName):
        return json_response(HTTPStatus.ACCEPTED, deployments().sleep(name).record.public_view())

    @app.post("/v1/deployments/<name>/wake", summary="Wake a sleeping deployment")
    def wake_deployment(name: DeploymentName):
        return json_response(HTTPStatus.ACCEPTED, deployments().wake(name).record.public_view())

    @app.get(
        "/v1/deployments/<name>/scaling",
        summary="Capacity, policies and alarms in force, next scheduled change, recent activity",
    )
    def get_scaling(name: DeploymentName):
        return json_response(HTTPStatus.OK, deployments().scaling(name))

    @app.post("/v1/plan", summary="Dry run: sizing and cost of a spec; nothing is created")
    def plan_spec(spec: DeploymentSpec):
        plan = deployments().plan(spec)
        return json_response(HTTPStatus.OK, {"name": spec.name, "plan": plan.as_dict()})

    from llmhost.api.traces import mount_trace_routes
    from llmhost.api.usage import add_usage_routes

    add_usage_routes(app, usage or _usage_reports)
    mount_trace_routes(app, traces or _trace_store, trace_retention_days or _trace_retention)

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

    serving = build_serving_app(unused, unused)
    doc = json.loads(app.get_openapi_json_schema(title=API_TITLE, version=API_VERSION))
    extra = json.loads(serving.get_openapi_json_schema(title=API_TITLE, version=API_VERSION))
    doc["paths"].update(extra.get("paths", {}))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(extra.get("components", {}).get("schemas", {}))
    return document_responses(doc)


def _usage_reports() -> UsageReports:
    from llmhost import runtime

    return runtime.usage_reports()


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


def _trace_store() -> TraceStore:
    from llmhost import runtime

    return runtime.trace_store()


def _trace_retention() -> int:
    from llmhost import runtime

    return runtime.trace_settings().trace_retention_days
