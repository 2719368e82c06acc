"""The fan-out runner's guarantees where its writes are grouped: a batch's new lines are
created 25 a transaction and queued 10 a message batch, a line is counted before its job is
marked as told, and a running batch is looked at in full only once its counts say so. A
crash between any two of those writes resumes with every line answered exactly once, and
the batch completes (moto for AWS, a stand-in for the model, the worker called per message).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_jobs_worker import StandInServing

TABLE = "llmhost-jobs-fanout"
LINES = 60  # three transactions: 25, 25, 10


class Crash(BaseException):
    """The function's process dying: nothing after it runs, not even excepts."""


class World:
    def __init__(self) -> None:
        from llmhost import aws, runtime
        from llmhost.specs import parse_spec

        self.sqs = aws.client("sqs")
        self.queue = self.sqs.get_queue_url(QueueName=TABLE)["QueueUrl"]
        self.serving = StandInServing()
        runtime.override(worker_serving_service=self.serving)
        runtime.deployments().create(
            parse_spec({"name": "demo", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}})
        )
        self.batches = runtime.batches()

    def work(self) -> int:
        """Deliver every queued message to the worker, as the jobs function would; how
        many were delivered."""
        from llmhost import runtime

        delivered = 0
        for _ in range(200):
            got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10)
            messages = got.get("Messages", [])
            if not messages:
                return delivered
            for message in messages:
                delivered += 1
                job_id = json.loads(message["Body"])["job_id"]
                if runtime.jobs().run(job_id) == "done":
                    self.sqs.delete_message(
                        QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"]
                    )
        raise AssertionError("the queue never emptied")

    def files(self, batch_id: str) -> tuple[Any, list[str], list[str]]:
        batch = self.batches.retrieve(batch_id)
        output, errors = [], []
        for file_id, into in ((batch.output_file_id, output), (batch.error_file_id, errors)):
            if file_id:
                content = self.batches.store.file_content(file_id).decode()
                into.extend(json.loads(row)["custom_id"] for row in content.splitlines())
        return batch, output, errors


@pytest.fixture
def world(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from llmhost import aws, runtime

    aws.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    aws.client("s3").create_bucket(Bucket=TABLE)
    queue = aws.client("sqs").create_queue(QueueName=TABLE, Attributes={"VisibilityTimeout": "0"})[
        "QueueUrl"
    ]
    for name, value in {"JOBS_TABLE": TABLE, "JOBS_BUCKET": TABLE, "JOBS_QUEUE_URL": queue}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BATCH_FUNCTION_NAME", raising=False)
    runtime.reset()
    yield World()
    runtime.reset()


def _new_batch(world: World, models: dict[int, str] | None = None) -> str:
    """A created batch, not advanced yet (the batch function's kick is what each test
    plays, crash included)."""
    from llmhost.batches.record import Batch, new_batch_id

    rows = [
        json.dumps(
            {
                "custom_id": f"line-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": (models or {}).get(n, "demo"),
                    "messages": [{"role": "user", "content": f"question {n}"}],
                },
            }
        )
        for n in range(1, LINES + 1)
    ]
    upload = world.batches.upload("in.jsonl", "batch", "\n".join(rows).encode())
    batch = Batch(
        id=new_batch_id(),
        endpoint="/v1/chat/completions",
        input_file_id=upload.id,
        completion_window="24h",
        created_at=0,
        expires_at=4_000_000_000,
        metadata={"llmhost_runner": "fanout"},
    )
    world.batches.store.create_batch(batch, upload.id)
    return batch.id


def _assert_each_line_once(
    world: World, batch_id: str, failed: frozenset[int] = frozenset()
) -> None:
    batch, output, errors = world.files(batch_id)
    assert batch.status == "completed", batch
    assert sorted(output + errors) == sorted(f"line-{n}" for n in range(1, LINES + 1))
    assert set(errors) == {f"line-{n}" for n in failed}
    assert batch.request_counts.completed == LINES - len(failed)
    assert batch.request_counts.failed == len(failed)
    # And the model answered each line that reached it once
    assert len(world.serving.calls) == LINES - len(failed)


def test_a_crash_between_creating_the_lines_and_queueing_them_resumes_without_loss(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.jobs.service import Jobs

    # Given a batch function that dies right after its first transaction of lines is written,
    # before their messages are sent
    batch_id = _new_batch(world)
    send_many = Jobs._send_many
    crashed: list[int] = []

    def dies_once(jobs: Jobs, job_ids: Any) -> None:
        if not crashed:
            crashed.append(len(job_ids))
            raise Crash()
        send_many(jobs, job_ids)

    monkeypatch.setattr(Jobs, "_send_many", dies_once)
    with pytest.raises(Crash):
        world.batches.advance(batch_id)
    assert crashed  # one group's jobs were written and not queued
    # When the batch is advanced again (the function's retry, or the sweep) and the worker
    # takes every message
    world.batches.advance(batch_id)
    world.work()
    # Then every line was answered exactly once, none lost, none twice
    _assert_each_line_once(world, batch_id)


def test_a_resumed_start_finds_the_jobs_already_created_and_runs_each_once(
    world: World,
) -> None:
    # Given a batch whose lines were all created and queued, and some already answered
    batch_id = _new_batch(world)
    world.batches.advance(batch_id)
    got = world.sqs.receive_message(QueueUrl=world.queue, MaxNumberOfMessages=10)["Messages"]
    from llmhost import runtime

    for message in got:
        runtime.jobs().run(json.loads(message["Body"])["job_id"])
        world.sqs.delete_message(QueueUrl=world.queue, ReceiptHandle=message["ReceiptHandle"])
    # When its start is played again from the top (a resume after a crash)
    batch = world.batches.retrieve(batch_id)
    lines = world.batches._lines(batch)
    from llmhost.batches import runners

    runners.runner("fanout").start(batch, lines)
    world.work()
    # Then the answered lines were not run again, and every other line ran once
    _assert_each_line_once(world, batch_id)


def test_a_refused_line_counted_after_a_crash_still_completes_the_batch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.batches import progress

    # Given a batch with a line for a model that does not exist, and a batch function that
    # dies after storing that line's failed job, before counting it
    batch_id = _new_batch(world, models={7: "ghost"})
    count = progress.line_finished
    crashed: list[str] = []

    def dies_once(batch: str, status: str) -> None:
        if status == "FAILED" and not crashed:
            crashed.append(status)
            raise Crash()
        count(batch, status)

    monkeypatch.setattr(progress, "line_finished", dies_once)
    with pytest.raises(Crash):
        world.batches.advance(batch_id)
    # When the batch is advanced again and the worker takes every message
    world.batches.advance(batch_id)
    world.work()
    # Then the batch completed (its counts reached its total), line 7 in the error file
    _assert_each_line_once(world, batch_id, failed=frozenset({7}))


def test_a_worker_crash_between_counting_a_line_and_marking_it_told_completes_the_batch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.jobs.store import JobStore

    # Given a worker that dies once after counting a line, before marking its job told
    batch_id = _new_batch(world)
    mark = JobStore.mark_notified
    crashed: list[str] = []

    def dies_once(store: JobStore, job_id: str, **kwargs: Any) -> None:
        if not crashed:
            crashed.append(job_id)
            raise Crash()
        mark(store, job_id, **kwargs)

    monkeypatch.setattr(JobStore, "mark_notified", dies_once)
    world.batches.advance(batch_id)
    with pytest.raises(Crash):
        world.work()
    # When the queue delivers that message again (and the rest)
    world.work()
    # Then the line is not answered twice, and the batch completed with exact counts
    assert crashed
    _assert_each_line_once(world, batch_id)
