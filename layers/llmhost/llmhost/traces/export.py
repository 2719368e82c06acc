"""Stored traces sent on to an OTLP/HTTP endpoint, as the traces table's stream delivers them.

The trace export function reads the table's stream (new items only) and hands each batch
here: every record's new image becomes the trace's view (``llmhost.traces.store``), the
view becomes spans (``llmhost.traces.otlp``), and all the batch's spans go out in one OTLP
request. Nothing is dropped quietly: a record that cannot be exported is reported in
``batchItemFailures`` (Lambda's partial batch response), so Lambda retries it and, once its
retries are spent, sends it to the function's on-failure destination.

Lambda resumes a shard from the lowest sequence number reported, so a failure is reported
with every record after it: records already sent are never sent twice by a retry. A
collector that refuses the request (4xx, or 5xx and 429 after the exporter's own retries) or
cannot be reached fails the whole batch the same way.

Header values (an API key, a Basic credential) are never logged; the endpoint is logged by
its scheme and host only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger

from llmhost.traces.otlp import TraceViewError, resource, spans_from_view

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter

logger = Logger(child=True)

ViewFromItem = Callable[[dict[str, Any]], dict[str, Any]]
# CloudWatch's OTLP traces endpoint (https://xray.<region>.amazonaws.com/v1/traces): it takes
# SigV4-signed requests (service "xray"), not static headers.
CLOUDWATCH_HOST = re.compile(r"^xray\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_RETRYABLE = {429, 502, 503, 504}


class SpanSink(Protocol):
    """What sends spans: OpenTelemetry's OTLP/HTTP exporter, or the SigV4 one below."""

    def export(self, spans: Sequence[Any]) -> Any: ...

    def shutdown(self) -> None: ...


class HeadersSecretError(ValueError):
    """The headers secret does not hold a JSON object of header names to string values (the
    message names the secret, never its value)."""


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one stream batch: traces sent, records skipped (not an insert) and the
    sequence numbers reported as failed."""

    exported: int
    skipped: int
    failed: tuple[str, ...]

    def response(self) -> dict[str, Any]:
        """Lambda's partial batch response."""
        return {"batchItemFailures": [{"itemIdentifier": s} for s in self.failed]}


