"""Batch and file records in the jobs table, file contents in the jobs bucket.

Items: ``{"id": <batch or file id>, "kind": "batch" | "file", "record": <the record as JSON>,
"version": N}``, and on a batch the progress counters ``lines_completed``/``lines_failed``
(atomic ``ADD``s, so concurrent workers never lose an increment). The record is one JSON
attribute so none of its fields (a batch's ``expires_at``, its ``status``) meets the table's
TTL attribute or the jobs' indexes. Objects: ``files/{file_id}`` (contents),
``batches/{batch_id}/input.jsonl`` (the batch's own copy of its input, so deleting the
uploaded file never strands a running batch) and ``batches/index/{rank}_{batch_id}``
(empty; S3 lists keys in order, and the rank orders newest first), which lists batches
without scanning the table, and ``batches/open/{batch_id}`` while a batch has not ended,
which the schedule lists to move the open ones on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from llmhost.aws_faults import fault_error
from llmhost.batches.record import Batch, FileObject, RequestCounts
from llmhost.errors import LlmhostError

WHAT = "the batch store (DynamoDB and S3)"
INDEX_PREFIX = "batches/index/"
OPEN_PREFIX = "batches/open/"
# Ranks count down from here, so the newest batch's key sorts first.
_RANK_BASE = 10**12


class FileNotFound(LlmhostError):
    code = "not_found"
    status = 404

    def __init__(self, file_id: str) -> None:
        super().__init__(f"no file with id '{file_id[:80]}'; POST /v1/files uploads one")
        self.param = "file_id"


class BatchNotFound(LlmhostError):
    code = "not_found"
    status = 404

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch with id '{batch_id[:80]}'; GET /v1/batches lists them")
        self.param = "batch_id"


class BatchChanged(LlmhostError):
    """Someone else moved the batch on since it was read: read it again."""

    code = "conflict"
    status = 409

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"batch {batch_id} changed while this request ran; try again")


class StoreError(LlmhostError):
    code = "internal_error"
    status = 500


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Any botocore error as a typed one: a fault retrying can pass (503/504/429 with
    Retry-After) or a StoreError (500; the log says what AWS answered)."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        fault = fault_error(error, WHAT)
        if fault is not None:
            raise fault from None
        failure = StoreError(f"{WHAT} refused llmhost's request; the operator's logs say why")
        failure.log_detail = f"{type(error).__name__}: {error}"
        raise failure from None


def _condition_failed(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class BatchStore:
    def __init__(self, dynamodb: Any, s3: Any, table: str, bucket: str) -> None:
        self._ddb = dynamodb
        self._s3 = s3
        self.table = table
        self.bucket = bucket

    # ------------------------------------------------------------------------- files

    def put_file(self, record: FileObject, content: bytes) -> FileObject:
        with store_errors():
            self._s3.put_object(Bucket=self.bucket, Key=f"files/{record.id}", Body=content)
            self._ddb.put_item(
                TableName=self.table,
                Item={
                    "id": {"S": record.id},
                    "kind": {"S": "file"},
                    "record": {"S": record.model_dump_json()},
                    "version": {"N": "1"},
                },
            )
        return record

    def get_file(self, file_id: str) -> FileObject:
        item = self._item(file_id, "file")
        if item is None:
            raise FileNotFound(file_id)
        return FileObject.model_validate_json(item["record"]["S"])

    def file_content(self, file_id: str) -> bytes:
        self.get_file(file_id)
        return self._object(f"files/{file_id}", FileNotFound(file_id))

    def delete_file(self, file_id: str) -> None:
        self.get_file(file_id)
        with store_errors():
            self._ddb.delete_item(TableName=self.table, Key={"id": {"S": file_id}})
            self._s3.delete_object(Bucket=self.bucket, Key=f"files/{file_id}")

    # ----------------------------------------------------------------------- batches

    def create_batch(self, batch: Batch, input_file_id: str, exist_ok: bool = False) -> bool:
        """Store a new batch, with its own copy of the input file and its index entry;
        whether it was new. Raises BatchChanged when the id exists, unless ``exist_ok``."""
        try:
            with store_errors(), _reraise_condition(BatchChanged(batch.id)):
                self._put_batch(batch, input_file_id)
        except BatchChanged:
            if exist_ok:
                return False
            raise
        return True

    def has_batch(self, batch_id: str) -> bool:
        return self._item(batch_id, "batch") is not None

    def _put_batch(self, batch: Batch, input_file_id: str) -> None:
        # The record last: a batch that exists is in the listing and the open list, and a
        # crash before it leaves only markers that name no batch (the sweep skips them).
        with store_errors():
            self._s3.copy_object(
                Bucket=self.bucket,
                Key=self.input_key(batch.id),
                CopySource={"Bucket": self.bucket, "Key": f"files/{input_file_id}"},
            )
            self._s3.put_object(Bucket=self.bucket, Key=_index_key(batch), Body=b"")
            self._s3.put_object(Bucket=self.bucket, Key=OPEN_PREFIX + batch.id, Body=b"")
            self._ddb.put_item(
                TableName=self.table,
                Item={
                    "id": {"S": batch.id},
                    "kind": {"S": "batch"},
                    "record": {"S": batch.model_dump_json()},
                    "version": {"N": "1"},
                },
                ConditionExpression="attribute_not_exists(id)",
            )

    def input_key(self, batch_id: str) -> str:
        """The batch's copy of its input file (JSONL) in the bucket."""
        return f"batches/{batch_id}/input.jsonl"

    def batch_input(self, batch_id: str) -> bytes:
        return self._object(self.input_key(batch_id), BatchNotFound(batch_id))

    def get_batch(self, batch_id: str) -> Batch:
        batch, _ = self.read_batch(batch_id)
        return batch

    def read_batch(self, batch_id: str) -> tuple[Batch, int]:
        """The batch (its request counts as the workers counted them) and its version."""
        item = self._item(batch_id, "batch")
        if item is None:
            raise BatchNotFound(batch_id)
        batch = Batch.model_validate_json(item["record"]["S"])
        if not batch.terminal and batch.status != "finalizing":
            batch = batch.model_copy(update={"request_counts": _counted(batch, item)})
        return batch, int(item["version"]["N"])

    def save_batch(self, batch: Batch, version: int) -> int:
        """Write ``batch`` if it is still at ``version``; the new version. Raises
        BatchChanged when another writer got there first. An ended batch leaves the open
        list."""
        with store_errors(), _reraise_condition(BatchChanged(batch.id)):
            self._ddb.update_item(
                TableName=self.table,
                Key={"id": {"S": batch.id}},
                UpdateExpression="SET #r = :r, version = :next",
                ConditionExpression="version = :v",
                ExpressionAttributeNames={"#r": "record"},
                ExpressionAttributeValues={
                    ":r": {"S": batch.model_dump_json()},
                    ":v": {"N": str(version)},
                    ":next": {"N": str(version + 1)},
                },
            )
        if batch.terminal:
            with store_errors():
                self._s3.delete_object(Bucket=self.bucket, Key=OPEN_PREFIX + batch.id)
        return version + 1

    def count_line(self, batch_id: str, succeeded: bool) -> Batch:
        """Count one finished line; the batch with its counts after it. Raises
        BatchNotFound."""
        with store_errors(), _reraise_condition(BatchNotFound(batch_id)):
            attributes = self._ddb.update_item(
                TableName=self.table,
                Key={"id": {"S": batch_id}},
                UpdateExpression="ADD #c :one",
                ConditionExpression="attribute_exists(id)",
                ExpressionAttributeNames={"#c": "lines_completed" if succeeded else "lines_failed"},
                ExpressionAttributeValues={":one": {"N": "1"}},
                ReturnValues="ALL_NEW",
            ).get("Attributes", {})
        batch = Batch.model_validate_json(attributes["record"]["S"])
        return batch.model_copy(update={"request_counts": _counted(batch, attributes)})

    def list_batches(self, after: str | None, limit: int) -> tuple[list[Batch], bool]:
        """Up to ``limit`` batches, newest first, after the batch ``after``; and whether
        there are more."""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": INDEX_PREFIX,
            "MaxKeys": limit + 1,
        }
        if after:
            kwargs["StartAfter"] = _index_key(self.get_batch(after))
        with store_errors():
            keys = [o["Key"] for o in self._s3.list_objects_v2(**kwargs).get("Contents", [])]
        more = len(keys) > limit
        batches: list[Batch] = []
        for key in keys[:limit]:
            with contextlib.suppress(BatchNotFound):
                batches.append(self.get_batch(_batch_id_of(key)))
        return batches, more

    def open_batches(self) -> list[str]:
        """The ids of the batches that have not ended (the schedule advances them)."""
        ids: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": OPEN_PREFIX}
        while True:
            with store_errors():
                page = self._s3.list_objects_v2(**kwargs)
            ids.extend(o["Key"].removeprefix(OPEN_PREFIX) for o in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return ids
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def put_object(self, key: str, content: bytes) -> None:
        with store_errors():
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=content)

    # ----------------------------------------------------------------------- helpers

    def _item(self, item_id: str, kind: str) -> dict[str, Any] | None:
        with store_errors():
            item = self._ddb.get_item(
                TableName=self.table, Key={"id": {"S": item_id}}, ConsistentRead=True
            ).get("Item")
        if not item or item.get("kind", {}).get("S") != kind:
            return None
        return dict(item)

    def _object(self, key: str, missing: LlmhostError) -> bytes:
        with store_errors():
            try:
                return bytes(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                    raise missing from None
                raise


@contextlib.contextmanager
def _reraise_condition(raised: LlmhostError) -> Iterator[None]:
    try:
        yield
    except ClientError as error:
        if _condition_failed(error):
            raise raised from None
        raise


def _counted(batch: Batch, item: dict[str, Any]) -> RequestCounts:
    """The batch's counts as the workers have counted them so far (an ended batch's own are
    exact: they were read from the lines' jobs)."""
    return batch.request_counts.model_copy(
        update={
            "completed": int(item.get("lines_completed", {}).get("N", "0")),
            "failed": int(item.get("lines_failed", {}).get("N", "0")),
        }
    )


def _index_key(batch: Batch) -> str:
    return f"{INDEX_PREFIX}{_RANK_BASE - batch.created_at:013d}_{batch.id}"


def _batch_id_of(key: str) -> str:
    return key.removeprefix(INDEX_PREFIX).split("_", 1)[1]
