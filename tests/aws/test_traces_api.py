"""The traces routes through the api function (API Gateway events, moto's DynamoDB): list
with filters and a cursor, read by trace id or request id, feedback; every bad input a 4xx
naming the field; and the api role is granted every call the routes make."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from test_template_grants import _record_aws_calls

import sam_template as sam
from conftest import ROOT
from llmhost import runtime
from llmhost.observe import RequestObservation
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext, api_gateway_event

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def api(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    from llmhost import aws
    from llmhost.traces.recorder import TraceRecorder
    from llmhost_local.traces import TRACES_TABLE, provision_traces, traces_source

    provision_traces(aws.client("dynamodb"), traces_source(ROOT / "template.yaml"))
    monkeypatch.setenv("TRACES_TABLE", TRACES_TABLE)
    recorder = TraceRecorder(
        runtime.trace_store(), sample_rate=1.0, content="full", retention_days=30
    )
    now = time.time()
    for i, (model, status) in enumerate([("demo", 200), ("other", 200), ("demo", 503)]):
        recorder.observe(
            RequestObservation(
                f"chatcmpl-{i}",
                "rag",
                now - 60 + i,
                10.0,
                status,
                model=model,
                collection="docs",
                query=f"question {i}",
                answer="yes",
            )
        )
    return load_handler("api", "llmhost-api")


def call(api: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode() if body is not None else b""
    event = api_gateway_event(method, path, JSON, raw, "tester")
    response = api.handler(event, LambdaContext("test"))
    return response["statusCode"], json.loads(response["body"])


def test_listing_filters_and_pages(api: Any) -> None:
    status, page = call(api, "GET", "/v1/traces")
    assert status == 200
    assert [t["request_id"] for t in page["data"]] == ["chatcmpl-2", "chatcmpl-1", "chatcmpl-0"]
    assert "answer" not in page["data"][0] and page["next_cursor"] is None
    _, demo = call(api, "GET", "/v1/traces?model=demo&status=ok")
    assert [t["request_id"] for t in demo["data"]] == ["chatcmpl-0"]
    _, first = call(api, "GET", "/v1/traces?limit=2")
    assert len(first["data"]) == 2 and first["next_cursor"]
    _, rest = call(
        api, "GET", "/v1/traces?" + urlencode({"limit": 2, "cursor": first["next_cursor"]})
    )
    assert [t["request_id"] for t in rest["data"]] == ["chatcmpl-0"]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    until = int(time.time() + 7200)  # epoch seconds work too
    _, none = call(api, "GET", "/v1/traces?" + urlencode({"from": since, "to": until}))
    assert none["data"] == []


def test_a_trace_is_read_by_its_id_or_its_request_id(api: Any) -> None:
    from llmhost.traces.record import trace_id_for

    status, by_request = call(api, "GET", "/v1/traces/chatcmpl-1")
    assert status == 200 and by_request["id"] == trace_id_for("chatcmpl-1")
    _, by_id = call(api, "GET", f"/v1/traces/{by_request['id']}")
    assert by_id == by_request and by_id["answer"] == "yes"
    status, missing = call(api, "GET", "/v1/traces/" + "0" * 32)
    assert status == 404 and missing["error"]["code"] == "trace_not_found"


def test_feedback_is_stored_and_returned(api: Any) -> None:
    status, trace = call(
        api, "POST", "/v1/traces/chatcmpl-0/feedback", {"score": 1, "comment": "right"}
    )
    assert status == 201
    (entry,) = trace["feedback"]
    assert (entry["name"], entry["score"], entry["comment"]) == ("user", 1, "right")
    _, again = call(api, "GET", "/v1/traces/chatcmpl-0")
    assert again["feedback"] == trace["feedback"]
    status, _ = call(api, "POST", "/v1/traces/" + "0" * 32 + "/feedback", {"score": 1})
    assert status == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/v1/traces?limit=0", None, "limit"),
        ("GET", "/v1/traces?limit=101", None, "limit"),
        ("GET", "/v1/traces?status=maybe", None, "status"),
        ("GET", "/v1/traces?from=yesterday", None, "from"),
        ("GET", "/v1/traces?to=2026-12-03T02:10:00", None, "to"),
        ("GET", "/v1/traces?from=2026-12-04T00:00:00Z&to=2026-12-03T00:00:00Z", None, "from"),
        ("GET", "/v1/traces?cursor=bm9wZQ", None, "cursor"),
        ("GET", "/v1/traces?model=Not_A_Name", None, "model"),
        ("GET", "/v1/traces/not%20an%20id", None, "trace_id"),
        ("POST", "/v1/traces/chatcmpl-0/feedback", {"score": "high"}, "score"),
        ("POST", "/v1/traces/chatcmpl-0/feedback", {}, "score"),
        ("POST", "/v1/traces/chatcmpl-0/feedback", {"score": 1, "comment": "x" * 2001}, "comment"),
        ("POST", "/v1/traces/chatcmpl-0/feedback", {"score": 1, "extra": 1}, "extra"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    api: Any, method: str, path: str, body: Any, field: str
) -> None:
    status, answer = call(api, method, path, body)
    assert 400 <= status < 500, answer
    assert field in json.dumps(answer["error"]), answer


def test_a_non_finite_score_is_refused(api: Any) -> None:
    event = api_gateway_event(
        "POST", "/v1/traces/chatcmpl-0/feedback", JSON, b'{"score": 1e999}', "tester"
    )
    response = api.handler(event, LambdaContext("test"))
    assert 400 <= response["statusCode"] < 500


def test_the_api_role_is_granted_what_the_routes_call(api: Any) -> None:
    calls = _record_aws_calls()
    call(api, "GET", "/v1/traces?model=demo")
    call(api, "GET", "/v1/traces")
    call(api, "GET", "/v1/traces/chatcmpl-0")
    call(api, "POST", "/v1/traces/chatcmpl-0/feedback", {"score": 0})
    traces_calls = {a for a, p in calls if p.get("TableName") == "llmhost-traces"}
    assert traces_calls == {"dynamodb:Query", "dynamodb:GetItem", "dynamodb:UpdateItem"}
    grants = sam.grants(sam.load(), "ApiFunctionRole")
    for action in traces_calls:
        assert {"Fn::GetAtt": ["TracesTable", "Arn"]} in grants[action], action
    indexes = {a for a, p in calls if p.get("IndexName")}
    assert indexes == {"dynamodb:Query"}
    assert {"Fn::Sub": "${TracesTable.Arn}/index/*"} in grants["dynamodb:Query"]


def _cursor(state: dict[str, Any]) -> str:
    import base64

    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _key(**names: str) -> dict[str, Any]:
    return {name: {"S": value} for name, value in names.items()}


@pytest.mark.parametrize(
    ("query", "state"),
    [
        # a day after the listing's to
        ({"to": "2026-12-03T00:00:00Z"}, {"i": "by-day", "d": "2026-12-09", "k": None}),
        # a start key of another day than the cursor's
        (
            {},
            {
                "i": "by-day",
                "d": time.strftime("%Y-%m-%d", time.gmtime()),
                "k": _key(id="x", day="1999-01-01", started_key="1999-01-01T00:00:00.000Z#x"),
            },
        ),
        # another model's start key
        (
            {"model": "demo"},
            {
                "i": "by-model",
                "d": "2026-12-03",
                "k": _key(id="x", model="other", started_key="2026-12-03T00:00:00.000Z#x"),
            },
        ),
        # a start key after the listing's to, or naming another item than its id
        (
            {"model": "demo"},
            {
                "i": "by-model",
                "d": "2026-12-03",
                "k": _key(id="x", model="demo", started_key="9999-01-01T00:00:00.000Z#x"),
            },
        ),
        (
            {"model": "demo"},
            {
                "i": "by-model",
                "d": "2026-12-03",
                "k": _key(id="x", model="demo", started_key="2026-12-03T00:00:00.000Z#y"),
            },
        ),
    ],
)
def test_a_forged_cursor_is_a_400_naming_it(
    api: Any, query: dict[str, str], state: dict[str, Any]
) -> None:
    status, answer = call(
        api, "GET", "/v1/traces?" + urlencode({**query, "cursor": _cursor(state)})
    )
    assert status == 400, answer
    assert answer["error"]["message"].startswith("cursor:")


@pytest.mark.parametrize("day", ["2020-01-01", "0001-01-01"])
def test_a_cursor_from_before_the_listings_from_ends_it(api: Any, day: str) -> None:
    # (0001-01-01: the walk back would step past the calendar's first day)
    state = {"i": "by-day", "d": day, "k": None}
    status, page = call(api, "GET", "/v1/traces?" + urlencode({"cursor": _cursor(state)}))
    assert status == 200 and page == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    "raw", [b'{"score": 1e300}', b'{"score": -1e101}', b'{"score": "1"}', b'{"score": true}']
)
def test_a_score_dynamodb_cannot_store_or_not_a_number_is_a_422(api: Any, raw: bytes) -> None:
    event = api_gateway_event("POST", "/v1/traces/chatcmpl-0/feedback", JSON, raw, "tester")
    response = api.handler(event, LambdaContext("test"))
    assert response["statusCode"] == 422, response["body"]
    assert "score" in response["body"]


def test_a_score_too_small_for_dynamodb_is_stored_as_zero(api: Any) -> None:
    status, trace = call(api, "POST", "/v1/traces/chatcmpl-0/feedback", {"score": -1e-300})
    assert status == 201 and trace["feedback"][-1]["score"] == 0


@pytest.mark.parametrize(("content", "kept"), [("redacted", "mail [email]"), ("none", None)])
def test_a_feedback_comment_is_kept_as_its_trace_keeps_text(
    api: Any, content: str, kept: str | None
) -> None:
    from llmhost.traces.recorder import TraceRecorder

    recorder = TraceRecorder(
        runtime.trace_store(), sample_rate=1.0, content=content, retention_days=30
    )  # type: ignore[arg-type]
    recorder.observe(RequestObservation("chatcmpl-pii", "chat", time.time(), 1.0, 200))
    body = {"score": 0, "comment": "mail zed@example.com"}
    status, trace = call(api, "POST", "/v1/traces/chatcmpl-pii/feedback", body)
    assert status == 201
    assert trace["feedback"][-1].get("comment") == kept
    _, again = call(api, "GET", "/v1/traces/chatcmpl-pii")
    assert "zed@example.com" not in json.dumps(again)
