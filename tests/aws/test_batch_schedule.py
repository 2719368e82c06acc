"""The batch schedule: one batch per JSONL file under the jobs bucket's scheduled/ prefix,
once per version of the file, whatever runs again (moto's S3)."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost.batches.schedule import ScheduledBatches, is_schedule_event

BUCKET = "llmhost-jobs"
LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


class Batches:
    """Starts a batch unless one with that id exists (the batch store's conditional create)."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[str, bytes, str]] = {}

    def __call__(
        self, batch_id: str, file_id: str, filename: str, content: bytes, source: str
    ) -> bool:
        if batch_id in self.started:
            return False
        self.started[batch_id] = (file_id, content, source)
        return True


@pytest.fixture
def s3(moto_aws: None) -> Any:
    from llmhost import aws

    client = aws.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def test_each_file_under_the_prefix_starts_one_batch_once_per_version(s3: Any) -> None:
    # Given two input files under scheduled/ (one in a folder), and files that are not inputs
    s3.put_object(Bucket=BUCKET, Key="scheduled/night.jsonl", Body=LINE)
    s3.put_object(Bucket=BUCKET, Key="scheduled/team-a/docs.jsonl", Body=LINE * 3)
    s3.put_object(Bucket=BUCKET, Key="scheduled/readme.txt", Body=b"not an input")
    s3.put_object(Bucket=BUCKET, Key="scheduled/empty.jsonl", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="files/elsewhere.jsonl", Body=LINE)
    batches = Batches()
    schedule = ScheduledBatches(s3, BUCKET, batches)
    # When the schedule runs
    first = schedule.run()
    # Then one batch starts per input file, over its content, naming its source
    assert set(first.started) == {"scheduled/night.jsonl", "scheduled/team-a/docs.jsonl"}
    docs = batches.started[first.started["scheduled/team-a/docs.jsonl"]]
    assert docs[1:] == (LINE * 3, "scheduled/team-a/docs.jsonl")
    # When it runs again (a retry, or the next night) with the files unchanged
    again = schedule.run()
    # Then nothing starts twice
    assert again.started == {} and again.existing == first.started
    assert len(batches.started) == 2
    # When a file is replaced by a new version
    s3.put_object(Bucket=BUCKET, Key="scheduled/night.jsonl", Body=LINE * 2)
    third = schedule.run()
    # Then that version runs, as a new batch
    assert list(third.started) == ["scheduled/night.jsonl"]
    assert third.started["scheduled/night.jsonl"] != first.started["scheduled/night.jsonl"]


def test_a_file_that_cannot_start_is_reported_and_the_others_start(s3: Any) -> None:
    from llmhost.errors import LlmhostError

    s3.put_object(Bucket=BUCKET, Key="scheduled/a.jsonl", Body=LINE)
    s3.put_object(Bucket=BUCKET, Key="scheduled/b.jsonl", Body=LINE)
    batches = Batches()

    def flaky(batch_id: str, file_id: str, filename: str, content: bytes, source: str) -> bool:
        if source.endswith("a.jsonl"):
            raise LlmhostError("the batch store is unavailable; retry after 5 s")
        return batches(batch_id, file_id, filename, content, source)

    run = ScheduledBatches(s3, BUCKET, flaky).run()
    assert list(run.failed) == ["scheduled/a.jsonl"] and list(run.started) == ["scheduled/b.jsonl"]


def test_the_schedule_event_is_recognised() -> None:
    assert is_schedule_event({"source": "llmhost.batch-schedule", "action": "start-scheduled"})
    assert not is_schedule_event({"batch_id": "batch_1"})
    assert not is_schedule_event({"source": "aws.sagemaker"})
