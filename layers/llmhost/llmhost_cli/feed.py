"""``llmhost traces --follow``: the traces not shown yet, oldest first, poll after poll.

``GET /v1/traces`` answers newest first, a page at a time. The first poll shows the newest
page, as a plain listing does; each later one asks only for traces from the newest start
time already shown (``from``) and follows ``next_cursor``, so a burst larger than a page is
shown whole. A trace already shown (the same start time comes again) is not repeated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

# Pages one poll may read while following (a poll that would need more shows the newest).
MAX_PAGES_PER_POLL = 10


def new_traces(client: Any, query: dict[str, Any], seen: set[str], *, pages: int) -> list[Any]:
    """The traces matching ``query`` not in ``seen`` (which gets them), oldest first."""
    found: list[Any] = []
    cursor = None
    for _ in range(pages):
        page = client.call("GET", "/v1/traces", query={**query, "cursor": cursor})
        found.extend(page.get("data") or [])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    fresh = [t for t in reversed(found) if t.get("id") not in seen]
    seen.update(t.get("id") for t in fresh)
    return fresh


def traces(
    client: Any,
    query: dict[str, Any],
    *,
    follow: bool,
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Any]:
    """The traces to show, oldest first; with ``follow``, new ones as they come, forever."""
    seen: set[str] = set()
    shown = new_traces(client, query, seen, pages=1)
    yield from shown
    if not follow:
        return
    query = {**query, "to": None}
    newest = shown[-1].get("started_at") if shown else None
    while True:
        if newest:
            query["from"] = newest
        sleep(interval_s)
        fresh = new_traces(client, query, seen, pages=MAX_PAGES_PER_POLL)
        yield from fresh
        if fresh and fresh[-1].get("started_at"):
            newest = fresh[-1]["started_at"]
