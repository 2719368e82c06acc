"""Following a deployment until the reconciler has done what was asked: its history entries
as they appear, and whether it got there (``progress``: pure, from the record alone).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from llmhost_cli.client import Client
from llmhost_cli.errors import ApiRefused, CliFailure

Goal = Literal["IN_SERVICE", "SLEEPING", "DELETED"]
Progress = Literal["waiting", "done", "failed"]
# Entries written by the API when asked (not yet acted on): a record whose last entry is one
# of these still reads its previous status, which says nothing about the request yet.
REQUESTED = {"Created", "SpecUpdated", "WakeRequested", "SleepRequested", "DeleteRequested"}
POLL_S = 0.5


def progress(record: dict[str, Any], goal: Goal) -> Progress:
    """Where ``record`` (the API's view of a deployment) stands on the way to ``goal``."""
    status = record.get("status")
    history = record.get("history") or []
    acted_on = not history or history[-1].get("event") not in REQUESTED
    if goal == "DELETED":
        return "done" if status == "DELETED" else "waiting"
    if status == "FAILED" and record.get("failed_generation") == record.get("generation"):
        return "failed"
    return "done" if status == goal and acted_on else "waiting"


def entry_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(entry.get(k) for k in ("at", "event", "status", "reason", "generation"))


def follow(
    client: Client,
    start: dict[str, Any],
    goal: Goal,
    *,
    timeout_s: float,
    on_entry: Callable[[dict[str, Any]], None],
    on_poll: Callable[[dict[str, Any]], None] = lambda record: None,
    poll_s: float = POLL_S,
) -> dict[str, Any]:
    """Poll the deployment ``start`` (the API's answer to the request) until ``goal``.

    ``on_entry`` gets each history entry from the request's own on, once, oldest first.
    Returns the final record. Raises CliFailure when it ends FAILED (with the reason) or
    the timeout passes first."""
    name = start["name"]
    history = start.get("history") or []
    seen = {entry_key(e) for e in history[:-1]}
    record = start
    deadline = time.monotonic() + timeout_s
    while True:
        for entry in record.get("history") or []:
            if entry_key(entry) not in seen:
                seen.add(entry_key(entry))
                on_entry(entry)
        state = progress(record, goal)
        if state == "done":
            return record
        if state == "failed":
            raise CliFailure(f"{name} FAILED: {record.get('status_reason') or 'no reason given'}")
        if time.monotonic() >= deadline:
            raise CliFailure(
                f"{name} is still {record.get('status')} after {timeout_s:g} s (the reconciler "
                f"carries on): `llmhost status {name}` to look again, or --timeout to wait longer"
            )
        time.sleep(poll_s)
        try:
            record = client.call("GET", f"/v1/deployments/{name}")
        except ApiRefused as refused:
            if goal == "DELETED" and refused.status == 404:
                return {**record, "status": "DELETED"}
            raise
        on_poll(record)
