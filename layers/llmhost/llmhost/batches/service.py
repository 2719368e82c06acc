"""Batch operations: upload files, create, read, list, cancel, and move a batch on.

``advance`` is the one place a batch changes status after it is created, and it is
idempotent: it reads the batch and its lines' outcomes and takes the next step, so a crash
anywhere leaves a batch that the next ``advance`` (the last line's, or the schedule's)
finishes without redoing a line. Create and cancel only record what the client asked and
``kick`` the batch: in AWS an asynchronous invoke of the batch function, which advances it
(validates and starts the lines, or stops them), so the OpenAI-compatible server needs no
permission to run lines, and a create answers at once, ``validating``, as OpenAI's does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

# The runners register themselves when imported.
import llmhost.batches.fanout
import llmhost.batches.transform_runner  # noqa: F401
from llmhost.batches import runners
from llmhost.batches.lines import BatchLine, LineOutcome, parse_input, result_files
from llmhost.batches.record import (
    COMPLETION_WINDOWS,
    ENDPOINTS,
    RUNNER_KEY,
    Batch,
    BatchError,
    BatchErrors,
    BatchStatus,
    FileObject,
    RequestCounts,
    can_move,
    new_batch_id,
    new_file_id,
    result_file_id,
)
from llmhost.batches.schedule import SOURCE_KEY
from llmhost.batches.store import BatchChanged, BatchNotFound, BatchStore, FileNotFound
from llmhost.errors import LlmhostError

logger = Logger(child=True)

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_FILENAME_CHARS = 255
MAX_METADATA_PAIRS = 16
MAX_LIST = 100


class BatchRequestInvalid(LlmhostError):
    code = "invalid_request"
    status = 400

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class FileTooLarge(LlmhostError):
    code = "file_too_large"
    status = 413

    def __init__(self, size: int) -> None:
        super().__init__(
            f"the file is {size:,} bytes; at most {MAX_FILE_BYTES:,}: split it into several batches"
        )
        self.param = "file"


class BatchNotCancellable(LlmhostError):
    code = "invalid_request"
    status = 409

    def __init__(self, batch: Batch) -> None:
        super().__init__(f"batch {batch.id} is {batch.status}; only an open batch can be cancelled")


ModelLive = Callable[[set[str]], runners.ModelState]


class Batches:
    """The Batch API's operations over a store, with a clock (Unix seconds) and a way to
    learn whether a batch's models are serving (for the runner choice)."""

    def __init__(
        self,
        store: BatchStore,
        now: Callable[[], int],
        model_state: ModelLive | None = None,
        kick: Callable[[str], None] | None = None,
    ) -> None:
        """``kick(batch_id)`` has the batch advanced soon (None: advanced here and now)."""
        self.store = store
        self._now = now
        self._model_state = model_state or (lambda _: runners.ModelState(live=True))
        self._kick = kick or self.advance

    # ------------------------------------------------------------------------- files

    def upload(self, filename: str, purpose: str, content: bytes) -> FileObject:
        """Store a batch input file. Raises BatchRequestInvalid for a purpose other than
        ``batch`` or a bad name, FileTooLarge for a file over MAX_FILE_BYTES."""
        if purpose != "batch":
            raise BatchRequestInvalid(
                f"purpose is '{purpose[:40]}'; this server takes files for batches only: "
                "send purpose=batch",
                "purpose",
            )
        if not filename or len(filename) > MAX_FILENAME_CHARS:
            raise BatchRequestInvalid(
                f"the file needs a name of 1 to {MAX_FILENAME_CHARS} characters", "file"
            )
        if len(content) > MAX_FILE_BYTES:
            raise FileTooLarge(len(content))
        record = FileObject(
            id=new_file_id(),
            bytes=len(content),
            created_at=self._now(),
            filename=filename,
            purpose="batch",
        )
        return self.store.put_file(record, content)

    # ----------------------------------------------------------------------- batches

    def create(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None = None,
    ) -> Batch:
        """Create a batch over an uploaded file and kick it (its lines are validated and
        started by ``advance``; invalid lines fail it, with ``errors`` naming them).

        Raises BatchRequestInvalid (400) for an endpoint, window or metadata this server
        does not take, UnknownRunner (400) for a ``metadata.llmhost_runner`` it does not
        have, FileNotFound (404) for an unknown input file.
        """
        if endpoint not in ENDPOINTS:
            raise BatchRequestInvalid(
                f"endpoint is '{endpoint[:80]}'; batches run {', '.join(ENDPOINTS)}", "endpoint"
            )
        if completion_window not in COMPLETION_WINDOWS:
            raise BatchRequestInvalid(
                f"completion_window is '{completion_window[:20]}'; it must be "
                + " or ".join(COMPLETION_WINDOWS),
                "completion_window",
            )
        _check_metadata(metadata)
        # Refused here rather than when the batch starts: a runner this server does not
        # have would otherwise leave a batch that answered 200 and then failed.
        asked = (metadata or {}).get(RUNNER_KEY)
        if asked and asked != "auto" and asked not in runners.registered():
            raise runners.UnknownRunner(asked)
        try:
            source = self.store.get_file(input_file_id)
        except FileNotFound as missing:
            missing.param = "input_file_id"  # the field the client sent, not the path's
            raise
        if source.purpose != "batch":
            raise BatchRequestInvalid(
                f"file {input_file_id} has purpose {source.purpose}; upload the input with "
                "purpose=batch",
                "input_file_id",
            )
        now = self._now()
        batch = Batch(
            id=new_batch_id(),
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            created_at=now,
            expires_at=now + COMPLETION_WINDOWS[completion_window],
            metadata=metadata,
        )
        self.store.create_batch(batch, input_file_id)
        self._kick(batch.id)
        return self.store.get_batch(batch.id)

    def start_named(
        self, batch_id: str, file_id: str, filename: str, content: bytes, source: str
    ) -> bool:
        """Create the batch ``batch_id`` over ``content`` (stored as file ``file_id``), as a
        client's create would, with ``metadata.llmhost_source`` = ``source``; whether this
        call created it (False: it exists already, and is left as it is). For the batch
        schedule (``llmhost.batches.schedule.StartBatch``)."""
        if self.store.has_batch(batch_id):
            return False
        now = self._now()
        self.store.put_file(
            FileObject(
                id=file_id,
                bytes=len(content),
                created_at=now,
                filename=filename[:255],
                purpose="batch",
            ),
            content,
        )
        batch = Batch(
            id=batch_id,
            endpoint=ENDPOINTS[0],
            input_file_id=file_id,
            created_at=now,
            expires_at=now + COMPLETION_WINDOWS["24h"],
            metadata={SOURCE_KEY: source[:512]},
        )
        if not self.store.create_batch(batch, file_id, exist_ok=True):
            return False
        self._kick(batch_id)
        return True

    def retrieve(self, batch_id: str) -> Batch:
        return self.store.get_batch(batch_id)

    def page(self, after: str | None = None, limit: int = 20) -> tuple[list[Batch], bool]:
        if not 1 <= limit <= MAX_LIST:
            raise BatchRequestInvalid(f"limit must be 1 to {MAX_LIST}", "limit")
        return self.store.list_batches(after, limit)

    def cancel(self, batch_id: str) -> Batch:
        """Stop a batch: lines not started are cancelled, finished ones kept; the batch is
        ``cancelling`` until no line runs, then ``cancelled`` with its files. A batch that
        the batch function moves on meanwhile is read again, as ``advance`` does; BatchChanged
        (409) only if it keeps moving."""
        for attempt in range(5):
            batch, version = self.store.read_batch(batch_id)
            if batch.status in {"cancelling", "cancelled"}:
                return batch
            if batch.terminal or batch.status == "finalizing":
                raise BatchNotCancellable(batch)
            try:
                self._save(batch, batch.moved("cancelling", self._now()), version)
            except BatchChanged:
                if attempt == 4:
                    raise
                continue
            break
        self._kick(batch_id)
        return self.store.get_batch(batch_id)

    # ------------------------------------------------------------------------ advance

    def advance(self, batch_id: str) -> Batch:
        """Take the batch's next step, if it has one; returns it as it is then. Safe to call
        any number of times, concurrently: a writer that lost a race reads again."""
        for _ in range(5):
            try:
                return self._step(batch_id)
            except BatchChanged:
                continue
        return self.store.get_batch(batch_id)

    def sweep(self) -> dict[str, str]:
        """Advance every open batch (the schedule's call): one that a crash left behind
        moves on, one past its window expires. Returns each batch's status after it; a
        batch that fails to advance is logged and left for the next sweep."""
        statuses: dict[str, str] = {}
        for batch_id in self.store.open_batches():
            try:
                statuses[batch_id] = self.advance(batch_id).status
            except BatchNotFound:
                statuses[batch_id] = "missing"  # a create that died before its record
            except LlmhostError as error:
                logger.warning(
                    "batch did not advance",
                    extra={"batch_id": batch_id, "code": error.code, "error": error.message},
                )
                statuses[batch_id] = "error"
        return statuses

    def _step(self, batch_id: str) -> Batch:
        batch, version = self.store.read_batch(batch_id)
        now = self._now()
        if batch.terminal:
            return batch
        if batch.status == "validating":
            return self._start(batch, version)
        expired = batch.expires_at is not None and now >= batch.expires_at
        if _still_counting(batch, expired):
            return batch
        lines = self._lines(batch)
        if batch.runner is None:  # cancelled before it started: no line ever ran
            return self._finish(batch, version, lines, {}, "cancelled")
        runner = runners.runner(batch.runner)
        if batch.status == "cancelling" or (expired and batch.status == "in_progress"):
            runner.cancel(batch, lines)
        outcomes = runner.outcomes(batch, lines)
        if len(outcomes) < len(lines) and not expired:
            # Lines still run (a cancelled batch's running lines finish, and are kept).
            return batch
        if batch.status == "cancelling":
            final: BatchStatus = "cancelled"
        elif len(outcomes) < len(lines):
            final = "expired"
        else:
            final = "completed"
        return self._finish(batch, version, lines, outcomes, final)

    def _finish(
        self,
        batch: Batch,
        version: int,
        lines: list[BatchLine],
        outcomes: dict[int, LineOutcome],
        final: BatchStatus,
    ) -> Batch:
        """Write the output and error files and end the batch ``final``."""
        now = self._now()
        if batch.status == "in_progress":
            before = batch
            batch = batch.moved("finalizing", now)
            version = self._save(before, batch, version)
        unfinished = {
            "cancelled": ("batch_cancelled", "the batch was cancelled before this line ran"),
            "expired": ("batch_expired", "the batch expired before this line ran"),
        }.get(final, ("batch_line_not_run", "the line did not run"))
        output, errors, completed, failed = result_files(
            batch.id, lines, outcomes, LineOutcome.unanswered(*unfinished)
        )
        changes: dict[str, Any] = {
            "request_counts": RequestCounts(total=len(lines), completed=completed, failed=failed)
        }
        if output:
            changes["output_file_id"] = self._result_file(batch.id, "output", output)
        if errors:
            changes["error_file_id"] = self._result_file(batch.id, "error", errors)
        ended = batch.moved(final, now, **changes)
        self._save(batch, ended, version)
        logger.info(
            "batch ended",
            extra={"batch_id": batch.id, "status": final, "completed": completed, "failed": failed},
        )
        return ended

    def _start(self, batch: Batch, version: int) -> Batch:
        """Validate the lines; a batch with an invalid line fails, else its runner starts."""
        lines, errors = parse_input(self.store.batch_input(batch.id), batch.endpoint)
        now = self._now()
        if errors:
            failed = batch.moved("failed", now, errors=BatchErrors(data=errors))
            self._save(batch, failed, version)
            return failed
        asked = (batch.metadata or {}).get(RUNNER_KEY)
        available = runners.registered()
        if asked and asked != "auto" and asked not in available:
            failed = batch.moved(
                "failed",
                now,
                errors=BatchErrors(
                    data=[
                        BatchError(
                            code="invalid_runner",
                            message=runners.UnknownRunner(asked).message,
                            param=f"metadata.{RUNNER_KEY}",
                        )
                    ]
                ),
            )
            self._save(batch, failed, version)
            return failed
        chosen = batch.runner or runners.choose_runner(
            asked, len(lines), self._model_state({line.model for line in lines}), available
        )
        # The choice is saved before any line starts: a resumed start uses the same runner.
        counts = RequestCounts(total=len(lines))
        if batch.runner is None:
            chose = batch.model_copy(update={"runner": chosen, "request_counts": counts})
            version = self._save(batch, chose, version)
            batch = chose
        runners.runner(chosen).start(batch, lines)
        self._save(batch, batch.moved("in_progress", self._now()), version)
        # Lines may have ended while the others were submitted (their counts did not
        # advance a batch still starting): look at them now.
        return self._step(batch.id)

    def _lines(self, batch: Batch) -> list[BatchLine]:
        lines, _ = parse_input(self.store.batch_input(batch.id), batch.endpoint)
        return lines

    def _result_file(self, batch_id: str, kind: str, content: bytes) -> str:
        assert kind in {"output", "error"}
        file_id = result_file_id(batch_id, "output" if kind == "output" else "error")
        record = FileObject(
            id=file_id,
            bytes=len(content),
            created_at=self._now(),
            filename=f"{batch_id}_{kind}.jsonl",
            purpose="batch_output",
        )
        self.store.put_file(record, content)
        return file_id

    def _save(self, before: Batch, after: Batch, version: int) -> int:
        """Write ``after`` over ``before`` (read at ``version``). Raises BatchChanged if the
        move is not one a batch makes, or another writer saved first."""
        if not can_move(before.status, after.status):
            raise BatchChanged(after.id)
        return self.store.save_batch(after, version)


def _still_counting(batch: Batch, expired: bool) -> bool:
    """Whether a running fan-out batch's counters say lines are still to end, so ``advance``
    need not read its lines and their jobs (a read that grows with the batch).

    The counters never count a line short: a line is counted before its job is marked as
    told, and a job ended but never told is told (and counted) when its message comes back
    or its batch is resumed, so a batch whose lines have all ended reaches its total. An
    over-count (a crash between the two writes) only makes the batch look at its lines
    early. An expired or cancelling batch is always looked at."""
    counts = batch.request_counts
    return (
        batch.runner == "fanout"
        and batch.status == "in_progress"
        and not expired
        and counts.completed + counts.failed < counts.total
    )


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise BatchRequestInvalid(
            f"metadata has {len(metadata)} keys; at most {MAX_METADATA_PAIRS}", "metadata"
        )
    for key, value in metadata.items():
        if not 1 <= len(key) <= 64 or len(value) > 512:
            raise BatchRequestInvalid(
                f"metadata key '{key[:64]}': keys are 1 to 64 characters, values at most 512",
                f"metadata.{key[:64]}",
            )
