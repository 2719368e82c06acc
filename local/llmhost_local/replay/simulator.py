"""Replay a request trace against one deployment's ScalingPolicy with AWS's mechanics.

A discrete-event simulation, pure (no clocks, no I/O). The world is fixed so results stay
comparable (``CapacityModel``; ``CapacityModel.from_engine`` derives one from an engine's
options instead); the policy is what varies:

- a copy serves at most ``slots_per_copy`` (16) requests at once, or with a ``token_budget``
  as many as fit in it by their tokens (TGI's ``max_batch_total_tokens``); a request takes
  ContextTokens/4000 s of prefill plus GeneratedTokens/40 s of decode;
- requests that find no room wait in one first-come-first-served queue, but a copy holds at
  most ``queue_limit`` requests, running and waiting (TGI's ``max_concurrent_requests``): past
  it the engine refuses at once (429) and the request counts as *refused*. A request is
  *delayed* when it waits more than ``delayed_after_s`` (1 s) or is refused;
- a copy added while another copy is in service starts in ``add_copy_s`` (120 s), from zero in
  ``from_zero_s`` (480 s); GPU time counts from when a copy starts provisioning until it is
  removed (a copy removed while starting stops counting then);
- metrics are measured per ``tick_s`` (10 s) and rolled up into each alarm's period (10 s for
  the high-resolution metrics, 60 s otherwise); every alarm is evaluated at the end of each of
  its periods and, while in ALARM, invokes its policy again each period, as CloudWatch does for
  Application Auto Scaling actions. llmhost's overload and underload alarms are acted on by
  its scaling hook, which sets the alarm back to OK after each decision, so a lasting state is
  acted on each period too; the hook ignores a datapoint measured while the copies in service
  changed. The decisions themselves are ``llmhost.scaling.policy``'s.

Metrics as SageMaker defines them: concurrent requests per copy counts in-flight and queued
requests over the copies in service (no datapoint without one); invocations per copy adds
1/copies for each request; NoCapacityInvocationFailures counts requests that arrive while no
copy is in service; Invocation4XXErrors counts the refused ones (the overload alarm's demand
ratio is requests over requests accepted).

The oracle is the lower bound: per minute, the fewest copies that hold that minute's peak
concurrency if every request started on arrival, with no startup time. The replay starts warm
with the oracle's first-minute copies (within the policy's bounds), or at ``initial_copies``.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from llmhost.scaling import policy as aas
from llmhost.scaling.policy import AlarmSpec, ScalingPolicy, ScalingState
from llmhost_local.replay import autoscaling
from llmhost_local.replay.traces import RequestBatch

# A replay whose queue can never drain (no copy, nothing to wake one) stops this long after
# the trace; its waiting requests count as waiting until then.
DRAIN_LIMIT_S = 86_400.0
# The scaling hook's budget tick runs every 5 minutes (30 ticks of 10 s).
HOLD_RELEASE_TICKS = 30


@dataclass(frozen=True)
class CapacityModel:
    """What one copy can do (the benchmark's world is the default; change it only to explore,
    or derive it from a deployment's engine options with ``from_engine``).

    A copy runs requests concurrently up to ``slots_per_copy`` or, when ``token_budget`` is
    set, while the tokens of the requests it runs (context + generated each) fit in it, as
    TGI admits requests into its continuous batch by ``max_batch_total_tokens``. It holds at
    most ``queue_limit`` requests, running and queued (TGI's ``max_concurrent_requests``,
    128 by default): past it the engine refuses a request at once (429), and the replay
    counts it as refused.
    """

    slots_per_copy: int = 16
    prefill_tokens_per_s: float = 4000.0
    decode_tokens_per_s: float = 40.0
    queue_limit: int = 128
    token_budget: int | None = None

    @classmethod
    def from_engine(
        cls,
        max_batch_total_tokens: int,
        max_concurrent_requests: int = 128,
        *,
        prefill_tokens_per_s: float = 4000.0,
        decode_tokens_per_s: float = 40.0,
    ) -> CapacityModel:
        """A copy of an engine configured with these options (TGI's names)."""
        return cls(
            slots_per_copy=max_concurrent_requests,
            prefill_tokens_per_s=prefill_tokens_per_s,
            decode_tokens_per_s=decode_tokens_per_s,
            queue_limit=max_concurrent_requests,
            token_budget=max_batch_total_tokens,
        )

    def service_s(self, batch: RequestBatch) -> np.ndarray:
        """Seconds each request occupies a slot."""
        return (
            batch.context_tokens / self.prefill_tokens_per_s
            + batch.generated_tokens / self.decode_tokens_per_s
        )

    def weights(self, batch: RequestBatch) -> np.ndarray:
        """How much of a copy each request holds while it runs: one slot, or its tokens
        (capped at the budget: a request as long as the budget runs alone)."""
        if self.token_budget is None:
            return np.ones(len(batch), dtype=np.int64)
        tokens = batch.context_tokens + batch.generated_tokens
        return np.minimum(tokens, self.token_budget).astype(np.int64)

    @property
    def per_copy(self) -> int:
        """A copy's room in the unit of ``weights``."""
        return self.slots_per_copy if self.token_budget is None else self.token_budget


@dataclass(frozen=True)
class Mechanics:
    """AWS timings (seconds). Defaults follow the benchmark's fixed model."""

    add_copy_s: float = 120.0
    from_zero_s: float = 480.0
    delayed_after_s: float = 1.0
    tick_s: int = 10
    # What target tracking multiplies the metric by: the capacity asked for (copies starting
    # included) or the copies in service the metric was measured on. AWS does not say.
    tracking_capacity: Literal["desired", "in_service"] = "desired"


@dataclass(frozen=True)
class Oracle:
    """Per-minute lower bound: ``copies[m]`` copies hold minute m's peak concurrency."""

    copies: np.ndarray
    # Per minute, the peak of what ran at once: requests, or tokens with a token budget.
    peak_concurrency: np.ndarray
    requests: int

    @property
    def gpu_hours(self) -> float:
        return float(self.copies.sum()) / 60.0

    @property
    def end_s(self) -> float:
        return 60.0 * len(self.copies)

    @property
    def peak_copies(self) -> int:
        return int(self.copies.max()) if len(self.copies) else 0

    def startup_bound_gpu_hours(
        self, mechanics: Mechanics | None = None, initial_copies: int | None = None
    ) -> float:
        """A tighter bound for any policy, even one that knows the future: the oracle's
        copies, except that a copy released and needed again costs its startup time (rounded
        up to whole minutes; from zero for the first copy), so short gaps are cheaper kept.

        Copies are interchangeable, so each level k (the k-th copy) is priced on its own:
        its needed minutes plus, per gap, the smaller of the gap and a restart. The replay
        starts with ``initial_copies`` in service (default: minute 0's, the warm start): a
        copy present then and first needed later costs the smaller of the wait and a restart;
        a copy missing then pays its whole startup, so a cold start is charged for being cold.
        """
        mechanics = mechanics or Mechanics()
        start = int(self.copies[0]) if initial_copies is None else initial_copies
        add = math.ceil(mechanics.add_copy_s / 60)
        from_zero = math.ceil(mechanics.from_zero_s / 60)
        total = 0
        for level in range(1, self.peak_copies + 1):
            needed = np.flatnonzero(self.copies >= level)
            restart = from_zero if level == 1 else add
            gaps = np.diff(needed) - 1
            total += len(needed) + int(np.minimum(gaps[gaps > 0], restart).sum())
            total += min(int(needed[0]), restart) if level <= start else restart
        return total / 60.0


@dataclass(frozen=True)
class ReplayResult:
    """What a policy cost and how long requests waited for it."""

    requests: int
    gpu_hours: float
    oracle_gpu_hours: float
    delayed: int
    p99_wait_s: float
    max_wait_s: float
    max_copies: int
    unserved: int  # still waiting when the replay gave up (never woken)
    # Refused by an engine whose queue was full (TGI answers 429); also counted in ``delayed``.
    refused: int
    activities: tuple[aas.Activity, ...]
    # Copies (in service + starting) after each tick's decisions; for plots and diagnostics.
    copies_by_tick: np.ndarray
    # The waits that were not zero (seconds), to pool percentiles across replays.
    positive_waits: np.ndarray

    @property
    def ratio(self) -> float:
        return self.gpu_hours / self.oracle_gpu_hours if self.oracle_gpu_hours else math.inf

    @property
    def delayed_pct(self) -> float:
        return 100.0 * self.delayed / self.requests if self.requests else 0.0


def wait_percentile(positive: np.ndarray, requests: int, q: float) -> float:
    """``np.percentile`` (linear) of ``requests`` waits of which all but ``positive`` are 0,
    without building an array as long as the trace."""
    if requests == 0:
        return 0.0
    values = np.sort(positive)
    zeros = requests - len(values)
    rank = q / 100.0 * (requests - 1)
    low, high = math.floor(rank), math.ceil(rank)

    def at(i: int) -> float:
        return 0.0 if i < zeros else float(values[i - zeros])

    return at(low) + (at(high) - at(low)) * (rank - low)


def compute_oracle(batches: Iterable[RequestBatch], capacity: CapacityModel) -> Oracle:
    """The oracle over a streamed trace (batches in time order)."""
    peaks = np.zeros(0, dtype=np.int64)
    pending = np.empty(0)  # ends not yet swept
    pending_weights = np.empty(0, dtype=np.int64)
    level = 0  # concurrency after the last swept event
    last_t = -math.inf
    requests = 0

    def grow(minutes: int) -> None:
        nonlocal peaks
        if minutes > len(peaks):
            peaks = np.concatenate([peaks, np.zeros(minutes - len(peaks), dtype=np.int64)])

    def sweep(starts: tuple[np.ndarray, np.ndarray], ends: tuple[np.ndarray, np.ndarray]) -> None:
        """``starts``/``ends``: (times, weights)."""
        nonlocal level, last_t
        if len(starts[0]) == 0 and len(ends[0]) == 0:
            return
        times = np.concatenate([ends[0], starts[0]])
        deltas = np.concatenate([-ends[1], starts[1]])
        order = np.lexsort((deltas, times))  # by time; at a tie, ends first
        times, deltas = times[order], deltas[order]
        levels = level + np.cumsum(deltas)
        minutes = (times // 60).astype(np.int64)
        grow(int(minutes[-1]) + 1)
        np.maximum.at(peaks, minutes, levels)
        # A minute with no event still holds what was running at its start.
        first = math.floor(last_t / 60) + 1 if last_t > -math.inf else 0
        bounds = np.arange(first, int(minutes[-1]) + 1) * 60.0
        if len(bounds):
            before = np.searchsorted(times, bounds, side="left")
            carried = np.where(before > 0, levels[np.maximum(before - 1, 0)], level)
            np.maximum.at(peaks, (bounds // 60).astype(np.int64), carried)
        level = int(levels[-1])
        last_t = float(times[-1])

    for batch in batches:
        if len(batch) == 0:
            continue
        requests += len(batch)
        starts = batch.arrivals
        weights = capacity.weights(batch)
        ends = np.concatenate([pending, starts + capacity.service_s(batch)])
        end_weights = np.concatenate([pending_weights, weights])
        order = np.argsort(ends, kind="stable")
        ends, end_weights = ends[order], end_weights[order]
        cut = np.searchsorted(ends, starts[-1], side="right")
        sweep((starts, weights), (ends[:cut], end_weights[:cut]))
        pending, pending_weights = ends[cut:], end_weights[cut:]
    sweep((np.empty(0), np.empty(0, dtype=np.int64)), (pending, pending_weights))
    copies = -(-peaks // capacity.per_copy)
    return Oracle(copies, peaks, requests)


# One tick's measurements: (concurrency area, seconds with a copy in service, invocations per
# copy, had copies, no-capacity failures, invocations, invocations reaching a copy, refused).
Tick = tuple[float, float, float, bool, int, int, int, int]


class _Alarm:
    """One alarm's datapoints as the replay produces them."""

    def __init__(self, spec: AlarmSpec, tick_s: int) -> None:
        if spec.period_s % tick_s:
            raise ValueError(f"alarm period {spec.period_s}s is not a multiple of {tick_s}s")
        self.spec = spec
        self.ticks = spec.period_s // tick_s
        self.datapoints: deque[float | None] = deque(maxlen=spec.evaluation_periods)

    def close_period(self, ticks: list[Tick]) -> None:
        """Append the datapoint of the period that just ended (``ticks`` newest last)."""
        window = ticks[-self.ticks :]
        kind = self.spec.kind
        value: float | None
        if kind == "concurrency":
            served = sum(t[1] for t in window)
            value = sum(t[0] for t in window) / served if served > 0 else None
        elif kind == "concurrency_peak":
            # Maximum over the period of the 10 s averages (CloudWatch's Maximum of the
            # high-resolution samples is at least this: the replay scales in no later).
            peaks = [t[0] / t[1] for t in window if t[1] > 0]
            value = max(peaks) if peaks else None
        elif kind == "invocations":
            value = sum(t[2] for t in window) if any(t[3] for t in window) else None
        elif kind == "no_capacity_failures":
            failures = sum(t[4] for t in window)
            if failures == 0:
                value = None
            else:
                value = 1.0 if self.spec.statistic == "Maximum" else float(failures)
        elif kind == "demand_ratio":
            # IF(refused >= requests, requests, requests / (requests - refused)) over the
            # requests that reached a copy in service (the others count as no capacity).
            arrived = sum(t[6] for t in window)
            refused = sum(t[7] for t in window)
            if arrived == 0:
                value = None
            elif refused >= arrived:
                value = float(arrived)
            else:
                value = arrived / (arrived - refused)
        else:  # invocation_count
            count = sum(t[5] for t in window)
            value = float(count) if count else None
        self.datapoints.append(value)

    def in_alarm(self) -> bool:
        return self.spec.in_alarm(list(self.datapoints))

    def value(self, how: Literal["Average", "Minimum", "Maximum"]) -> float:
        return self.spec.aggregate(list(self.datapoints), how)


def replay(
    batches: Iterable[RequestBatch],
    policy: ScalingPolicy,
    oracle: Oracle,
    *,
    capacity: CapacityModel | None = None,
    mechanics: Mechanics | None = None,
    wake_on_request: bool = False,
    initial_copies: int | None = None,
    floors: Sequence[tuple[float, int]] = (),
) -> ReplayResult:
    """Replay ``batches`` (the same trace the oracle was computed from) under ``policy``.

    ``wake_on_request`` models llmhost's scaling hook, which asks for a copy as soon as a
    request finds none instead of waiting for the NoCapacityInvocationFailures alarm.
    ``floors`` are scheduled actions, (seconds, MinCapacity) in time order: from that time
    the minimum is that many copies (within MaxCapacity), and Application Auto Scaling
    raises desired capacity to a new minimum at once.
    """
    capacity = capacity or CapacityModel()
    mechanics = mechanics or Mechanics()
    tick_s = mechanics.tick_s
    slots = capacity.slots_per_copy
    room = capacity.per_copy
    queue_limit = capacity.queue_limit
    start = oracle.copies[0] if initial_copies is None and len(oracle.copies) else 0
    initial = policy.clamp(int(start if initial_copies is None else initial_copies))
    pending_floors = sorted(floors)
    held_max = 0  # MaxCapacity the overload hook holds back while its copies start (0: none)

    tracking = policy.target_tracking
    tracking_aggregation = aas.TARGET_TRACKING_AGGREGATION
    high = _Alarm(tracking.high_alarm, tick_s)
    low = _Alarm(tracking.low_alarm, tick_s)
    wake_alarm = _Alarm(policy.scale_from_zero.alarm, tick_s) if policy.scale_from_zero else None
    idle_alarm = _Alarm(policy.idle_alarm, tick_s) if policy.idle_alarm else None
    overload_alarm = _Alarm(policy.overload.alarm, tick_s) if policy.overload else None
    underload_alarm = _Alarm(policy.underload.alarm, tick_s) if policy.underload else None
    alarms = [
        a
        for a in (high, low, wake_alarm, idle_alarm, overload_alarm, underload_alarm)
        if a is not None
    ]
    history_len = max(a.ticks for a in alarms)

    state = ScalingState(desired=initial)
    in_service = initial
    starting: list[float] = []  # ready times, ascending
    ends: list[tuple[float, int]] = []  # (completion time, weight) of running requests (heap)
    used = 0  # the running requests' weight
    waiting: deque[tuple[float, float, int]] = deque()  # (arrival, service, weight)
    waits: list[float] = []  # positive waits only
    max_copies = initial

    t = 0.0
    capacity_changed_at = -math.inf  # when copies in service last changed
    copy_seconds = 0.0
    # Accumulators for the current tick.
    area = 0.0  # integral of (running + waiting) / copies in service
    served = 0.0  # time with at least one copy in service
    inv_per_copy = 0.0
    had_copies = in_service > 0
    failures = 0
    invocations = 0
    reached = 0  # invocations that found a copy in service
    refused_in_tick = 0
    ticks: deque[Tick] = deque(maxlen=history_len)
    tick_index = 0
    next_tick = float(tick_s)
    timeline: list[int] = []

    def advance(to: float) -> None:
        nonlocal t, copy_seconds, area, served
        dt = to - t
        if dt > 0:
            copy_seconds += (in_service + len(starting)) * dt
            if in_service:
                area += (len(ends) + len(waiting)) * dt / in_service
                served += dt
            t = to

    def fits(weight: int) -> bool:
        return len(ends) < slots * in_service and used + weight <= room * in_service

    def run_request(at: float, service: float, weight: int) -> None:
        nonlocal used
        heapq.heappush(ends, (at + service, weight))
        used += weight

    def dispatch() -> None:
        # First come, first served: the head of the queue waits until it fits.
        while waiting and fits(waiting[0][2]):
            arrived, service, weight = waiting.popleft()
            waits.append(t - arrived)
            run_request(t, service, weight)

    def finish() -> None:
        nonlocal used
        used -= heapq.heappop(ends)[1]

    def reconcile() -> None:
        nonlocal in_service, max_copies, capacity_changed_at
        total = in_service + len(starting)
        if state.desired != total:
            # SageMaker's LastModifiedTime moves with every change of desired capacity.
            capacity_changed_at = t
        if state.desired > total:
            ready = t + (mechanics.add_copy_s if in_service else mechanics.from_zero_s)
            for _ in range(state.desired - total):
                bisect.insort(starting, ready)
        elif state.desired < total:
            surplus = total - state.desired
            while surplus and starting:
                starting.pop()  # the one that would be ready last
                surplus -= 1
            if surplus:
                in_service -= surplus
                capacity_changed_at = t
        max_copies = max(max_copies, in_service + len(starting))

    def copy_ready() -> None:
        nonlocal in_service, had_copies, capacity_changed_at
        capacity_changed_at = t
        starting.pop(0)
        in_service += 1
        had_copies = True
        dispatch()

    def close_tick() -> None:
        nonlocal area, served, inv_per_copy, had_copies, failures, invocations
        nonlocal reached, refused_in_tick, tick_index, next_tick, state, policy, held_max
        measured = (area, served, inv_per_copy, had_copies, failures, invocations)
        ticks.append((*measured, reached, refused_in_tick))
        area = served = inv_per_copy = 0.0
        had_copies = in_service > 0
        failures = invocations = reached = refused_in_tick = 0
        tick_index += 1
        next_tick = float((tick_index + 1) * tick_s)
        settled = not starting and capacity_changed_at <= t - aas.HOLD_SETTLE_S
        if held_max and settled and tick_index % HOLD_RELEASE_TICKS == 0:
            # The hook's next budget tick (every 5 minutes) gives the lease back once the
            # copies it asked for serve and a minute of metrics was measured on them
            # (target tracking's datapoints from before would still ask for more).
            policy = replace(policy, max_capacity=held_max)
            held_max = 0
        history = list(ticks)
        firing: list[_Alarm] = []
        for alarm in alarms:
            if tick_index % alarm.ticks == 0:
                alarm.close_period(history)
                if alarm.in_alarm():
                    firing.append(alarm)
        # Scale-in first, so a simultaneous scale-out wins (AWS favours the larger capacity).
        scale_out = (high, wake_alarm, overload_alarm)
        for alarm in sorted(firing, key=lambda a: a in scale_out):
            if alarm is overload_alarm:
                # The hook reads the datapoint and the copies in service, acts, and resets
                # the alarm, so a lasting overload is seen again each period. A datapoint
                # measured while the copies in service changed says nothing about the
                # copies in service now, and SageMaker refuses a new copy count while copies
                # start (the component is Updating): the hook waits for the next one.
                if not starting and capacity_changed_at <= t - alarm.spec.period_s:
                    before = state.desired
                    state = aas.overload(policy, state, t, alarm.value("Maximum"), in_service)
                    if state.desired > before:
                        # It holds MaxCapacity at what it asked for while those copies
                        # start: target tracking multiplies desired capacity (starting
                        # copies included) by a metric of the copies in service, and would
                        # ask again for what the hook already asked for.
                        held_max = held_max or policy.max_capacity
                        policy = replace(policy, max_capacity=state.desired)
            elif alarm is underload_alarm:
                # As for overload: the hook acts on a window measured on today's copies.
                window_s = alarm.spec.period_s * alarm.spec.evaluation_periods
                if capacity_changed_at <= t - window_s:
                    state = aas.underload(policy, state, t, alarm.value("Maximum"), in_service)
            elif alarm is idle_alarm:
                state = autoscaling.idle(policy, state, t)
            elif alarm is low:
                state = autoscaling.scale_in(policy, state, t, alarm.value(tracking_aggregation))
            elif alarm is high:
                state = autoscaling.scale_out(
                    policy,
                    state,
                    t,
                    alarm.value(tracking_aggregation),
                    in_service if mechanics.tracking_capacity == "in_service" else None,
                )
            elif policy.scale_from_zero is not None:
                aggregation = policy.scale_from_zero.metric_aggregation
                state = autoscaling.step(policy, state, t, alarm.value(aggregation))
        while pending_floors and pending_floors[0][0] <= t:
            _, minimum = pending_floors.pop(0)
            policy = replace(policy, min_capacity=min(max(0, minimum), policy.max_capacity))
            if state.desired < policy.min_capacity:
                state = autoscaling.floor(policy, state, t)
        reconcile()
        timeline.append(in_service + len(starting))

    def run_until(limit: float, until_idle: bool = False) -> None:
        """Process completions, copies becoming ready and ticks up to ``limit`` (inclusive:
        a slot freed at the instant a request arrives is free for it; a tick at that instant
        closes before it), or, with ``until_idle``, until nothing runs or waits."""
        while not (until_idle and not ends and not waiting):
            control = min(next_tick, starting[0] if starting else math.inf)
            done = ends[0][0] if ends else math.inf
            if done <= control and done <= limit:
                advance(done)
                finish()
                if waiting:
                    dispatch()
            elif control <= limit:
                advance(control)
                if starting and starting[0] <= control:
                    copy_ready()
                else:
                    close_tick()
            else:
                return

    requests = 0
    refused = 0
    for batch in batches:
        arrivals = batch.arrivals.tolist()
        services = capacity.service_s(batch).tolist()
        weights = capacity.weights(batch).tolist()
        requests += len(arrivals)
        for arrived, service, weight in zip(arrivals, services, weights, strict=True):
            run_until(arrived)
            advance(arrived)
            invocations += 1
            if in_service:
                inv_per_copy += 1.0 / in_service
                reached += 1
            else:
                failures += 1
                if wake_on_request and state.desired == 0:
                    state = autoscaling.wake(policy, state, t)
                    reconcile()
            if in_service and len(ends) + len(waiting) >= queue_limit * in_service:
                refused += 1  # the engines' queues are full: 429 at once
                refused_in_tick += 1
            elif not waiting and fits(weight):
                run_request(arrived, service, weight)
            else:
                waiting.append((arrived, service, weight))

    # Drain: let the queue empty (or give up), then count copies to the oracle's horizon.
    run_until(max(t, oracle.end_s) + DRAIN_LIMIT_S, until_idle=True)
    unserved = len(waiting)
    for arrived, _, _ in waiting:
        waits.append(t - arrived)
    if t < oracle.end_s:
        run_until(oracle.end_s)
        advance(oracle.end_s)

    positive = np.sort(np.array([w for w in waits if w > 0]))
    delayed = int(np.count_nonzero(positive > mechanics.delayed_after_s)) + refused
    return ReplayResult(
        requests=requests,
        gpu_hours=copy_seconds / 3600.0,
        oracle_gpu_hours=oracle.gpu_hours,
        delayed=delayed,
        p99_wait_s=wait_percentile(positive, requests, 99),
        max_wait_s=float(positive[-1]) if len(positive) else 0.0,
        max_copies=max_copies,
        unserved=unserved,
        refused=refused,
        activities=state.activities,
        copies_by_tick=np.array(timeline, dtype=np.int64),
        positive_waits=positive,
    )
