"""Scheduled batches: every JSONL file under the jobs bucket's ``scheduled/`` prefix becomes
one batch when the stack's batch schedule fires (EventBridge Scheduler; nightly by default).

How a user declares it: drop OpenAI batch input files (the same JSONL ``client.batches``
takes; each line names its model) under ``s3://<JobsBucket>/scheduled/``, in any folders.
The schedule's time is the stack's (``BatchSchedule`` and ``BatchScheduleTimezone``); a
deployment needs no setting of its own because each line names its model, and the runner is
chosen as for any batch (a sleeping deployment's batch runs on Batch Transform). Each run
lists the prefix and starts a batch for each file it has not started before; the batches
show in ``GET /v1/batches`` with ``metadata.llmhost_source`` naming the file.

Each version of a file runs once: its batch's id is derived from the file's key and ETag,
so a run repeated (Scheduler retries, an overlapping run) or resumed after a crash finds
the batch it started rather than starting another; a file replaced by a new version runs
again at the next run, and one left in place does not. Delete a file (or let the bucket's
lifecycle rule expire it) once its batch is done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from llmhost.errors import LlmhostError

logger = Logger(child=True)

SCHEDULED_PREFIX = "scheduled/"
SOURCE = "llmhost.batch-schedule"
SOURCE_KEY = "llmhost_source"
# OpenAI's limit on a batch input file; a larger file is skipped and logged.
MAX_INPUT_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class ScheduledInput:
    """One version of one input file under the prefix."""

    key: str
    etag: str
    size: int

    @property
    def batch_id(self) -> str:
        return "batch_" + _digest("batch", self.key, self.etag)

    @property
    def file_id(self) -> str:
        return "file-" + _digest("file", self.key, self.etag)

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def _digest(kind: str, key: str, etag: str) -> str:
    return hashlib.sha256(f"{kind}\n{key}\n{etag}".encode()).hexdigest()[:32]


def is_schedule_event(event: Any) -> bool:
    """Whether ``event`` is the batch schedule's run (the template's BatchSchedule input)."""
    return isinstance(event, Mapping) and event.get("source") == SOURCE


def inputs_of(objects: Iterable[Mapping[str, Any]]) -> list[ScheduledInput]:
    """The files a run starts batches for, from ``ListObjectsV2`` entries, in key order:
    ``.jsonl`` files with content, within OpenAI's input size limit."""
    found = []
    for item in objects:
        key, size = str(item["Key"]), int(item.get("Size", 0))
        if not key.endswith(".jsonl") or size == 0:
            continue
        if size > MAX_INPUT_BYTES:
            logger.warning("scheduled input %s skipped: %d bytes, over 200 MB", key, size)
            continue
        found.append(ScheduledInput(key, str(item["ETag"]).strip('"'), size))
    return sorted(found, key=lambda i: i.key)


class StartBatch(Protocol):
    """Starts one batch over ``content`` with the given ids (idempotent: a batch id that
    exists already is left as it is). Returns whether this call started it."""

    def __call__(
        self, batch_id: str, file_id: str, filename: str, content: bytes, source: str
    ) -> bool: ...


@dataclass(frozen=True)
class ScheduledRun:
    """What one run did: batches started now, and files whose batch existed already."""

    started: dict[str, str]
    existing: dict[str, str]
    failed: dict[str, str]


class ScheduledBatches:
    """Lists ``scheduled/`` in the jobs bucket and starts a batch per file version."""

    def __init__(self, s3: Any, bucket: str, start: StartBatch) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._start = start

    def run(self) -> ScheduledRun:
        """One run of the schedule. A file whose batch cannot start (a fault) is reported in
        ``failed`` and tried again at the next run; the others still start."""
        started: dict[str, str] = {}
        existing: dict[str, str] = {}
        failed: dict[str, str] = {}
        for item in inputs_of(self._listing()):
            try:
                content = self._s3.get_object(Bucket=self._bucket, Key=item.key)["Body"].read()
                fresh = self._start(item.batch_id, item.file_id, item.filename, content, item.key)
            except LlmhostError as error:
                failed[item.key] = error.message
                logger.warning("scheduled batch for %s not started: %s", item.key, error.message)
                continue
            (started if fresh else existing)[item.key] = item.batch_id
        logger.info(
            "batch schedule ran",
            extra={"started": len(started), "existing": len(existing), "failed": len(failed)},
        )
        return ScheduledRun(started, existing, failed)

    def _listing(self) -> list[dict[str, Any]]:
        from llmhost.aws_faults import fault_error

        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": SCHEDULED_PREFIX}
            if token:
                args["ContinuationToken"] = token
            try:
                page = self._s3.list_objects_v2(**args)
            except Exception as error:
                fault = fault_error(error, "the jobs bucket (S3)")
                if fault is not None:
                    raise fault from error
                raise
            items += page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return items
