"""The batch and file records, in OpenAI's fields, and their ids (pure).

The API shows ``Batch.public()`` and ``FileObject.public()``: exactly OpenAI's objects, plus
``llmhost`` on a batch (which runner runs it). Timestamps are Unix seconds, as OpenAI's.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
# What each status may become; anything else is a stale writer's mistake.
TRANSITIONS: dict[str, frozenset[str]] = {
    "validating": frozenset({"in_progress", "failed", "cancelling", "cancelled"}),
    "in_progress": frozenset({"finalizing", "cancelling", "expired"}),
    "finalizing": frozenset({"completed", "expired", "cancelled"}),
    "cancelling": frozenset({"cancelled", "finalizing"}),
    "failed": frozenset(),
    "completed": frozenset(),
    "expired": frozenset(),
    "cancelled": frozenset(),
}
FilePurpose = Literal["batch", "batch_output"]
COMPLETION_WINDOWS = {"24h": 24 * 3600}
ENDPOINTS = ("/v1/chat/completions",)
RUNNER_KEY = "llmhost_runner"


def can_move(current: str, new: str) -> bool:
    """Whether a batch in ``current`` may become ``new`` (staying put is always allowed)."""
    return new == current or new in TRANSITIONS.get(current, frozenset())


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def line_job_id(batch_id: str, line: int) -> str:
    """The job of a batch's line (1-based): the same id every time, so a resumed batch finds
    the line it already submitted instead of creating another."""
    return f"{batch_id}-{line:06d}"


def line_request_id(batch_id: str, line: int) -> str:
    """The ``id`` of a line in the output or error file; stable across re-finalisation."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}/{line}".encode()).hexdigest()[:32]


def result_file_id(batch_id: str, kind: Literal["output", "error"]) -> str:
    """The output or error file of a batch: one id whatever finalises it, however often."""
    return "file-" + hashlib.sha256(f"{batch_id}/{kind}".encode()).hexdigest()[:32]


class RequestCounts(BaseModel):
    total: int = Field(default=0, ge=0)
    completed: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)


class BatchError(BaseModel):
    """One of OpenAI's batch errors: a line of the input file that cannot run, or why the
    batch as a whole could not."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class Batch(BaseModel):
    """A batch as OpenAI describes it, plus the runner llmhost chose for it."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatus = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: BatchErrors | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    # llmhost's own: which runner runs the lines (chosen once, when the batch starts).
    runner: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def moved(self, status: BatchStatus, at: int, **changes: Any) -> Batch:
        """This batch in ``status`` (its ``<status>_at`` stamped with ``at``)."""
        stamp = {
            "in_progress": "in_progress_at",
            "finalizing": "finalizing_at",
            "completed": "completed_at",
            "failed": "failed_at",
            "expired": "expired_at",
            "cancelling": "cancelling_at",
            "cancelled": "cancelled_at",
        }.get(status)
        update: dict[str, Any] = {"status": status, **changes}
        if stamp and getattr(self, stamp) is None:
            update[stamp] = at
        return self.model_copy(update=update)

    def public(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", exclude={"runner"})
        body["llmhost"] = {"runner": self.runner}
        return body


class FileObject(BaseModel):
    """OpenAI's file object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int = Field(ge=0)
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["processed"] = "processed"
    expires_at: int | None = None

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
