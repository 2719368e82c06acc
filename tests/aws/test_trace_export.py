"""Trace export: stored traces reach an OTLP/HTTP collector as spans, or are reported failed.

The collector is a real HTTP server decoding each request with opentelemetry-proto's
ExportTraceServiceRequest; the exporter is OpenTelemetry's OTLP/HTTP exporter, unmocked.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from otlp_receiver import OtlpReceiver, otlp_receiver

from llmhost import aws, runtime
from llmhost.traces.export import StreamTraceExporter, stream_trace_exporter
from llmhost.traces.otlp import resource
from llmhost.traces.store import item_from_view, view_from_item
from llmhost_local.cloud import load_handler

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SECRET_VALUE = "Basic cGstbGYtc2VjcmV0OnNrLWxmLXNlY3JldA=="
VIEW: dict[str, Any] = {
    "id": TRACE_ID,
    "request_id": "chatcmpl-123",
    "kind": "rag",
    "status": "ok",
    "http_status": 200,
    "error_code": None,
    "started_at": "2026-12-03T02:10:00.123456Z",
    "duration_ms": 812.5,
    "ttft_ms": 120.0,
    "model": "demo",
    "generation": 3,
    "collection": "docs",
    "caller": "alice",
    "stream": True,
    "cold": False,
    "cost_usd": 0.00012,
    "content": "full",
    "attributes": {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "aws.sagemaker",
        "gen_ai.request.model": "demo",
        "gen_ai.response.model": "HuggingFaceH4/zephyr-7b-beta",
        "gen_ai.usage.input_tokens": 812,
        "gen_ai.usage.output_tokens": 64,
        "gen_ai.request.max_tokens": 256,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.response.id": "chatcmpl-123",
        "llmhost.deployment": "demo",
        "llmhost.generation": 3,
        "llmhost.cold": False,
        "llmhost.ttft_ms": 120.0,
    },
    "query": "What is the refund window?",
    "prompt": [
        {"role": "system", "content": "Answer from the sources."},
        {"role": "user", "content": "What is the refund window?"},
    ],
    "answer": "Thirty days.",
    "sources": [{"id": "doc-1#0", "score": 0.61, "collection": "docs", "text": "30 days"}],
    "spans": [
        {
            "span_id": "00f067aa0ba902b7",
            "name": "embed",
            "start_ms": 0.0,
            "duration_ms": 5.1,
            "attributes": {},
        },
        {
            "span_id": "00f067aa0ba902b8",
            "name": "retrieve",
            "start_ms": 5.1,
            "duration_ms": 20.25,
            "attributes": {"llmhost.retrieve.hits": 1},
        },
        {
            "span_id": "00f067aa0ba902b9",
            "name": "generate",
            "start_ms": 25.35,
            "duration_ms": 787.15,
            "attributes": {},
        },
    ],
    "feedback": [],
    "expires_at": "2027-01-02T02:10:00Z",
}
START_NS = 1796263800_123456000  # 2026-12-03T02:10:00.123456Z


def _item(view: dict[str, Any]) -> dict[str, Any]:
    """The item the traces table stores for ``view`` (what its stream's NEW_IMAGE carries)."""
    return item_from_view(view, expires_at_s=1_798_855_800)


def _record(view: dict[str, Any], sequence: str, event: str = "INSERT") -> dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    image = {k: serializer.serialize(v) for k, v in _item(view).items()}
    return {
        "eventID": f"event-{sequence}",
        "eventName": event,
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "Keys": {"id": image["id"]},
            "NewImage": image,
            "SequenceNumber": sequence,
            "SizeBytes": 100,
            "StreamViewType": "NEW_IMAGE",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x",
    }


def _view(**changes: Any) -> dict[str, Any]:
    view = copy.deepcopy(VIEW)
    view.update(changes)
    return view


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


def _exporter(url: str, headers: dict[str, str] | None = None) -> StreamTraceExporter:
    return stream_trace_exporter(
        url, headers or {}, stack="llmhost-test", timeout_s=1.0, view_from_item=view_from_item
    )


def test_a_trace_arrives_as_a_root_span_with_a_child_per_stage(collector: OtlpReceiver) -> None:
    # Given a stored RAG trace with three stages
    # When its stream record is exported
    outcome = _exporter(collector.url).export_records([_record(VIEW, "100")])

    # Then one OTLP request carried the root span and its three children, ids unchanged
    assert outcome.failed == () and outcome.exported == 1
    assert collector.paths == ["/v1/traces"]
    assert sorted(s.name for s in collector.spans) == ["chat demo", "embed", "generate", "retrieve"]
    root = collector.named("chat demo")
    assert {s.trace_id for s in collector.spans} == {TRACE_ID}
    assert root.parent_span_id == ""
    for name in ("embed", "retrieve", "generate"):
        assert collector.named(name).parent_span_id == root.span_id
    assert collector.named("generate").span_id == "00f067aa0ba902b9"
    # with the request's real times, to the microsecond
    assert root.start_ns == START_NS
    assert root.end_ns == START_NS + 812_500_000
    retrieve = collector.named("retrieve")
    assert (retrieve.start_ns, retrieve.end_ns) == (START_NS + 5_100_000, START_NS + 25_350_000)
    # and the GenAI attributes, typed
    assert root.attributes["gen_ai.request.model"] == "demo"
    assert root.attributes["gen_ai.usage.input_tokens"] == 812
    assert root.attributes["gen_ai.usage.output_tokens"] == 64
    assert root.attributes["gen_ai.request.temperature"] == 0.2
    assert root.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert root.attributes["llmhost.collection"] == "docs"
    assert root.attributes["input.value"] == "What is the refund window?"
    assert root.attributes["output.value"] == "Thirty days."
    assert root.status_code == 1  # STATUS_CODE_OK
    assert root.resource["service.name"] == "llmhost"
    assert root.resource["llmhost.stack"] == "llmhost-test"
    generate = collector.named("generate")
    assert generate.attributes["gen_ai.usage.output_tokens"] == 64
    messages = json.loads(generate.attributes["gen_ai.input.messages"])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert json.loads(generate.attributes["gen_ai.output.messages"])[0]["parts"][0] == {
        "type": "text",
        "content": "Thirty days.",
    }
    assert retrieve.attributes["llmhost.retrieval.source_ids"] == ["doc-1#0"]
    assert retrieve.attributes["llmhost.retrieve.hits"] == 1


def test_an_error_trace_has_an_error_status_and_a_trace_without_text_sends_none(
    collector: OtlpReceiver,
) -> None:
    # Given a refused request stored with content "none" (no text kept)
    view = _view(
        status="error",
        http_status=503,
        error_code="model_cold",
        content="none",
        query=None,
        prompt=None,
        answer=None,
        sources=[{"id": "doc-1#0", "score": 0.61, "collection": "docs"}],
        spans=[],
    )

    outcome = _exporter(collector.url).export_records([_record(view, "7")])

    # Then its root span is an error described by the code, and carries no text at all
    assert outcome.failed == ()
    (root,) = collector.spans
    assert root.status_code == 2  # STATUS_CODE_ERROR
    assert root.status_message == "model_cold"
    assert root.attributes["http.response.status_code"] == 503
    assert "input.value" not in root.attributes and "output.value" not in root.attributes


@pytest.mark.parametrize("status", [400, 401, 413, 500, 503])
def test_a_collector_refusal_fails_the_whole_batch(collector: OtlpReceiver, status: int) -> None:
    # Given a collector that refuses (a 503 the exporter retries within its timeout)
    collector.status = status

    # When a batch of two traces is exported
    outcome = _exporter(collector.url).export_records(
        [_record(VIEW, "1"), _record(_view(id="5" * 32), "2")]
    )

    # Then both are reported, for Lambda to retry and then dead-letter
    assert outcome.response() == {
        "batchItemFailures": [{"itemIdentifier": "1"}, {"itemIdentifier": "2"}]
    }
    assert outcome.exported == 0


def test_an_unreachable_collector_fails_the_batch() -> None:
    # Given an endpoint where nothing listens
    with otlp_receiver() as gone:
        url = gone.url

    outcome = _exporter(url).export_records([_record(VIEW, "1")])

    assert outcome.response() == {"batchItemFailures": [{"itemIdentifier": "1"}]}


def test_a_malformed_trace_is_reported_with_everything_after_it(collector: OtlpReceiver) -> None:
    # Given a batch whose second trace has no valid start time
    records = [
        _record(_view(id="1" * 32), "1"),
        _record(_view(id="2" * 32, started_at="yesterday"), "2"),
        _record(_view(id="3" * 32), "3"),
    ]

    outcome = _exporter(collector.url).export_records(records)

    # Then the first is sent, and Lambda resumes from the bad one (so nothing is sent twice)
    assert {s.trace_id for s in collector.spans} == {"1" * 32}
    assert outcome.failed == ("2", "3")
    assert outcome.exported == 1


def test_records_other_than_inserts_are_skipped(collector: OtlpReceiver) -> None:
    outcome = _exporter(collector.url).export_records([_record(VIEW, "1", event="MODIFY")])

    assert outcome == type(outcome)(exported=0, skipped=1, failed=())
    assert collector.requests == []


def test_the_function_sends_the_headers_secret_and_never_logs_it(
    moto_aws: None,
    collector: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a headers secret (as for Langfuse) and the function's environment
    arn = aws.client("secretsmanager").create_secret(
        Name="llmhost/otlp-headers",
        SecretString=json.dumps({"Authorization": SECRET_VALUE, "x-project": "llm"}),
    )["ARN"]
    monkeypatch.setenv("OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTLP_HEADERS_SECRET_ARN", arn)
    monkeypatch.setenv("OTLP_TIMEOUT_S", "1")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "DEBUG")
    # Powertools at its most verbose (the stack's LogLevel DEBUG); the SDKs' own loggers
    # at INFO, the most Lambda's runtime shows of them unless told otherwise.
    caplog.set_level("INFO")
    module = load_handler("trace_export", "llmhost-trace-export")
    from llmhost_local.events import LambdaContext

    # When a batch is delivered, once accepted and once refused
    answer = module.handler({"Records": [_record(VIEW, "1")]}, LambdaContext("trace-export"))
    collector.status = 401
    refused = module.handler({"Records": [_record(VIEW, "2")]}, LambdaContext("trace-export"))

    # Then the collector got the headers, the refusal is reported, and no log shows the value
    assert answer == {"batchItemFailures": []}
    assert refused == {"batchItemFailures": [{"itemIdentifier": "2"}]}
    assert collector.requests[0]["authorization"] == SECRET_VALUE
    assert collector.requests[0]["x-project"] == "llm"
    assert collector.requests[0]["content-type"] == "application/x-protobuf"
    printed = capsys.readouterr()
    logs = printed.out + printed.err + caplog.text
    assert "trace export failed" in logs
    assert "401" in logs
    assert SECRET_VALUE not in logs
    assert "cGstbGYt" not in logs


def test_a_headers_secret_that_is_not_an_object_is_refused_without_its_value(
    moto_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = aws.client("secretsmanager").create_secret(
        Name="llmhost/otlp-headers", SecretString=json.dumps(["Authorization", SECRET_VALUE])
    )["ARN"]
    monkeypatch.setenv("OTLP_ENDPOINT", "https://otlp.example.com/v1/traces")
    monkeypatch.setenv("OTLP_HEADERS_SECRET_ARN", arn)

    with pytest.raises(ValueError, match="JSON object of header names") as raised:
        runtime.trace_exporter()
    assert SECRET_VALUE not in str(raised.value)
    assert arn in str(raised.value)


@pytest.mark.parametrize("endpoint", ["", "otlp.example.com/v1/traces", "ftp://host/v1/traces"])
def test_an_endpoint_that_is_not_an_http_url_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    monkeypatch.setenv("OTLP_ENDPOINT", endpoint)
    with pytest.raises(runtime.SettingsError, match="OTLP_ENDPOINT"):
        runtime.trace_exporter()


def test_spans_of_a_view_without_stages_or_ids_name_the_field() -> None:
    from llmhost.traces.otlp import TraceViewError, spans_from_view

    with pytest.raises(TraceViewError, match=r"^id:"):
        spans_from_view(_view(id="not-hex"), resource(None))
    bad_stage = _view(spans=[{"name": "embed", "span_id": "x", "start_ms": 0, "duration_ms": 1}])
    with pytest.raises(TraceViewError, match=r"spans\[0\]\.span_id"):
        spans_from_view(bad_stage, resource(None))


def test_cloudwatch_gets_sigv4_signed_requests_with_the_functions_credentials(
    collector: OtlpReceiver,
) -> None:
    from llmhost.traces.export import SigV4OtlpExporter

    # Given the exporter CloudWatch's endpoint gets (here pointed at the receiver)
    exporter = SigV4OtlpExporter(collector.url, "eu-west-1", aws.credentials, timeout_s=1.0)
    stream = StreamTraceExporter(exporter, resource("llmhost-test"), view_from_item)

    outcome = stream.export_records([_record(VIEW, "1")])

    # Then the request is signed for X-Ray in that region with the environment's credentials
    assert outcome.failed == ()
    (headers,) = collector.requests
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/eu-west-1/xray/aws4_request" in headers["authorization"]
    assert headers["x-amz-security-token"] == "testing"
    assert headers["content-type"] == "application/x-protobuf"
    assert sorted(s.name for s in collector.spans) == ["chat demo", "embed", "generate", "retrieve"]
    # and a refusal is a failed batch, as with any collector
    collector.status = 403
    refused = stream.export_records([_record(VIEW, "2")])
    assert refused.response() == {"batchItemFailures": [{"itemIdentifier": "2"}]}


@pytest.mark.parametrize(
    ("endpoint", "region"),
    [
        ("https://xray.eu-west-1.amazonaws.com/v1/traces", "eu-west-1"),
        ("https://xray.cn-north-1.amazonaws.com.cn/v1/traces", "cn-north-1"),
        ("http://xray.eu-west-1.amazonaws.com/v1/traces", None),
        ("https://xray.example.com/v1/traces", None),
        ("https://cloud.langfuse.com/api/public/otel/v1/traces", None),
    ],
)
def test_only_cloudwatchs_own_endpoint_is_signed(endpoint: str, region: str | None) -> None:
    from llmhost.traces.export import SigV4OtlpExporter, cloudwatch_region, otlp_exporter

    assert cloudwatch_region(endpoint) == region
    assert isinstance(otlp_exporter(endpoint, {}, 1.0), SigV4OtlpExporter) is (region is not None)


def test_the_sample_event_passes_the_filter_and_the_function_exports_it(
    collector: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given events/dynamodb-stream-trace-inserted.json (for `sam local invoke`)
    from moto.events.models import EventPattern

    import sam_template as sam
    from llmhost_local.events import LambdaContext

    (event,) = sam.sample_events("dynamodb-stream-trace-").values()
    (source,) = sam.functions(sam.load())["TraceExportFunction"]["Events"].values()
    patterns = source["Properties"]["FilterCriteria"]["Filters"]
    assert all(
        any(EventPattern.load(f["Pattern"]).matches_event(r) for f in patterns)
        for r in event["Records"]
    )
    monkeypatch.setenv("OTLP_ENDPOINT", collector.url)
    monkeypatch.delenv("OTLP_HEADERS_SECRET_ARN", raising=False)

    # When the function gets it
    module = load_handler("trace_export", "llmhost-trace-export")
    answer = module.handler(event, LambdaContext("trace-export"))

    # Then its trace reached the collector
    assert answer == {"batchItemFailures": []}
    (record,) = event["Records"]
    assert collector.named("chat demo").trace_id == record["dynamodb"]["Keys"]["id"]["S"]
