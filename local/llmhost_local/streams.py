"""The registry table's DynamoDB stream, delivered as Lambda's event source mapping does.

The local runner enables the stream on its table the way template.yaml does, and a poller
reads it through DynamoDB Streams (moto's: DescribeStream, GetShardIterator, GetRecords).
Every record is turned into the shape Lambda hands a function (``eventSourceARN`` added,
``ApproximateCreationDateTime`` in epoch seconds, binary values base64), dropped unless it
matches the event source's filter criteria (matched by moto's EventBridge pattern matcher,
whose syntax Lambda's filters share), and delivered in batches of at most the event source's
batch size. A batch answered with ``batchItemFailures`` is retried from the first failed
record, up to the event source's retry limit, as Lambda does for ``ReportBatchItemFailures``.

So internal items, MODIFY records and batch shapes reach the reconciler as AWS sends them,
from whatever wrote the table: the API, the scaling hook, serving's wakes, the reconciler.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

# The reconciler's stream event source in template.yaml.
TABLE_RESOURCE = "RegistryTable"
FUNCTION_RESOURCE = "ReconcileFunction"


@dataclass(frozen=True)
class StreamSource:
    """What template.yaml says about the table's stream and the function reading it."""

    view_type: str
    batch_size: int
    filters: tuple[str, ...]
    max_retries: int
    report_item_failures: bool

    def matches(self, record: dict[str, Any]) -> bool:
        """Whether Lambda would deliver ``record`` (no filters: every record)."""
        from moto.events.models import EventPattern

        if not self.filters:
            return True
        return any(
            EventPattern.load(pattern).matches_event(record)  # type: ignore[arg-type]
            for pattern in self.filters
        )


class _CfnLoader(yaml.SafeLoader):
    """A SafeLoader that reads CloudFormation's short tags (``!Ref``...) as plain values."""


def _any_tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _any_tag)


def stream_source(
    template: Path, table: str = TABLE_RESOURCE, function: str = FUNCTION_RESOURCE
) -> StreamSource:
    """A table's stream settings and the event source of the function reading it, from
    ``template`` (by default the registry's and the reconciler's)."""
    resources = yaml.load(template.read_text(), Loader=_CfnLoader)["Resources"]
    table_properties = resources[table]["Properties"]
    events = resources[function]["Properties"]["Events"]
    (source,) = [e["Properties"] for e in events.values() if e["Type"] == "DynamoDB"]
    return StreamSource(
        view_type=table_properties["StreamSpecification"]["StreamViewType"],
        batch_size=int(source.get("BatchSize", 100)),
        filters=tuple(f["Pattern"] for f in source.get("FilterCriteria", {}).get("Filters", [])),
        max_retries=int(source.get("MaximumRetryAttempts", -1)),
        report_item_failures="ReportBatchItemFailures" in source.get("FunctionResponseTypes", []),
    )


def lambda_record(record: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    """A GetRecords record (as boto3 returns it) in the JSON shape Lambda delivers."""
    return {**_to_json(record), "eventSourceARN": stream_arn}


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, set):
        return sorted(_to_json(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return int(value.timestamp())
    return value


@dataclass
class _Shard:
    after: str | None  # the last sequence number read (delivered or filtered out)
    pending: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0


class StreamPoller:
    """Reads every shard of one stream and hands batches to ``invoke``, which returns the
    function's answer (or raises, which fails the whole batch)."""

    def __init__(
        self,
        streams: Any,
        stream_arn: str,
        source: StreamSource,
        invoke: Callable[[dict[str, Any]], dict[str, Any] | None],
        log: Callable[[str], None] = lambda line: None,
        interval_s: float = 0.25,
        forget: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``forget``: told the shard iterators a read is done with (an emulator that keeps
        every iterator it hands out can drop them; DynamoDB lets them expire)."""
        self._streams = streams
        self._forget = forget
        self._arn = stream_arn
        self._source = source
        self._invoke = invoke
        self._log = log
        self.interval_s = interval_s
        self._shards: dict[str, _Shard] = {}
        self.delivered = 0
        self.dropped = 0

    def start_at_latest(self) -> None:
        """Begin every shard after its last record (``StartingPosition: LATEST``)."""
        shards = self._streams.describe_stream(StreamArn=self._arn)["StreamDescription"]["Shards"]
        for shard in shards:
            if shard["ShardId"] not in self._shards:
                state = self._shards[shard["ShardId"]] = _Shard(after=None)
                while self._read(shard["ShardId"], state):
                    pass

    def _read(self, shard_id: str, shard: _Shard) -> list[dict[str, Any]]:
        """The records after ``shard.after``, which moves past them.

        Each read asks for a fresh iterator after the last record read instead of following
        NextShardIterator: moto replaces a table's stream shard when it rolls back a cancelled
        transaction (a budget tick that lost its race), which strands older iterators.
        """
        if shard.after is None:
            position: dict[str, str] = {"ShardIteratorType": "TRIM_HORIZON"}
        else:
            position = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": shard.after}
        iterator = self._streams.get_shard_iterator(
            StreamArn=self._arn, ShardId=shard_id, **position
        )["ShardIterator"]
        page = self._streams.get_records(ShardIterator=iterator)
        if self._forget is not None:
            self._forget([iterator, *filter(None, [page.get("NextShardIterator")])])
        records: list[dict[str, Any]] = page.get("Records", [])
        if records:
            shard.after = records[-1]["dynamodb"]["SequenceNumber"]
        return records

    def poll(self) -> int:
        """Read what is new on every shard and deliver it; the number of records delivered."""
        count = 0
        for shard_id, shard in self._shards.items():
            if not shard.pending:
                for raw in self._read(shard_id, shard):
                    record = lambda_record(raw, self._arn)
                    if self._source.matches(record):
                        shard.pending.append(record)
            while shard.pending:
                batch = shard.pending[: self._source.batch_size]
                retry_from = self._deliver(batch)
                if retry_from is None:
                    count += len(batch)
                    shard.pending = shard.pending[len(batch) :]
                    shard.attempts = 0
                    continue
                count += retry_from
                shard.pending = shard.pending[retry_from:]
                shard.attempts += 1
                if 0 <= self._source.max_retries < shard.attempts:
                    # Lambda sends the batch's description to the on-failure destination.
                    self._log(
                        f"  stream: {len(batch) - retry_from} record(s) given up after "
                        f"{shard.attempts} attempts (dead-letter queue)"
                    )
                    self.dropped += len(batch) - retry_from
                    shard.pending = shard.pending[len(batch) - retry_from :]
                    shard.attempts = 0
                    continue
                break  # retried on the next poll, as Lambda retries the shard
        self.delivered += count
        return count

    def _deliver(self, batch: list[dict[str, Any]]) -> int | None:
        """Invoke with ``batch``; None when it all succeeded, else the index to retry from."""
        try:
            answer = self._invoke({"Records": batch})
        except Exception as error:
            self._log(f"  stream: batch of {len(batch)} failed: {error}")
            return 0
        failures = (answer or {}).get("batchItemFailures") or []
        if not failures or not self._source.report_item_failures:
            return None
        sequence = [r["dynamodb"]["SequenceNumber"] for r in batch]
        failed = {f.get("itemIdentifier") for f in failures if isinstance(f, dict)}
        if not failed <= set(sequence):
            return 0  # an identifier not in the batch: Lambda retries the whole batch
        return min(sequence.index(s) for s in failed)

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set."""
        while not stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as error:  # moto stopping under us, say: try next poll
                if not stop.is_set():
                    self._log(f"  stream polling failed: {error}")
