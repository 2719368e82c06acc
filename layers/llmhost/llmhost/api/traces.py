"""The traces routes on the control API (IAM auth): list, read, and give feedback.

``GET /v1/traces`` lists trace summaries newest first (filters: model, collection, status,
from, to; ``limit``; ``cursor``), ``GET /v1/traces/{id}`` reads one trace (by its trace id,
or by the request id the client holds: ``chatcmpl-...``, ``rag-...``, ``job-...``), and
``POST /v1/traces/{id}/feedback`` appends a score and comment, as Opik and Langfuse do.
The store is ``llmhost.traces.store``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Literal

from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictFloat

from llmhost.api.http import json_response
from llmhost.errors import FieldIssue, SpecInvalid
from llmhost.specs import NAME_PATTERN
from llmhost.traces.record import REQUEST_ID_PATTERN, iso_time, trace_id_for
from llmhost.traces.redact import keep_text
from llmhost.traces.store import MAX_PAGE

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver

    from llmhost.traces.store import TraceStore

TRACE_ID = r"^[0-9a-f]{32}$"
TraceIdPath = Annotated[
    str,
    Path(
        pattern=rf"({TRACE_ID})|({REQUEST_ID_PATTERN})",
        max_length=145,
        description="A trace id (32 hex), or the request id the reply carried "
        "(chatcmpl-..., rag-..., job-...).",
    ),
]
# The latest instant a time may name (year 9999): later is not a time DynamoDB's keys order.
LATEST_S = 253402300799
# DynamoDB stores numbers up to 1e126 in magnitude; a score is far inside.
MAX_SCORE = 1e100


class FeedbackBody(BaseModel):
    """A score for a trace, with an optional comment: a user's thumbs, an evaluator's."""

    model_config = ConfigDict(extra="forbid")

    score: StrictFloat = Field(
        allow_inf_nan=False,
        ge=-MAX_SCORE,
        le=MAX_SCORE,
        description="A number: 1/0, 1..5, 0.0..1.0... (at most 1e100 either way).",
    )
    comment: str | None = Field(default=None, max_length=2000)
    name: str = Field(
        default="user",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Who or what scored: user, an evaluator's name.",
    )


def parse_time(value: str, field: str) -> float:
    """Epoch seconds of ``value`` (ISO 8601, or epoch seconds). Raises SpecInvalid naming
    ``field``."""
    text = value.strip()
    seconds: float | None = None
    if re.fullmatch(r"\d{1,12}(\.\d{1,9})?", text):
        seconds = float(text)
    else:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                raise SpecInvalid(
                    [FieldIssue(field, "give a time zone (2026-12-03T02:10:00Z), or epoch seconds")]
                )
            try:
                seconds = parsed.timestamp()
            except (OverflowError, ValueError):
                seconds = None
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= LATEST_S:
        raise SpecInvalid(
            [FieldIssue(field, "must be ISO 8601 (2026-12-03T02:10:00Z) or epoch seconds")]
        )
    return seconds


def trace_key(id_or_request: str) -> str:
    """The trace id named by a path's id: itself, or its request's."""
    return id_or_request if re.fullmatch(TRACE_ID, id_or_request) else trace_id_for(id_or_request)


def mount_trace_routes(
    app: APIGatewayRestResolver,
    traces: Callable[[], TraceStore],
    retention_days: Callable[[], int],
    now: Callable[[], float] = time.time,
) -> None:
    """Add the traces routes (``traces`` and ``retention_days`` are called per request)."""

    @app.get("/v1/traces", summary="List traces, newest first, with filters")
    def list_traces(
        model: Annotated[
            str | None, Query(pattern=NAME_PATTERN, max_length=63, description="A deployment.")
        ] = None,
        collection: Annotated[
            str | None,
            Query(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$", description="A collection."),
        ] = None,
        status: Annotated[
            Literal["ok", "error"] | None, Query(description="ok, or error (4xx and 5xx).")
        ] = None,
        since: Annotated[str | None, Query(alias="from", **_time_query())] = None,
        until: Annotated[str | None, Query(alias="to", **_time_query())] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Traces per page.")] = 20,
        cursor: Annotated[
            str | None,
            Query(
                pattern=r"^[A-Za-z0-9_-]{1,4096}$",
                description="The previous page's next_cursor, with the same filters.",
            ),
        ] = None,
    ):
        until_s = parse_time(until, "to") if until is not None else now()
        since_s = (
            parse_time(since, "from") if since is not None else until_s - retention_days() * 86400
        )
        if since_s > until_s:
            raise SpecInvalid([FieldIssue("from", f"must not be after to ({iso_time(until_s)})")])
        page = traces().list(
            model=model,
            collection=collection,
            status=status,
            since_s=since_s,
            until_s=until_s,
            limit=limit,
            cursor=cursor,
        )
        return json_response(HTTPStatus.OK, {"data": page.traces, "next_cursor": page.next_cursor})

    @app.get("/v1/traces/<trace_id>", summary="A trace: spans, prompt, sources, answer")
    def get_trace(trace_id: TraceIdPath):
        return json_response(HTTPStatus.OK, traces().get(trace_key(trace_id)))

    @app.post("/v1/traces/<trace_id>/feedback", summary="Score a trace (201: the trace)")
    def add_feedback(trace_id: TraceIdPath, feedback: FeedbackBody):
        key = trace_key(trace_id)
        store = traces()
        # A comment is kept as the trace keeps its text (its ``content``): redacted, or
        # dropped under none, so feedback cannot put back what the trace left out.
        content = store.get(key).get("content")
        entry = {
            "name": feedback.name,
            "score": feedback.score,
            "comment": keep_text(
                feedback.comment, content if content in ("full", "none") else "redacted"
            ),
            "at": iso_time(now()),
        }
        updated = store.add_feedback(key, {k: v for k, v in entry.items() if v is not None})
        return json_response(HTTPStatus.CREATED, updated)


def _time_query() -> dict[str, object]:
    return {
        "max_length": 40,
        "description": "ISO 8601 (2026-12-03T02:10:00Z) or epoch seconds.",
    }
