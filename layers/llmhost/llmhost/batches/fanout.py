"""The fan-out runner: each line a job on the jobs queue, answered by the live endpoint.

A line's job has the id ``{batch_id}-{line:06d}``: submitting it again (a batch resumed after
a crash) finds the job already there and neither creates nor runs it again, and the worker
runs a job at most once (its claim is conditional). Throttling is the worker's to retry (the
job goes back to the queue). A line's outcome is its job's: SUCCEEDED answers with the
job's result, FAILED with the chat route's error for it, CANCELLED with none.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from llmhost.batches.lines import BatchLine, LineOutcome
from llmhost.batches.record import Batch, line_job_id
from llmhost.batches.runners import register_runner
from llmhost.batches.store import store_errors
from llmhost.errors import LlmhostError

# BatchGetItem's limit on keys per request.
_GET_BATCH = 100


# Lines submitted at once: each is a few requests (the model's record, the job, the queue).
SUBMIT_THREADS = 8
# New lines submitted together: the jobs' store creates this many in one transaction.
SUBMIT_GROUP = 25


class FanOutRunner:
    name = "fanout"

    def __init__(
        self,
        submit: Callable[[Batch, BatchLine], None],
        cancel_job: Callable[[str], None],
        dynamodb: Any,
        s3: Any,
        table: str,
        bucket: str,
        submit_many: Callable[[Batch, Sequence[BatchLine]], list[BatchLine]] | None = None,
    ) -> None:
        """``submit_many(batch, lines)`` submits new lines together and returns those left
        for ``submit``; None: every line goes through ``submit``."""
        self._submit = submit
        self._submit_many = submit_many
        self._cancel_job = cancel_job
        self._ddb = dynamodb
        self._s3 = s3
        self._table = table
        self._bucket = bucket

    @classmethod
    def from_runtime(cls) -> FanOutRunner:
        from llmhost import aws, runtime
        from llmhost.jobs.record import JobAlreadyStarted, JobNotFound

        settings = runtime.jobs_settings()

        def submit(batch: Batch, line: BatchLine) -> None:
            jobs = runtime.jobs()
            job_id = line_job_id(batch.id, line.line)
            try:
                stored = jobs.submit(
                    "chat", line.body, job_id=job_id, batch_id=batch.id, custom_id=line.custom_id
                )
            except LlmhostError as refused:
                if not 400 <= refused.status < 500 or refused.status == 429:
                    raise  # the queue or a table failed: the next advance submits it again
                # The line's own fault (no such model): its job ends FAILED at once, so the
                # error file has it and a resumed batch finds it ended.
                refuse_line(jobs.store, batch, line, refused)
                return
            settle_line(jobs.store, batch.id, stored)

        def submit_many(batch: Batch, lines: Sequence[BatchLine]) -> list[BatchLine]:
            from llmhost.jobs.service import Submission

            by_id = {line_job_id(batch.id, line.line): line for line in lines}
            left = runtime.jobs().submit_new(
                "chat",
                [
                    Submission(job_id, line.body, batch_id=batch.id, custom_id=line.custom_id)
                    for job_id, line in by_id.items()
                ],
            )
            return [by_id[submission.job_id] for submission in left]

        def cancel_job(job_id: str) -> None:
            # Running or ended: it is kept; never submitted: there is nothing to stop.
            with contextlib.suppress(JobAlreadyStarted, JobNotFound):
                runtime.jobs().cancel(job_id)

        return cls(
            submit,
            cancel_job,
            aws.client("dynamodb"),
            aws.client("s3"),
            settings.jobs_table,
            settings.jobs_bucket,
            submit_many=submit_many,
        )

    def start(self, batch: Batch, lines: Sequence[BatchLine]) -> None:
        """Submit every line's job; a line already submitted is found, not redone. Raises
        the first failure after every line was tried (the next advance tries again).

        New lines go SUBMIT_GROUP at a time (a transaction creating their jobs only if none
        exists, then their messages in batches); the lines a group leaves (one of its jobs
        existed: a resumed batch; a line that cannot go with others) go one by one."""
        groups = [lines[n : n + SUBMIT_GROUP] for n in range(0, len(lines), SUBMIT_GROUP)]
        with ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="batch-submit") as pool:
            if self._submit_many is not None:
                submit_many = self._submit_many
                grouped = [pool.submit(submit_many, batch, group) for group in groups]
                failure: BaseException | None = None
                single: list[BatchLine] = []
                for future in grouped:
                    try:
                        single.extend(future.result())
                    except LlmhostError as error:
                        failure = failure or error
                if failure is not None:
                    raise failure
            else:
                single = list(lines)
            for each in [pool.submit(self._submit, batch, line) for line in single]:
                each.result()

    def cancel(self, batch: Batch, lines: Sequence[BatchLine]) -> None:
        """Cancel the lines whose jobs are still queued."""
        for job in self._jobs(batch, lines):
            if job["status"]["S"] == "QUEUED":
                self._cancel_job(job["id"]["S"])

    def outcomes(self, batch: Batch, lines: Sequence[BatchLine]) -> dict[int, LineOutcome]:
        """The finished lines' outcomes, read from their jobs (strongly consistent)."""
        by_id = {line_job_id(batch.id, line.line): line.line for line in lines}
        found: dict[int, LineOutcome] = {}
        for item in self._jobs(batch, lines):
            outcome = self._outcome(item)
            if outcome is not None:
                found[by_id[item["id"]["S"]]] = outcome
        return found

    def _outcome(self, item: dict[str, Any]) -> LineOutcome | None:
        status = item["status"]["S"]
        if status == "SUCCEEDED":
            if "result" in item:
                return LineOutcome.answered(json.loads(item["result"]["S"]))
            with store_errors():
                body = self._s3.get_object(Bucket=self._bucket, Key=item["result_key"]["S"])
            return LineOutcome.answered(json.loads(body["Body"].read()))
        if status == "FAILED":
            error = json.loads(item["error"]["S"]) if "error" in item else {}
            code = str(error.get("code", "internal_error"))
            message = str(error.get("message", "the line failed"))
            return LineOutcome.refused(status_of(code), code, message)
        if status == "CANCELLED":
            return LineOutcome.unanswered(
                "batch_cancelled", "the batch was cancelled before this line ran"
            )
        return None

    def _jobs(self, batch: Batch, lines: Sequence[BatchLine]) -> Iterator[dict[str, Any]]:
        """The lines' job items that exist, read consistently, 100 keys a request."""
        ids = [line_job_id(batch.id, line.line) for line in lines]
        for start in range(0, len(ids), _GET_BATCH):
            keys = [{"id": {"S": job_id}} for job_id in ids[start : start + _GET_BATCH]]
            while keys:
                with store_errors():
                    page = self._ddb.batch_get_item(
                        RequestItems={
                            self._table: {
                                "Keys": keys,
                                "ConsistentRead": True,
                                "ProjectionExpression": "#i, #s, #r, result_key, #e",
                                "ExpressionAttributeNames": {
                                    "#i": "id",
                                    "#s": "status",
                                    "#r": "result",
                                    "#e": "error",
                                },
                            }
                        }
                    )
                yield from page.get("Responses", {}).get(self._table, [])
                # Keys DynamoDB did not get to (throttling, size): ask again for them.
                keys = page.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])


