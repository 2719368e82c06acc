"""The traces table (DynamoDB): one item per recorded trace, expiring by TTL.

An item is the trace's view (``llmhost.traces.record.build_trace``) as DynamoDB types (maps,
lists, numbers), its ``None`` values left out, plus the keys the listings read:
``day`` (the UTC date the request began) and ``started_key`` (``started_at#id``), and
``expires_at`` as epoch seconds (the table's TTL attribute; the view shows it as ISO 8601).
So the table's stream (NEW_IMAGE) carries the whole trace, and ``view_from_item`` turns an
item, from a read or from the stream, back into the view.

Listing newest first: the ``by-model`` index (hash ``model``, range ``started_key``) for a
model's traces, else the ``by-day`` index (hash ``day``, range ``started_key``), walked a
day at a time from ``to`` back to ``from``. Collection and status are filters. DynamoDB may
keep an expired item up to a few days past its TTL: reads hide it.

DynamoDB refuses items over 400 KB: a trace's longest texts are halved (``fit``) until the
item is under FIT_BYTES, and the trace says which (``llmhost.truncated``), leaving room for
MAX_FEEDBACK feedback entries.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from llmhost import aws_faults as faults
from llmhost.aws_faults import TableError
from llmhost.errors import LlmhostError
from llmhost.traces.record import iso_time, summary

TRACES_TABLE = "the traces table (DynamoDB)"
BY_MODEL = "by-model"
BY_DAY = "by-day"
MAX_PAGE = 100
FIT_BYTES = 280_000
MAX_FEEDBACK = 50
MIN_CUT_CHARS = 500
# Days one listing call walks at most before it returns (with a cursor to go on).
MAX_DAYS_PER_PAGE = 31
_VIEW_DEFAULTS: dict[str, Any] = {
    "error_code": None,
    "ttft_ms": None,
    "model": None,
    "generation": None,
    "collection": None,
    "caller": None,
    "cost_usd": None,
    "query": None,
    "prompt": None,
    "answer": None,
    "sources": [],
    "spans": [],
    "feedback": [],
    "attributes": {},
}
_KEYS = ("day", "started_key")
# DynamoDB's number range and precision (a value outside it fails the whole PutItem).
_SMALLEST = 1e-130
_LARGEST = 9.9e125
_LARGEST_INT = 10**38


class TracesTableError(TableError):
    """DynamoDB refused a call on the traces table: 503 with Retry-After when retrying can
    get past it (throttled, unavailable), else 500 (the stack's configuration)."""

    code = "traces_table_error"


class TraceNotFound(LlmhostError):
    code = "trace_not_found"
    status = 404

    def __init__(self, trace_id: str) -> None:
        super().__init__(
            f"id: no trace {trace_id} (it was not sampled, or has expired); "
            "GET /v1/traces lists the traces kept"
        )


class FeedbackFull(LlmhostError):
    code = "feedback_full"
    status = 409

    def __init__(self, trace_id: str) -> None:
        super().__init__(f"id: trace {trace_id} has {MAX_FEEDBACK} feedback entries, the most kept")


class CursorInvalid(LlmhostError):
    code = "invalid_request"
    status = 400

    def __init__(self) -> None:
        super().__init__(
            "cursor: not a cursor this listing returned; pass the previous page's "
            "next_cursor unchanged, with the same filters"
        )


def table_errors() -> contextlib.AbstractContextManager[None]:
    """Turn a botocore error of a traces-table call into TracesTableError."""
    return faults.table_errors(TracesTableError, TRACES_TABLE, "traces_busy")


# ------------------------------------------------------------------------------ items


def item_from_view(view: dict[str, Any], expires_at_s: int) -> dict[str, Any]:
    """The stored item of a trace view (plain Python with Decimals, for TypeSerializer)."""
    item = _to_dynamo({k: v for k, v in view.items() if v is not None and k != "expires_at"})
    item["day"] = view["started_at"][:10]
    item["started_key"] = f"{view['started_at']}#{view['id']}"
    item["expires_at"] = Decimal(expires_at_s)
    return item


def view_from_item(item: dict[str, Any]) -> dict[str, Any]:
    """The trace view (``GET /v1/traces/{id}``) of a stored item, as boto3's resource layer
    or ``TypeDeserializer`` gives it (numbers as Decimal)."""
    plain = _from_dynamo({k: v for k, v in item.items() if k not in _KEYS})
    view = {**_VIEW_DEFAULTS, **plain}
    for name in ("sources", "spans", "feedback"):
        view[name] = list(view[name] or [])
    expires = plain.get("expires_at")
    view["expires_at"] = iso_time(float(expires)) if isinstance(expires, int | float) else None
    return view


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if abs(value) < _SMALLEST:  # DynamoDB refuses a number nearer 0 than 1E-130
            return Decimal(0)
        return Decimal(repr(value)) if abs(value) < _LARGEST else repr(value)
    if isinstance(value, int):
        # DynamoDB keeps 38 significant digits; a larger number (a client's seed) as text
        return Decimal(value) if abs(value) < _LARGEST_INT else str(value)
    if isinstance(value, dict):
        return {str(k): _to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return str(value)


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_from_dynamo(v) for v in value]
    return value


def serialize(value: Any) -> dict[str, Any]:
    """DynamoDB's JSON of a plain value (str, Decimal, bool, None, dict, list), as boto3's
    TypeSerializer gives it for these types."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, Decimal | int):
        return {"N": str(value)}
    if isinstance(value, dict):
        return {"M": {str(k): serialize(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [serialize(v) for v in value]}
    raise TypeError(f"no DynamoDB type for {type(value).__name__}")


def deserialize(value: dict[str, Any]) -> Any:
    """The plain value of DynamoDB's JSON (numbers as Decimal, as boto3's TypeDeserializer)."""
    ((kind, data),) = value.items()
    if kind == "S":
        return data
    if kind == "N":
        return Decimal(data)
    if kind == "BOOL":
        return bool(data)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: deserialize(v) for k, v in data.items()}
    if kind == "L":
        return [deserialize(v) for v in data]
    if kind in ("SS", "BS"):
        return set(data)
    if kind == "NS":
        return {Decimal(n) for n in data}
    return data  # B: bytes


def item_bytes(item: dict[str, Any]) -> int:
    """An upper bound of DynamoDB's size of ``item`` (names and values as UTF-8 JSON)."""
    return len(json.dumps(item, default=str, ensure_ascii=False).encode())


def fit(view: dict[str, Any], limit: int = FIT_BYTES) -> dict[str, Any]:
    """``view`` with its longest texts halved until its item is under ``limit`` bytes; each
    cut text ends with a note of how much was cut, and ``attributes["llmhost.truncated"]``
    names the fields cut. ``view`` itself is not changed."""
    if item_bytes(view) <= limit:
        return view
    trimmed = json.loads(json.dumps(view))
    cut: set[str] = set()
    while item_bytes(trimmed) > limit:
        slots = _text_slots(trimmed)
        if not slots:
            break
        name, get, put = max(slots, key=lambda slot: len(slot[1]()))
        text = get()
        if len(text) <= MIN_CUT_CHARS:
            # Everything is short already: drop the sources' texts, then stop.
            for source in trimmed.get("sources") or []:
                if source.pop("text", None) is not None:
                    cut.add("sources.text")
            break
        keep = len(text) // 2
        put(f"{text[:keep]} [... {len(text) - keep} characters cut to fit the trace store]")
        cut.add(name)
    trimmed["attributes"] = {**trimmed.get("attributes", {}), "llmhost.truncated": sorted(cut)}
    return trimmed


_Slot = tuple[str, Callable[[], str], Callable[[str], None]]


def _text_slots(view: dict[str, Any]) -> list[_Slot]:
    slots: list[_Slot] = []

    def slot(name: str, holder: dict[str, Any], key: str) -> None:
        if isinstance(holder.get(key), str):
            slots.append((name, lambda: holder[key], lambda text: holder.__setitem__(key, text)))

    for key in ("query", "answer", "prompt"):
        slot(key, view, key)
    if isinstance(view.get("prompt"), list):
        for message in view["prompt"]:
            slot("prompt", message, "content")
    for source in view.get("sources") or []:
        slot("sources.text", source, "text")
    return slots


# ------------------------------------------------------------------------------ store


@dataclass(frozen=True)
class Page:
    traces: list[dict[str, Any]]  # summaries, newest first
    next_cursor: str | None


class TraceStore:
    """Reads and writes traces in one DynamoDB table."""

    def __init__(self, client: Any, table_name: str, now: Callable[[], float] = time.time):
        self._ddb = client
        self._table = table_name
        self._now = now
        self._serialize = serialize
        self._deserialize = deserialize

    @property
    def table_name(self) -> str:
        return self._table

    def _encode(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: self._serialize(v) for k, v in item.items()}

    def _decode(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: self._deserialize(v) for k, v in item.items()}

    def put(self, view: dict[str, Any], expires_at_s: int) -> dict[str, Any]:
        """Store a trace (cut to fit DynamoDB's item limit); returns the view as stored."""
        stored = fit(view)
        with table_errors():
            self._ddb.put_item(
                TableName=self._table, Item=self._encode(item_from_view(stored, expires_at_s))
            )
        return stored

    def find(self, trace_id: str) -> dict[str, Any] | None:
        with table_errors():
            item = self._ddb.get_item(TableName=self._table, Key={"id": {"S": trace_id}}).get(
                "Item"
            )
        if not item:
            return None
        plain = self._decode(item)
        if float(plain.get("expires_at", math.inf)) <= self._now():
            return None
        return view_from_item(plain)

    def get(self, trace_id: str) -> dict[str, Any]:
        """The trace. Raises TraceNotFound."""
        view = self.find(trace_id)
        if view is None:
            raise TraceNotFound(trace_id)
        return view

    def add_feedback(self, trace_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Append a feedback entry; returns the trace. Raises TraceNotFound, FeedbackFull."""
        with table_errors():
            try:
                updated = self._ddb.update_item(
                    TableName=self._table,
                    Key={"id": {"S": trace_id}},
                    UpdateExpression=(
                        "SET feedback = list_append(if_not_exists(feedback, :none), :entry)"
                    ),
                    ConditionExpression=(
                        "attribute_exists(id) AND expires_at > :now AND "
                        "(attribute_not_exists(feedback) OR size(feedback) < :most)"
                    ),
                    ExpressionAttributeValues={
                        ":none": {"L": []},
                        ":entry": {"L": [self._serialize(_to_dynamo(entry))]},
                        ":now": {"N": str(int(self._now()))},
                        ":most": {"N": str(MAX_FEEDBACK)},
                    },
                    ReturnValues="ALL_NEW",
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                self.get(trace_id)  # 404 when missing or expired
                raise FeedbackFull(trace_id) from None
        return view_from_item(self._decode(updated["Attributes"]))

    def list(
        self,
        *,
        model: str | None = None,
        collection: str | None = None,
        status: str | None = None,
        since_s: float,
        until_s: float,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """Trace summaries newest first, begun in [since_s, until_s], filtered. A page may
        hold fewer than ``limit`` traces and still have a next cursor (a listing walks at
        most MAX_DAYS_PER_PAGE days per call). Raises CursorInvalid."""
        limit = max(1, min(limit, MAX_PAGE))
        low, high = iso_time(since_s), iso_time(until_s)
        index = BY_MODEL if model is not None else BY_DAY
        state: dict[str, Any] = (
            _decode_cursor(cursor, index, model, low, high)
            if cursor
            else {"day": high[:10], "key": None}
        )
        if state["day"] < low[:10] or (state["key"] and state["key"]["started_key"]["S"] < low):
            return Page([], None)
        filters = ["#exp > :now"]
        values: dict[str, Any] = {
            ":low": {"S": low},
            ":high": {"S": high + "~"},
            ":now": {"N": str(int(self._now()))},
        }
        names: dict[str, str] = {"#exp": "expires_at"}
        if collection is not None:
            filters.append("#c = :c")
            names["#c"] = "collection"
            values[":c"] = {"S": collection}
        if status is not None:
            filters.append("#s = :s")
            names["#s"] = "status"
            values[":s"] = {"S": status}
        found: list[dict[str, Any]] = []
        day: str = state["day"]
        start_key = state["key"]
        days = 0
        while True:
            if index == BY_MODEL:
                key = "#model = :hash AND started_key BETWEEN :low AND :high"
                names["#model"] = "model"
                values[":hash"] = {"S": model}
            else:
                key = "#day = :hash AND started_key BETWEEN :low AND :high"
                names["#day"] = "day"
                values[":hash"] = {"S": day}
            kwargs: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": index,
                "KeyConditionExpression": key,
                "FilterExpression": " AND ".join(filters),
                "ExpressionAttributeValues": values,
                "ScanIndexForward": False,
                "Limit": limit - len(found),
            }
            kwargs["ExpressionAttributeNames"] = names
            if start_key:
                kwargs["ExclusiveStartKey"] = start_key
            with table_errors():
                page = self._ddb.query(**kwargs)
            found.extend(summary(view_from_item(self._decode(i))) for i in page.get("Items", []))
            start_key = page.get("LastEvaluatedKey")
            if start_key:
                if len(found) >= limit:
                    return Page(found, _encode_cursor(index, day, start_key))
                continue
            if index == BY_MODEL:
                return Page(found, None)
            day = _previous_day(day)
            days += 1
            if day < low[:10]:
                return Page(found, None)
            if len(found) >= limit or days >= MAX_DAYS_PER_PAGE:
                return Page(found, _encode_cursor(index, day, None))


def _previous_day(day: str) -> str:
    return (datetime.date.fromisoformat(day) - datetime.timedelta(days=1)).isoformat()


def _encode_cursor(index: str, day: str, key: dict[str, Any] | None) -> str:
    raw = json.dumps({"i": index, "d": day, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_KEY_NAMES = {BY_MODEL: {"id", "model", "started_key"}, BY_DAY: {"id", "day", "started_key"}}


def _decode_cursor(
    cursor: str, index: str, model: str | None, low: str, high: str
) -> dict[str, Any]:
    """The listing's state in ``cursor``, which must belong to this listing: its index, its
    model, a day and a start key not after ``high``. Anything else (forged, or from other
    filters) raises CursorInvalid: DynamoDB would refuse such a start key. A cursor before
    ``low`` (``from`` moved on since) is the listing's end: ``list`` returns no more."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        state = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise CursorInvalid() from None
    if not isinstance(state, dict) or state.get("i") != index:
        raise CursorInvalid()
    day, key = state.get("d"), state.get("k")
    if not isinstance(day, str) or len(day) != 10:
        raise CursorInvalid()
    try:
        datetime.date.fromisoformat(day)
    except ValueError:
        raise CursorInvalid() from None
    if day > high[:10]:
        raise CursorInvalid()
    if key is not None:
        if not isinstance(key, dict) or set(key) != _KEY_NAMES[index]:
            raise CursorInvalid()
        for value in key.values():
            if not (isinstance(value, dict) and set(value) == {"S"}):
                raise CursorInvalid()
            if not isinstance(value["S"], str) or not 1 <= len(value["S"]) <= 1024:
                raise CursorInvalid()
        started = key["started_key"]["S"]
        hash_value = key["model"]["S"] if index == BY_MODEL else key["day"]["S"]
        if hash_value != (model if index == BY_MODEL else day):
            raise CursorInvalid()
        if not (started <= high + "~" and started.endswith("#" + key["id"]["S"])):
            raise CursorInvalid()
        if index == BY_DAY and not started.startswith(day):
            raise CursorInvalid()
    return {"day": day, "key": key}
