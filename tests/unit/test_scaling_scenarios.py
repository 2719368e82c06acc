"""Synthetic scaling scenarios: each holds the load it promises (measured from its requests,
not read back from the module), and the same seed gives the same requests."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from llmhost.scaling import policy as aas
from llmhost.scaling.policy import ScalingPolicy, policy_from_spec
from llmhost.specs import Scaling
from llmhost_local.replay import scenarios, simulator
from llmhost_local.replay.traces import RequestBatch, Trace, TraceUnreadable

WORLD = simulator.CapacityModel()
BENCH = Path(__file__).resolve().parents[2] / "bench" / "scaling.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scaling", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def requests_of(trace: Trace) -> RequestBatch:
    batches = list(trace.batches())
    return RequestBatch(
        np.concatenate([b.arrivals for b in batches]),
        np.concatenate([b.context_tokens for b in batches]),
        np.concatenate([b.generated_tokens for b in batches]),
    )


def service_s(requests: RequestBatch) -> np.ndarray:
    """The benchmark world's service time, written out here rather than asked of the model."""
    return requests.context_tokens / 4000.0 + requests.generated_tokens / 40.0


def in_flight(requests: RequestBatch, start: float, end: float) -> float:
    """Mean number of requests running during [start, end) if each ran on arrival."""
    begin = requests.arrivals
    finish = begin + service_s(requests)
    overlap = np.clip(np.minimum(finish, end) - np.maximum(begin, start), 0, None)
    return float(overlap.sum()) / (end - start)


def rate(requests: RequestBatch, start: float, end: float) -> float:
    inside = (requests.arrivals >= start) & (requests.arrivals < end)
    return float(np.count_nonzero(inside)) / (end - start)


# ----------------------------------------------------------------------------- every scenario


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_a_scenario_is_the_same_for_its_seed_and_another_seed_changes_it(name: str) -> None:
    # Given a scenario streamed twice, built twice, and built with another seed
    trace = scenarios.scenario(name, seed=7)
    first, again = requests_of(trace), requests_of(trace)
    rebuilt = requests_of(scenarios.scenario(name, seed=7))
    other = requests_of(scenarios.scenario(name, seed=8))
    # Then the same seed gives the very same requests, another seed other requests
    for same in (again, rebuilt):
        np.testing.assert_array_equal(first.arrivals, same.arrivals)
        np.testing.assert_array_equal(first.context_tokens, same.context_tokens)
        np.testing.assert_array_equal(first.generated_tokens, same.generated_tokens)
    assert len(first) != len(other) or not np.array_equal(first.arrivals, other.arrivals)
    assert trace.name == name and trace.kind == "synthetic" and "seed=7" in trace.note


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_a_scenario_streams_requests_in_time_order_with_plausible_token_counts(
    name: str,
) -> None:
    # Given a scenario's batches
    batches = list(scenarios.scenario(name).batches())
    # Then they come in time order, from the trace's start, several of them (streamed)
    assert len(batches) > 1
    ends = [b.arrivals[-1] for b in batches if len(b)]
    starts = [b.arrivals[0] for b in batches if len(b)]
    assert all(np.all(np.diff(b.arrivals) >= 0) for b in batches)
    assert all(prev <= nxt for prev, nxt in zip(ends, starts[1:], strict=False))
    assert starts[0] >= 0
    # And the tokens look like the documented distribution: medians ~1,500 and ~30, clipped
    requests = requests_of(scenarios.scenario(name))
    assert 1_400 <= np.median(requests.context_tokens) <= 1_600
    assert 27 <= np.median(requests.generated_tokens) <= 33
    assert requests.context_tokens.min() >= 16 and requests.context_tokens.max() <= 8_192
    assert requests.generated_tokens.min() >= 1 and requests.generated_tokens.max() <= 1_024


def test_the_mean_service_time_is_that_of_the_requests_drawn() -> None:
    # Given many requests drawn from the scenarios' token distribution
    context, generated = scenarios.draw_tokens(np.random.default_rng(3), 400_000)
    drawn = float(np.mean(context / 4000.0 + generated / 40.0))
    # Then the closed form Little's law uses agrees with them
    assert scenarios.mean_service_s() == pytest.approx(drawn, rel=0.01)


def test_an_unknown_scenario_names_the_ones_there_are() -> None:
    with pytest.raises(TraceUnreadable, match="step, bursts, diurnal"):
        scenarios.scenario("spike")


# ------------------------------------------------------------------------------------- step


