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

import json
from typing import Any

from botocore.exceptions import ClientError

from llmhost.errors import ConcurrentModification, DeploymentExists, DeploymentNotFound
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
        item = self._ddb.get_item(
            TableName=self._table, Key={"name": {"S": name}}, ConsistentRead=True
        ).get("Item")
        return _decode(item) if item else None

    def deployments(self, include_deleted: bool = False) -> list[DeploymentRecord]:
        """All records, sorted by name (the registry holds tens, not millions, of items)."""
        records: list[DeploymentRecord] = []
        kwargs: dict[str, Any] = {"TableName": self._table, "ConsistentRead": True}
        while True:
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
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item=_encode(saved),
                ConditionExpression="attribute_not_exists(#n) OR #s = :deleted",
                ExpressionAttributeNames={"#n": "name", "#s": "status"},
                ExpressionAttributeValues={":deleted": {"S": "DELETED"}},
            )
        except ClientError as error:
            if _is_condition_failure(error):
                raise DeploymentExists(record.name) from None
            raise
        return saved

    def save(self, record: DeploymentRecord) -> DeploymentRecord:
        """Write ``record`` if nobody saved since it was read; returns it with version + 1.

        Raises ConcurrentModification when the stored version moved on.
        """
        saved = record.trimmed(self.history_limit).model_copy(
            update={"version": record.version + 1}
        )
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item=_encode(saved),
                ConditionExpression="#v = :v",
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues={":v": {"N": str(record.version)}},
            )
        except ClientError as error:
            if _is_condition_failure(error):
                raise ConcurrentModification(record.name) from None
            raise
        return saved


def _is_condition_failure(error: ClientError) -> bool:
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
