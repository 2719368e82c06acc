"""S3 notifications for the documents bucket -> what to ingest or delete (pure).

Objects live at ``collections/<collection>/<any path>.{txt,md,jsonl}``; the collection is
the first path segment after the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from llmhost.eventfields import items, text

PREFIX = "collections/"
KEY_MAX = 1024  # S3's limit on a key, in UTF-8 bytes


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


def changes_from_event(event: Any) -> list[ObjectChange | Ignored]:
    """One entry per S3 record, in order; records outside the layout (or of another shape)
    are Ignored with why."""
    out: list[ObjectChange | Ignored] = []
    for record in items(event, "Records"):
        key = unquote_plus(text(record, "s3", "object", "key"))
        bucket = text(record, "s3", "bucket", "name")
        name = text(record, "eventName")
        parts = key[len(PREFIX) :].split("/", 1) if key.startswith(PREFIX) else []
        if len(parts) != 2 or not parts[0] or not parts[1]:
            out.append(Ignored(key[:KEY_MAX], f"not under {PREFIX}<collection>/"))
            continue
        if len(key.encode()) > KEY_MAX or not bucket:
            out.append(Ignored(key[:KEY_MAX], "not an S3 object key (too long) or no bucket"))
            continue
        if name.startswith("ObjectCreated"):
            out.append(ObjectChange("ingest", bucket, key, parts[0]))
        elif name.startswith("ObjectRemoved"):
            out.append(ObjectChange("delete", bucket, key, parts[0]))
        else:
            out.append(Ignored(key, f"event {name[:100]} is not handled"))
    return out