def test_the_step_holds_fifty_in_flight_for_thirty_minutes_and_a_trickle_around() -> None:
    # Given the step scenario's requests and the oracle's per-minute peak concurrency
    trace = scenarios.step()
    requests = requests_of(trace)
    oracle = simulator.compute_oracle(trace.batches(), WORLD)
    # Then from minute 10 to 40 about 50 requests are in flight (Little's law, measured)
    assert 47.5 <= in_flight(requests, 600, 2400) <= 52.5
    step = oracle.peak_concurrency[10:40]
    assert step.min() >= 45 and np.median(step) >= 50
    assert oracle.copies[10:40].min() >= 50 // WORLD.slots_per_copy
    # And around it a trickle: 0.05 req/s, ~0.1 in flight, never more than two at once
    for start, end in ((0, 600), (2400, 3600)):
        assert rate(requests, start, end) == pytest.approx(0.05, abs=0.02)
        assert in_flight(requests, start, end) < 0.2
    outside = np.concatenate([oracle.peak_concurrency[:10], oracle.peak_concurrency[41:]])
    assert outside.max() <= 2
    assert requests.arrivals[-1] < 3600


def test_step_load_puts_its_peak_rate_in_its_window_only() -> None:
    # Given a step from 1 to 20 req/s over [300.5 s, 900.5 s) of 1,200 s
    requests = requests_of(scenarios.step_load(1.0, 20.0, 300.5, 600, 1_200, seed=5))
    # Then the window gets the peak rate, the rest the base rate, nothing after the end
    assert rate(requests, 300.5, 900.5) == pytest.approx(20.0, rel=0.05)
    assert rate(requests, 0, 300) == pytest.approx(1.0, rel=0.25)
    assert rate(requests, 901, 1_200) == pytest.approx(1.0, rel=0.25)
    assert requests.arrivals.max() < 1_200


# ----------------------------------------------------------------------------------- bursts


def test_bursts_are_ten_times_the_base_rate_for_thirty_seconds_every_five_minutes() -> None:
    # Given the bursts scenario: bursts at 150 s, 450 s, ... each 30 s long
    requests = requests_of(scenarios.bursts())
    windows = [(start, start + 30) for start in range(150, 3600, 300)]
    assert len(windows) == 12
    inside = sum(rate(requests, a, b) * 30 for a, b in windows) / (30 * len(windows))
    base_count = np.count_nonzero(requests.arrivals < 3600) - inside * 30 * len(windows)
    base = base_count / (3600 - 30 * len(windows))
    # Then each burst is there, and bursts run at 10x the base rate
    assert inside / base == pytest.approx(10, rel=0.1)
    assert all(rate(requests, a, b) > 5 * base for a, b in windows)
    # And the base keeps 5 requests in flight (measured between bursts, once they drained)
    between = [in_flight(requests, b + 60, a + 300) for a, b in windows[:-1]]
    assert 4.75 <= np.mean(between) <= 5.25


# ---------------------------------------------------------------------------------- diurnal


def test_diurnal_rises_from_night_to_a_midday_peak_at_three_hours_and_falls_back() -> None:
    # Given the diurnal scenario (a day compressed into 6 hours)
    requests = requests_of(scenarios.diurnal())
    hourly = [rate(requests, h * 3600, (h + 1) * 3600) for h in range(6)]
    # Then the load climbs for three hours and falls for three, symmetrically
    assert hourly[0] < hourly[1] < hourly[2] and hourly[3] > hourly[4] > hourly[5]
    assert hourly[2] == pytest.approx(hourly[3], rel=0.05)
    assert hourly[0] == pytest.approx(hourly[5], rel=0.1)
    # And goes from ~2 requests in flight at night to ~50 at midday
    assert 1.5 <= in_flight(requests, 0, 600) <= 3.0
    assert 45 <= in_flight(requests, 3 * 3600 - 300, 3 * 3600 + 300) <= 52
    assert requests.arrivals.max() < 6 * 3600


# ------------------------------------------------------------------ the benchmark's bounds


