"""``llmhost traces --follow``: what each poll asks ``GET /v1/traces`` for, and that every
trace is shown once, oldest first, however the polls and pages fall."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost_cli.feed import traces


def trace(n: int) -> dict[str, Any]:
    return {"id": f"{n:032x}", "started_at": f"2026-12-03T02:10:{n:02d}.000Z"}


class Traces:
    """GET /v1/traces over a growing list (newest first, pages of ``limit``, ``from``
    inclusive), recording each query."""

    def __init__(self, stored: list[dict[str, Any]]) -> None:
        self.stored = stored
        self.queries: list[dict[str, Any]] = []

    def call(self, method: str, path: str, query: dict[str, Any]) -> dict[str, Any]:
        assert (method, path) == ("GET", "/v1/traces")
        self.queries.append(query)
        kept = [t for t in self.stored if not query.get("from") or t["started_at"] >= query["from"]]
        kept.sort(key=lambda t: t["started_at"], reverse=True)
        start = int(query.get("cursor") or 0)
        limit = query["limit"]
        page = kept[start : start + limit]
        more = start + limit < len(kept)
        return {"data": page, "next_cursor": str(start + limit) if more else None}


class Polls:
    """The sleep between polls: adds the next batch of traces, and ends the test when none
    are left (as Ctrl-C ends --follow)."""

    def __init__(self, api: Traces, batches: list[list[dict[str, Any]]]) -> None:
        self.api, self.batches = api, batches

    def __call__(self, seconds: float) -> None:
        if not self.batches:
            raise KeyboardInterrupt
        self.api.stored.extend(self.batches.pop(0))


def test_a_listing_shows_the_newest_page_oldest_first() -> None:
    api = Traces([trace(n) for n in range(5)])
    shown = list(traces(api, {"limit": 3, "model": "demo"}, follow=False, interval_s=1))
    assert [t["id"] for t in shown] == [trace(n)["id"] for n in (2, 3, 4)]
    assert api.queries == [{"limit": 3, "model": "demo", "cursor": None}]


def test_following_shows_each_new_trace_once_even_a_burst_larger_than_a_page() -> None:
    # Given two traces, then a burst of five (pages of two), then one more
    api = Traces([trace(0), trace(1)])
    polls = Polls(api, [[trace(n) for n in range(2, 7)], [], [trace(7)]])
    shown: list[dict[str, Any]] = []
    with pytest.raises(KeyboardInterrupt):
        for t in traces(api, {"limit": 2, "to": "x"}, follow=True, interval_s=1, sleep=polls):
            shown.append(t)
    # Then every trace is shown once, in order
    assert [t["id"] for t in shown] == [trace(n)["id"] for n in range(8)]
    # And each poll after the first asks from the newest start shown, without the listing's end
    later = [q for q in api.queries[1:] if not q["cursor"]]
    assert [q["from"] for q in later] == [
        trace(1)["started_at"],
        trace(6)["started_at"],
        trace(6)["started_at"],
    ]
    assert all(q["to"] is None for q in api.queries[1:])
