"""The stand-ins' wire format: botocore's serialized request in, the AWS service's response out.

``ServiceWire.handle`` is registered on a client's ``before-call.<service>`` event, which
botocore emits after serializing a request and before any HTTP. It decodes the JSON body
against the operation's input shape, validates it the way both sides of the real call do
(botocore's ``ParamValidator``, which clients may switch off, then the service's server-side
constraints that botocore never checks: enums such as ``InstanceType``, patterns such as
resource names, maximum lengths and values), calls the control plane, and returns
``(http_response, parsed)``, which short-circuits botocore's HTTP send.

A stand-in that models only part of a service gives the wire a ``route``: per request it
says ``serve`` (the stand-in answers), ``pass`` (the hook returns None and botocore carries
on to whatever is behind the client, moto in tests) or ``merge`` (a Describe whose answer
spans both: the wire fetches every page from behind the client, hands the items to the
control plane, which adds its own and cuts the page).

Responses are encoded to the JSON AWS would send and parsed by botocore's own parser, so
callers get exactly what botocore produces (``datetime`` timestamps, ``ResponseMetadata``,
modeled error fields). An error is returned as an HTTP 400 with ``__type``/``message``, so
botocore raises its usual ``ClientError`` and ``client.exceptions.*`` work. Every success
response is checked against the output shape first: a stand-in must never answer with
something the service could not.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from functools import lru_cache
from typing import Any, Literal, cast

from botocore.awsrequest import AWSResponse
from botocore.client import BaseClient
from botocore.compat import HTTPHeaders
from botocore.model import OperationModel, Shape
from botocore.parsers import ResponseParserFactory
from botocore.utils import parse_timestamp
from botocore.validate import ParamValidator

from llmhost_local.standin.autoscaling_state import AutoScalingControlPlane, AutoScalingError
from llmhost_local.standin.autoscaling_state import route as autoscaling_route
from llmhost_local.standin.sagemaker_state import SageMakerControlPlane, SageMakerError

Route = Literal["serve", "pass", "merge"]
Router = Callable[[str, dict[str, Any]], Route]
# Builds the service's own error: (code, message) -> an exception with .code/.message/.status.
ErrorFactory = Callable[[str, str], Exception]

VALIDATION = "ValidationException"

# Operation name -> control-plane method. Anything else is a gap in the stand-in.
OPERATIONS: dict[str, str] = {
    "CreateModel": "create_model",
    "DescribeModel": "describe_model",
    "DeleteModel": "delete_model",
    "ListModels": "list_models",
    "CreateEndpointConfig": "create_endpoint_config",
    "DescribeEndpointConfig": "describe_endpoint_config",
    "DeleteEndpointConfig": "delete_endpoint_config",
    "ListEndpointConfigs": "list_endpoint_configs",
    "CreateEndpoint": "create_endpoint",
    "DescribeEndpoint": "describe_endpoint",
    "UpdateEndpoint": "update_endpoint",
    "UpdateEndpointWeightsAndCapacities": "update_endpoint_weights_and_capacities",
    "DeleteEndpoint": "delete_endpoint",
    "ListEndpoints": "list_endpoints",
    "CreateInferenceComponent": "create_inference_component",
    "DescribeInferenceComponent": "describe_inference_component",
    "UpdateInferenceComponent": "update_inference_component",
    "UpdateInferenceComponentRuntimeConfig": "update_inference_component_runtime_config",
    "DeleteInferenceComponent": "delete_inference_component",
    "ListInferenceComponents": "list_inference_components",
    "CreateTransformJob": "create_transform_job",
    "DescribeTransformJob": "describe_transform_job",
    "StopTransformJob": "stop_transform_job",
    "ListTransformJobs": "list_transform_jobs",
    "AddTags": "add_tags",
    "ListTags": "list_tags",
    "DeleteTags": "delete_tags",
}

# Application Auto Scaling operations the stand-in answers (for its dimensions only).
AUTOSCALING_OPERATIONS: dict[str, str] = {
    "RegisterScalableTarget": "register_scalable_target",
    "DescribeScalableTargets": "describe_scalable_targets",
    "DeregisterScalableTarget": "deregister_scalable_target",
    "PutScalingPolicy": "put_scaling_policy",
    "DescribeScalingPolicies": "describe_scaling_policies",
    "DeleteScalingPolicy": "delete_scaling_policy",
    "PutScheduledAction": "put_scheduled_action",
    "DescribeScheduledActions": "describe_scheduled_actions",
    "DeleteScheduledAction": "delete_scheduled_action",
    "DescribeScalingActivities": "describe_scaling_activities",
}

# How many pages of a merged Describe the wire reads from behind the client before giving
# up: a backend that keeps answering with a NextToken would otherwise loop forever.
_MAX_DOWNSTREAM_PAGES = 100


class StandInResponseInvalid(AssertionError):
    """The stand-in built a response the service could never send: a stand-in bug."""


class _Body:
    """The ``raw`` of an ``AWSResponse``: botocore reads the content through ``stream()``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> list[bytes]:
        return [self._data]


