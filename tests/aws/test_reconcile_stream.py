"""The reconciler fed the registry table's own stream records (moto's DynamoDB Streams).

Records are produced by the real writers (the API handler, the budget ledger, the capacity
lock), read back through DynamoDB Streams and shaped as Lambda delivers them, so internal
items and MODIFY records reach the handler exactly as AWS would send them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from moto.events.models import EventPattern

from conftest import ROOT, TABLE, load_event
from llmhost import aws, runtime
from llmhost.scaling.budget import BudgetLedger
from llmhost.scaling.capacity_guard import CapacityGuard
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext
from llmhost_local.streams import lambda_record, stream_source

Records = list[dict[str, Any]]


def streams_client() -> Any:
    """A DynamoDB Streams client moto intercepts: botocore sends a stream ARN's calls to an
    account-based host (<account>.streams-ddb...), which moto does not know yet."""
    import boto3
    from botocore.config import Config

    config = Config(account_id_endpoint_mode="disabled")
    return boto3.client("dynamodbstreams", region_name="us-east-1", config=config)


@pytest.fixture
def handlers(standin: Any) -> tuple[Any, Any]:
    return load_handler("api", "llmhost-api"), load_handler("reconcile", "llmhost-reconcile")


@pytest.fixture
def stream(standin: Any) -> Callable[[], Records]:
    """Enable the table's stream as template.yaml does; returns a reader of new records."""
    source = stream_source(ROOT / "template.yaml")
    table = aws.client("dynamodb").update_table(
        TableName=TABLE,
        StreamSpecification={"StreamEnabled": True, "StreamViewType": source.view_type},
    )["TableDescription"]
    arn = table["LatestStreamArn"]
    streams = streams_client()
    (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]

    def read() -> Records:
        nonlocal iterator
        page = streams.get_records(ShardIterator=iterator)
        iterator = page["NextShardIterator"]
        return [lambda_record(r, arn) for r in page["Records"]]

    return read


def call(module: Any, event: Any) -> dict[str, Any]:
    return module.handler(event, LambdaContext("test"))


def create(api: Any, name: str) -> None:
    event = load_event("api-create-deployment.json")
    spec = json.loads(event["body"])
    del spec["model"]["token_secret_arn"]
    spec["name"] = name
    event["body"] = json.dumps(spec)
    assert call(api, event)["statusCode"] == 201


def patch(api: Any, name: str) -> None:
    event = load_event("api-patch-deployment.json")
    event["path"] = f"/v1/deployments/{name}"
    event["pathParameters"] = {"proxy": f"v1/deployments/{name}"}
    response = call(api, event)
    assert response["statusCode"] == 200, response["body"]


def write_internal_items() -> None:
    """What a budget tick and a capacity decision write to the registry table."""
    registry = runtime.registry()
    ledger = BudgetLedger(registry)
    today = datetime.now(UTC).date()
    ledger.bill(None, 1_700_000_000.0, today, 12.5)
    ledger.mark_exceeded(today, "today's GPU budget is spent")
    guard = CapacityGuard(registry, aws.client("sagemaker"), None, cap=8)
    with guard.locked():
        pass


def test_internal_items_are_skipped_and_the_deployment_reconciled_once(
    handlers: Any, stream: Callable[[], Records]
) -> None:
    api, reconcile = handlers
    # Given a deployment created and then changed, and a budget tick and a capacity decision
    create(api, "llama3-8b")
    write_internal_items()
    patch(api, "llama3-8b")
    records = stream()
    keys = [r["dynamodb"]["Keys"]["name"]["S"] for r in records]
    assert {"#budget#state", "#capacity#lock"} <= set(keys)
    assert [r["eventName"] for r in records if keys[records.index(r)] == "llama3-8b"] == [
        "INSERT",
        "MODIFY",
    ]
    # When the whole batch, unfiltered, reaches the reconciler
    result = call(reconcile, {"Records": records})
    # Then no record is reported failed and the deployment was reconciled, once
    assert result["batchItemFailures"] == []
    assert [r["name"] for r in result["reconciled"]] == ["llama3-8b"]
    assert runtime.registry().get("llama3-8b").status == "CREATING"


def test_a_failing_deployment_reports_exactly_its_record(
    handlers: Any, stream: Callable[[], Records], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, reconcile = handlers
    for name in ("first", "broken", "last"):
        create(api, name)
    records = stream()
    reconciler = runtime.reconciler()
    real = reconciler.reconcile

    def reconcile_or_fail(name: str) -> Any:
        if name == "broken":
            raise RuntimeError("SageMaker is throttling")
        return real(name)

    monkeypatch.setattr(reconciler, "reconcile", reconcile_or_fail)
    # When a batch holding the three records arrives
    result = call(reconcile, {"Records": records})
    # Then only the broken deployment's record is to be retried; the others were reconciled
    (broken,) = [r for r in records if r["dynamodb"]["Keys"]["name"]["S"] == "broken"]
    assert result["batchItemFailures"] == [{"itemIdentifier": broken["dynamodb"]["SequenceNumber"]}]
    assert sorted(r["name"] for r in result["reconciled"]) == ["first", "last"]


def test_a_batch_where_every_deployment_fails_reports_them_all_without_raising(
    handlers: Any, stream: Callable[[], Records], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, reconcile = handlers
    create(api, "only")
    records = stream()
    reconciler = runtime.reconciler()
    monkeypatch.setattr(reconciler, "reconcile", lambda name: 1 / 0)
    result = call(reconcile, {"Records": records})
    assert result["batchItemFailures"] == [
        {"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in records
    ]


def test_the_template_filter_drops_internal_items_and_keeps_deployment_changes(
    handlers: Any, stream: Callable[[], Records]
) -> None:
    api, _ = handlers
    source = stream_source(ROOT / "template.yaml")
    assert source.report_item_failures
    create(api, "llama3-8b")
    write_internal_items()
    patch(api, "llama3-8b")
    records = stream()
    kept = [r for r in records if source.matches(r)]
    # Lambda applies each pattern to the record; moto's EventBridge matcher shares the syntax.
    patterns = [EventPattern.load(p) for p in source.filters]
    assert kept == [r for r in records if any(p.matches_event(r) for p in patterns)]
    assert [(r["eventName"], r["dynamodb"]["Keys"]["name"]["S"]) for r in kept] == [
        ("INSERT", "llama3-8b"),
        ("MODIFY", "llama3-8b"),
    ]