def test_the_startup_bound_of_a_start_charges_each_copy_missing_at_it_its_startup() -> None:
    # Given an oracle that needs 2 copies in minutes 2-3 and 1 copy in minute 10
    copies = np.array([0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 1])
    oracle = simulator.Oracle(copies, copies * 16, requests=100)

    def bound(measured: simulator.Oracle, initial: int) -> float:
        return measured.startup_bound_gpu_hours(initial_copies=initial)

    # When the replay starts with 1 copy: the first copy runs its 3 needed minutes, keeps
    # the 2 minutes before it (cheaper than 8 from zero) and the 6-minute gap (cheaper than 8);
    # the second runs 2 minutes and pays its 2-minute startup
    assert bound(oracle, 1) * 60 == pytest.approx((3 + 2 + 6) + (2 + 2))
    # With none, the first copy pays its 8 minutes from zero instead of the 2 kept
    assert bound(oracle, 0) * 60 == pytest.approx((3 + 8 + 6) + (2 + 2))
    # With 3, the second copy is kept for the 2 minutes before it is needed; the third released
    assert bound(oracle, 3) * 60 == pytest.approx((3 + 2 + 6) + (2 + 2))
    # And with the warm start (minute 0's copies) it is the oracle's own startup bound
    assert bound(oracle, 0) == pytest.approx(oracle.startup_bound_gpu_hours())
    for name in ("step", "bursts"):
        measured = simulator.compute_oracle(scenarios.scenario(name).batches(), WORLD)
        warm = int(measured.copies[0])
        assert bound(measured, warm) == pytest.approx(measured.startup_bound_gpu_hours())


# ------------------------------------------------------- the default policy never runs away


def default_deployment() -> tuple[ScalingPolicy, simulator.CapacityModel]:
    """What ``make bench-scaling`` runs as ``llmhost``: the spec's defaults (64 copies at most)
    on the benchmark's copies, whose engines refuse past the queue limit llmhost deploys."""
    copy = aas.BENCHMARK_COPY
    policy = policy_from_spec(Scaling(max_capacity=64), copy)
    queue_limit = copy.queue_limit or aas.ENGINE_QUEUE_MAX
    return policy, replace(simulator.CapacityModel(), queue_limit=queue_limit)


def longest_run_s(over: np.ndarray, tick_s: int) -> int:
    """Seconds of the longest run of consecutive True ticks."""
    longest = run = 0
    for flag in over.tolist():
        run = run + 1 if flag else 0
        longest = max(longest, run)
    return longest * tick_s


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    # No shrinking: a runaway replays slowly and shrinking one took minutes; the message
    # names the whole load instead.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
# Loads that made earlier defaults run away (found by this test), and the step scenario.
@example(base_rps=0.0, peak_rps=12.0, start_s=107, length_s=1239, total_s=2122, seed=1122)
@example(base_rps=0.47, peak_rps=44.7, start_s=1133, length_s=174, total_s=2059, seed=565)
@example(
    base_rps=scenarios.TRICKLE_RPS,
    peak_rps=scenarios.rate_for_concurrency(scenarios.STEP_CONCURRENCY),
    start_s=600,
    length_s=1800,
    total_s=3600,
    seed=1,
)
@given(
    base_rps=st.floats(0.0, 2.0).map(lambda rps: round(rps, 2)),
    peak_rps=st.floats(3.0, 60.0).map(lambda rps: round(rps, 1)),  # ~5 to ~90 in flight
    start_s=st.integers(0, 1200),
    length_s=st.integers(60, 1500),  # a step past the end lasts to the end
    total_s=st.integers(20 * 60, 40 * 60),
    seed=st.integers(0, 2**16),
)
def test_the_default_policy_never_holds_far_more_than_the_oracle_on_a_step(
    base_rps: float, peak_rps: float, start_s: int, length_s: int, total_s: int, seed: int
) -> None:
    # Given a random step load and the oracle's copies for it
    trace = scenarios.step_load(base_rps, peak_rps, start_s, length_s, total_s, seed)
    load = f"step_load({base_rps!r}, {peak_rps!r}, {start_s}, {length_s}, {total_s}, {seed})"
    oracle = simulator.compute_oracle(trace.batches(), WORLD)
    policy, capacity = default_deployment()
    mechanics = simulator.Mechanics()
    # When the default policy (with llmhost's wake hook) replays it, warm and cold
    for start, initial in (("warm", None), ("cold", policy.min_capacity)):
        result = simulator.replay(
            trace.batches(),
            policy,
            oracle,
            capacity=capacity,
            wake_on_request=True,
            initial_copies=initial,
        )
        copies = result.copies_by_tick
        # Then it never holds more than the oracle's peak + 2 copies for longer than a startup
        held = longest_run_s(copies > oracle.peak_copies + 2, mechanics.tick_s)
        assert held <= mechanics.add_copy_s, (
            f"{load}, {start} start: held more than the oracle's peak {oracle.peak_copies} + 2 "
            f"copies for {held} s (at most {int(copies.max())})"
        )
        # And never sits at its maximum when the oracle needs a quarter of it or less
        if oracle.peak_copies <= policy.max_capacity // 4:
            assert int(copies.max()) < policy.max_capacity, (
                f"{load}, {start} start: reached {policy.max_capacity} copies for an oracle "
                f"peak of {oracle.peak_copies}"
            )