class ServiceWire:
    """Serves one botocore client's calls from a control plane.

    ``operations`` maps operation names to plane methods (each takes the decoded request and
    returns the result dict; under ``merge`` it also gets ``downstream=[items]``). ``error``
    is the plane's exception class, built as ``error(code, message)`` and carrying ``code``,
    ``message`` and ``status``. ``route`` decides per request (default: serve everything);
    ``client`` is needed only for ``merge``.
    """

    def __init__(
        self,
        plane: Any,
        operations: Mapping[str, str],
        *,
        error: type[Exception],
        service: str,
        parsers: ResponseParserFactory | None = None,
        route: Router | None = None,
        client: BaseClient | None = None,
    ) -> None:
        self._plane = plane
        self._operations = operations
        self._error = error
        self._service = service
        self._parsers = parsers or ResponseParserFactory()
        self._route = route
        self._client = client
        self._local = threading.local()

    def handle(
        self, model: OperationModel, params: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, dict[str, Any]] | None:
        """Answer one serialized request as the service would, or None to let it through.

        Raises ``NotImplementedError`` for a served operation the stand-in does not model (a
        test bug, not an AWS error) and ``StandInResponseInvalid`` if the stand-in's own
        answer breaks the output shape.
        """
        if getattr(self._local, "passing", False):
            return None  # the wire's own downstream call for a merge
        method = self._operations.get(model.name)
        if method is None and self._route is None:
            raise self._unmodeled(model.name)
        url = str(params.get("url") or "https://localhost/")
        error = cast(ErrorFactory, self._error)
        try:
            request = _decode_request(params.get("body"), model.input_shape)
            _check_request(request, model.input_shape, error)
            decision = self._route(model.name, request) if self._route is not None else "serve"
            if decision == "pass":
                return None
            if method is None:
                raise self._unmodeled(model.name)
            call = getattr(self._plane, method)
            if decision == "merge":
                theirs = self._downstream(model, request)
                result = call(request, downstream=theirs)
            else:
                theirs, result = [], call(request)
        except self._error as err:
            failure = cast(Any, err)
            body = json.dumps({"__type": failure.code, "message": failure.message}).encode()
            return self._respond(model, failure.status, body, url)
        # The backend's items go out as it sent them (moto leaves out fields AWS always sends,
        # such as a target's RoleARN); only the stand-in's own are held to the output shape.
        _check_response(model, _without_items(result, theirs, _list_member(model)))
        encoded = _encode(result, model.output_shape) if model.output_shape is not None else {}
        return self._respond(model, 200, json.dumps(encoded).encode(), url)

    def _unmodeled(self, operation: str) -> NotImplementedError:
        return NotImplementedError(
            f"the {self._service} stand-in does not implement {operation}; it models "
            f"{', '.join(sorted(self._operations))}"
        )

    def _downstream(self, model: OperationModel, request: dict[str, Any]) -> list[Any]:
        """Every item the backend behind the client holds for this Describe, all pages."""
        if self._client is None:
            raise RuntimeError(f"merging {model.name} needs the client the wire is attached to")
        key = _list_member(model)
        if key is None:
            raise RuntimeError(f"cannot merge {model.name}: its output has no single list")
        query = {k: v for k, v in request.items() if k not in ("NextToken", "MaxResults")}
        items: list[Any] = []
        self._local.passing = True
        try:
            for _ in range(_MAX_DOWNSTREAM_PAGES):
                page = cast(Any, self._client)._make_api_call(model.name, query)
                items += page.get(key, [])
                token = page.get("NextToken")
                if not token or token == query.get("NextToken"):
                    break
                query["NextToken"] = token
        finally:
            self._local.passing = False
        return items

    def _respond(
        self, model: OperationModel, status: int, body: bytes, url: str
    ) -> tuple[AWSResponse, dict[str, Any]]:
        headers = {
            "x-amzn-RequestId": str(uuid.uuid4()),
            "Content-Type": "application/x-amz-json-1.1",
            "Content-Length": str(len(body)),
            "Date": formatdate(usegmt=True),
        }
        http = AWSResponse(url, status, HTTPHeaders.from_dict(headers), _Body(body))
        response = {
            "headers": http.headers,
            "status_code": status,
            "body": body,
            "context": {"operation_name": model.name},
        }
        service = model.service_model
        protocol = getattr(service, "resolved_protocol", None) or service.protocol
        parser = self._parsers.create_parser(protocol)
        # The JSON parser answers an operation without output (shape None) with metadata only.
        parsed: dict[str, Any] = parser.parse(response, cast(Shape, model.output_shape))
        if status >= 300:
            # Like botocore's endpoint: a second pass picks up modeled error fields.
            error_shape = service.shape_for_error_code(parsed.get("Error", {}).get("Code"))
            if error_shape is not None:
                parsed.update(parser.parse(response, error_shape))
        parsed.setdefault("ResponseMetadata", {})["RetryAttempts"] = 0
        return http, parsed


