"""Trace export as ``make run`` wires it: a request's trace stored in the traces table (moto's
DynamoDB, made as template.yaml makes it), read from the table's stream as the
TraceExportFunction's event source reads it, handed to the function's handler and received
by a real OTLP/HTTP receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from otlp_receiver import OtlpReceiver, otlp_receiver

from llmhost import aws
from llmhost.observe import RequestObservation, RetrievedSource, StageTiming
from llmhost.traces.record import build_trace
from llmhost.traces.store import TraceStore
from llmhost_local import trace_export
from llmhost_local.cloud import load_handler, project_root
from llmhost_local.traces import TRACES_TABLE, provision_traces, traces_source

TEMPLATE = project_root() / "template.yaml"
OBSERVATION = RequestObservation(
    request_id="chatcmpl-stream-1",
    kind="rag",
    started_at=1_796_263_800.25,
    duration_ms=640.0,
    status=200,
    model="demo",
    generation=2,
    caller="alice",
    collection="docs",
    ttft_ms=90.0,
    input_tokens=300,
    output_tokens=40,
    finish_reason="stop",
    query="How long is the refund window?",
    prompt=[{"role": "user", "content": "How long is the refund window?"}],
    answer="Thirty days.",
    sources=(RetrievedSource(id="policy#0", score=0.7, collection="docs", text="30 days"),),
    stages=(
        StageTiming(name="embed", start_ms=0.0, duration_ms=4.0),
        StageTiming(name="retrieve", start_ms=4.0, duration_ms=16.0),
        StageTiming(name="generate", start_ms=20.0, duration_ms=620.0),
    ),
)


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture
def traces(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> tuple[TraceStore, str]:
    # What start_trace_export sets, restored after the test
    for name in ("OTLP_ENDPOINT", "OTLP_HEADERS_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTLP_TIMEOUT_S", "1")
    stream_arn = provision_traces(aws.client("dynamodb"), traces_source(TEMPLATE))
    return TraceStore(aws.client("dynamodb"), TRACES_TABLE), stream_arn


def _streams_client() -> Any:
    """A DynamoDB Streams client moto intercepts (as tests/aws/test_reconcile_stream.py's:
    botocore sends a stream ARN's calls to an account-based host moto does not know)."""
    import boto3
    from botocore.config import Config

    config = Config(account_id_endpoint_mode="disabled")
    return boto3.client("dynamodbstreams", region_name="us-east-1", config=config)


def _start(stream_arn: str, environ: dict[str, str], log: list[str]) -> Any:
    return trace_export.start_trace_export(
        template=TEMPLATE,
        stream_arn=stream_arn,
        streams=_streams_client(),
        secrets=aws.client("secretsmanager"),
        load_handler=load_handler,
        environ=environ,
        log=log.append,
    )


def test_a_stored_trace_reaches_the_collector_with_the_headers_and_feedback_does_not(
    traces: tuple[TraceStore, str], collector: OtlpReceiver
) -> None:
    store, stream_arn = traces
    environ = {
        trace_export.ENDPOINT: collector.url,
        trace_export.HEADERS: json.dumps({"Authorization": "Basic bG9jYWw6c2VjcmV0"}),
    }
    poller = _start(stream_arn, environ, log := [])
    # Given a request's trace, stored as the recorder stores it
    view = build_trace(OBSERVATION, content="full", retention_days=30)
    store.put(view, expires_at_s=1_799_000_000)

    # When the stream is polled
    assert poller.poll() == 1

    # Then the collector has the request as a root span and its three stages, with the header
    assert sorted(s.name for s in collector.spans) == ["chat demo", "embed", "generate", "retrieve"]
    root = collector.named("chat demo")
    assert root.trace_id == view["id"]
    assert root.start_ns == 1_796_263_800_250_000_000
    assert root.end_ns - root.start_ns == 640_000_000
    assert {s.parent_span_id for s in collector.spans if s.name != "chat demo"} == {root.span_id}
    assert root.attributes["gen_ai.usage.input_tokens"] == 300
    assert root.attributes["llmhost.caller"] == "alice"
    assert collector.requests[0]["authorization"] == "Basic bG9jYWw6c2VjcmV0"
    # And feedback on it (a MODIFY) is not exported again
    store.add_feedback(view["id"], {"name": "user", "score": 1, "at": "2026-12-03T02:11:00Z"})
    assert poller.poll() == 0
    assert len(collector.requests) == 1
    assert log == []


def test_a_collector_outage_delays_a_trace_and_does_not_lose_it(
    traces: tuple[TraceStore, str], collector: OtlpReceiver
) -> None:
    store, stream_arn = traces
    poller = _start(stream_arn, {trace_export.ENDPOINT: collector.url}, [])
    collector.status = 503
    store.put(build_trace(OBSERVATION, content="none", retention_days=30), 1_799_000_000)

    # While the collector refuses, the record stays on the stream (Lambda would retry it)
    assert poller.poll() == 0
    assert collector.spans == [] and len(collector.requests) >= 1
    # and once it accepts again, the trace arrives, once, without its text (content "none")
    collector.status = 200
    assert poller.poll() == 1
    assert len([s for s in collector.spans if s.name == "chat demo"]) == 1
    assert "input.value" not in collector.named("chat demo").attributes


def test_without_an_endpoint_nothing_reads_the_stream(traces: tuple[TraceStore, str]) -> None:
    _, stream_arn = traces
    assert _start(stream_arn, {}, []) is None
    assert trace_export.banner_line({}).startswith("Traces export: off")


def test_the_banner_says_where_traces_go_and_never_shows_a_header_value() -> None:
    line = trace_export.banner_line(
        {
            trace_export.ENDPOINT: "https://cloud.langfuse.com/api/public/otel/v1/traces",
            trace_export.HEADERS: json.dumps({"Authorization": "Basic c2VjcmV0"}),
        }
    )
    assert "https://cloud.langfuse.com/api/public/otel/v1/traces" in line
    assert "Authorization" in line and "c2VjcmV0" not in line


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({trace_export.ENDPOINT: "localhost:4318/v1/traces"}, trace_export.ENDPOINT),
        (
            {trace_export.ENDPOINT: "http://127.0.0.1:4318/v1/traces", trace_export.HEADERS: "[1]"},
            trace_export.HEADERS,
        ),
    ],
)
def test_a_bad_local_setting_stops_make_run_naming_it(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SystemExit, match=named):
        trace_export.endpoint_of(environ)
