"""The jobs table (DynamoDB): every state change is one conditional write.

An item keeps what never changes (kind, model, request, route, batch, timestamps of
creation and expiry) in one JSON string, ``body``, and what changes as top-level attributes
the conditions read: ``status``, ``attempts``, ``lease_until``, the timings, the outcome.
So a claim, a completion or a cancel is a single UpdateItem whose condition is the
transition rule (``llmhost.jobs.record``): two workers given the same message, or two
notifications of one result, cannot both win.

Listing: the ``by-model`` and ``by-status`` indexes (hash ``model`` / ``status``, range
``created_key`` = created_at#id) give a model's or a status's jobs newest first; the
sparse ``by-batch`` index (hash ``batch_id``, range ``id``) a batch's lines in order. An
unfiltered listing scans (unordered). Tokens are DynamoDB's LastEvaluatedKey, checked on
the way back in.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from llmhost import aws_faults as faults
from llmhost.aws_faults import TableError
from llmhost.jobs.record import Job, JobAlreadyStarted, JobError, JobNotFound, PageTokenInvalid

JOBS_TABLE = "the jobs table (DynamoDB)"
BY_MODEL = "by-model"
BY_STATUS = "by-status"
BY_BATCH = "by-batch"
MAX_PAGE = 100
# Jobs created in one transaction. DynamoDB takes up to 100 actions and 4 MB a transaction;
# a job's item is at most INLINE_REQUEST_BYTES (64 KB) of request and a few hundred bytes
# more, so 25 stay under 4 MB whatever they carry, and a transaction that finds one job
# already there (a resumed batch) sends only 25 back to be created one by one.
CREATE_MANY_LIMIT = 25
# The attributes each listing's LastEvaluatedKey holds: a token must carry exactly these.
_TOKEN_KEYS = {
    BY_MODEL: {"id", "model", "created_key"},
    BY_STATUS: {"id", "status", "created_key"},
    BY_BATCH: {"id", "batch_id"},
    "": {"id"},
}
_IMMUTABLE = (
    "kind",
    "model",
    "request",
    "request_key",
    "route",
    "batch_id",
    "custom_id",
    "created_at",
)


class JobsTableError(TableError):
    """DynamoDB refused a call on the jobs table: 503 with Retry-After when retrying can get
    past it (throttled, unavailable), else 500 (the stack's configuration)."""

    code = "jobs_table_error"


def table_errors() -> contextlib.AbstractContextManager[None]:
    """Turn a botocore error of a jobs-table call into JobsTableError."""
    return faults.table_errors(JobsTableError, JOBS_TABLE, "jobs_busy")


def _condition_failed(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_token: str | None


class JobStore:
    """Reads and writes jobs in one DynamoDB table."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._ddb = client
        self._table = table_name

    @property
    def table_name(self) -> str:
        return self._table

    # -------------------------------------------------------------------------- reads

    def find(self, job_id: str) -> Job | None:
        with table_errors():
            item = self._ddb.get_item(
                TableName=self._table, Key={"id": {"S": job_id}}, ConsistentRead=True
            ).get("Item")
        return decode(item) if item else None

    def get(self, job_id: str) -> Job:
        """The job. Raises JobNotFound."""
        job = self.find(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        batch_id: str | None = None,
        limit: int = 20,
        next_token: str | None = None,
    ) -> Page:
        """One page of jobs: a model's (newest first, optionally of one status), a status's
        (newest first), a batch's (by id), or all (unordered). Raises PageTokenInvalid."""
        kwargs: dict[str, Any] = {"TableName": self._table, "Limit": max(1, min(limit, MAX_PAGE))}
        values: dict[str, Any] = {}
        names: dict[str, str] = {}
        if batch_id is not None:
            index = BY_BATCH
            kwargs["KeyConditionExpression"] = "batch_id = :b"
            values[":b"] = {"S": batch_id}
        elif model is not None:
            index = BY_MODEL
            kwargs["KeyConditionExpression"] = "model = :m"
            values[":m"] = {"S": model}
            kwargs["ScanIndexForward"] = False
        elif status is not None:
            index = BY_STATUS
            kwargs["KeyConditionExpression"] = "#s = :s"
            names["#s"] = "status"
            kwargs["ScanIndexForward"] = False
        else:
            index = ""
        if status is not None:
            names["#s"] = "status"
            values[":s"] = {"S": status}
            if index != BY_STATUS:
                kwargs["FilterExpression"] = "#s = :s"
        if model is not None and index == BY_BATCH:
            kwargs["FilterExpression"] = " AND ".join(
                filter(None, [kwargs.get("FilterExpression"), "model = :m"])
            )
            values[":m"] = {"S": model}
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if values:
            kwargs["ExpressionAttributeValues"] = values
        if index:
            kwargs["IndexName"] = index
        if next_token:
            kwargs["ExclusiveStartKey"] = _decode_token(next_token, index)
        with table_errors():
            page = (self._ddb.query if index else self._ddb.scan)(**kwargs)
        last = page.get("LastEvaluatedKey")
        return Page(
            [decode(item) for item in page.get("Items", [])],
            _encode_token(last) if last else None,
        )

    # ------------------------------------------------------------------------- writes

    def create(self, job: Job) -> tuple[Job, bool]:
        """Store a new job; the same id again returns the stored job unchanged. Returns the
        job and whether this call created it."""
        try:
            with table_errors():
                try:
                    self._ddb.put_item(
                        TableName=self._table,
                        Item=encode(job),
                        ConditionExpression="attribute_not_exists(id)",
                    )
                except ClientError as error:
                    if not _condition_failed(error):
                        raise
                    raise _Exists from None
        except _Exists:
            return self.get(job.id), False
        return job, True

    def create_new(self, jobs: Sequence[Job]) -> bool:
        """Store up to CREATE_MANY_LIMIT new jobs in one transaction, each only if no job of
        its id exists: all are created (True), or, when any one exists already, none is and
        the caller creates them one by one (False). Raises JobsTableError."""
        if not 1 <= len(jobs) <= CREATE_MANY_LIMIT:
            raise ValueError(f"1 to {CREATE_MANY_LIMIT} jobs a transaction, not {len(jobs)}")
        items = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": encode(job),
                    "ConditionExpression": "attribute_not_exists(id)",
                }
            }
            for job in jobs
        ]
        with table_errors():
            try:
                self._ddb.transact_write_items(TransactItems=items)
            except ClientError as error:
                reasons = error.response.get("CancellationReasons") or []
                if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                    return False
                raise
        return True

    def claim(self, job_id: str, *, now_s: float, now_iso: str, lease_s: float) -> Job | None:
        """QUEUED -> RUNNING, or RUNNING whose lease ran out -> RUNNING (its worker died):
        attempts + 1, leased until ``now_s + lease_s``. None when the job is not claimable
        (missing, ended, or another worker's lease still runs)."""
        return self._update(
            job_id,
            "SET #s = :running, attempts = attempts + :one, lease_until = :lease, "
            "started_at = if_not_exists(started_at, :now)",
            "#s = :queued OR (#s = :running AND lease_until < :now_s)",
            {
                ":running": {"S": "RUNNING"},
                ":queued": {"S": "QUEUED"},
                ":one": {"N": "1"},
                ":lease": {"N": repr(now_s + lease_s)},
                ":now": {"S": now_iso},
                ":now_s": {"N": repr(now_s)},
            },
        )

    def release(self, job_id: str, attempts: int) -> Job | None:
        """RUNNING -> QUEUED for the worker holding claim number ``attempts`` (it hands the
        job back to run later: the model is waking, say). None if it no longer holds it."""
        return self._update(
            job_id,
            "SET #s = :queued REMOVE lease_until",
            "#s = :running AND attempts = :attempts",
            {
                ":running": {"S": "RUNNING"},
                ":queued": {"S": "QUEUED"},
                ":attempts": {"N": str(attempts)},
            },
        )

    def complete(
        self,
        job_id: str,
        *,
        now_iso: str,
        result: dict[str, Any] | None = None,
        result_key: str | None = None,
        error: JobError | None = None,
    ) -> bool:
        """End a QUEUED or RUNNING job: SUCCEEDED with its result (inline or its S3 key), or
        FAILED with ``error``. False when the job had already ended (a duplicate delivery or
        notification) or does not exist: nothing is written then."""
        return (
            self.finish(job_id, now_iso=now_iso, result=result, result_key=result_key, error=error)
            is not None
        )

    def finish(
        self,
        job_id: str,
        *,
        now_iso: str,
        result: dict[str, Any] | None = None,
        result_key: str | None = None,
        error: JobError | None = None,
    ) -> Job | None:
        """``complete``, returning the ended job as written (one write, no read after it),
        or None when nothing was written."""
        values: dict[str, Any] = {
            ":now": {"S": now_iso},
            ":queued": {"S": "QUEUED"},
            ":running": {"S": "RUNNING"},
        }
        sets = ["#s = :status", "finished_at = :now"]
        names: dict[str, str] = {}
        if error is not None:
            values[":status"] = {"S": "FAILED"}
            values[":error"] = {"S": error.model_dump_json()}
            sets.append("#e = :error")
            names["#e"] = "error"
        else:
            values[":status"] = {"S": "SUCCEEDED"}
            if result_key is not None:
                values[":key"] = {"S": result_key}
                sets.append("result_key = :key")
            else:
                values[":result"] = {"S": json.dumps(result or {}, separators=(",", ":"))}
                sets.append("#r = :result")
                names["#r"] = "result"
        return self._update(
            job_id,
            f"SET {', '.join(sets)} REMOVE lease_until",
            "#s IN (:queued, :running)",
            values,
            names=names,
        )

    def mark_notified(self, job_id: str, *, now_iso: str) -> None:
        """Record that an ended job's Job Completed event was put."""
        self._update(
            job_id,
            "SET notified_at = :now",
            "#s IN (:succeeded, :failed, :cancelled)",
            {
                ":now": {"S": now_iso},
                ":succeeded": {"S": "SUCCEEDED"},
                ":failed": {"S": "FAILED"},
                ":cancelled": {"S": "CANCELLED"},
            },
        )

    def cancel(self, job_id: str, *, now_iso: str) -> Job:
        """QUEUED -> CANCELLED. Raises JobNotFound, or JobAlreadyStarted for any other status."""
        updated = self._update(
            job_id,
            "SET #s = :cancelled, finished_at = :now",
            "#s = :queued",
            {":cancelled": {"S": "CANCELLED"}, ":queued": {"S": "QUEUED"}, ":now": {"S": now_iso}},
        )
        if updated is not None:
            return updated
        current = self.get(job_id)
        raise JobAlreadyStarted(job_id, current.status)

    def discard(self, job_id: str) -> None:
        """Delete a QUEUED job that was never dispatched (its submission was refused); a job
        in any other status, or none, is left as it is."""
        with table_errors():
            try:
                self._ddb.delete_item(
                    TableName=self._table,
                    Key={"id": {"S": job_id}},
                    ConditionExpression="#s = :queued",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":queued": {"S": "QUEUED"}},
                )
            except ClientError as error:
                if not _condition_failed(error):
                    raise

    def _update(
        self,
        job_id: str,
        expression: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> Job | None:
        """One conditional UpdateItem on an existing job; the new job, or None when the
        condition (or the job's existence) did not hold."""
        with table_errors():
            try:
                item = self._ddb.update_item(
                    TableName=self._table,
                    Key={"id": {"S": job_id}},
                    UpdateExpression=expression,
                    ConditionExpression=f"attribute_exists(id) AND ({condition})",
                    ExpressionAttributeNames={"#s": "status", **(names or {})},
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                )["Attributes"]
            except ClientError as error:
                if _condition_failed(error):
                    return None
                raise
        return decode(item)


class _Exists(Exception):
    pass


def encode(job: Job) -> dict[str, Any]:
    """The item for a new job."""
    body = job.model_dump(mode="json", include=set(_IMMUTABLE) | {"expires_at"})
    item: dict[str, Any] = {
        "id": {"S": job.id},
        "status": {"S": job.status},
        "model": {"S": job.model},
        "created_key": {"S": f"{job.created_at}#{job.id}"},
        "attempts": {"N": str(job.attempts)},
        "expires_at": {"N": str(job.expires_at)},
        "body": {"S": json.dumps(body, separators=(",", ":"))},
    }
    if job.batch_id is not None:
        item["batch_id"] = {"S": job.batch_id}
    for name in ("started_at", "finished_at", "result_key", "notified_at"):
        value = getattr(job, name)
        if value is not None:
            item[name] = {"S": value}
    if job.result is not None:
        item["result"] = {"S": json.dumps(job.result, separators=(",", ":"))}
    if job.error is not None:
        item["error"] = {"S": job.error.model_dump_json()}
    if job.lease_until is not None:
        item["lease_until"] = {"N": repr(job.lease_until)}
    return item


def decode(item: dict[str, Any]) -> Job:
    fields: dict[str, Any] = json.loads(item["body"]["S"])
    fields.update(
        id=item["id"]["S"], status=item["status"]["S"], attempts=int(item["attempts"]["N"])
    )
    for name in ("started_at", "finished_at", "result_key", "notified_at"):
        if name in item:
            fields[name] = item[name]["S"]
    for name in ("result", "error"):
        if name in item:
            fields[name] = json.loads(item[name]["S"])
    if "lease_until" in item:
        fields["lease_until"] = float(item["lease_until"]["N"])
    return Job.model_validate(fields)


def _encode_token(key: dict[str, Any]) -> str:
    plain = {name: value["S"] for name, value in key.items()}
    raw = json.dumps(plain, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, index: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        plain = json.loads(raw)
    except (binascii.Error, ValueError):
        raise PageTokenInvalid() from None
    if (
        not isinstance(plain, dict)
        or set(plain) != _TOKEN_KEYS[index]
        or not all(isinstance(v, str) and 0 < len(v) <= 1024 for v in plain.values())
    ):
        raise PageTokenInvalid()
    return {name: {"S": value} for name, value in plain.items()}


__all__ = [
    "CREATE_MANY_LIMIT",
    "JobAlreadyStarted",
    "JobNotFound",
    "JobStore",
    "JobsTableError",
    "Page",
    "encode",
]