class SageMakerWire(ServiceWire):
    """Serves one botocore client's SageMaker calls from a ``SageMakerControlPlane``."""

    def __init__(
        self, plane: SageMakerControlPlane, parsers: ResponseParserFactory | None = None
    ) -> None:
        super().__init__(
            plane, OPERATIONS, error=SageMakerError, service="SageMaker", parsers=parsers
        )


class AutoScalingWire(ServiceWire):
    """Serves the SageMaker dimensions moto lacks; every other request goes on to the backend."""

    def __init__(
        self,
        plane: AutoScalingControlPlane,
        client: BaseClient,
        parsers: ResponseParserFactory | None = None,
    ) -> None:
        super().__init__(
            plane,
            AUTOSCALING_OPERATIONS,
            error=AutoScalingError,
            service="Application Auto Scaling",
            parsers=parsers,
            route=autoscaling_route,
            client=client,
        )


def _list_member(model: OperationModel) -> str | None:
    """The name of the one list in a Describe's output (``ScalableTargets``), if it has one."""
    shape = model.output_shape
    members = shape.members if shape is not None else {}  # type: ignore[attr-defined]
    lists = [name for name, member in members.items() if member.type_name == "list"]
    return lists[0] if len(lists) == 1 else None


def _without_items(result: Any, items: list[Any], key: str | None) -> Any:
    if not items or key is None or not isinstance(result, dict):
        return result
    theirs = {id(item) for item in items}
    return {**result, key: [i for i in result.get(key, []) if id(i) not in theirs]}


# ---- requests ----------------------------------------------------------------------------


def _decode_request(body: Any, shape: Shape | None) -> dict[str, Any]:
    if shape is None:
        return {}
    if hasattr(body, "read"):
        body = body.read()
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    raw = json.loads(body) if body else {}
    decoded = _decode(raw, shape)
    return decoded if isinstance(decoded, dict) else {}


def _decode(value: Any, shape: Shape) -> Any:
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        members = shape.members  # type: ignore[attr-defined]
        return {k: _decode(v, members[k]) if k in members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_decode(v, shape.member) for v in value]  # type: ignore[attr-defined]
    if kind == "map" and isinstance(value, dict):
        return {k: _decode(v, shape.value) for k, v in value.items()}  # type: ignore[attr-defined]
    if kind == "timestamp" and isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
    if kind == "timestamp" and isinstance(value, str):
        return parse_timestamp(value)
    if kind == "blob" and isinstance(value, str):
        return base64.b64decode(value)
    return value


def _check_request(request: dict[str, Any], shape: Shape | None, error: ErrorFactory) -> None:
    """Reject what the service would reject before looking at any resource."""
    if shape is None:
        return
    report = ParamValidator().validate(request, shape)
    violations = _violations(request, shape, "")
    if violations:
        count = len(violations)
        noun = "validation error" if count == 1 else "validation errors"
        raise error(VALIDATION, f"{count} {noun} detected: {'; '.join(violations)}")
    if report.has_errors():
        raise error(VALIDATION, report.generate_report())


