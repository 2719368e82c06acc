"""The local runner feeds the reconciler from moto's DynamoDB Streams, as Lambda would.

Registry writes made by llmhost's own code (a deployment, the budget ledger, the capacity
lock) must reach the reconcile handler exactly as the stream and the event source mapping
in template.yaml deliver them: deployment changes as moto's records, internal items never.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from moto.events.models import EventPattern

from conftest import local_stack
from llmhost_local.cloud import DEMO_DEPLOYMENT, REGION, TABLE, LocalCloud, project_root
from llmhost_local.streams import stream_source

pytestmark = pytest.mark.e2e


class Spy:
    """Every event the reconcile handler is invoked with."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        with self._lock:
            self.events.append(event)
        return self._handler(event, context)

    def stream_records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for e in self.events for r in e.get("Records", [])]

    def wait_for(self, name: str, event_name: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.stream_records():
                keys = record["dynamodb"]["Keys"]
                if keys["name"]["S"] == name and record["eventName"] == event_name:
                    return record
            time.sleep(0.05)
        seen = [
            (e.get("detail-type"), [r["eventName"] for r in e.get("Records", [])])
            for e in self.events
        ]
        raise AssertionError(f"no {event_name} record of {name} reached the reconciler: {seen}")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    with local_stack(
        tmp_path_factory.mktemp("qdrant"), openai=False, speed=600, drift_seconds=3600
    ) as stack:
        yield stack.cloud


def test_internal_items_never_reach_the_reconciler_and_deployments_do_as_moto_sent_them(
    cloud: LocalCloud,
) -> None:
    from llmhost import aws, runtime
    from llmhost.scaling.budget import BudgetLedger
    from llmhost.scaling.capacity_guard import CapacityGuard

    assert cloud.reconcile_module is not None
    spy = Spy(cloud.reconcile_module.handler)
    cloud.reconcile_module.handler = spy  # type: ignore[attr-defined]
    registry = runtime.registry()
    # Given a budget tick and a capacity decision wrote their items to the registry table
    ledger = BudgetLedger(registry)
    today = datetime.now(UTC).date()
    ledger.bill(None, time.time(), today, 3.25)
    ledger.mark_exceeded(today, "today's GPU budget is spent")
    with CapacityGuard(registry, aws.client("sagemaker"), None, cap=4).locked():
        pass
    # When a deployment is created, and the budget ledger written again after it
    cloud.create_deployment(DEMO_DEPLOYMENT)
    ledger.bill(time.time() - 60, time.time(), today, 0.5)
    # Then the deployment's INSERT reaches the reconciler, and then its MODIFYs
    inserted = spy.wait_for("demo", "INSERT")
    modified = spy.wait_for("demo", "MODIFY")
    cloud.create_deployment({**DEMO_DEPLOYMENT, "name": "after-the-ledger"})
    spy.wait_for("after-the-ledger", "INSERT")
    # and no internal item ever did
    keys = [r["dynamodb"]["Keys"]["name"]["S"] for r in spy.stream_records()]
    assert keys and not [k for k in keys if k.startswith("#")]

    # The records are moto's, in the shape Lambda delivers: read the stream directly
    streams = aws.client("dynamodbstreams")
    arn = aws.client("dynamodb").describe_table(TableName=TABLE)["Table"]["LatestStreamArn"]
    (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    raw = {
        r["dynamodb"]["SequenceNumber"]: r
        for r in streams.get_records(ShardIterator=iterator)["Records"]
    }
    internal = [r for r in raw.values() if r["dynamodb"]["Keys"]["name"]["S"].startswith("#")]
    assert internal, "the internal items were written to the stream"
    source = stream_source(project_root() / "template.yaml")
    for record in (inserted, modified):
        original = raw[record["dynamodb"]["SequenceNumber"]]
        assert record["eventSourceARN"] == arn
        assert record["eventID"] == original["eventID"]
        assert record["eventName"] == original["eventName"]
        assert record["dynamodb"]["Keys"] == original["dynamodb"]["Keys"]
        assert record["dynamodb"]["NewImage"] == original["dynamodb"]["NewImage"]
        assert record["dynamodb"]["StreamViewType"] == source.view_type
        assert isinstance(record["dynamodb"]["ApproximateCreationDateTime"], int)
    assert "OldImage" in modified["dynamodb"] and "OldImage" not in inserted["dynamodb"]
    # moto keeps every shard iterator it hands out: the poller's are dropped after each read
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    kept = dynamodbstreams_backends[DEFAULT_ACCOUNT_ID][REGION].shard_iterators
    assert len(kept) < 10
    # Batches are at most the event source's size, and every record passed its filter
    patterns = [EventPattern.load(p) for p in source.filters]
    for event in spy.events:
        if "Records" in event:
            assert 1 <= len(event["Records"]) <= source.batch_size
            assert all(any(p.matches_event(r) for p in patterns) for r in event["Records"])
