"""Scaling replay: the oracle, AWS's mechanics on hand-checkable traces, and the trace readers.

Requests here take exactly 2.5 s (10,000 prompt tokens at 4,000 tokens/s, no output), and
arrive on binary-exact grids, so concurrency and timings can be worked out by hand.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmhost.scaling.policy import policy_from_spec
from llmhost.specs import Scaling
from llmhost_local.replay import simulator as sim
from llmhost_local.replay import traces
from llmhost_local.replay.traces import RequestBatch, TraceUnreadable

SERVICE_TOKENS = 10_000  # 2.5 s per request


def batch(arrivals: Any, context: int = SERVICE_TOKENS, generated: int = 0) -> RequestBatch:
    times = np.asarray(arrivals, dtype=float)
    n = len(times)
    return RequestBatch(
        times, np.full(n, context, dtype=np.int64), np.full(n, generated, dtype=np.int64)
    )


def run(
    requests: RequestBatch, scaling: Scaling, **options: Any
) -> tuple[sim.Oracle, sim.ReplayResult]:
    oracle = sim.compute_oracle([requests], sim.CapacityModel())
    return oracle, sim.replay([requests], policy_from_spec(scaling), oracle, **options)


def causes(result: sim.ReplayResult) -> list[tuple[float, int, int, str]]:
    return [(a.at_s, a.before, a.after, a.cause) for a in result.activities]


# --------------------------------------------------------------------------------- oracle


def test_oracle_holds_each_minutes_peak_including_requests_still_running() -> None:
    # Given a 100 s request from 10 s, a 5 s one at 50 s and nothing else
    requests = RequestBatch(np.array([10.0, 50.0]), np.array([400_000, 20_000]), np.array([0, 0]))
    # When the oracle is computed with one slot per copy
    oracle = sim.compute_oracle([requests], sim.CapacityModel(slots_per_copy=1))
    # Then minute 0 peaks at 2 and minute 1 still holds the long request
    assert oracle.peak_concurrency.tolist() == [2, 1]
    assert oracle.copies.tolist() == [2, 1]
    assert oracle.gpu_hours == pytest.approx(3 / 60)


def test_oracle_counts_minutes_without_events_and_is_the_same_streamed() -> None:
    # Given one request lasting 200 s (no event in minutes 1 and 2) and a later burst
    long_one = RequestBatch(np.array([0.0]), np.array([800_000]), np.array([0]))
    burst = batch(np.arange(300.0, 301.0, 0.0625))  # 16 at once
    # When computed in one batch and streamed in two
    whole = sim.compute_oracle(
        [
            RequestBatch(
                np.concatenate([long_one.arrivals, burst.arrivals]),
                np.concatenate([long_one.context_tokens, burst.context_tokens]),
                np.concatenate([long_one.generated_tokens, burst.generated_tokens]),
            )
        ],
        sim.CapacityModel(),
    )
    streamed = sim.compute_oracle([long_one, burst], sim.CapacityModel())
    # Then the long request holds a copy through minutes 0-3, the burst needs one in minute 5
    assert whole.copies.tolist() == [1, 1, 1, 1, 0, 1]
    assert streamed.copies.tolist() == whole.copies.tolist()
    assert streamed.requests == whole.requests == 17


def test_startup_bound_prices_restarts() -> None:
    # Given the oracle needs 2 copies, then none for 2 minutes, then 2 again
    oracle = sim.Oracle(np.array([2, 0, 0, 2]), np.array([32, 0, 0, 32]), 4)
    # Then keeping both through the gap (2 min each) is cheaper than a from-zero restart
    # (8 min) for the first and as cheap as a 2-minute restart for the second: 8 minutes
    assert oracle.startup_bound_gpu_hours() == pytest.approx(8 / 60)
    # And a gap longer than a from-zero restart costs the restart
    sparse = sim.Oracle(np.array([1] + [0] * 9 + [1]), np.zeros(11), 2)
    assert sparse.startup_bound_gpu_hours() == pytest.approx((2 + 8) / 60)


# ------------------------------------------------------------------------------- replays


def test_constant_load_needs_exactly_n_copies_and_matches_the_oracle() -> None:
    # Given 20 requests always in flight for 10 minutes (one every 0.125 s, 2.5 s each)
    requests = batch(np.arange(0.0, 600.0, 0.125))
    # When replayed under target tracking at 10 per copy
    oracle, result = run(
        requests, Scaling(min_capacity=1, max_capacity=4, target_value=10, scale_out_cooldown_s=180)
    )
    # Then the oracle holds 2 copies every minute, the policy never moves, nobody waits
    assert set(oracle.copies.tolist()) == {2}
    assert result.activities == ()
    assert result.gpu_hours == pytest.approx(oracle.gpu_hours)
    assert result.ratio == pytest.approx(1.0)
    assert result.delayed == 0 and result.p99_wait_s == 0


def test_step_up_scales_out_after_three_datapoints_and_waits_for_the_copy() -> None:
    # Given 10 requests in flight for 10 minutes, then 20 (more than one copy's 16 slots)
    arrivals = np.concatenate([np.arange(0.0, 600.0, 0.25), np.arange(600.0, 1200.0, 0.125)])
    scaling = Scaling(min_capacity=1, max_capacity=2, target_value=12, scale_out_cooldown_s=180)
    # When replayed
    oracle, result = run(batch(arrivals), scaling)
    # Then the high alarm fires after three 10 s datapoints above 12 (at 630 s) and asks for
    # a second copy, which serves 120 s later; requests queued meanwhile, none before 600 s
    assert causes(result) == [(630.0, 1, 2, "target-tracking-out")]
    ticks = result.copies_by_tick
    assert ticks[61] == 1 and ticks[62] == 2  # ticks end at 620 s and 630 s
    assert result.delayed > 0
    assert 10 < result.max_wait_s < 150
    # And GPU time is 1 copy until 630 s, then 2 (provisioning included) to the horizon
    assert oracle.end_s == 1260
    assert result.gpu_hours * 3600 == pytest.approx(630 + 2 * (1260 - 630))


@pytest.mark.parametrize(
    ("hook", "expected"),
    [(True, [(360.0, 1, 0, "idle"), (3000.0, 0, 1, "wake")]), (False, None)],
)
def test_scaled_to_zero_a_request_waits_for_the_wake(
    hook: bool, expected: list[tuple[float, int, int, str]] | None
) -> None:
    # Given a minute of traffic, then a single request 50 minutes later
    arrivals = np.concatenate([np.arange(0.0, 60.0, 1.0), [3000.0]])
    scaling = Scaling(
        min_capacity=0, max_capacity=1, scale_to_zero=True, idle_minutes=5, target_value=8
    )
    # When replayed with or without llmhost's wake-on-request hook
    _, result = run(batch(arrivals), scaling, wake_on_request=hook)
    # Then five idle minutes take the model to zero at 360 s
    assert causes(result)[0] == (360.0, 1, 0, "idle")
    if hook:
        # and the hook wakes it at once: the request waits the 480 s start from zero
        assert causes(result) == expected
        assert result.max_wait_s == pytest.approx(480)
    else:
        # or the NoCapacityInvocationFailures alarm does, at the end of its minute
        assert causes(result)[1] == (3060.0, 0, 1, "step")
        assert result.max_wait_s == pytest.approx(540)
    assert result.delayed == 1 and result.unserved == 0
    # And GPU time: 360 s warm, then from the wake until the request is answered
    wake_at = 3000 if hook else 3060
    assert result.gpu_hours * 3600 == pytest.approx(360 + (wake_at + 480 + 2.5 - wake_at))


def square_wave(phase_s: int, hours: float) -> RequestBatch:
    """30 requests in flight, then 5, alternating every ``phase_s`` seconds."""
    parts = [
        np.arange(start, start + phase_s, 1 / 12 if k % 2 == 0 else 0.5)
        for k, start in enumerate(range(0, int(hours * 3600), phase_s))
    ]
    return batch(np.concatenate(parts))


FLAPPY = Scaling(min_capacity=1, max_capacity=8, target_value=10, scale_out_cooldown_s=180)


def test_short_lulls_do_not_flap() -> None:
    # Given load that drops for 5 minutes at a time, for 2 hours
    # When replayed
    _, result = run(square_wave(300, 2), FLAPPY)
    # Then one scale-out and no scale-in: a lull shorter than the 15-minute scale-in
    # window never removes the copies the next burst needs
    assert causes(result) == [(30.0, 2, 3, "target-tracking-out")]
    assert result.delayed == 0


def test_scale_ins_are_spaced_by_the_cooldown() -> None:
    # Given 20-minute lulls
    _, result = run(square_wave(1200, 2), FLAPPY)
    scale_ins = [a.at_s for a in result.activities if a.cause == "scale-in"]
    # Then the first scale-in (llmhost's hook on the underload alarm) comes 15 minutes into
    # the first lull, and consecutive ones are at least the scale-in cooldown apart
    assert result.activities and not [
        a for a in result.activities if a.cause == "target-tracking-in"
    ]
    assert scale_ins[0] == 1200 + 900
    gaps = np.diff(scale_ins)
    assert len(gaps) and all(g >= FLAPPY.scale_in_cooldown_s for g in gaps)


def test_static_peak_never_delays() -> None:
    # Given any trace and its oracle's peak copies all the time
    requests = square_wave(300, 1)
    oracle = sim.compute_oracle([requests], sim.CapacityModel())
    peak = oracle.peak_copies
    static = policy_from_spec(Scaling(min_capacity=peak, max_capacity=peak))
    # Then nobody waits and it costs peak x horizon
    result = sim.replay([requests], static, oracle)
    assert result.delayed == 0 and result.activities == ()
    assert result.gpu_hours == pytest.approx(peak * oracle.end_s / 3600)


def test_wait_percentile_matches_numpy_without_the_zeros() -> None:
    rng = np.random.default_rng(3)
    positive = rng.exponential(5.0, 37)
    for requests in (37, 38, 100, 5000):
        full = np.concatenate([np.zeros(requests - 37), positive])
        for q in (50, 99, 99.9):
            assert sim.wait_percentile(positive, requests, q) == pytest.approx(
                np.percentile(full, q)
            )


# --------------------------------------------------------------------------- trace readers

AZURE_SAMPLE = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
    "2023-11-16 18:17:03.9799600,4808,10\r\n"
    "2023-11-16 18:17:04.0319600,3180,8\r\n"
    "2023-11-16 18:18:00.0000001,110,27"
)


def test_azure_csv_with_crlf_seven_digit_fractions_and_no_final_newline() -> None:
    # When the real format is parsed
    parsed = traces.parse_azure_csv(AZURE_SAMPLE)
    # Then times are seconds from the first request's minute, tokens as given
    assert parsed.arrivals == pytest.approx([3.97996, 4.03196, 60.0000001])
    assert parsed.context_tokens.tolist() == [4808, 3180, 110]
    assert parsed.generated_tokens.tolist() == [10, 8, 27]


def test_azure_csv_errors_name_the_line() -> None:
    with pytest.raises(TraceUnreadable, match=":3: expected"):
        traces.parse_azure_csv(AZURE_SAMPLE.replace("3180,8", "3180"))
    with pytest.raises(TraceUnreadable, match="first line"):
        traces.parse_azure_csv("time,in,out\n1,2,3")


def test_json_lines_in_milliseconds_are_sorted() -> None:
    text = (
        '{"timestamp": 1700000021500, "input_length": 20, "output_length": 3}\n'
        '{"timestamp": 1700000000000, "input_length": 10, "output_length": 5}\n'
    )
    parsed = traces.parse_jsonl(text)
    # 1700000000 s is 20 s past a minute
    assert parsed.arrivals.tolist() == [20.0, 41.5]
    assert parsed.context_tokens.tolist() == [10, 20]
    with pytest.raises(TraceUnreadable, match=":1: each line"):
        traces.parse_jsonl('{"ts": 1}')


SERVEGEN_SAMPLE = (
    "client_id,window_start_s,rate,cv,arrival_dist,dist_param1,dist_param2\n"
    "0,0,0.5,0.7,Gamma,2.0,1.0\n"
    "0,600,0,0,,0,0\n"
    "1,0,0.1,1.2,Weibull,1.5,10.0\n"
    "1,600,0.2,1.1,Weibull,0.8,4.0\n"
)


def write_gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    return path


def test_servegen_windows_become_requests_like_servegens_generator(tmp_path: Path) -> None:
    # Given two clients' windows and a token sample
    windows = traces.read_servegen(write_gz(tmp_path / "w.csv.gz", SERVEGEN_SAMPLE))
    pairs = np.array([[100, 1], [200, 2], [300, 3]])
    # When requests are drawn for 20 minutes at the files' own rates
    drawn = list(
        traces.servegen_batches(windows, pairs, start_s=0, duration_s=1200, rate_scale=1.0)
    )
    # Then each window yields ceil(rate x 600) - 1 requests (ServeGen stretches the gaps to
    # the window and drops the one landing on its end), inside the window, sorted
    assert [len(b) for b in drawn] == [(300 - 1) + (60 - 1), 120 - 1]
    first, second = drawn
    assert np.all(np.diff(first.arrivals) >= 0) and np.all(np.diff(second.arrivals) >= 0)
    assert first.arrivals.min() > 0 and first.arrivals.max() < 600
    assert second.arrivals.min() > 600 and second.arrivals.max() < 1200
    # And token counts come from the sample's pairs
    assert set(zip(first.context_tokens, first.generated_tokens, strict=True)) <= {
        (100, 1),
        (200, 2),
        (300, 3),
    }
    # And the same seed gives the same requests, whichever span contains the window
    again = list(
        traces.servegen_batches(windows, pairs, start_s=600, duration_s=600, rate_scale=1.0)
    )
    assert np.array_equal(again[0].arrivals + 600, second.arrivals)
    other = next(
        traces.servegen_batches(windows, pairs, start_s=0, duration_s=600, rate_scale=1.0, seed=7)
    )
    assert not np.array_equal(other.arrivals, first.arrivals)


def test_servegen_rate_scale_and_representative_day(tmp_path: Path) -> None:
    # Given three days of one client: day means 10, 30 and 20 req/s
    lines = ["client_id,window_start_s,rate,cv,arrival_dist,dist_param1,dist_param2"]
    for day, rate in enumerate([10, 30, 20]):
        for w in range(144):
            lines.append(f"0,{day * 86400 + w * 600},{rate},1,Gamma,1,{1 / rate}")
    windows = traces.read_servegen(write_gz(tmp_path / "d.csv.gz", "\n".join(lines) + "\n"))
    # Then the default day is the median one, and auto scaling hits the asked mean
    assert traces.representative_day(windows) == 2 * 86400
    assert traces.auto_rate_scale(windows, 86400, 86400, mean_rps=3) == pytest.approx(0.1)
    with pytest.raises(TraceUnreadable, match="no traffic"):
        traces.auto_rate_scale(windows, 5 * 86400, 3600, mean_rps=3)


def test_open_trace_detects_formats(tmp_path: Path) -> None:
    azure = tmp_path / "a.csv"
    azure.write_bytes(AZURE_SAMPLE.encode())
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"timestamp": 0, "input_length": 1, "output_length": 1}\n')
    servegen = write_gz(tmp_path / "c.csv.gz", SERVEGEN_SAMPLE)
    assert traces.detect_kind(azure) == "azure-csv"
    assert traces.detect_kind(jsonl) == "jsonl"
    assert traces.detect_kind(servegen) == "servegen"
    trace = traces.open_trace(
        servegen, token_pairs=lambda: traces.read_token_pairs(azure), hours=0.5, rate_scale=1.0
    )
    assert sum(len(b) for b in trace.batches()) > 0
    assert len(next(traces.open_trace(azure).batches())) == 3
    with pytest.raises(TraceUnreadable, match="token counts"):
        traces.open_trace(servegen)
    with pytest.raises(TraceUnreadable, match="no such file"):
        traces.detect_kind(tmp_path / "missing.csv")


# -------------------------------------------------------------------- the engine's limits


def test_a_full_engine_queue_refuses_at_once_and_refusals_count_as_delayed() -> None:
    # Given one copy that runs 16 and holds 32, and 48 requests arriving at once
    requests = batch(np.zeros(48))
    oracle = sim.compute_oracle([requests], sim.CapacityModel())
    capacity = sim.CapacityModel(queue_limit=32)
    policy = policy_from_spec(Scaling(min_capacity=1, max_capacity=1))
    # When replayed
    result = sim.replay([requests], policy, oracle, capacity=capacity, initial_copies=1)
    # Then 16 run, 16 wait one service time (2.5 s), and the last 16 are refused (429)
    assert result.refused == 16
    assert result.delayed == 16 + 16
    assert result.max_wait_s == pytest.approx(2.5)


def test_a_token_budget_admits_requests_by_their_tokens() -> None:
    # Given a copy whose batch holds 25,000 tokens, and three 10,000-token requests at once
    capacity = sim.CapacityModel.from_engine(max_batch_total_tokens=25_000)
    requests = batch([0.0, 0.0, 0.0])
    oracle = sim.compute_oracle([requests], capacity)
    policy = policy_from_spec(Scaling(min_capacity=1, max_capacity=1))
    result = sim.replay([requests], policy, oracle, capacity=capacity, initial_copies=1)
    # Then two run at once and the third waits for one of them (2.5 s)
    assert result.delayed == 1 and result.max_wait_s == pytest.approx(2.5)
    # And the oracle counts tokens: 30,000 at once needs two copies of 25,000
    assert oracle.copies.tolist() == [2]


def test_a_step_far_past_capacity_converges_without_running_away() -> None:
    # Given one copy (runs 16, holds 24) and a step to 200 requests in flight for 20 minutes,
    # the shape that once took target tracking from 1 to 43 copies: its queue grew while
    # copies started and read as demand
    arrivals = np.arange(0.0, 1200.0, 2.5 / 200)
    capacity = sim.CapacityModel(queue_limit=24)
    oracle = sim.compute_oracle([batch(arrivals)], sim.CapacityModel())
    policy = policy_from_spec(Scaling(min_capacity=1, max_capacity=64))
    # When replayed (the default target is 12 of a copy's 16)
    result = sim.replay([batch(arrivals)], policy, oracle, capacity=capacity, initial_copies=1)
    # Then each step of capacity grows at most 24 / 12 times (the queue is bounded) and it
    # settles at what 200 in flight needs at the target, ceil(200 / 12) = 17, never more
    steps = [(a.before, a.after) for a in result.activities if a.after > a.before]
    assert all(after <= math.ceil(before * 24 / 12) for before, after in steps), steps
    assert result.max_copies == 17
    # And unbounded (TGI's default 128) it overshoots: the queue it reads is not demand
    unbounded = sim.replay([batch(arrivals)], policy, oracle, initial_copies=1)
    assert unbounded.max_copies > result.max_copies


def test_refusals_the_average_misses_wake_the_overload_hook() -> None:
    # Given one copy (runs 16, holds 24) whose load averages 8 in flight but comes in
    # 2-second bursts of 40 every 10 s: the 10 s average stays under the target, the engine
    # refuses a third of each burst
    arrivals = np.concatenate([t + np.linspace(0.0, 0.05, 40) for t in np.arange(0.0, 900.0, 10.0)])
    capacity = sim.CapacityModel(queue_limit=24)
    oracle = sim.compute_oracle([batch(arrivals)], sim.CapacityModel())
    policy = policy_from_spec(Scaling(min_capacity=1, max_capacity=8))
    result = sim.replay([batch(arrivals)], policy, oracle, capacity=capacity, initial_copies=1)
    # Then the hook asks for copies from the demand ratio (requests over those accepted)
    # although target tracking never fires, and the refusals stop once they serve
    causes_seen = {a.cause for a in result.activities}
    assert "overload" in causes_seen and "target-tracking-out" not in causes_seen
    late = next(a for a in result.activities if a.cause == "overload").at_s + 300
    assert result.refused > 0
    assert (
        sim.replay(
            [batch(arrivals[arrivals > late])],
            policy,
            oracle,
            capacity=capacity,
            initial_copies=result.max_copies,
        ).refused
        == 0
    )


def test_a_scheduled_floor_starts_copies_before_a_predictable_step() -> None:
    # Given 10 requests in flight, then 40 from 600 s (two copies' worth more than one holds)
    arrivals = np.concatenate([np.arange(0.0, 600.0, 0.25), np.arange(600.0, 1200.0, 2.5 / 40)])
    scaling = Scaling(min_capacity=1, max_capacity=8)
    _, reactive = run(batch(arrivals), scaling, initial_copies=1)
    # When a scheduled action raises the minimum to 4 copies 3 minutes before the step
    _, scheduled = run(batch(arrivals), scaling, initial_copies=1, floors=[(420.0, 4)])
    # Then the copies are in service when the step comes, and nobody waits
    assert ("scheduled" in [a.cause for a in scheduled.activities]) and scheduled.delayed == 0
    assert reactive.delayed > 0
    assert next(a for a in scheduled.activities if a.cause == "scheduled").after == 4
