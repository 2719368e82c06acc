"""Batches against moto's DynamoDB and S3: records, validation, finalisation, resumption,
cancel, listing, and the line counts the jobs worker drives."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from llmhost.batches import runners
from llmhost.batches.lines import BatchLine, LineOutcome
from llmhost.batches.record import Batch
from llmhost.batches.runners import UnknownRunner
from llmhost.batches.service import Batches, BatchNotCancellable, BatchRequestInvalid
from llmhost.batches.store import BatchNotFound, BatchStore, FileNotFound

TABLE = "llmhost-jobs-test"
BUCKET = "llmhost-jobs-test"
ENDPOINT = "/v1/chat/completions"


class ScriptedRunner:
    """A runner whose lines finish when the test says so."""

    name = "scripted"

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.finished: dict[int, LineOutcome] = {}
        self.cancelled: list[int] = []
        self.running: set[int] = set()

    def start(self, batch: Batch, lines: Sequence[BatchLine]) -> None:
        for line in lines:
            if (batch.id, line.line) not in self.started:
                self.started.append((batch.id, line.line))

    def outcomes(self, batch: Batch, lines: Sequence[BatchLine]) -> dict[int, LineOutcome]:
        return dict(self.finished)

    def cancel(self, batch: Batch, lines: Sequence[BatchLine]) -> None:
        for line in lines:
            if line.line not in self.finished and line.line not in self.running:
                self.cancelled.append(line.line)
                self.finished[line.line] = LineOutcome.unanswered("batch_cancelled", "cancelled")


@pytest.fixture
def scripted() -> Iterator[ScriptedRunner]:
    runner = ScriptedRunner()
    runners.register_runner("scripted", lambda: runner)
    yield runner
    runners._factories.pop("scripted", None)


@pytest.fixture
def batches(moto_aws: None) -> Batches:
    from llmhost import aws

    aws.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    aws.client("s3").create_bucket(Bucket=BUCKET)
    store = BatchStore(aws.client("dynamodb"), aws.client("s3"), TABLE, BUCKET)
    clock = iter(range(1_700_000_000, 1_800_000_000))
    return Batches(store, now=lambda: next(clock))


def _line(custom_id: str, model: str = "demo") -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": {"model": model, "messages": [{"role": "user", "content": custom_id}]},
        }
    )


def _create(batches: Batches, rows: list[str], runner: str = "scripted") -> Batch:
    upload = batches.upload("input.jsonl", "batch", "\n".join(rows).encode())
    return batches.create(upload.id, ENDPOINT, "24h", {"llmhost_runner": runner})


def _jsonl(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(row) for row in content.decode().splitlines()]


def test_a_valid_batch_starts_every_line_once_and_completes_with_both_files(
    batches: Batches, scripted: ScriptedRunner
) -> None:
    # Given a batch of three lines
    batch = _create(batches, [_line("a"), _line("b"), _line("c")])
    assert batch.status == "in_progress"
    assert batch.request_counts.total == 3
    assert batch.runner == "scripted"
    # When it is advanced again before any line finished (the schedule's sweep)
    assert batches.advance(batch.id).status == "in_progress"
    # Then no line was started twice
    assert [line for _, line in scripted.started] == [1, 2, 3]
    # When the lines finish, one refused
    answer = {"object": "chat.completion", "choices": []}
    scripted.finished = {
        1: LineOutcome.answered(answer),
        2: LineOutcome.refused(404, "not_found", "no deployment named 'nope'"),
        3: LineOutcome.answered(answer),
    }
    done = batches.advance(batch.id)
    # Then the batch completed (a failed line does not fail it), with files in OpenAI's shape
    assert done.status == "completed"
    assert done.completed_at is not None and done.finalizing_at is not None
    assert done.request_counts.model_dump() == {"total": 3, "completed": 2, "failed": 1}
    assert done.output_file_id and done.error_file_id
    output = _jsonl(batches.store.file_content(done.output_file_id))
    errors = _jsonl(batches.store.file_content(done.error_file_id))
    assert [row["custom_id"] for row in output] == ["a", "c"]
    assert [row["custom_id"] for row in errors] == ["b"]
    assert errors[0]["response"]["status_code"] == 404
    assert batches.store.get_file(done.output_file_id).purpose == "batch_output"
    # And advancing an ended batch changes nothing
    assert batches.advance(batch.id) == batches.retrieve(batch.id)


def test_an_invalid_line_fails_the_batch_at_validation_naming_it(
    batches: Batches, scripted: ScriptedRunner
) -> None:
    batch = _create(batches, [_line("a"), '{"custom_id": "b", "method": "GET"}', _line("a")])
    assert batch.status == "failed"
    assert batch.errors is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_method"),
        (3, "duplicate_custom_id"),
    ]
    assert scripted.started == []


def test_a_batch_left_validating_by_a_crash_starts_on_the_next_advance(
    batches: Batches, scripted: ScriptedRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a create that died after the batch was stored, before any line started
    def crash(*_: Any) -> None:
        raise RuntimeError("the process died")

    monkeypatch.setattr(scripted, "start", crash)
    with pytest.raises(RuntimeError):
        _create(batches, [_line("a"), _line("b")])
    (stored,), _ = batches.page()
    assert stored.status == "validating"
    monkeypatch.undo()
    # When the schedule advances it
    resumed = batches.advance(stored.id)
    # Then it runs, every line started once
    assert resumed.status == "in_progress"
    assert [line for _, line in scripted.started] == [1, 2]


def test_cancel_stops_queued_lines_and_keeps_finished_ones(
    batches: Batches, scripted: ScriptedRunner
) -> None:
    # Given a batch with one line answered and one running
    batch = _create(batches, [_line("a"), _line("b"), _line("c")])
    scripted.finished = {1: LineOutcome.answered({"object": "chat.completion"})}
    scripted.running = {2}
    # When it is cancelled
    cancelling = batches.cancel(batch.id)
    # Then the queued line is cancelled and the batch waits for the running one
    assert cancelling.status == "cancelling"
    assert scripted.cancelled == [3]
    # When the running line finishes
    scripted.running.clear()
    scripted.finished[2] = LineOutcome.answered({"object": "chat.completion"})
    cancelled = batches.advance(batch.id)
    # Then the batch is cancelled with the finished lines in its output
    assert cancelled.status == "cancelled"
    assert cancelled.output_file_id and cancelled.error_file_id
    assert [
        r["custom_id"] for r in _jsonl(batches.store.file_content(cancelled.output_file_id))
    ] == [
        "a",
        "b",
    ]
    errors = _jsonl(batches.store.file_content(cancelled.error_file_id))
    assert [(r["custom_id"], r["error"]["code"]) for r in errors] == [("c", "batch_cancelled")]
    # And an ended batch cannot be cancelled; cancelling twice is harmless
    assert batches.cancel(batch.id).status == "cancelled"
    done = _create(batches, [_line("x")])
    scripted.finished = {1: LineOutcome.answered({})}
    batches.advance(done.id)
    with pytest.raises(BatchNotCancellable):
        batches.cancel(done.id)


def test_a_cancel_that_races_the_batchs_own_step_reads_again_and_cancels(
    batches: Batches, scripted: ScriptedRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a running batch, and another writer (the batch function's step) saving it
    # between the cancel's read and its write
    batch = _create(batches, [_line("a"), _line("b")])
    save = batches.store.save_batch
    raced: list[str] = []

    def step_first(after: Batch, version: int) -> int:
        if not raced:
            raced.append(after.id)
            save(batches.store.read_batch(after.id)[0], version)
        return save(after, version)

    monkeypatch.setattr(batches.store, "save_batch", step_first)
    # When the client cancels it
    cancelling = batches.cancel(batch.id)
    # Then the cancel read the batch again and went through, rather than a 409 to retry
    assert raced == [batch.id]
    assert cancelling.status in {"cancelling", "cancelled"}
    assert scripted.cancelled == [1, 2]


def test_line_counts_add_up_across_workers_and_show_while_in_progress(
    batches: Batches, scripted: ScriptedRunner
) -> None:
    batch = _create(batches, [_line("a"), _line("b"), _line("c")])
    batches.store.count_line(batch.id, succeeded=True)
    counts = batches.store.count_line(batch.id, succeeded=False).request_counts
    assert counts.model_dump() == {"total": 3, "completed": 1, "failed": 1}
    assert batches.retrieve(batch.id).request_counts == counts
    with pytest.raises(BatchNotFound):
        batches.store.count_line("batch_missing", succeeded=True)


def test_the_sweep_finishes_a_batch_whose_last_count_was_lost(
    batches: Batches, scripted: ScriptedRunner
) -> None:
    # Given a running batch whose lines all ended, but nobody advanced it (a crash between
    # a line's completion and its count)
    batch = _create(batches, [_line("a"), _line("b")])
    other = _create(batches, [_line("c"), _line("d"), _line("e")])
    scripted.finished = {1: LineOutcome.answered({}), 2: LineOutcome.answered({})}
    assert set(batches.store.open_batches()) == {batch.id, other.id}
    # When the schedule sweeps
    swept = batches.sweep()
    # Then it is finalised, and an ended batch leaves the open list
    assert swept[batch.id] == "completed"
    assert batches.retrieve(batch.id).request_counts.completed == 2
    # And a batch with a line still running stays open
    assert swept[other.id] == "in_progress"
    assert batches.store.open_batches() == [other.id]


def test_batches_list_newest_first_in_pages(batches: Batches, scripted: ScriptedRunner) -> None:
    made = [_create(batches, [_line("a")]).id for _ in range(5)]
    first, more = batches.page(limit=2)
    assert [b.id for b in first] == made[::-1][:2] and more
    rest, more = batches.page(after=first[-1].id, limit=10)
    assert [b.id for b in rest] == made[::-1][2:] and not more


def test_files_are_stored_read_and_deleted(batches: Batches) -> None:
    upload = batches.upload("in.jsonl", "batch", b'{"x": 1}\n')
    assert upload.public()["bytes"] == 9
    assert batches.store.get_file(upload.id).filename == "in.jsonl"
    assert batches.store.file_content(upload.id) == b'{"x": 1}\n'
    batches.store.delete_file(upload.id)
    with pytest.raises(FileNotFound):
        batches.store.get_file(upload.id)
    with pytest.raises(FileNotFound):
        batches.store.file_content(upload.id)


def test_a_batch_keeps_its_input_when_the_uploaded_file_is_deleted(
    batches: Batches, scripted: ScriptedRunner
) -> None:
    batch = _create(batches, [_line("a")])
    batches.store.delete_file(batch.input_file_id)
    scripted.finished = {1: LineOutcome.answered({})}
    assert batches.advance(batch.id).status == "completed"


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda b, f: b.upload("x.jsonl", "fine-tune", b"{}"), "purpose"),
        (lambda b, f: b.create(f, "/v1/embeddings", "24h"), "endpoint"),
        (lambda b, f: b.create(f, ENDPOINT, "1h"), "completion_window"),
        (lambda b, f: b.create(f, ENDPOINT, "24h", {f"k{i}": "v" for i in range(17)}), "metadata"),
    ],
)
def test_a_request_this_server_cannot_take_names_its_field(
    batches: Batches, call: Any, param: str
) -> None:
    upload = batches.upload("in.jsonl", "batch", _line("a").encode())
    with pytest.raises(BatchRequestInvalid) as refused:
        call(batches, upload.id)
    assert refused.value.param == param


def test_an_unknown_runner_is_refused_at_create_naming_the_choices(batches: Batches) -> None:
    # Given a file, When a batch names a runner this server does not have
    upload = batches.upload("input.jsonl", "batch", _line("a").encode())
    with pytest.raises(UnknownRunner) as refused:
        batches.create(upload.id, ENDPOINT, "24h", {"llmhost_runner": "carrier-pigeon"})
    # Then the request is refused naming the field and the choices, and no batch is left
    assert refused.value.param == "metadata.llmhost_runner"
    assert "fanout" in refused.value.message
    assert batches.page(None, 100) == ([], False)


def test_a_named_start_runs_once_per_id(batches: Batches) -> None:
    # Given the batch schedule starting a batch for a file version, twice (a retried run),
    # with the batch function invoked for each batch it creates
    kicked: list[str] = []
    scheduled = Batches(batches.store, now=lambda: 1_700_000_000, kick=kicked.append)
    content = "\n".join([_line("a"), _line("b")]).encode()
    args = ("batch_nightly1", "file-nightly1", "a.jsonl", content, "scheduled/k.jsonl")
    first, again = scheduled.start_named(*args), scheduled.start_named(*args)
    # Then one batch exists, handed to the batch function once, naming its source
    assert (first, again) == (True, False)
    assert kicked == ["batch_nightly1"]
    batch = scheduled.retrieve("batch_nightly1")
    assert batch.status == "validating"
    assert batch.metadata == {"llmhost_source": "scheduled/k.jsonl"}
    assert [b.id for b in scheduled.page()[0]] == ["batch_nightly1"]
