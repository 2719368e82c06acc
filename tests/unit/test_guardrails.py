"""The GPU cap's pure core: leases, reclaim, refusals, admission, and the budget's arithmetic."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from llmhost.scaling.budget import MAX_TICK_S, spend, tick_seconds, unit_price
from llmhost.scaling.leases import (
    GpuCapacityExceeded,
    Holding,
    Usage,
    check_admission,
    lease_for,
    plan_scale_out,
    plan_wake,
    required_units,
)
from llmhost.specs import parse_spec


def held(name: str, current: int, lease: int | None, maximum: int = 8, low: int = 0) -> Holding:
    return Holding(name, current=current, floor=0, maximum=maximum, lease=lease, target_min=low)


SERVERLESS = {
    "model": {"model_id": "sentence-transformers/all-MiniLM-L6-v2"},
    "engine": {"name": "hf-inference"},
    "hosting": {"kind": "serverless"},
}


def spec(**changes: Any) -> Any:
    base: dict[str, Any] = {
        "name": "m",
        "model": {"model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
        "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    }
    base.update(changes)
    return parse_spec(base)


def test_lease_is_what_the_cap_leaves_but_never_below_the_minimum() -> None:
    # Given a cap of 8 with 5 units leased to another deployment
    usage = Usage(8, (held("a", 2, 5), held("b", 1, 1)))
    # Then b may lease 3 (its max 6 does not fit), never less than its min, and no cap gives max
    assert lease_for(usage, "b", 1, 6) == 3
    assert lease_for(Usage(8, (held("a", 8, 8),)), "b", 2, 6) == 2
    assert lease_for(Usage(None, usage.holdings), "b", 1, 6) == 6
    # And a spent budget holds every lease at its minimum
    assert lease_for(usage, "b", 1, 6, budget_exceeded=True) == 1


def test_alarm_high_takes_free_units_first() -> None:
    usage = Usage(10, (held("a", 2, 2, maximum=6), held("b", 3, 4)))
    grant = plan_scale_out(usage, "a")
    # 10 - (2 + 4) = 4 free: a goes to its max of 6 without touching b
    assert grant.event == "ScaleOutGranted" and grant.granted
    assert (grant.lease_before, grant.lease_after) == (2, 6) and not grant.reclaims


def test_alarm_high_reclaims_unused_lease_largest_slack_first() -> None:
    # Given a full cap where b and c lease more than they run
    usage = Usage(10, (held("a", 2, 2, maximum=5), held("b", 1, 5), held("c", 2, 3)))
    grant = plan_scale_out(usage, "a")
    # Then a gets 3 more, all from b (slack 4 beats c's 1), b keeps what it runs
    assert grant.granted and grant.lease_after == 5
    assert [(r.deployment, r.holding.lease, r.lease_after) for r in grant.reclaims] == [("b", 5, 2)]
    assert "reclaimed 3" in grant.reason


def test_reclaim_never_goes_below_what_others_run_or_their_minimum() -> None:
    usage = Usage(6, (held("a", 2, 2), held("b", 3, 4, low=4)))
    grant = plan_scale_out(usage, "a")
    assert not grant.granted and grant.event == "ScaleOutRefused" and not grant.reclaims


def test_refusal_names_the_cap_the_units_and_who_holds_them() -> None:
    usage = Usage(6, (held("a", 2, 2), held("b", 4, 4)))
    grant = plan_scale_out(usage, "a")
    assert grant.event == "ScaleOutRefused" and grant.lease_after == 2
    for words in ("cap of 6", "GpuCapacityCap", "6 of the cap of 6", "b 4", "a 2"):
        assert words in grant.reason


def test_at_max_and_within_lease_are_not_refusals() -> None:
    at_max = plan_scale_out(Usage(4, (held("a", 3, 3, maximum=3),)), "a")
    assert at_max.event == "ScaleOutAtMax" and "scaling.max_capacity" in at_max.reason
    within = plan_scale_out(Usage(4, (held("a", 1, 3, maximum=3),)), "a")
    assert within.event == "ScaleOutGranted" and within.lease_after == 3


def test_a_spent_budget_refuses_scale_out() -> None:
    grant = plan_scale_out(Usage(None, (held("a", 1, 1),)), "a", budget_block="budget spent")
    assert grant.event == "ScaleOutRefused" and "budget spent" in grant.reason


def test_wake_reclaims_or_refuses() -> None:
    usage = Usage(4, (held("a", 0, None), held("b", 1, 4)))
    grant = plan_wake(usage, "a", 2)
    assert grant.granted and [(r.deployment, r.lease_after) for r in grant.reclaims] == [("b", 2)]
    refused = plan_wake(Usage(4, (held("b", 3, 4),)), "a", 2)
    assert refused.event == "WakeRefused" and "cap of 4" in refused.reason


def _apply(usage: Usage, name: str, lease: int | None, current: int | None = None) -> Usage:
    return Usage(
        usage.cap,
        tuple(
            replace(
                h,
                lease=h.lease if lease is None else lease,
                current=h.current if current is None else current,
            )
            if h.deployment == name
            else h
            for h in usage.holdings
        ),
    )


def test_leases_never_add_up_past_the_cap_under_random_sequences() -> None:
    rng = random.Random(20261121)
    for _ in range(200):
        cap = rng.randint(2, 12)
        names = [f"d{i}" for i in range(rng.randint(1, 5))]
        holdings = []
        left = cap
        for name in names:
            low = rng.randint(0, min(1, left))
            maximum = rng.randint(max(1, low), 6)
            lease = max(low, min(maximum, left))
            left -= lease
            holdings.append(held(name, current=low, lease=lease, maximum=maximum, low=low))
        usage = Usage(cap, tuple(holdings))
        for _ in range(30):
            name = rng.choice(names)
            holding = usage.get(name)
            assert holding is not None and holding.lease is not None
            step = rng.choice(["alarm", "scale", "wake"])
            if step == "scale":
                # AWS moves a deployment anywhere within [min, lease] on its own
                usage = _apply(usage, name, None, rng.randint(holding.target_min, holding.lease))
                continue
            grant = (
                plan_scale_out(usage, name)
                if step == "alarm"
                else plan_wake(usage, name, rng.randint(1, 3))
            )
            if grant.granted:
                for reclaim in grant.reclaims:
                    assert reclaim.lease_after >= reclaim.holding.lowest_lease
                    usage = _apply(usage, reclaim.deployment, reclaim.lease_after)
                usage = _apply(usage, name, grant.lease_after)
            # The invariant: what is held (running, owed or leased) fits under the cap
            assert usage.reserved <= cap, (grant, usage)


def test_required_units_names_the_field_that_sets_them() -> None:
    assert required_units(spec()) == (1, "hosting.instance_count")
    assert required_units(spec(scaling={"min_capacity": 3, "max_capacity": 4})) == (
        3,
        "scaling.min_capacity",
    )
    shared = {"kind": "shared", "pool": "p", "instance_type": "ml.g5.12xlarge", "copies": 2}
    assert required_units(spec(hosting=shared)) == (2, "hosting.copies")
    assert required_units(spec(**SERVERLESS)) == (0, "")


def test_admission_refuses_a_minimum_over_the_cap_with_the_fix() -> None:
    from llmhost.lifecycle.record import DeploymentRecord

    other = DeploymentRecord(name="a", spec=spec(name="a", hosting={"instance_count": 3}))
    new = spec(scaling={"min_capacity": 2, "max_capacity": 4})
    check_admission(5, [other], new)
    check_admission(None, [other], new)
    with pytest.raises(GpuCapacityExceeded) as caught:
        check_admission(4, [other], new)
    assert caught.value.status == 409 and caught.value.field == "scaling.min_capacity"
    assert "raise the GpuCapacityCap stack parameter or lower scaling.min_capacity" in str(
        caught.value
    )
    # A sleeping deployment's minimum is not held
    asleep = other.model_copy(update={"desired_state": "sleeping"})
    check_admission(2, [asleep], new)


def test_budget_arithmetic() -> None:
    # A gap is billed at most MAX_TICK_S; the first tick one interval
    assert tick_seconds(1000.0, 1300.0) == 300.0
    assert tick_seconds(1000.0, 1000.0 + 7200) == MAX_TICK_S
    assert tick_seconds(None, 5.0) == 300.0
    assert spend([(2, 1.5), (1, 3.0)], 1800) == pytest.approx(3.0)
    # A copy of a 1-GPU share of a 4-GPU ml.g5.12xlarge costs a quarter of the instance
    shared = {"kind": "shared", "pool": "p", "instance_type": "ml.g5.12xlarge"}
    dedicated = unit_price(spec(hosting={"instance_type": "ml.g5.12xlarge"}))
    assert unit_price(spec(hosting=shared)) == pytest.approx(dedicated / 4)
    assert unit_price(spec(**SERVERLESS)) == 0.0
