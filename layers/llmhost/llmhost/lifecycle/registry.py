"""The DynamoDB registry of deployments, with optimistic locking.

Items are keyed by ``name``. The record body is one JSON string (so floats and nested
specs survive without DynamoDB's Decimal conversions); a few attributes are duplicated at
the top level for filters. Every save is conditional on the version read, so two writers
(the API and the reconciler, or two reconcilers) never lose an update: the loser gets
``ConcurrentModification`` and re-reads.

The table also holds a few llmhost-internal items (the capacity lock, the daily budget
ledger). Their keys start with ``INTERNAL_PREFIX``, which no deployment name can
(``^[a-zA-Z0-9]...``), and ``deployments()`` skips them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from llmhost.errors import (
    ConcurrentModification,
    DeploymentExists,
    DeploymentNotFound,
    RegistryBusy,
    RegistryError,
    RegistryUnavailable,
)
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.specs import STORED

# Keys of internal items start with this; a deployment name cannot (see specs.NAME_PATTERN).
INTERNAL_PREFIX = "#"


class Registry:
    """Reads and writes deployment records in one DynamoDB table."""

    def __init__(self, client: Any, table_name: str, history_limit: int = 50) -> None:
        self._ddb = client
        self._table = table_name
        # The one place history is bounded: every writer (API, reconciler, scaling hook,
        # serving) saves through here, so HISTORY_LIMIT holds whoever appended.
        self.history_limit = history_limit

    @property
    def client(self) -> Any:
        """The DynamoDB client, for the internal items other modules keep in this table."""
        return self._ddb

    @property
    def table_name(self) -> str:
        return self._table

    def get(self, name: str) -> DeploymentRecord:
        """The record for ``name``. Raises DeploymentNotFound."""
        record = self.find(name)
        if record is None:
            raise DeploymentNotFound(name)
        return record

    def find(self, name: str) -> DeploymentRecord | None:
        with table_errors():
            item = self._ddb.get_item(
                TableName=self._table, Key={"name": {"S": name}}, ConsistentRead=True
            ).get("Item")
        return _decode(item) if item else None

    def deployments(self, include_deleted: bool = False) -> list[DeploymentRecord]:
        """All records, sorted by name (the registry holds tens, not millions, of items)."""
        records: list[DeploymentRecord] = []
        kwargs: dict[str, Any] = {"TableName": self._table, "ConsistentRead": True}
        while True:
            with table_errors():
                page = self._ddb.scan(**kwargs)
            records.extend(
                _decode(item)
                for item in page.get("Items", [])
                if not item["name"]["S"].startswith(INTERNAL_PREFIX)
            )
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        if not include_deleted:
            records = [r for r in records if r.status != "DELETED"]
        return sorted(records, key=lambda r: r.name)

    def using_endpoint(self, endpoint_name: str) -> list[DeploymentRecord]:
        """Live deployments served by ``endpoint_name`` (a dedicated endpoint or a pool)."""
        return [r for r in self.deployments() if r.endpoint_name == endpoint_name]

    def create(self, record: DeploymentRecord) -> DeploymentRecord:
        """Insert a new record; a DELETED one of the same name may be replaced.

        Raises DeploymentExists when a live deployment has the name.
        """
        saved = record.trimmed(self.history_limit).model_copy(update={"version": 1})
        with table_errors(), _on_condition_failure(DeploymentExists(record.name)):
            self._ddb.put_item(
                TableName=self._table,
                Item=_encode(saved),
                ConditionExpression="attribute_not_exists(#n) OR #s = :deleted",
                ExpressionAttributeNames={"#n": "name", "#s": "status"},
                ExpressionAttributeValues={":deleted": {"S": "DELETED"}},
            )
        return saved

    def save(self, record: DeploymentRecord) -> DeploymentRecord:
        """Write ``record`` if nobody saved since it was read; returns it with version + 1.

        Raises ConcurrentModification when the stored version moved on.
        """
        saved = record.trimmed(self.history_limit).model_copy(
            update={"version": record.version + 1}
        )
        with table_errors(), _on_condition_failure(ConcurrentModification(record.name)):
            self._ddb.put_item(
                TableName=self._table,
                Item=_encode(saved),
                ConditionExpression="#v = :v",
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues={":v": {"N": str(record.version)}},
            )
        return saved


REGISTRY = "the deployment registry (DynamoDB)"


@contextlib.contextmanager
def table_errors() -> Iterator[None]:
    """Turn any botocore error of a call to the registry's table (records, the capacity
    lock, the budget ledger) into a typed error: throttling that outlasted botocore's
    retries is RegistryBusy (503), a 5xx, timeout or unreachable DynamoDB RegistryUnavailable
    (503/504), both with Retry-After; anything else (access denied, no such table) is a
    RegistryError (500). A caller that expects a condition to fail catches it inside."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise registry_error(error) from None


def registry_error(error: ClientError | BotoCoreError) -> RegistryError:
    """The typed error for a botocore error of a registry-table call."""
    from llmhost.aws_faults import classify

    detail = f"{type(error).__name__}: {error}"  # for the operator's log
    fault = classify(error)
    if fault is None:
        code = (
            error.response.get("Error", {}).get("Code", "")
            if isinstance(error, ClientError)
            else ""
        )
        return RegistryError(
            f"{REGISTRY} refused llmhost's request ({code or type(error).__name__}); "
            "the operator's logs say why",
            detail,
        )
    if fault.kind == "throttled":
        return RegistryBusy(fault, detail)
    return RegistryUnavailable(fault, detail)


@contextlib.contextmanager
def _on_condition_failure(raised: Exception) -> Iterator[None]:
    try:
        yield
    except ClientError as error:
        if is_condition_failure(error):
            raise raised from None
        raise


def is_condition_failure(error: ClientError) -> bool:
    """A conditional write's condition did not hold (the outcome such a write may expect)."""
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _encode(record: DeploymentRecord) -> dict[str, Any]:
    return {
        "name": {"S": record.name},
        "version": {"N": str(record.version)},
        "generation": {"N": str(record.generation)},
        "status": {"S": record.status},
        "desired_state": {"S": record.desired_state},
        "endpoint_name": {"S": record.endpoint_name},
        "body": {"S": record.model_dump_json()},
    }


def _decode(item: dict[str, Any]) -> DeploymentRecord:
    """The record as it was stored: its spec is not re-checked against today's catalog, price
    list or limits (it was checked when written; see ``llmhost.specs.STORED``)."""
    return DeploymentRecord.model_validate(json.loads(item["body"]["S"]), context=STORED)
