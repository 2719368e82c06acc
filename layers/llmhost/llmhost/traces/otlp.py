"""A stored trace (the API's JSON view of it) as OpenTelemetry spans, ready for an OTLP exporter.

One request becomes one root span named ``"{gen_ai.operation.name} {model}"`` (the GenAI
semantic conventions' span name) from ``started_at`` to ``started_at + duration_ms``, with
one child span per stage (embed, retrieve, generate, wake, wait) at its own offset. The ids
are the trace's own: the trace id is the view's ``id``, each stage keeps its ``span_id``,
and the root's span id is derived from the trace id, so exporting the same trace twice sends
the same spans (backends keep one). A trace whose status is ``error`` has an error status on
its root, described by its error code.

The view's ``attributes`` (``gen_ai.*``, ``llmhost.*``) go on the root as they are; the
generate stage also carries the ``gen_ai.*`` attributes of the model call, the prompt and
answer as ``gen_ai.input.messages`` / ``gen_ai.output.messages``, and the root carries the
query and answer as ``input.value`` / ``output.value`` (what Langfuse, Phoenix and Opik show
as a trace's input and output). Text is only what the trace holds: a trace stored with
``content`` ``none`` or ``redacted`` exports nothing more than that.

This module needs ``opentelemetry-sdk``, which only the trace export function ships (its
own requirements.txt, not the llmhost layer): no serving function imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan

SERVICE_NAME = "llmhost"
SCOPE_NAME = "llmhost.traces"
STAGES = ("embed", "retrieve", "generate", "wake", "wait")
# Attributes of the model call that also describe the generate stage (the GenAI inference
# span's own attributes).
_MODEL_CALL_PREFIXES = ("gen_ai.",)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TraceViewError(ValueError):
    """A trace view that cannot be turned into spans (a field missing or malformed); the
    message names the field."""


def resource(stack: str | None) -> Resource:
    """The OTel resource every exported span carries: ``service.name`` llmhost and the stack."""
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, Any] = {"service.name": SERVICE_NAME}
    if stack:
        attributes["llmhost.stack"] = stack
    return Resource.create(attributes)


def spans_from_view(view: Mapping[str, Any], resource: Resource) -> list[ReadableSpan]:
    """The root span and one child per stage of the trace ``view`` (GET /v1/traces/{id}'s JSON).

    Raises TraceViewError naming the field when ``id``, ``started_at``, ``duration_ms`` or a
    stage is missing or malformed."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    trace_id = _hex_id(view.get("id"), 32, "id")
    start_ns = _epoch_ns(view.get("started_at"), "started_at")
    end_ns = start_ns + _ms_to_ns(view.get("duration_ms"), "duration_ms")
    attributes = dict(view.get("attributes") or {})
    operation = str(attributes.get("gen_ai.operation.name") or view.get("kind") or "chat")
    model = str(attributes.get("gen_ai.request.model") or view.get("model") or "unknown")
    scope = InstrumentationScope(SCOPE_NAME)
    flags = TraceFlags(TraceFlags.SAMPLED)
    root = SpanContext(trace_id, _root_span_id(view["id"]), is_remote=False, trace_flags=flags)

    root_attributes = {
        **attributes,
        "llmhost.request_id": view.get("request_id"),
        "llmhost.kind": view.get("kind"),
        "llmhost.deployment": view.get("model"),
        "llmhost.generation": view.get("generation"),
        "llmhost.collection": view.get("collection"),
        "llmhost.caller": view.get("caller"),
        "llmhost.stream": view.get("stream"),
        "llmhost.cold": view.get("cold"),
        "llmhost.cost_usd": view.get("cost_usd"),
        "llmhost.content": view.get("content"),
        "llmhost.error_code": view.get("error_code"),
        "http.response.status_code": view.get("http_status"),
        "input.value": view.get("query"),
        "output.value": view.get("answer"),
    }
    if view.get("status") == "error":
        status = Status(StatusCode.ERROR, str(view.get("error_code") or "error"))
    else:
        status = Status(StatusCode.OK)
    spans = [
        ReadableSpan(
            name=f"{operation} {model}",
            context=root,
            parent=None,
            resource=resource,
            attributes=_otel_attributes(root_attributes),
            kind=SpanKind.SERVER,
            status=status,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=scope,
        )
    ]
    stages = view.get("spans") or []
    if not isinstance(stages, list):
        raise TraceViewError("spans: expected a list of stages")
    for index, stage in enumerate(stages):
        field = f"spans[{index}]"
        if not isinstance(stage, Mapping):
            raise TraceViewError(f"{field}: expected an object")
        name = stage.get("name")
        if name not in STAGES:
            raise TraceViewError(f"{field}.name: expected one of {', '.join(STAGES)}")
        stage_start = start_ns + _ms_to_ns(stage.get("start_ms"), f"{field}.start_ms")
        stage_end = stage_start + _ms_to_ns(stage.get("duration_ms"), f"{field}.duration_ms")
        stage_attributes = dict(stage.get("attributes") or {})
        kind = SpanKind.INTERNAL
        if name == "generate":
            kind = SpanKind.CLIENT  # the call to the model's endpoint
            stage_attributes = {**_model_call(attributes), **_messages(view), **stage_attributes}
        elif name == "retrieve":
            stage_attributes = {**_sources(view), **stage_attributes}
        context = SpanContext(
            trace_id,
            _hex_id(stage.get("span_id"), 16, f"{field}.span_id"),
            is_remote=False,
            trace_flags=flags,
        )
        spans.append(
            ReadableSpan(
                name=str(name),
                context=context,
                parent=root,
                resource=resource,
                attributes=_otel_attributes(stage_attributes),
                kind=kind,
                status=Status(StatusCode.UNSET),
                start_time=stage_start,
                end_time=stage_end,
                instrumentation_scope=scope,
            )
        )
    return spans


def _model_call(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k.startswith(_MODEL_CALL_PREFIXES)}


def _messages(view: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt and answer in the GenAI conventions' message shape (JSON strings)."""
    found: dict[str, Any] = {}
    prompt = view.get("prompt")
    if isinstance(prompt, str):
        found["gen_ai.input.messages"] = json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
        )
    elif isinstance(prompt, list):
        found["gen_ai.input.messages"] = json.dumps(
            [
                {
                    "role": str(m.get("role", "user")),
                    "parts": [{"type": "text", "content": m.get("content")}],
                }
                for m in prompt
                if isinstance(m, Mapping)
            ]
        )
    answer = view.get("answer")
    if isinstance(answer, str):
        reasons = (view.get("attributes") or {}).get("gen_ai.response.finish_reasons") or []
        message: dict[str, Any] = {
            "role": "assistant",
            "parts": [{"type": "text", "content": answer}],
        }
        if reasons:
            message["finish_reason"] = str(reasons[0])
        found["gen_ai.output.messages"] = json.dumps([message])
    return found


def _sources(view: Mapping[str, Any]) -> dict[str, Any]:
    sources = view.get("sources") or []
    if not sources:
        return {}
    return {
        "llmhost.retrieval.sources": json.dumps(sources, default=str),
        "llmhost.retrieval.source_ids": [str(s.get("id")) for s in sources],
    }


def _otel_attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """OTel accepts str, bool, int, float and homogeneous lists of them: None is left out,
    Decimals (DynamoDB's numbers) become int or float, anything else becomes JSON."""
    converted: dict[str, Any] = {}
    for key, value in values.items():
        plain = _plain(value)
        if plain is None:
            continue
        if isinstance(plain, list):
            items = [_plain(v) for v in plain if v is not None]
            kinds = {type(v) for v in items}
            if len(kinds) > 1 or (kinds and not kinds <= {str, bool, int, float}):
                plain = json.dumps(items, default=str)
            else:
                plain = items
        elif not isinstance(plain, str | bool | int | float):
            plain = json.dumps(plain, default=str)
        converted[str(key)] = plain
    return converted


def _plain(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, tuple | set):
        return list(value)
    return value


def _hex_id(value: Any, digits: int, field: str) -> int:
    if not isinstance(value, str) or len(value) != digits:
        raise TraceViewError(f"{field}: expected {digits} hexadecimal digits")
    try:
        number = int(value, 16)
    except ValueError:
        raise TraceViewError(f"{field}: expected {digits} hexadecimal digits") from None
    if number == 0:
        raise TraceViewError(f"{field}: an all-zero id is invalid in OpenTelemetry")
    return number


def _root_span_id(trace_id: str) -> int:
    """A span id for the root, the same each time for one trace (never zero)."""
    digest = hashlib.sha256(f"llmhost-root:{trace_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def _epoch_ns(value: Any, field: str) -> int:
    if not isinstance(value, str):
        raise TraceViewError(f"{field}: expected an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TraceViewError(f"{field}: expected an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise TraceViewError(f"{field}: expected a time with its zone (Z)")
    # Whole microseconds, exactly: no float rounding on the way.
    since = moment - _EPOCH
    return (since.days * 86_400 + since.seconds) * 1_000_000_000 + since.microseconds * 1_000


def _ms_to_ns(value: Any, field: str) -> int:
    plain = _plain(value)
    if isinstance(plain, bool) or not isinstance(plain, int | float) or not 0 <= plain < 1e12:
        raise TraceViewError(f"{field}: expected a non-negative number of milliseconds")
    return round(plain * 1_000_000)