def refuse_line(store: Any, batch: Batch, line: BatchLine, refused: LlmhostError) -> None:
    """Store the line's job as FAILED with ``refused`` (the route's error for its body), and
    count it (``settle_line``): a second call finds the job told and counts nothing."""
    from llmhost import runtime
    from llmhost.jobs.record import Job, JobError, iso

    now = datetime.now(UTC)
    job = Job(
        id=line_job_id(batch.id, line.line),
        kind="chat",
        model=line.model[:256],
        request=line.body,
        status="FAILED",
        created_at=iso(now),
        finished_at=iso(now),
        error=JobError(code=refused.code, message=refused.message),
        batch_id=batch.id,
        custom_id=line.custom_id,
        expires_at=int(now.timestamp()) + runtime.jobs_settings().job_retention_days * 86400,
    )
    stored, _ = store.create(job)
    settle_line(store, batch.id, stored)


def settle_line(store: Any, batch_id: str, job: Any) -> None:
    """Count a line whose job ended without being told (refused at submission, or a resume
    found it so), then mark it told: a crash between the two counts it again on the next
    resume (an over-count, which only makes the batch look at its lines early), never
    leaves it uncounted. A job still queued or running, or already told, is left."""
    from llmhost.batches.progress import line_finished
    from llmhost.jobs.record import iso

    if not job.terminal or job.notified_at is not None:
        return
    line_finished(batch_id, job.status)
    store.mark_notified(job.id, now_iso=iso(datetime.now(UTC)))


def status_of(code: str) -> int:
    """The HTTP status the chat route answers with for an error ``code`` (a job keeps the
    route's code, not its status): the serving errors' first, then any other; 500 if none."""
    import llmhost.serving.errors
    import llmhost.serving.http_app  # noqa: F401  (its errors count too)

    matches: list[type[LlmhostError]] = []
    pending: list[type[LlmhostError]] = [LlmhostError]
    while pending:
        kind = pending.pop()
        if kind.__dict__.get("code") == code and isinstance(kind.__dict__.get("status"), int):
            matches.append(kind)
        pending.extend(kind.__subclasses__())
    matches.sort(
        key=lambda kind: (not kind.__module__.startswith("llmhost.serving"), kind.__name__)
    )
    return int(matches[0].status) if matches else 500


register_runner("fanout", FanOutRunner.from_runtime)
