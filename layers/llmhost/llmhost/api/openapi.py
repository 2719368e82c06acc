"""The responses of the OpenAPI document: every status each route really answers, with the
error body llmhost sends and the one API Gateway sends for what it refuses itself.

Powertools generates the paths and request schemas from the routes' models, but documents
every route as ``200`` plus a ``422`` in FastAPI's ``{"detail": [...]}`` shape, which llmhost
never sends. ``document_responses`` replaces the responses in one place, from the table below.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error llmhost answers: a stable code, a message that says what to "
    "do, and for invalid requests one entry per bad field.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "examples": ["invalid_request"]},
                "message": {"type": "string"},
                "fields": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "message"],
                        "properties": {
                            "field": {"type": "string", "examples": ["hosting.kind"]},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}
GATEWAY_ERROR_SCHEMA = {
    "type": "object",
    "description": "What API Gateway answers for requests it refuses before llmhost runs.",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
}
_ERROR = {"$ref": "#/components/schemas/Error"}
_GATEWAY = {"$ref": "#/components/schemas/GatewayError"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    }
}

# Status -> (description, body schema, headers). Statuses API Gateway answers on its own
# carry its {"message"} body; where llmhost answers the same status, either body.
_STATUSES: dict[int, tuple[str, dict[str, Any], dict[str, Any]]] = {
    400: (
        "The body is not UTF-8 JSON (the message gives line and column), or the request "
        "asks for something this route does not do; or API Gateway could not read the HTTP "
        "request (a Content-Length that is not a number, or both Content-Length and "
        "Transfer-Encoding), with its own body.",
        {"anyOf": [_ERROR, _GATEWAY]},
        {},
    ),
    403: (
        "API Gateway refused the request: not signed with SigV4, or the IAM identity may "
        "not call execute-api:Invoke on this route.",
        _GATEWAY,
        {},
    ),
    404: ("No such deployment, model, collection, document, job, trace or route.", _ERROR, {}),
    409: (
        "The request conflicts with the current state (the name exists, a deletion is "
        "under way, the GPU capacity cap is reached, a pool name is taken, the endpoint "
        "or pool name is a SageMaker endpoint llmhost did not create, or a synchronous "
        "request names an async deployment, which answers only jobs).",
        _ERROR,
        {},
    ),
    413: ("API Gateway refused a body over its 10 MB payload limit.", _GATEWAY, {}),
    415: ("The body is not JSON: send 'Content-Type: application/json' (UTF-8).", _ERROR, {}),
    422: (
        "The request is well-formed JSON but invalid: one entry per bad field, each with "
        "what to change.",
        _ERROR,
        {},
    ),
    429: (
        "Throttled, by API Gateway, SageMaker or a backing service (Qdrant, the embedding "
        "endpoint); retry after Retry-After seconds.",
        {"anyOf": [_ERROR, _GATEWAY]},
        _RETRY_AFTER,
    ),
    502: ("The model failed or answered something llmhost could not read.", _ERROR, {}),
    503: (
        "The model is asleep, scaling from zero or starting (it is being woken), the "
        "deployment registry is busy (DynamoDB throttled it), or a backing service is "
        "unavailable; retry after Retry-After seconds.",
        _ERROR,
        _RETRY_AFTER,
    ),
    504: (
        "The model, or the whole request, took longer than API Gateway's 29 s (for long "
        "answers stream from the StreamUrl instead), or a backing service timed out.",
        {"anyOf": [_ERROR, _GATEWAY]},
        {},
    ),
}

# Every route answers 400 (an HTTP request API Gateway cannot read), 403 (IAM), 429 and 503
# (a throttled or failing backing service; the registry busy is 503), and 504 (API Gateway's
# integration timeout, or a backing service's); routes with a body 413, 415 and 422 too;
# routes with a path parameter 404 and 422.
_ALWAYS = (400, 403, 429, 503, 504)
_WITH_BODY = (400, 413, 415, 422)
_WITH_PATH = (404, 422)
_MODEL_CALL = (404, 429, 502, 503)
_STORE = (503,)

# (method, path) -> (success status, its description, the route's own error statuses)
ROUTES: dict[tuple[str, str], tuple[int, str, tuple[int, ...]]] = {
    # 503: SageMaker could not say whether the endpoint name is taken (retry).
    ("post", "/v1/deployments"): (201, "Created: the record, PENDING", (409, 503)),
    ("get", "/v1/deployments"): (200, "The deployments", (422,)),
    ("get", "/v1/deployments/{name}"): (200, "The deployment's record", ()),
    ("patch", "/v1/deployments/{name}"): (200, "The changed record", (409, 503)),
    ("delete", "/v1/deployments/{name}"): (202, "Deleting: the record, DELETING", ()),
    ("post", "/v1/deployments/{name}/sleep"): (202, "Going to sleep: the record", (409,)),
    ("post", "/v1/deployments/{name}/wake"): (202, "Waking: the record", (409, 503)),
    ("get", "/v1/deployments/{name}/scaling"): (200, "Scaling in force", ()),
    ("post", "/v1/plan"): (200, "The plan", ()),
    ("get", "/v1/openapi.json"): (200, "This document", ()),
    # 409: an async deployment answers only jobs (POST /v1/jobs, or Prefer: wait).
    ("post", "/v1/rag"): (200, "The answer with its sources", (409, *_MODEL_CALL, *_STORE)),
    ("post", "/v1/chat/completions"): (
        200,
        "An OpenAI chat completion",
        (409, *_MODEL_CALL, *_STORE),
    ),
    ("get", "/v1/models"): (200, "Deployments as OpenAI models", ()),
    ("get", "/v1/collections"): (200, "The collections", _STORE),
    ("post", "/v1/collections"): (201, "Created", (409, *_STORE)),
    ("get", "/v1/collections/{name}"): (200, "The collection's size", _STORE),
    ("delete", "/v1/collections/{name}"): (200, "Deleted", _STORE),
    ("post", "/v1/collections/{name}/documents"): (
        200,
        "What was indexed, and each rejected document with why (422 when none was indexed)",
        (503,),
    ),
    ("delete", "/v1/collections/{name}/documents/{doc_id}"): (200, "Deleted", _STORE),
    # 404: the body's model does not exist; 503: the jobs table or queue is busy.
    ("post", "/v1/jobs"): (202, "Accepted: the job, QUEUED; Location names it", (404, 503)),
    # 400: a next_token this listing did not return.
    ("get", "/v1/jobs"): (200, "A page of jobs, and the next page's token", (422, 503)),
    ("get", "/v1/jobs/{job_id}"): (200, "The job: status, timings, result or result_url", _STORE),
    ("delete", "/v1/jobs/{job_id}"): (200, "Cancelled: the job", (409, *_STORE)),
    # 422: a bad by, from or to, from after to, or a period over 31 days; 503: the usage
    # table is busy.
    ("get", "/v1/usage"): (
        200,
        "Requests, tokens and estimated cost per deployment or caller, and how cost was shared",
        (422, *_STORE),
    ),
    ("get", "/v1/deployments/{name}/capacity"): (
        200,
        "Copies desired and in service over time, and the scaling decisions",
        _STORE,
    ),
    # 400: a cursor this listing did not return; 422: a bad filter (from after to...).
    ("get", "/v1/traces"): (200, "A page of trace summaries, newest first", (422, *_STORE)),
    ("get", "/v1/traces/{trace_id}"): (200, "The trace", _STORE),
    # 409: the trace has the most feedback entries kept.
    ("post", "/v1/traces/{trace_id}/feedback"): (201, "Recorded: the trace", (409, *_STORE)),
}


# Routes that hold a request for a cold model when asked (``llmhost.serving.hold``): they
# take the Prefer header, say which preference they applied, and answer 202 for a wait longer
# than API Gateway's 29 s.
_HOLDING = {("post", "/v1/rag"), ("post", "/v1/chat/completions")}
PREFER_PARAMETER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "RFC 7240. `wait=<seconds>` (0 to 900; more counts as 900): a request for "
    "a model that is asleep or scaled to zero is held while it wakes instead of answered 503, "
    "and answered when it is up. A wait API Gateway's 29 s cannot hold becomes a job: 202 "
    "with `Location: /v1/jobs/{id}`. Other preferences are ignored; a `wait` that is not a "
    "whole number of seconds is a 400 (`invalid_prefer`).",
    "schema": {"type": "string", "examples": ["wait=20"]},
}
_PREFERENCE_APPLIED = {
    "Preference-Applied": {
        "description": "`wait=<seconds>`: the wait applied, when the request sent one.",
        "schema": {"type": "string"},
    }
}
_JOB_ACCEPTED = {
    "description": "The request asked to wait longer than API Gateway's 29 s for a model that "
    "is waking, or to wait for an async deployment (which answers only jobs): it became a "
    "job. Poll the Location (GET /v1/jobs/{id}) for its result.",
    "headers": {
        "Location": {"description": "/v1/jobs/{id}", "schema": {"type": "string"}},
        **_PREFERENCE_APPLIED,
    },
    "content": {"application/json": {"schema": {"type": "object"}}},
}


def _object(required: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": sorted(required), "properties": required}


_COLLECTION = _object(
    {"name": {"type": "string"}, "points": {"type": "integer"}, "dimension": {"type": "integer"}}
)
# Success bodies described here; records of a deployment are below; the rest are objects.
_SUCCESS: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/v1/deployments"): _object(
        {
            "deployments": {
                "type": "array",
                "items": _object({"name": {"type": "string"}, "status": {"type": "string"}}),
            },
            "count": {"type": "integer", "minimum": 0},
        }
    ),
    ("post", "/v1/plan"): _object({"name": {"type": "string"}, "plan": {"type": "object"}}),
    ("get", "/v1/models"): _object(
        {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": _object({"id": {"type": "string"}, "object": {"const": "model"}}),
            },
        }
    ),
    ("get", "/v1/collections"): _object(
        {
            "collections": {"type": "array", "items": {"type": "string"}},
            "count": {"type": "integer", "minimum": 0},
        }
    ),
    ("post", "/v1/collections"): _COLLECTION,
    ("get", "/v1/collections/{name}"): _COLLECTION,
    ("delete", "/v1/collections/{name}"): _object({"deleted": {"type": "string"}}),
    ("delete", "/v1/collections/{name}/documents/{doc_id}"): _object(
        {"deleted": {"type": "string"}, "chunks": {"type": "integer", "minimum": 1}}
    ),
    ("get", "/v1/usage"): _object(
        {
            "by": {"enum": ["deployment", "key"]},
            "from": {"type": "string", "format": "date-time"},
            "to": {"type": "string", "format": "date-time"},
            "currency": {"const": "USD"},
            "rows": {
                "type": "array",
                "items": _object(
                    {
                        "requests": {"type": "integer", "minimum": 0},
                        "errors": {"type": "integer", "minimum": 0},
                        "input_tokens": {"type": "integer", "minimum": 0},
                        "output_tokens": {"type": "integer", "minimum": 0},
                        "cost_usd": {"type": "number", "minimum": 0},
                        "cost_per_request_usd": {"type": ["number", "null"], "minimum": 0},
                    }
                ),
            },
            "total": {"type": "object"},
            "method": {"type": "string"},
        }
    ),
    ("get", "/v1/deployments/{name}/capacity"): _object(
        {
            "deployment": {"type": "string"},
            "points": {
                "type": "array",
                "items": _object(
                    {
                        "at": {"type": "string", "format": "date-time"},
                        "desired": {"type": "integer", "minimum": 0},
                        "in_service": {"type": "integer", "minimum": 0},
                    }
                ),
            },
            "decisions": {
                "type": "array",
                "items": _object(
                    {
                        "at": {"type": "string", "format": "date-time"},
                        "from": {"type": ["integer", "null"]},
                        "to": {"type": ["integer", "null"]},
                        "reason": {"type": "string"},
                    }
                ),
            },
        }
    ),
}
# Success bodies that are records of a deployment.
_RECORD_ROUTES = {
    ("post", "/v1/deployments"),
    ("get", "/v1/deployments/{name}"),
    ("patch", "/v1/deployments/{name}"),
    ("delete", "/v1/deployments/{name}"),
    ("post", "/v1/deployments/{name}/sleep"),
    ("post", "/v1/deployments/{name}/wake"),
}


def document_responses(doc: dict[str, Any]) -> dict[str, Any]:
    """Give every operation of ``doc`` its real statuses and bodies (in place; returned).

    Raises KeyError for an operation missing from ROUTES, so a new route cannot ship
    undocumented.
    """
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ResponseValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = ERROR_SCHEMA
    schemas["GatewayError"] = GATEWAY_ERROR_SCHEMA
    schemas.update(_record_schemas())
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            success, description, own = ROUTES[(method, path)]
            statuses = set(_ALWAYS) | set(own)
            if "requestBody" in operation:
                statuses |= set(_WITH_BODY)
            if "{" in path:
                statuses |= set(_WITH_PATH)
            body = (
                {"$ref": "#/components/schemas/DeploymentView"}
                if (method, path) in _RECORD_ROUTES
                else _SUCCESS.get((method, path), {"type": "object"})
            )
            responses: dict[str, Any] = {
                str(success): {
                    "description": description,
                    "content": {"application/json": {"schema": body}},
                }
            }
            if (method, path) in _HOLDING:
                operation.setdefault("parameters", []).append(PREFER_PARAMETER)
                responses[str(success)]["headers"] = _PREFERENCE_APPLIED
                responses["202"] = _JOB_ACCEPTED
            for status in sorted(statuses):
                text, schema, headers = _STATUSES[status]
                response: dict[str, Any] = {
                    "description": text,
                    "content": {"application/json": {"schema": schema}},
                }
                if headers:
                    response["headers"] = headers
                responses[str(status)] = response
            operation["responses"] = responses
    return doc


def _record_schemas() -> dict[str, Any]:
    """The deployment record as the API returns it, from the record's own model."""
    from pydantic.json_schema import models_json_schema

    from llmhost.lifecycle.record import DeploymentRecord

    # The record's sections are named "...View": their input twins (DeploymentSpec &c.)
    # are already in the document with the request schemas, and may differ.
    _, defs = models_json_schema(
        [(DeploymentRecord, "serialization")], ref_template="#/components/schemas/{model}View"
    )
    views = {f"{name}View": schema for name, schema in defs.get("$defs", {}).items()}
    record = views["DeploymentRecordView"]
    for hidden in ("version", "attempt", "capacity_held"):
        record["properties"].pop(hidden, None)
        if hidden in record.get("required", []):
            record["required"].remove(hidden)
    record["properties"]["endpoint_name"] = {"type": "string"}
    record["required"] = sorted({*record.get("required", []), "endpoint_name"})
    views["DeploymentView"] = views.pop("DeploymentRecordView")
    return views