class StreamTraceExporter:
    """Turns stream records into spans and sends them with ``exporter`` (an OTel SpanExporter:
    the OTLP/HTTP one in the function, any other in tests)."""

    def __init__(
        self,
        exporter: SpanExporter | SpanSink,
        resource: Resource,
        view_from_item: ViewFromItem,
        endpoint: str = "",
    ) -> None:
        self._exporter = exporter
        self._resource = resource
        self._view_from_item = view_from_item
        self._where = where(endpoint)

    def export_records(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """Send the traces of ``records`` (DynamoDB stream records as Lambda delivers them)."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        spans: list[Any] = []
        sent: list[Mapping[str, Any]] = []
        skipped = 0
        first_failed = len(records)
        for index, record in enumerate(records):
            if record.get("eventName") != "INSERT":
                skipped += 1
                continue
            try:
                view = self._view_from_item(_new_image(record))
                spans.extend(spans_from_view(view, self._resource))
            except (TraceViewError, KeyError, TypeError, ValueError) as error:
                # A malformed trace will not get better: it goes to the on-failure
                # destination after its retries, with everything after it retried meanwhile.
                logger.error(
                    "trace cannot be exported",
                    extra={"sequence_number": _sequence(record), "error": str(error)},
                )
                first_failed = index
                break
            sent.append(record)
        if spans:
            try:
                result = self._exporter.export(spans)
            except Exception as error:  # the SDK's exporter reports, but another may raise
                logger.exception("trace export raised", extra={"endpoint": self._where})
                result, reason = SpanExportResult.FAILURE, str(error)
            else:
                reason = "the collector refused the spans or could not be reached"
            if result is not SpanExportResult.SUCCESS:
                logger.error(
                    "trace export failed; the batch will be retried",
                    extra={
                        "endpoint": self._where,
                        "traces": len(sent),
                        "spans": len(spans),
                        "reason": reason,
                    },
                )
                first_failed = 0
        failed = tuple(
            _sequence(r) for r in records[first_failed:] if r.get("eventName") == "INSERT"
        )
        exported = 0 if first_failed == 0 else len(sent)
        if exported:
            logger.info(
                "traces exported",
                extra={"endpoint": self._where, "traces": exported, "spans": len(spans)},
            )
        return BatchOutcome(exported=exported, skipped=skipped, failed=failed)

    def shutdown(self) -> None:
        self._exporter.shutdown()


def where(endpoint: str) -> str:
    """The endpoint as logs may show it: scheme and host, no path, query or credentials."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}" if parts.scheme else ""


def headers_from_secret(value: Any, secret_id: str) -> dict[str, str]:
    """The OTLP request headers a Secrets Manager secret holds (a parsed JSON object)."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise HeadersSecretError(
            f"the OTLP headers secret {secret_id} must hold a JSON object of header names to "
            'string values, e.g. {"Authorization": "Basic ..."}'
        )
    return dict(value)


def otlp_exporter(
    endpoint: str, headers: Mapping[str, str], timeout_s: float
) -> SpanExporter | SpanSink:
    """The span exporter for ``endpoint`` (the full traces URL, e.g. https://host/v1/traces):
    OpenTelemetry's OTLP/HTTP (protobuf) exporter with ``headers``, or for CloudWatch's
    endpoint the SigV4-signing one. Transient refusals (429, 502-504, a dropped connection)
    are retried with backoff within ``timeout_s``."""
    region = cloudwatch_region(endpoint)
    if region is not None:
        from llmhost import aws

        return SigV4OtlpExporter(endpoint, region, aws.credentials, timeout_s, headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, headers=dict(headers), timeout=timeout_s)


def cloudwatch_region(endpoint: str) -> str | None:
    """The region of CloudWatch's OTLP endpoint ``endpoint``, or None for any other URL."""
    parts = urlsplit(endpoint)
    found = CLOUDWATCH_HOST.match(parts.hostname or "") if parts.scheme == "https" else None
    return found.group(1) if found else None


class SigV4OtlpExporter:
    """OTLP/HTTP (protobuf) to CloudWatch's traces endpoint, each request signed with SigV4
    for service ``xray`` with the function's credentials (its role needs xray:PutSpans, and
    the account CloudWatch Transaction Search). Sent with botocore's HTTP session; 429 and
    502-504 and dropped connections are retried with backoff within ``timeout_s``."""

    def __init__(
        self,
        endpoint: str,
        region: str,
        credentials: Callable[[], Any],
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
        http: Any = None,
    ) -> None:
        self._endpoint = endpoint
        self._region = region
        self._credentials = credentials
        self._timeout_s = timeout_s
        self._headers = dict(headers or {})
        self._http = http

    def export(self, spans: Sequence[Any]) -> Any:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import HTTPClientError
        from botocore.httpsession import URLLib3Session
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self._http is None:
            self._http = URLLib3Session(timeout=max(1, round(self._timeout_s)))
        body = encode_spans(spans).SerializePartialToString()
        deadline = time.monotonic() + self._timeout_s
        backoff = 1.0
        while True:
            request = AWSRequest(
                method="POST",
                url=self._endpoint,
                data=body,
                headers={**self._headers, "Content-Type": "application/x-protobuf"},
            )
            SigV4Auth(self._credentials(), "xray", self._region).add_auth(request)
            status: int | None = None
            try:
                status = int(self._http.send(request.prepare()).status_code)
            except HTTPClientError as error:
                reason = type(error).__name__
            else:
                if 200 <= status < 300:
                    return SpanExportResult.SUCCESS
                reason = f"HTTP {status}"
            if (status is not None and status not in _RETRYABLE) or (
                time.monotonic() + backoff > deadline
            ):
                logger.error(
                    "CloudWatch refused the spans or could not be reached",
                    extra={"endpoint": where(self._endpoint), "reason": reason},
                )
                return SpanExportResult.FAILURE
            time.sleep(backoff)
            backoff *= 2

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.close()


def stream_trace_exporter(
    endpoint: str,
    headers: Mapping[str, str],
    *,
    stack: str | None,
    timeout_s: float,
    view_from_item: ViewFromItem,
) -> StreamTraceExporter:
    """The function's exporter: OTLP/HTTP to ``endpoint`` with ``headers``."""
    return StreamTraceExporter(
        otlp_exporter(endpoint, headers, timeout_s),
        resource(stack),
        view_from_item,
        endpoint=endpoint,
    )


def _new_image(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's new item, deserialized as boto3's resource layer would (numbers as
    Decimal, binary as bytes)."""
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
        DynamoDBRecord,
    )

    image = DynamoDBRecord(dict(record)).dynamodb
    new_image = image.new_image if image is not None else None
    if not new_image:
        raise KeyError("dynamodb.NewImage: the stream must carry new images (NEW_IMAGE)")
    return dict(new_image)


def _sequence(record: Mapping[str, Any]) -> str:
    return str((record.get("dynamodb") or {}).get("SequenceNumber", ""))


def describe_headers(headers: Mapping[str, str]) -> str:
    """Header names only, for a banner or a log line (values are credentials)."""
    return json.dumps(sorted(headers))
