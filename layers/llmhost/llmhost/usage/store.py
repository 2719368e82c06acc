"""The usage table (template.yaml: UsageTable): usage counters and the capacity history.

Two kinds of items, each partitioned by UTC day so that a report over a period reads one
partition per day, never the whole table:

- a usage counter per hour x deployment x caller: ``pk = usage#<day>``,
  ``sk = <HH>#<deployment>#<caller>``; every request adds to one with a single UpdateItem
  (``ADD``: no read, no lost update however many functions write at once);
- a capacity point (copies desired and in service, and the unit price then) or a scaling
  decision of a deployment: ``pk = capacity#<day>``, ``sk = <deployment>#<at>#<p|d>``.

Every item carries ``expires_at`` (epoch seconds, the table's TTL attribute): DynamoDB
deletes it once the usage retention has passed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from llmhost import aws_faults as faults
from llmhost.aws_faults import TableError

USAGE_TABLE = "the usage table (DynamoDB)"
NO_NAME = "-"  # a request with no deployment (refused before routing) or no known caller


class UsageTableError(TableError):
    """DynamoDB refused a call on the usage table: 503 with Retry-After when retrying can get
    past it (throttled, unavailable), else 500 (the stack's configuration)."""

    code = "usage_table_error"


def table_errors() -> contextlib.AbstractContextManager[None]:
    """Turn a botocore error of a usage-table call into UsageTableError."""
    return faults.table_errors(UsageTableError, USAGE_TABLE, "usage_busy")


@dataclass(frozen=True)
class UsageCount:
    """What one request adds to its hour's counter."""

    hour: datetime  # the hour's start, UTC
    deployment: str
    caller: str
    requests: int = 1
    errors: int = 0
    error_class: str | None = None  # 4xx | 429 | 503 | 5xx
    cold: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    busy_ms: int = 0


@dataclass(frozen=True)
class UsageRow:
    """One hour's counter of one deployment and caller, as read back."""

    hour: datetime
    deployment: str
    caller: str
    requests: int
    errors: int
    errors_by_class: dict[str, int]
    cold: int
    input_tokens: int
    output_tokens: int
    busy_ms: int


@dataclass(frozen=True)
class CapacityPoint:
    """A deployment's copies (instances of a dedicated or async endpoint, copies of a shared
    component, provisioned slots of a serverless one) at ``at``, and what one cost then."""

    deployment: str
    at: datetime
    desired: int
    in_service: int
    unit_usd_per_hour: float | None


@dataclass(frozen=True)
class ScalingDecision:
    """A scaling decision of a deployment: what was decided, why, copies before -> after
    when the decision says."""

    deployment: str
    at: datetime
    event: str
    reason: str
    before: int | None = None
    after: int | None = None


ERROR_CLASSES = ("4xx", "429", "503", "5xx")


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with milliseconds and Z: sorts as it reads."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def days(start: datetime, end: datetime) -> list[date]:
    """Every UTC day from ``start``'s to ``end``'s, inclusive."""
    first, last = start.astimezone(UTC).date(), end.astimezone(UTC).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


class UsageStore:
    """The usage table's reads and writes (one client, one table)."""

    def __init__(self, client: Any, table: str, retention_days: int = 400) -> None:
        self._ddb = client
        self._table = table
        self._retention_s = retention_days * 86400

    def _expires(self, moment: datetime) -> dict[str, str]:
        return {"N": str(int(moment.timestamp()) + self._retention_s)}

    # ---- usage counters ---------------------------------------------------------------

    def add(self, count: UsageCount) -> None:
        """Add one request to its hour's counter: one UpdateItem, no read."""
        hour = hour_of(count.hour)
        adds = {
            "requests": count.requests,
            "errors": count.errors,
            "cold": count.cold,
            "input_tokens": count.input_tokens,
            "output_tokens": count.output_tokens,
            "busy_ms": count.busy_ms,
        }
        if count.error_class in ERROR_CLASSES:
            adds[f"errors_{count.error_class}"] = count.errors or 1
        names = {f"#{k}": k for k in adds}
        names.update({"#d": "deployment", "#c": "caller", "#h": "hour", "#x": "expires_at"})
        values: dict[str, Any] = {f":{k}": {"N": str(int(v))} for k, v in adds.items()}
        values.update(
            {
                ":d": {"S": count.deployment},
                ":c": {"S": count.caller},
                ":h": {"S": iso(hour)},
                ":x": self._expires(hour),
            }
        )
        with table_errors():
            self._ddb.update_item(
                TableName=self._table,
                Key={
                    "pk": {"S": f"usage#{hour.date().isoformat()}"},
                    "sk": {"S": f"{hour.hour:02d}#{count.deployment}#{count.caller}"},
                },
                UpdateExpression="SET #d = :d, #c = :c, #h = :h, #x = :x ADD "
                + ", ".join(f"#{k} :{k}" for k in adds),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )

    def usage(self, start: datetime, end: datetime) -> list[UsageRow]:
        """Every counter of the hours from ``start`` (inclusive) to ``end`` (exclusive); both
        on hour boundaries."""
        rows: list[UsageRow] = []
        start, last = start.astimezone(UTC), (end - timedelta(microseconds=1)).astimezone(UTC)
        for day in days(start, last):
            first_hour = start.hour if day == start.date() else 0
            last_hour = last.hour if day == last.date() else 23
            low, high = f"{first_hour:02d}#", f"{last_hour:02d}#\uffff"
            rows.extend(_usage_row(item) for item in self._query(f"usage#{day}", (low, high)))
        return [r for r in rows if start <= r.hour < end]

    # ---- capacity history -------------------------------------------------------------

    def add_point(self, point: CapacityPoint) -> None:
        item: dict[str, Any] = {
            "pk": {"S": f"capacity#{point.at.astimezone(UTC).date().isoformat()}"},
            "sk": {"S": f"{point.deployment}#{iso(point.at)}#p"},
            "deployment": {"S": point.deployment},
            "at": {"S": iso(point.at)},
            "desired": {"N": str(int(point.desired))},
            "in_service": {"N": str(int(point.in_service))},
            "expires_at": self._expires(point.at),
        }
        if point.unit_usd_per_hour is not None:
            item["unit_usd_per_hour"] = {"N": repr(float(point.unit_usd_per_hour))}
        with table_errors():
            self._ddb.put_item(TableName=self._table, Item=item)

    def add_decision(self, decision: ScalingDecision) -> None:
        item: dict[str, Any] = {
            "pk": {"S": f"capacity#{decision.at.astimezone(UTC).date().isoformat()}"},
            "sk": {"S": f"{decision.deployment}#{iso(decision.at)}#d"},
            "deployment": {"S": decision.deployment},
            "at": {"S": iso(decision.at)},
            "event": {"S": decision.event},
            "reason": {"S": decision.reason[:1000]},
            "expires_at": self._expires(decision.at),
        }
        if decision.before is not None:
            item["before"] = {"N": str(int(decision.before))}
        if decision.after is not None:
            item["after"] = {"N": str(int(decision.after))}
        with table_errors():
            self._ddb.put_item(TableName=self._table, Item=item)

    def capacity(
        self, start: datetime, end: datetime, deployment: str | None = None
    ) -> tuple[list[CapacityPoint], list[ScalingDecision]]:
        """Capacity points and decisions with ``start <= at <= end`` (of one deployment, or
        of all), oldest first."""
        points: list[CapacityPoint] = []
        decisions: list[ScalingDecision] = []
        for day in days(start, end):
            bounds = None
            if deployment is not None:
                low = f"{deployment}#{iso(start) if day == start.astimezone(UTC).date() else ''}"
                high = f"{deployment}#{iso(end) if day == end.astimezone(UTC).date() else ''}\uffff"
                bounds = (low, high)
            for item in self._query(f"capacity#{day.isoformat()}", bounds):
                at = _parse_iso(item["at"]["S"])
                if not start <= at <= end:
                    continue
                name = item["deployment"]["S"]
                if item["sk"]["S"].endswith("#p"):
                    price = item.get("unit_usd_per_hour")
                    points.append(
                        CapacityPoint(
                            name,
                            at,
                            int(item["desired"]["N"]),
                            int(item["in_service"]["N"]),
                            float(price["N"]) if price else None,
                        )
                    )
                else:
                    decisions.append(
                        ScalingDecision(
                            name,
                            at,
                            item["event"]["S"],
                            item.get("reason", {}).get("S", ""),
                            int(item["before"]["N"]) if "before" in item else None,
                            int(item["after"]["N"]) if "after" in item else None,
                        )
                    )
        points.sort(key=lambda p: (p.deployment, p.at))
        decisions.sort(key=lambda d: (d.deployment, d.at))
        return points, decisions

    def _query(self, pk: str, bounds: tuple[str, str] | None) -> Iterator[dict[str, Any]]:
        """Every item of partition ``pk`` (with ``low <= sk <= high`` when bounded)."""
        values: dict[str, Any] = {":pk": {"S": pk}}
        condition = "pk = :pk"
        if bounds is not None:
            condition += " AND sk BETWEEN :low AND :high"
            values.update({":low": {"S": bounds[0]}, ":high": {"S": bounds[1]}})
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }
        while True:
            with table_errors():
                page = self._ddb.query(**kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _usage_row(item: dict[str, Any]) -> UsageRow:
    def number(name: str) -> int:
        return int(item[name]["N"]) if name in item else 0

    return UsageRow(
        hour=_parse_iso(item["hour"]["S"]),
        deployment=item["deployment"]["S"],
        caller=item["caller"]["S"],
        requests=number("requests"),
        errors=number("errors"),
        errors_by_class={c: number(f"errors_{c}") for c in ERROR_CLASSES},
        cold=number("cold"),
        input_tokens=number("input_tokens"),
        output_tokens=number("output_tokens"),
        busy_ms=number("busy_ms"),
    )
