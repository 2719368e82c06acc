"""Usage counters, the capacity history and GET /v1/usage, GET /v1/deployments/{name}/capacity:
hand-built request observations counted into the usage table (moto DynamoDB, created as
template.yaml declares it), shared into costs and read back through the API function."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from llmhost import aws, instances, runtime
from llmhost.observe import RequestObservation, StageTiming, notify
from llmhost.usage.capacity import CapacityRecorder
from llmhost.usage.observers import UsageCounter
from llmhost.usage.report import UsageReports
from llmhost.usage.store import CapacityPoint, ScalingDecision, UsageStore
from llmhost_local.cloud import load_handler, project_root
from llmhost_local.events import LambdaContext, api_gateway_event
from llmhost_local.usage_table import USAGE_TABLE, provision_usage_table

NOW = datetime(2026, 12, 3, 2, 30, tzinfo=UTC)
G5 = instances.get("ml.g5.2xlarge").price_per_hour  # type: ignore[union-attr]
SPEC = {
    "name": "demo",
    "model": {"kind": "hub", "model_id": "Qwen/Qwen2.5-0.5B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}


@pytest.fixture
def store(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> UsageStore:
    monkeypatch.setenv(
        "USAGE_TABLE",
        provision_usage_table(aws.client("dynamodb"), project_root() / "template.yaml")[
            "USAGE_TABLE"
        ],
    )
    return UsageStore(aws.client("dynamodb"), USAGE_TABLE, retention_days=30)


def observation(**changes: Any) -> RequestObservation:
    values: dict[str, Any] = {
        "request_id": "chatcmpl-1",
        "kind": "chat",
        "started_at": (NOW - timedelta(minutes=20)).timestamp(),
        "duration_ms": 900.0,
        "status": 200,
        "model": "demo",
        "caller": "alice",
        "input_tokens": 300,
        "output_tokens": 100,
        "stages": (StageTiming("generate", 100.0, 800.0),),
    }
    values.update(changes)
    return RequestObservation(**values)


@pytest.fixture
def api(store: UsageStore) -> Any:
    module = load_handler("api", "llmhost-api")
    runtime.override(
        usage_reports=UsageReports(store, lambda name: runtime.registry().find(name), lambda: NOW)
    )

    def call(method: str, path: str, body: Any = None, **query: str) -> tuple[int, Any]:
        target = path + (f"?{urlencode(query)}" if query else "")
        raw = json.dumps(body).encode() if body is not None else b""
        event = api_gateway_event(method, target, {"Content-Type": "application/json"}, raw, "t")
        response = module.handler(event, LambdaContext("llmhost-api"))
        return response["statusCode"], json.loads(response["body"])

    return call


def test_each_request_is_one_update_and_counts_add_up(store: UsageStore) -> None:
    # Given the usage counter as the only observer, and DynamoDB's calls recorded
    calls: list[str] = []
    aws.client("dynamodb").meta.events.register(
        "before-call.dynamodb", lambda model, **_: calls.append(model.name)
    )
    counter = UsageCounter(lambda: store)
    # When alice asks twice, bob once, and one request is refused cold
    notify([counter], observation())
    notify([counter], observation(request_id="2", input_tokens=50, output_tokens=10))
    notify([counter], observation(request_id="3", caller="bob"))
    notify([counter], observation(request_id="4", status=503, cold=True, stages=()))
    # Then each request was one UpdateItem and nothing else
    assert calls == ["UpdateItem"] * 4
    # And the hour's counters say what happened, per caller
    rows = {
        r.caller: r
        for r in store.usage(NOW.replace(minute=0), NOW.replace(minute=0) + timedelta(hours=1))
    }
    assert set(rows) == {"alice", "bob"}
    alice = rows["alice"]
    assert (alice.requests, alice.errors, alice.cold) == (3, 1, 1)
    assert (alice.input_tokens, alice.output_tokens) == (650, 210)
    assert alice.errors_by_class["503"] == 1 and alice.busy_ms == 1600
    assert rows["bob"].requests == 1


def test_runtime_observers_count_when_the_table_is_configured(store: UsageStore) -> None:
    observers = runtime.usage_observers()
    assert [type(o).__name__ for o in observers] == ["UsageCounter", "RequestMetrics"]
    notify(observers, observation(caller=None, model=None, status=400, stages=()))
    (row,) = store.usage(NOW.replace(minute=0), NOW.replace(minute=0) + timedelta(hours=1))
    assert (row.deployment, row.caller, row.errors_by_class["4xx"]) == ("-", "-", 1)


def test_no_usage_table_means_metrics_only(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USAGE_TABLE", raising=False)
    assert [type(o).__name__ for o in runtime.usage_observers()] == ["RequestMetrics"]
    # and a broken setting loses the counts, never the request
    monkeypatch.setenv("USAGE_TABLE", "llmhost-usage")
    monkeypatch.setenv("USAGE_RETENTION_DAYS", "forever")
    assert [type(o).__name__ for o in runtime.usage_observers()] == ["RequestMetrics"]


def _one_copy_for_two_hours(store: UsageStore) -> None:
    # A point every 5 minutes from 00:30 to 02:30: one g5.2xlarge in service
    at = NOW - timedelta(hours=2)
    while at <= NOW:
        store.add_point(CapacityPoint("demo", at, 1, 1, G5))
        at += timedelta(minutes=5)


def test_usage_by_deployment_shares_the_instance_and_reports_idle_hours(
    api: Any, store: UsageStore
) -> None:
    api("POST", "/v1/deployments", SPEC)
    _one_copy_for_two_hours(store)
    counter = UsageCounter(lambda: store)
    counter.observe(observation())  # 02:10, 400 tokens
    counter.observe(observation(request_id="2", caller="bob", input_tokens=100, output_tokens=0))
    # When usage is asked for 00:00 to 03:00
    status, body = api(
        "GET",
        "/v1/usage",
        by="deployment",
        **{"from": "2026-12-03T00:00:00Z", "to": "2026-12-03T03:00:00Z"},
    )
    assert status == 200, body
    (row,) = body["rows"]
    # Then the instance cost 2 hours (00:30 to now, 02:30) of g5
    assert row["deployment"] == "demo" and row["requests"] == 2
    assert row["cost_usd"] == pytest.approx(G5 * 2, abs=1e-5)
    # of which the hours without requests (00:30-02:00) are idle, the 02:00 hour served
    assert row["idle_cost_usd"] == pytest.approx(G5 * 1.5, abs=1e-5)
    assert row["served_cost_usd"] == pytest.approx(G5 * 0.5, abs=1e-5)
    assert row["cost_per_request_usd"] == pytest.approx(row["served_cost_usd"] / 2, abs=1e-5)
    assert body["method"] and body["currency"] == "USD"
    # And by key, alice paid 400/500 of the served hour, bob 100/500; idle is in the total
    status, body = api(
        "GET",
        "/v1/usage",
        by="key",
        **{"from": "2026-12-03T00:00:00Z", "to": "2026-12-03T03:00:00Z"},
    )
    keys = {r["key"]: r for r in body["rows"]}
    served = G5 * 0.5
    assert keys["alice"]["cost_usd"] == pytest.approx(served * 0.8, abs=1e-5)
    assert keys["bob"]["cost_usd"] == pytest.approx(served * 0.2, abs=1e-5)
    assert keys["alice"]["deployments"] == ["demo"]
    assert body["total"]["idle_cost_usd"] == pytest.approx(G5 * 1.5, abs=1e-5)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"by": "model"}, "by"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "2026-12-03T02:00:00Z", "to": "2026-12-02T02:00:00Z"}, "from"),
        ({"from": "2026-10-01T00:00:00Z", "to": "2026-12-03T00:00:00Z"}, "to"),
        ({"from": "1e300"}, "from"),
    ],
)
def test_bad_usage_queries_are_422_naming_the_field(
    api: Any, query: dict[str, str], field: str
) -> None:
    status, body = api("GET", "/v1/usage", **query)
    assert status == 422, body
    assert field in [f["field"] for f in body["error"]["fields"]]


def test_capacity_route_returns_points_and_decisions(api: Any, store: UsageStore) -> None:
    api("POST", "/v1/deployments", SPEC)
    _one_copy_for_two_hours(store)
    store.add_decision(
        ScalingDecision(
            "demo",
            NOW - timedelta(minutes=7),
            "OverloadScaleOut",
            "x: desired instances 1 -> 2",
            1,
            2,
        )
    )
    store.add_point(CapacityPoint("demo-2", NOW, 3, 3, G5))  # another deployment: not shown
    status, body = api(
        "GET",
        "/v1/deployments/demo/capacity",
        **{"from": "2026-12-03T02:00:00Z", "to": "2026-12-03T02:30:00Z"},
    )
    assert status == 200, body
    assert body["deployment"] == "demo"
    assert [p["at"] for p in body["points"]][:2] == [
        "2026-12-03T02:00:00.000Z",
        "2026-12-03T02:05:00.000Z",
    ]
    assert len(body["points"]) == 7
    assert all(p["desired"] == 1 and p["in_service"] == 1 for p in body["points"])
    assert body["decisions"] == [
        {
            "at": "2026-12-03T02:23:00.000Z",
            "from": 1,
            "to": 2,
            "event": "OverloadScaleOut",
            "reason": "x: desired instances 1 -> 2",
        }
    ]
    # An unknown deployment is a 404, a bad time a 422 naming it
    assert api("GET", "/v1/deployments/nope/capacity")[0] == 404
    status, body = api("GET", "/v1/deployments/demo/capacity", to="soon")
    assert status == 422 and body["error"]["fields"][0]["field"] == "to"


def test_usage_and_capacity_are_in_the_openapi_document(api: Any) -> None:
    status, doc = api("GET", "/v1/openapi.json")
    assert status == 200
    usage = doc["paths"]["/v1/usage"]["get"]
    assert {p["name"] for p in usage["parameters"]} == {"by", "from", "to"}
    assert "/v1/deployments/{name}/capacity" in doc["paths"]


def test_recorder_writes_a_point_per_deployment_and_each_decision(
    api: Any, store: UsageStore
) -> None:
    from llmhost.scaling.capacity_guard import Capacity
    from llmhost.scaling.hook import Decision, Outcome

    api("POST", "/v1/deployments", SPEC)

    class Guard:
        def capacity(self, name: str, shared: bool) -> Capacity:
            return Capacity(in_service=1, desired=2, status="Updating", changed_at=None)

    emitted: list[tuple[str, float, dict[str, str]]] = []
    recorder = CapacityRecorder(
        store,
        runtime.registry().deployments,
        runtime.registry().find,
        Guard,  # type: ignore[arg-type]
        spent_today=lambda now: 12.5,
        emit=lambda name, unit, value, dims: emitted.append((name, value, dims)),
        stack="llmhost-test",
    )
    recorder.after_scaling(
        [
            Outcome("", Decision("BudgetTick", "spent $12.50", recorded=False)),
            Outcome("demo", Decision("OverloadScaleOut", "busy: desired instances 1 -> 2")),
        ],
        NOW,
    )
    points, decisions = store.capacity(NOW - timedelta(minutes=1), NOW)
    assert [(p.deployment, p.desired, p.in_service) for p in points] == [
        ("demo", 2, 1)
    ]  # the same moment: one point
    assert points[0].unit_usd_per_hour == pytest.approx(G5)
    assert [(d.event, d.before, d.after) for d in decisions] == [("OverloadScaleOut", 1, 2)]
    names = {(n, tuple(sorted(d))) for n, _, d in emitted}
    assert ("CopiesDesired", ("Deployment",)) in names
    assert ("SpendToday", ("Stack",)) in names
    assert ("ScalingDecisions", ("Decision", "Deployment")) in names
    cost = [v for n, v, d in emitted if n == "CostPerHour" and "Deployment" in d]
    assert cost[0] == pytest.approx(2 * G5)  # a starting instance bills too


def test_the_scaling_function_records_its_decisions_and_ticks(store: UsageStore) -> None:
    from conftest import load_event
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.specs import parse_spec

    # Given a deployment idle long enough to sleep, and the scaling function with a usage table
    spec = {
        "name": "llama3-8b",
        "model": {"model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
        "scaling": {"min_capacity": 1, "max_capacity": 2, "scale_to_zero": True},
    }
    record = DeploymentRecord(name="llama3-8b", spec=parse_spec(spec))
    runtime.registry().create(record.model_copy(update={"status": "IN_SERVICE"}))
    hook = load_handler("scaling", "llmhost-scaling")
    # When its idle alarm fires, and then a budget tick runs
    result = hook.handler(load_event("cloudwatch-alarm-idle.json"), LambdaContext("scaling"))
    assert result["decision"] == "IdleSleep"
    tick = hook.handler({"source": "llmhost.budget", "action": "tick"}, LambdaContext("scaling"))
    assert tick["handled"] is True
    # Then the decision and a point per event are in the capacity history
    now = datetime.now(UTC)
    points, decisions = store.capacity(now - timedelta(minutes=5), now, "llama3-8b")
    assert [d.event for d in decisions] == ["IdleSleep"]
    assert len(points) == 2 and all(p.desired == 0 for p in points)  # no endpoint was made
    assert points[0].unit_usd_per_hour and points[0].unit_usd_per_hour > 0
