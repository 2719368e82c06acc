"""The API Gateway proxy event around a request, checked before any route sees it.

API Gateway's REST proxy integration always sends the same envelope (method, path, headers,
request context...); an event without it is not a request a client made (a misrouted
trigger, a hand-written test event, a changed integration). Such an event is answered 400
naming the first field that is wrong, instead of failing deep inside the router. The check
is Powertools' own model of the envelope (which follows what API Gateway documents),
with null headers allowed as API Gateway sends them for a request without any.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventModel
from pydantic import ValidationError

_FIELD_MAX = 120


class _ProxyEvent(APIGatewayProxyEventModel):
    """Powertools' model, with what API Gateway sends for a request without headers: null."""

    headers: dict[str, str] | None = None  # type: ignore[assignment]
    multiValueHeaders: dict[str, list[str]] | None = None  # type: ignore[assignment]


def malformed_event_response(event: Any) -> dict[str, Any] | None:
    """A 400 proxy response for an event that is not an API Gateway proxy request, else None."""
    try:
        if not isinstance(event, dict):
            return _refusal("event", "not an object")
        if not isinstance(event.get("requestContext"), dict):
            # Powertools' model reads the context as an object before validating it.
            return _refusal("requestContext", "Input should be a valid dictionary")
        _ProxyEvent.model_validate(event)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        return _refusal(".".join(str(part) for part in first["loc"]), first["msg"])
    except (AttributeError, TypeError, ValueError):
        # Some of the model's own validators assume their field's type (sourceIp: a string)
        # and fail outside pydantic's error handling; the envelope is still not API Gateway's.
        return _refusal("event", "a field has the wrong type")
    return None


def _refusal(field: str, problem: str) -> dict[str, Any]:
    field = field[:_FIELD_MAX] or "event"
    message = (
        f"not an API Gateway proxy request: {field}: {problem}; send requests through the API's URL"
    )
    body = {"error": {"code": "invalid_event", "message": message, "field": field}}
    return {
        "statusCode": 400,
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }
