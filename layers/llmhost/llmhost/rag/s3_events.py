"""S3 notifications for the documents bucket -> what to ingest or delete (pure).

Objects live at ``collections/<collection>/<any path>.{txt,md,jsonl}``; the collection is
the first path segment after the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

PREFIX = "collections/"


@dataclass(frozen=True)
class ObjectChange:
    action: Literal["ingest", "delete"]
    bucket: str
    key: str
    collection: str


@dataclass(frozen=True)
class Ignored:
    key: str
    reason: str


def changes_from_event(event: dict[str, Any]) -> list[ObjectChange | Ignored]:
    """One entry per S3 record, in order; records outside the layout are Ignored with why."""
    out: list[ObjectChange | Ignored] = []
    for record in event.get("Records", []):
        s3 = record.get("s3", {})
        key = unquote_plus(s3.get("object", {}).get("key", ""))
        bucket = s3.get("bucket", {}).get("name", "")
        name = record.get("eventName", "")
        parts = key[len(PREFIX) :].split("/", 1) if key.startswith(PREFIX) else []
        if len(parts) != 2 or not parts[0] or not parts[1]:
            out.append(Ignored(key, f"not under {PREFIX}<collection>/"))
            continue
        if name.startswith("ObjectCreated"):
            out.append(ObjectChange("ingest", bucket, key, parts[0]))
        elif name.startswith("ObjectRemoved"):
            out.append(ObjectChange("delete", bucket, key, parts[0]))
        else:
            out.append(Ignored(key, f"event {name} is not handled"))
    return out
