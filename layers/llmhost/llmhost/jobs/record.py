"""A job as the jobs table stores it, and the rules of its life (pure: no AWS here).

A job is one chat or RAG request answered later. It is ``QUEUED`` when accepted, ``RUNNING``
while a worker holds its lease, and ends ``SUCCEEDED``, ``FAILED`` or ``CANCELLED``; an
ended job never changes again, which is what makes a duplicate delivery or a duplicate
completion harmless.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmhost.errors import LlmhostError

Kind = Literal["chat", "rag"]
Status = Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
Route = Literal["queue", "async"]

TERMINAL: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
STATUSES: tuple[str, ...] = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")

# Which status may follow which. RUNNING -> RUNNING is a worker taking over a job whose
# previous worker's lease ran out (it died); QUEUED -> SUCCEEDED/FAILED is a completion that
# needs no claim (an asynchronous endpoint's notification, a message that could not run).
_NEXT: dict[str, frozenset[str]] = {
    "QUEUED": frozenset({"RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"}),
    "RUNNING": frozenset({"RUNNING", "QUEUED", "SUCCEEDED", "FAILED"}),
    "SUCCEEDED": frozenset(),
    "FAILED": frozenset(),
    "CANCELLED": frozenset(),
}

# Crockford's base32 (ULID's alphabet): ids sort by creation time, as ULIDs do.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
ID_PREFIX = "job-"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def can_transition(current: str, new: str) -> bool:
    """Whether a job in ``current`` may move to ``new``."""
    return new in _NEXT.get(current, frozenset())


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def new_job_id(now_s: float | None = None) -> str:
    """``job-`` and 26 characters: 10 of milliseconds since the epoch, 16 random (a ULID)."""
    millis = int((time.time() if now_s is None else now_s) * 1000)
    stamp = "".join(_ALPHABET[(millis >> shift) & 31] for shift in range(45, -1, -5))
    return ID_PREFIX + stamp + "".join(secrets.choice(_ALPHABET) for _ in range(16))


def batch_line_id(batch_id: str, line: int) -> str:
    """A batch line's job id, the same every time the batch is resumed."""
    return f"{batch_id}-{line:06d}"


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobError(BaseModel):
    """Why a job failed: a stable ``code`` (the synchronous route's error code) and a message."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str


class Job(BaseModel):
    """One job. ``request`` is the body the synchronous route takes; ``result`` its answer
    when it is small enough to keep in the table, else ``result_key`` names it in the bucket."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=ID_PATTERN)
    kind: Kind
    model: str
    request: dict[str, Any]
    # A request too large for the table is kept in the bucket: ``request`` is then {}.
    request_key: str | None = None
    status: Status = "QUEUED"
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = Field(default=0, ge=0)
    result: dict[str, Any] | None = None
    result_key: str | None = None
    error: JobError | None = None
    route: Route = "queue"
    batch_id: str | None = None
    custom_id: str | None = None
    # Epoch seconds after which DynamoDB's TTL may delete the item.
    expires_at: int
    # Epoch seconds until which the worker that claimed it owns it (RUNNING only).
    lease_until: float | None = None
    # When its Job Completed event was put (an ended job whose event is not yet out gets it
    # on the next delivery of its message).
    notified_at: str | None = None

    @property
    def terminal(self) -> bool:
        return is_terminal(self.status)

    def public(self) -> dict[str, Any]:
        """What GET /v1/jobs/{id} shows (the lease is the worker's business)."""
        return self.model_dump(mode="json", exclude={"lease_until", "request_key", "notified_at"})


class JobNotFound(LlmhostError):
    code = "not_found"
    status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"no job with id '{job_id}'; GET /v1/jobs lists the jobs kept "
            "(each for the stack's JobRetentionDays)"
        )
        self.job_id = job_id


class JobAlreadyStarted(LlmhostError):
    """Only a QUEUED job can be cancelled."""

    code = "job_started"
    status = 409

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"job '{job_id}' is {status}: only a QUEUED job can be cancelled; "
            f"GET /v1/jobs/{job_id} shows it"
        )
        self.job_id = job_id
        self.job_status = status


class PageTokenInvalid(LlmhostError):
    code = "invalid_request"
    status = 400

    def __init__(self) -> None:
        super().__init__(
            "next_token: not a token this listing returned; pass the next_token of the "
            "previous page unchanged, with the same model and status filters"
        )
