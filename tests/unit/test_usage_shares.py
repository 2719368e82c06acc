"""Sharing a deployment's hourly cost over its requests (llmhost.usage.report, pure): the
callers' shares and the idle cost add up to what the deployment's copies cost, and no cost
is ever negative or NaN."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmhost.errors import SpecInvalid
from llmhost.usage.capacity import before_after, cost_between
from llmhost.usage.report import period, share_costs, usage_view
from llmhost.usage.store import ERROR_CLASSES, CapacityPoint, UsageRow

START = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
END = START + timedelta(hours=4)
DEPLOYMENTS = ["a", "b", "-"]
CALLERS = ["alice", "bob", "-"]


def row(hour: int, deployment: str, caller: str, requests: int, tokens: int) -> UsageRow:
    return UsageRow(
        hour=START + timedelta(hours=hour),
        deployment=deployment,
        caller=caller,
        requests=requests,
        errors=0,
        errors_by_class=dict.fromkeys(ERROR_CLASSES, 0),
        cold=0,
        input_tokens=tokens,
        output_tokens=0,
        busy_ms=0,
    )


rows = st.lists(
    st.builds(
        row,
        hour=st.integers(0, 3),
        deployment=st.sampled_from(DEPLOYMENTS),
        caller=st.sampled_from(CALLERS),
        requests=st.integers(1, 50),
        tokens=st.integers(0, 10_000),
    ),
    max_size=20,
    # one counter per hour x deployment x caller, as the table keeps them
    unique_by=lambda r: (r.hour, r.deployment, r.caller),
)
points = st.lists(
    st.builds(
        CapacityPoint,
        deployment=st.sampled_from(DEPLOYMENTS[:2]),
        at=st.integers(-30, 5 * 60).map(lambda m: START + timedelta(minutes=m)),
        desired=st.integers(0, 4),
        in_service=st.integers(0, 4),
        unit_usd_per_hour=st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),
    ),
    max_size=30,
    unique_by=lambda p: (p.deployment, p.at),
)


@settings(max_examples=200, deadline=None)
@given(rows=rows, points=points)
def test_shares_add_up_to_the_deployments_cost(
    rows: list[UsageRow], points: list[CapacityPoint]
) -> None:
    shares = share_costs(rows, points, START, END)
    # Every deployment's cost is what its copies cost in the period
    for name in ("a", "b"):
        expected = sum(
            cost_between(
                [p for p in sorted(points, key=lambda p: p.at) if p.deployment == name],
                START + timedelta(hours=h),
                START + timedelta(hours=h + 1),
            )
            for h in range(4)
        )
        got = shares.deployments.get(name)
        total = (got.cost_usd + got.idle_cost_usd) if got else 0.0
        assert total == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # The callers' shares plus the idle cost are the deployments' cost
    keys = sum(t.cost_usd for t in shares.keys.values())
    served = sum(t.cost_usd for t in shares.deployments.values())
    idle = sum(t.idle_cost_usd for t in shares.deployments.values())
    assert keys == pytest.approx(served, rel=1e-9, abs=1e-9)
    assert shares.total.cost_usd + shares.total.idle_cost_usd == pytest.approx(served + idle)
    # And nothing is negative or NaN, in the numbers or in the API's answer
    for totals in [*shares.deployments.values(), *shares.keys.values(), shares.total]:
        for value in (totals.cost_usd, totals.idle_cost_usd):
            assert math.isfinite(value) and value >= 0
    for by in ("deployment", "key"):
        view = usage_view(by, shares, START, END)
        for item in [*view["rows"], view["total"]]:
            assert item["cost_usd"] >= 0 and math.isfinite(item["cost_usd"])
            per = item["cost_per_request_usd"]
            assert per is None or (per >= 0 and math.isfinite(per))


def test_an_hour_is_shared_by_tokens_and_a_tokenless_hour_by_requests() -> None:
    one = [CapacityPoint("a", START + timedelta(minutes=m), 1, 1, 6.0) for m in range(0, 120, 5)]
    shares = share_costs(
        [
            row(0, "a", "alice", 1, 300),
            row(0, "a", "bob", 3, 100),
            row(1, "a", "alice", 1, 0),
            row(1, "a", "bob", 3, 0),
        ],
        one,
        START,
        START + timedelta(hours=3),
    )
    # hour 0: $6 by tokens 3:1; hour 1: $6 by requests 1:3; hour 2: the 01:55 point held
    # until 02:10, idle
    assert shares.keys["alice"].cost_usd == pytest.approx(4.5 + 1.5)
    assert shares.keys["bob"].cost_usd == pytest.approx(1.5 + 4.5)
    assert shares.deployments["a"].idle_cost_usd == pytest.approx(6.0 * 10 / 60)


def test_an_hour_of_refused_requests_alone_is_idle_not_their_callers_cost() -> None:
    one = [CapacityPoint("a", START + timedelta(minutes=m), 1, 1, 6.0) for m in range(0, 60, 5)]
    refused = replace(row(0, "a", "mallory", 4, 0), errors=4)
    answered = row(0, "a", "alice", 1, 0)
    shares = share_costs([refused, answered], one, START, START + timedelta(hours=1))
    # the one answered request carries the hour; the four refusals nothing
    assert shares.keys["mallory"].cost_usd == 0
    assert shares.keys["alice"].cost_usd == pytest.approx(6.0)
    alone = share_costs([refused], one, START, START + timedelta(hours=1))
    assert alone.keys["mallory"].cost_usd == 0
    assert alone.deployments["a"].idle_cost_usd == pytest.approx(6.0)


def test_a_point_holds_at_most_fifteen_minutes() -> None:
    lone = [CapacityPoint("a", START, 2, 2, 3.0)]
    assert cost_between(lone, START, END) == pytest.approx(2 * 3.0 * 0.25)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        ("2026-12-03T05:00:00Z", "2026-12-03T04:00:00Z", "from"),
        ("2026-01-01T00:00:00Z", "2026-12-03T00:00:00Z", "to"),
        ("not a time", None, "from"),
        (None, "nan", "to"),
        ("-5", None, "from"),
        ("0001-01-01T00:00:00+01:00", None, "from"),
        (None, "9999-12-31T23:59:59", "to"),
    ],
)
def test_bad_periods_name_their_field(start: str | None, end: str | None, field: str) -> None:
    with pytest.raises(SpecInvalid) as raised:
        period(start, end, END, whole_hours=True)
    assert [i.field for i in raised.value.issues] == [field]


def test_periods_widen_to_whole_hours_and_default_to_a_day() -> None:
    begin, stop = period("2026-12-03T00:10:00", "1796263800", END, whole_hours=True)
    assert (begin, stop) == (START, datetime(2026, 12, 3, 3, 0, tzinfo=UTC))
    assert period(None, None, END, whole_hours=False) == (END - timedelta(days=1), END)


def test_decisions_give_their_before_and_after() -> None:
    assert before_after("overload: desired copies 1 -> 3 (capped: cap)") == (1, 3)
    assert before_after("no invocations for 30 minutes; sleeping") == (None, None)


@settings(max_examples=300, deadline=None)
@given(
    start=st.one_of(
        st.none(), st.text(max_size=40), st.floats().map(repr), st.datetimes().map(str)
    ),
    end=st.one_of(st.none(), st.text(max_size=40), st.integers().map(str)),
)
def test_any_from_and_to_is_a_period_or_a_field_error(start: str | None, end: str | None) -> None:
    try:
        begin, stop = period(start, end, END, whole_hours=True)
    except SpecInvalid as error:
        assert {i.field for i in error.issues} <= {"from", "to"}
    else:
        assert begin < stop and stop - begin <= timedelta(days=31)