def _violations(value: Any, shape: Shape, path: str) -> list[str]:
    """AWS's server-side constraint errors (SageMaker's wording, shared by other JSON services)."""
    kind = shape.type_name
    meta = shape.metadata
    found: list[str] = []

    def fail(constraint: str) -> None:
        found.append(f"Value '{value}' at '{path}' failed to satisfy constraint: {constraint}")

    if kind == "structure" and isinstance(value, dict):
        members = shape.members  # type: ignore[attr-defined]
        for name in shape.required_members:  # type: ignore[attr-defined]
            if value.get(name) is None:
                found.append(
                    f"Value null at '{_join(path, name)}' failed to satisfy constraint: "
                    "Member must not be null"
                )
        for name, member_value in value.items():
            if name in members and member_value is not None:
                found += _violations(member_value, members[name], _join(path, name))
    elif kind in ("list", "map") and isinstance(value, list | dict):
        _check_range(len(value), meta, "length", fail)
        if isinstance(value, list):
            for i, item in enumerate(value, start=1):
                found += _violations(item, shape.member, f"{path}.{i}.member")  # type: ignore[attr-defined]
        else:
            for key, item in value.items():
                found += _violations(key, shape.key, f"{path}.{key}.key")  # type: ignore[attr-defined]
                found += _violations(item, shape.value, f"{path}.{key}.value")  # type: ignore[attr-defined]
    elif kind == "string" and isinstance(value, str):
        enum = shape.enum  # type: ignore[attr-defined]
        if enum and value not in enum:
            fail(f"Member must satisfy enum value set: [{', '.join(enum)}]")
        _check_range(len(value), meta, "length", fail)
        pattern = _compiled(meta.get("pattern", ""))
        if pattern is not None and not pattern.fullmatch(value):
            fail(f"Member must satisfy regular expression pattern: {meta['pattern']}")
    elif kind in ("integer", "long", "float", "double") and _is_number(value):
        _check_range(value, meta, "value", fail)
    return found


def _check_range(size: float, meta: dict[str, Any], what: str, fail: Any) -> None:
    if "min" in meta and size < meta["min"]:
        fail(f"Member must have {what} greater than or equal to {meta['min']}")
    if "max" in meta and size > meta["max"]:
        fail(f"Member must have {what} less than or equal to {meta['max']}")


def _join(path: str, member: str) -> str:
    # AWS names members in lowerCamelCase in these messages: productionVariants.1.member
    name = member[:1].lower() + member[1:]
    return f"{path}.{name}" if path else name


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    # Some service-model patterns use Java-only classes (\p{L}); those stay unchecked.
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error:
        return None


# ---- responses ---------------------------------------------------------------------------


def _check_response(model: OperationModel, result: Any) -> None:
    shape = model.output_shape
    if shape is None:
        if result:
            raise StandInResponseInvalid(f"{model.name} has no output, the stand-in sent {result}")
        return
    report = ParamValidator().validate(result, shape)
    problems = _violations(result, shape, "")
    if report.has_errors() or problems:
        details = "\n".join(
            [*([report.generate_report()] if report.has_errors() else []), *problems]
        )
        raise StandInResponseInvalid(
            f"the stand-in's {model.name} response breaks {shape.name}:\n{details}"
        )


def _encode(value: Any, shape: Shape) -> Any:
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        members = shape.members  # type: ignore[attr-defined]
        return {k: _encode(v, members[k]) for k, v in value.items() if k in members}
    if kind == "list" and isinstance(value, list):
        return [_encode(v, shape.member) for v in value]  # type: ignore[attr-defined]
    if kind == "map" and isinstance(value, dict):
        return {k: _encode(v, shape.value) for k, v in value.items()}  # type: ignore[attr-defined]
    if kind == "timestamp" and isinstance(value, datetime):
        return value.timestamp()
    if kind in ("float", "double") and _is_number(value):
        return float(value)
    if kind == "blob" and isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    return value


def constraint_violations(request: dict[str, Any], shape: Shape) -> list[str]:
    """The service's server-side constraints ``request`` breaks (``ParamValidator`` checks
    types and required members; this checks the model's lengths, ranges, enums, patterns)."""
    return _violations(request, shape, "")
