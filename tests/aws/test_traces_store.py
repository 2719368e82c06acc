"""The traces table against moto, created as template.yaml declares it (indexes, TTL,
stream): a trace is stored whole and read back as the API's view, listed newest first with
filters, cut to fit DynamoDB's item limit, and takes feedback."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import ROOT
from llmhost.observe import RequestObservation, RetrievedSource, StageTiming

DAY = 86400
T0 = 1_796_263_800.0  # 2026-12-03T02:10:00Z
NOW = T0 + 3600


@pytest.fixture
def traces_table(moto_aws: None) -> str:
    from llmhost import aws
    from llmhost_local.traces import TRACES_TABLE, provision_traces, traces_source

    provision_traces(aws.client("dynamodb"), traces_source(ROOT / "template.yaml"))
    return TRACES_TABLE


@pytest.fixture
def store(traces_table: str) -> Any:
    from llmhost import aws
    from llmhost.traces.store import TraceStore

    return TraceStore(aws.client("dynamodb"), traces_table, now=lambda: NOW)


def observation(request_id: str, started_at: float = T0, **fields: Any) -> RequestObservation:
    values: dict[str, Any] = {
        "request_id": request_id,
        "kind": "chat",
        "started_at": started_at,
        "duration_ms": 40.5,
        "status": 200,
        "model": "demo",
        "collection": "docs",
        "query": "hello?",
        "prompt": [{"role": "user", "content": "hello?"}],
        "answer": "hi",
        "input_tokens": 3,
        "output_tokens": 1,
        "sources": (RetrievedSource("a#0", 0.5, "docs", "passage"),),
        "stages": (StageTiming("generate", 1.0, 39.0),),
    }
    values.update(fields)
    return RequestObservation(**values)


def record(store: Any, obs: RequestObservation, retention_days: int = 30) -> dict[str, Any]:
    from llmhost.traces.record import build_trace

    view = build_trace(obs, content="full", retention_days=retention_days, cost_usd=0.001)
    return store.put(view, int(obs.started_at) + retention_days * DAY)


def test_a_stored_trace_reads_back_as_its_view(store: Any) -> None:
    # Given a recorded trace
    written = record(store, observation("chatcmpl-1"))
    # When it is read back
    read = store.get(written["id"])
    # Then it is the view that was written, floats and lists included
    assert read == written
    assert read["attributes"]["llmhost.cost_usd"] == 0.001
    assert read["sources"][0]["score"] == 0.5


def test_view_from_item_reads_the_stream_image(store: Any, traces_table: str) -> None:
    # Given a trace whose table item is read as the stream's NEW_IMAGE is (DynamoDB JSON)
    from boto3.dynamodb.types import TypeDeserializer

    from llmhost import aws
    from llmhost.traces.store import view_from_item

    written = record(store, observation("chatcmpl-2"))
    raw = aws.client("dynamodb").get_item(TableName=traces_table, Key={"id": {"S": written["id"]}})
    image = {k: TypeDeserializer().deserialize(v) for k, v in raw["Item"].items()}
    # Then view_from_item gives the view back
    assert view_from_item(image) == written


def test_listing_is_newest_first_with_filters_and_cursor(store: Any) -> None:
    # Given traces over three days, two models, two collections, one error
    record(store, observation("r-1", T0 - 2 * DAY))
    record(store, observation("r-2", T0 - DAY, model="other"))
    record(store, observation("r-3", T0 - 10, collection="wiki"))
    record(store, observation("r-4", T0, status=503, error_code="model_sleeping"))
    since, until = T0 - 5 * DAY, NOW

    # When all are listed two at a time
    first = store.list(since_s=since, until_s=until, limit=2)
    rest: list[dict[str, Any]] = []
    cursor = first.next_cursor
    while cursor:
        page = store.list(since_s=since, until_s=until, limit=2, cursor=cursor)
        rest += page.traces
        cursor = page.next_cursor

    # Then they come newest first, as summaries
    assert [t["request_id"] for t in first.traces + rest] == ["r-4", "r-3", "r-2", "r-1"]
    assert "prompt" not in first.traces[0] and "spans" not in first.traces[0]
    # And the filters select
    by_model = store.list(model="other", since_s=since, until_s=until)
    assert [t["request_id"] for t in by_model.traces] == ["r-2"]
    errors = store.list(status="error", since_s=since, until_s=until)
    assert [t["request_id"] for t in errors.traces] == ["r-4"]
    wiki = store.list(collection="wiki", since_s=since, until_s=until)
    assert [t["request_id"] for t in wiki.traces] == ["r-3"]
    window = store.list(since_s=T0 - 1.5 * DAY, until_s=T0 - 1)
    assert [t["request_id"] for t in window.traces] == ["r-3", "r-2"]


def test_an_expired_trace_is_hidden_before_dynamodb_removes_it(store: Any) -> None:
    from llmhost.traces.store import TraceNotFound

    old = record(store, observation("r-old", NOW - 3 * DAY), retention_days=1)
    with pytest.raises(TraceNotFound):
        store.get(old["id"])
    assert store.list(since_s=NOW - 5 * DAY, until_s=NOW).traces == []


def test_a_huge_trace_is_cut_to_fit_and_says_so(store: Any) -> None:
    # Given a request whose prompt and answer are far over DynamoDB's 400 KB item limit
    big = "word " * 200_000
    obs = observation(
        "r-big",
        prompt=[{"role": "user", "content": big}],
        answer=big,
        sources=tuple(RetrievedSource(f"d#{i}", 0.1, "docs", big[:50_000]) for i in range(8)),
    )
    # When it is recorded
    stored = record(store, obs)
    # Then it was stored (under the limit), and names what it cut
    read = store.get(stored["id"])
    assert len(json.dumps(read).encode()) < 400_000
    assert set(read["attributes"]["llmhost.truncated"]) >= {"answer", "prompt"}
    assert "characters cut to fit the trace store" in read["answer"]


def test_feedback_is_appended_and_unknown_ids_are_404(store: Any) -> None:
    from llmhost.traces.store import MAX_FEEDBACK, FeedbackFull, TraceNotFound

    trace = record(store, observation("r-fb"))
    entry = {"name": "user", "score": 1, "comment": "good", "at": "2026-12-03T03:00:00.000Z"}
    updated = store.add_feedback(trace["id"], entry)
    assert updated["feedback"] == [entry]
    assert store.add_feedback(trace["id"], {**entry, "score": 0.5})["feedback"][1]["score"] == 0.5
    with pytest.raises(TraceNotFound):
        store.add_feedback("0" * 32, entry)
    for _ in range(MAX_FEEDBACK - 2):
        store.add_feedback(trace["id"], entry)
    with pytest.raises(FeedbackFull):
        store.add_feedback(trace["id"], entry)


def test_a_bad_cursor_is_a_400_naming_the_field(store: Any) -> None:
    from llmhost.traces.store import CursorInvalid

    for cursor in ("nope", "eyJpIjoiYnktZGF5In0", "e30"):
        with pytest.raises(CursorInvalid, match="cursor"):
            store.list(since_s=T0, until_s=NOW, cursor=cursor)


def test_the_recorder_samples_and_always_keeps_errors(store: Any) -> None:
    from llmhost.traces.record import trace_id_for
    from llmhost.traces.recorder import TraceRecorder

    recorder = TraceRecorder(store, sample_rate=0.0, content="redacted", retention_days=30)
    recorder.observe(observation("r-ok"))
    recorder.observe(observation("r-err", status=500, error_code="internal_error"))
    assert store.find(trace_id_for("r-ok")) is None
    kept = store.get(trace_id_for("r-err"))
    assert kept["content"] == "redacted" and kept["status"] == "error"


def test_numbers_dynamodb_cannot_hold_are_stored_anyway(store: Any) -> None:
    # Given request parameters at the edges of what a client may send
    obs = observation("r-edge", parameters={"temperature": 1e-300, "top_p": 5e-324, "seed": 2**130})
    stored = record(store, obs)
    # Then the trace is stored (DynamoDB refuses numbers nearer 0 than 1E-130, or over 38
    # digits): the tiny ones as 0, the huge one as text
    read = store.get(stored["id"])
    assert read["attributes"]["gen_ai.request.temperature"] == 0
    assert read["attributes"]["gen_ai.request.seed"] == str(2**130)
