"""Usage and capacity routes of the control API: ``GET /v1/usage`` and
``GET /v1/deployments/{name}/capacity`` (``llmhost.usage.report`` does the work)."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Literal

from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from llmhost.api.http import json_response
from llmhost.specs import NAME_MAX, NAME_PATTERN

if TYPE_CHECKING:
    from llmhost.usage.report import UsageReports

TIME = (
    "ISO 8601 (e.g. 2026-12-03T00:00:00Z; without a zone: UTC) or epoch seconds. "
    "At most 31 days apart."
)


def add_usage_routes(app: APIGatewayRestResolver, reports: Callable[[], UsageReports]) -> None:
    """Add the routes; ``reports`` is called per request (the function's usage table)."""

    @app.get(
        "/v1/usage",
        summary="Requests, tokens and estimated cost per deployment or per API key",
        description=(
            "Each hour, a deployment's estimated cost (its instances' or copies' on-demand "
            "price x the time they ran) is shared over the requests it served that hour in "
            "proportion to their tokens; hours without answered requests are idle cost. from is "
            "rounded down and to up to whole hours. Default: the last 24 hours."
        ),
    )
    def get_usage(
        by: Annotated[
            Literal["deployment", "key"],
            Query(description="Group by deployment or by caller (API key or IAM principal)."),
        ] = "deployment",
        start: Annotated[str | None, Query(alias="from", max_length=40, description=TIME)] = None,
        end: Annotated[str | None, Query(alias="to", max_length=40, description=TIME)] = None,
    ):
        return json_response(HTTPStatus.OK, reports().usage(by, start, end))

    @app.get(
        "/v1/deployments/<name>/capacity",
        summary="Copies desired and in service over time, and the scaling decisions",
        description="Points every 5 minutes and at each scaling decision. Default: the last "
        "24 hours.",
    )
    def get_capacity(
        name: Annotated[
            str,
            Path(pattern=NAME_PATTERN, max_length=NAME_MAX, description="The deployment's name."),
        ],
        start: Annotated[str | None, Query(alias="from", max_length=40, description=TIME)] = None,
        end: Annotated[str | None, Query(alias="to", max_length=40, description=TIME)] = None,
    ):
        return json_response(HTTPStatus.OK, reports().capacity(name, start, end))
