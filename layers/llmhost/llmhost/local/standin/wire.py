"""The stand-in's wire format: botocore's serialized SageMaker request in, AWS's response out.

``SageMakerWire.handle`` is registered on a client's ``before-call.sagemaker`` event, which
botocore emits after serializing a request and before any HTTP. It decodes the JSON body
against the operation's input shape, validates it the way both sides of the real call do
(botocore's ``ParamValidator``, which clients may switch off, then SageMaker's server-side
constraints that botocore never checks: enums such as ``InstanceType``, patterns such as
resource names, maximum lengths and values), calls the control plane, and returns
``(http_response, parsed)``, which short-circuits botocore's HTTP send.

Responses are encoded to the JSON AWS would send and parsed by botocore's own parser, so
callers get exactly what botocore produces (``datetime`` timestamps, ``ResponseMetadata``,
modeled error fields). An error is returned as an HTTP 400 with ``__type``/``message``, so
botocore raises its usual ``ClientError`` and ``client.exceptions.*`` work. Every success
response is checked against the output shape first: the stand-in must never answer with
something SageMaker could not.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime
from email.utils import formatdate
from functools import lru_cache
from typing import Any, cast

from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.model import OperationModel, Shape
from botocore.parsers import ResponseParserFactory
from botocore.utils import parse_timestamp
from botocore.validate import ParamValidator

from llmhost.local.standin.sagemaker_state import (
    VALIDATION,
    SageMakerControlPlane,
    SageMakerError,
)

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
    "DeleteEndpoint": "delete_endpoint",
    "ListEndpoints": "list_endpoints",
    "CreateInferenceComponent": "create_inference_component",
    "DescribeInferenceComponent": "describe_inference_component",
    "UpdateInferenceComponent": "update_inference_component",
    "UpdateInferenceComponentRuntimeConfig": "update_inference_component_runtime_config",
    "DeleteInferenceComponent": "delete_inference_component",
    "ListInferenceComponents": "list_inference_components",
    "AddTags": "add_tags",
    "ListTags": "list_tags",
    "DeleteTags": "delete_tags",
}


class StandInResponseInvalid(AssertionError):
    """The stand-in built a response SageMaker could never send: a stand-in bug."""


class _Body:
    """The ``raw`` of an ``AWSResponse``: botocore reads the content through ``stream()``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> list[bytes]:
        return [self._data]


class SageMakerWire:
    """Serves one botocore client's SageMaker calls from a ``SageMakerControlPlane``."""

    def __init__(
        self, plane: SageMakerControlPlane, parsers: ResponseParserFactory | None = None
    ) -> None:
        self._plane = plane
        self._parsers = parsers or ResponseParserFactory()

    def handle(
        self, model: OperationModel, params: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, dict[str, Any]]:
        """Answer one serialized request as SageMaker would.

        Raises ``NotImplementedError`` for an operation the stand-in does not model (a test
        bug, not an AWS error) and ``StandInResponseInvalid`` if the stand-in's own answer
        breaks the output shape.
        """
        method = OPERATIONS.get(model.name)
        if method is None:
            raise NotImplementedError(
                f"the SageMaker stand-in does not implement {model.name}; it models "
                f"{', '.join(sorted(OPERATIONS))}"
            )
        url = str(params.get("url", "https://api.sagemaker.amazonaws.com/"))
        try:
            request = _decode_request(params.get("body"), model.input_shape)
            _check_request(request, model.input_shape)
            result = getattr(self._plane, method)(request)
        except SageMakerError as err:
            body = json.dumps({"__type": err.code, "message": err.message}).encode()
            return self._respond(model, err.status, body, url)
        _check_response(model, result)
        encoded = _encode(result, model.output_shape) if model.output_shape is not None else {}
        return self._respond(model, 200, json.dumps(encoded).encode(), url)

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


def _check_request(request: dict[str, Any], shape: Shape | None) -> None:
    """Reject what SageMaker would reject before looking at any resource."""
    if shape is None:
        return
    report = ParamValidator().validate(request, shape)
    violations = _violations(request, shape, "")
    if violations:
        count = len(violations)
        noun = "validation error" if count == 1 else "validation errors"
        raise SageMakerError(VALIDATION, f"{count} {noun} detected: {'; '.join(violations)}")
    if report.has_errors():
        raise SageMakerError(VALIDATION, report.generate_report())


def _violations(value: Any, shape: Shape, path: str) -> list[str]:
    """SageMaker's server-side constraint errors, in its wording, for one value."""
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
    # SageMaker names members in lowerCamelCase in its messages: productionVariants.1.member
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
