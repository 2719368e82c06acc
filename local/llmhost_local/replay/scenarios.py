"""Synthetic request traces for the scaling replay: shapes of load no real trace has to hold.

Each scenario is a ``traces.Trace`` like the real ones (``RequestBatch`` chunks in time order,
streamed afresh on every ``batches()`` call), generated from a seed with no data file:

- ``step``: a trickle (0.05 req/s) for 10 minutes, then 30 minutes at the arrival rate that
  keeps 50 requests in flight on average, then the trickle again, 1 hour in all. A policy that
  reads the queue building while its copies start as demand runs away here.
- ``bursts``: 1 hour of Poisson arrivals at the rate that keeps 5 requests in flight, with a
  30-second burst at 10 times that rate every 5 minutes (the first at 2.5 minutes).
- ``diurnal``: a day compressed into 6 hours: one sinusoidal cycle of the rate, from 2
  requests in flight at the start and end (night) to 50 at the third hour (midday).

Arrivals are a Poisson process whose rate is constant within each second (a second a step
only partly covers gets the covered share of the step). Token counts come from one fixed
distribution, close to the Azure code trace's medians: ContextTokens lognormal with median
1,500 and sigma 0.6, clipped to [16, 8,192]; GeneratedTokens lognormal with median 30 and
sigma 0.8, clipped to [1, 1,024]; both rounded to whole tokens. Rates given as "requests in
flight" are turned into requests per second with Little's law, using the mean service time
of that distribution under ``simulator.CapacityModel()`` (the benchmark's fixed world).
Everything is pure: the same name and seed give the same requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from llmhost_local.replay.simulator import CapacityModel
from llmhost_local.replay.traces import DEFAULT_SEED, RequestBatch, Trace, TraceUnreadable

# Requests are generated and streamed in chunks of this many seconds.
CHUNK_S = 600

CONTEXT_MEDIAN = 1_500
CONTEXT_SIGMA = 0.6
CONTEXT_CLIP = (16, 8_192)
GENERATED_MEDIAN = 30
GENERATED_SIGMA = 0.8
GENERATED_CLIP = (1, 1_024)

TRICKLE_RPS = 0.05
STEP_CONCURRENCY = 50.0
BURST_BASE_CONCURRENCY = 5.0
BURST_FACTOR = 10.0
BURST_EVERY_S = 300
BURST_S = 30
DIURNAL_LOW_CONCURRENCY = 2.0
DIURNAL_PEAK_CONCURRENCY = 50.0
DIURNAL_S = 6 * 3600
HOUR_S = 3600


def _clipped_lognormal_mean(median: float, sigma: float, low: float, high: float) -> float:
    """E[min(max(X, low), high)] for X lognormal with this median and sigma (closed form)."""
    mu = math.log(median)

    def phi(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    a, b = (math.log(low) - mu) / sigma, (math.log(high) - mu) / sigma
    inside = math.exp(mu + sigma**2 / 2) * (phi(b - sigma) - phi(a - sigma))
    return low * phi(a) + inside + high * (1.0 - phi(b))


def mean_service_s(capacity: CapacityModel | None = None) -> float:
    """Mean seconds a synthetic request occupies a slot of ``capacity`` (default: the
    benchmark's world)."""
    capacity = capacity or CapacityModel()
    context = _clipped_lognormal_mean(CONTEXT_MEDIAN, CONTEXT_SIGMA, *CONTEXT_CLIP)
    generated = _clipped_lognormal_mean(GENERATED_MEDIAN, GENERATED_SIGMA, *GENERATED_CLIP)
    return context / capacity.prefill_tokens_per_s + generated / capacity.decode_tokens_per_s


def rate_for_concurrency(concurrency: float, capacity: CapacityModel | None = None) -> float:
    """Requests per second that keep ``concurrency`` requests in flight (Little's law)."""
    return concurrency / mean_service_s(capacity)


def draw_tokens(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ContextTokens, GeneratedTokens) of ``n`` requests from the module's distribution."""
    context = rng.lognormal(math.log(CONTEXT_MEDIAN), CONTEXT_SIGMA, n)
    generated = rng.lognormal(math.log(GENERATED_MEDIAN), GENERATED_SIGMA, n)
    return (
        np.clip(np.rint(context), *CONTEXT_CLIP).astype(np.int64),
        np.clip(np.rint(generated), *GENERATED_CLIP).astype(np.int64),
    )


def poisson_trace(name: str, rates: np.ndarray, seed: int, note: str) -> Trace:
    """A trace with Poisson arrivals at ``rates[s]`` requests per second during second s.

    Each chunk of ``CHUNK_S`` seconds draws from its own generator (seeded with the seed and
    the chunk's index), so the trace is the same however often it is streamed.
    """
    rates = np.asarray(rates, dtype=float)
    if rates.ndim != 1 or np.any(rates < 0) or not np.all(np.isfinite(rates)):
        raise ValueError("rates must be a 1-D array of finite rates >= 0, one per second")

    def batches() -> Iterator[RequestBatch]:
        for first in range(0, len(rates), CHUNK_S):
            rng = np.random.default_rng([seed, first // CHUNK_S])
            chunk = rates[first : first + CHUNK_S]
            counts = rng.poisson(chunk)
            seconds = np.repeat(np.arange(first, first + len(chunk), dtype=float), counts)
            arrivals = np.sort(seconds + rng.random(len(seconds)))
            context, generated = draw_tokens(rng, len(arrivals))
            yield RequestBatch(arrivals, context, generated)

    return Trace(name, "synthetic", batches, f"{note}; seed={seed}")


def _window(total_s: int, start_s: float, length_s: float) -> np.ndarray:
    """Per second of ``total_s``, the share of it inside [start_s, start_s + length_s)."""
    seconds = np.arange(total_s, dtype=float)
    return np.clip(np.minimum(seconds + 1, start_s + length_s) - np.maximum(seconds, start_s), 0, 1)


def _step_rates(
    base_rps: float, peak_rps: float, start_s: float, length_s: float, total_s: int
) -> np.ndarray:
    return base_rps + (peak_rps - base_rps) * _window(total_s, start_s, length_s)


def step_load(
    base_rps: float,
    peak_rps: float,
    start_s: float,
    length_s: float,
    total_s: int,
    seed: int = DEFAULT_SEED,
) -> Trace:
    """``base_rps`` for ``total_s`` seconds, except ``peak_rps`` during
    [start_s, start_s + length_s)."""
    return poisson_trace(
        "step_load",
        _step_rates(base_rps, peak_rps, start_s, length_s, total_s),
        seed,
        f"synthetic: {base_rps:g} req/s, {peak_rps:g} req/s from {start_s:g}s for "
        f"{length_s:g}s, of {total_s}s",
    )


def step(seed: int = DEFAULT_SEED) -> Trace:
    """Idle for 10 minutes, 50 requests in flight for 30 minutes, idle to the hour."""
    peak = rate_for_concurrency(STEP_CONCURRENCY)
    return poisson_trace(
        "step",
        _step_rates(TRICKLE_RPS, peak, 600, 1800, HOUR_S),
        seed,
        f"synthetic: {TRICKLE_RPS:g} req/s, {peak:.1f} req/s ({STEP_CONCURRENCY:g} in flight) "
        "from 10 to 40 min, of 60 min",
    )


def bursts(seed: int = DEFAULT_SEED) -> Trace:
    """Poisson load with a 30 s burst at 10x its rate every 5 minutes, for an hour."""
    base = rate_for_concurrency(BURST_BASE_CONCURRENCY)
    rates = np.full(HOUR_S, base)
    for start in range(BURST_EVERY_S // 2, HOUR_S, BURST_EVERY_S):
        rates += base * (BURST_FACTOR - 1) * _window(HOUR_S, start, BURST_S)
    return poisson_trace(
        "bursts",
        rates,
        seed,
        f"synthetic: {base:.1f} req/s ({BURST_BASE_CONCURRENCY:g} in flight), {BURST_S}s at "
        f"{BURST_FACTOR:g}x every {BURST_EVERY_S}s from {BURST_EVERY_S // 2}s, of 60 min",
    )


def diurnal(seed: int = DEFAULT_SEED) -> Trace:
    """A day compressed into 6 hours: a sinusoidal rate from night to midday and back."""
    low = rate_for_concurrency(DIURNAL_LOW_CONCURRENCY)
    high = rate_for_concurrency(DIURNAL_PEAK_CONCURRENCY)
    middle = np.arange(DIURNAL_S) + 0.5
    rates = low + (high - low) * (1 - np.cos(2 * np.pi * middle / DIURNAL_S)) / 2
    return poisson_trace(
        "diurnal",
        rates,
        seed,
        f"synthetic: {low:.1f} -> {high:.1f} -> {low:.1f} req/s ({DIURNAL_LOW_CONCURRENCY:g} "
        f"to {DIURNAL_PEAK_CONCURRENCY:g} in flight), one sinusoidal cycle of 6 h",
    )


SCENARIOS: dict[str, Callable[[int], Trace]] = {
    "step": step,
    "bursts": bursts,
    "diurnal": diurnal,
}


def scenario(name: str, seed: int = DEFAULT_SEED) -> Trace:
    """The named scenario. Raises TraceUnreadable naming the scenarios for an unknown name."""
    if name not in SCENARIOS:
        raise TraceUnreadable(f"no scenario {name!r}; scenarios: {', '.join(SCENARIOS)}")
    return SCENARIOS[name](seed)
