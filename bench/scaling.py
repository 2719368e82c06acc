"""Scaling-policy benchmark: replay real request traces against scaling policies.

For each trace, four policies run through the same simulator (llmhost_local.replay.simulator),
with the benchmark's fixed world (16 concurrent requests per copy; ContextTokens/4000 s +
GeneratedTokens/40 s per request; +120 s to add a copy, 480 s from zero; delayed = waited
more than 1 s):

- ``llmhost``: ``policy_from_spec(Scaling())``, the spec's defaults (with ``--max-capacity``,
  since the default max of 1 copy is a budget cap, not a policy), plus llmhost's hook that
  wakes a component on the first refused request;
- ``aws-doc``: AWS's documented configuration for an inference component that scales to zero,
  verbatim: target tracking on SageMakerInferenceComponentInvocationsPerCopy, TargetValue 1,
  ScaleInCooldown/ScaleOutCooldown 300; a ChangeInCapacity +1 step policy (cooldown 60,
  Maximum); its alarm on NoCapacityInvocationFailures (Sum, 60 s, 1 of 1, GreaterThanThreshold
  1). https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-zero-instances.html
- ``aws-highres``: the same, but tracking the high-resolution
  SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution metric with target 5
  (the value commonly used with it; AWS's example targets are placeholders to adjust);
- ``static-peak``: the oracle's peak copy count, all the time.

Every trace runs from two starts: ``warm`` with the oracle's first-minute copies (within
each policy's bounds) and ``cold`` at each policy's ``min_capacity``. Every trace also gets
the oracle (per minute, the fewest copies that hold that minute's peak concurrency, no startup
time) and, per start, a startup-aware bound (the same, but a copy released and needed again,
or missing at the start, pays its startup; what even a clairvoyant policy cannot beat without
making requests wait). ``refused`` counts requests an engine turned away with its queue full
(they also count as delayed).

Traces: the files in ../shared/data/traces (Azure CSV, JSON lines, ServeGen windows) and the
synthetic scenarios of ``llmhost_local.replay.scenarios`` (step, bursts, diurnal), which need no
data file.

Usage: ``python bench/scaling.py [TRACE] [--traces DIR] [--start S] [--hours H]
[--mean-rps R | --rate-scale X] [--seed N] [--set field=value ...]``. TRACE is a trace file or
a scenario name; without it, every trace in DIR (when DIR exists) and every scenario runs.
``--start``, ``--hours``, ``--mean-rps`` and ``--rate-scale`` apply to files; ``--seed`` to
ServeGen files and scenarios. The last line is
``gpu_hours=<x> oracle_gpu_hours=<y> ratio=<x/y> delayed_pct=<p> p99_wait_s=<s>`` for the
llmhost policy over both starts of every trace that ran (hours summed, waits pooled).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from llmhost.scaling import policy as aas
from llmhost.scaling.policy import ScalingPolicy, policy_from_spec
from llmhost.specs import Scaling
from llmhost_local.replay import scenarios, simulator, traces

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "data" / "traces"
AZURE_CODE = "azure2023_code.csv"
AWS_DOC_URL = (
    "https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-zero-instances.html"
)


@dataclass(frozen=True)
class Contender:
    name: str
    policy: ScalingPolicy
    wake_on_request: bool
    # The engine each copy runs: llmhost configures TGI's queue limit (max_concurrent_requests)
    # from the copy's capacity; the others keep TGI's default of 128.
    capacity: simulator.CapacityModel = field(default_factory=simulator.CapacityModel)


@dataclass(frozen=True)
class World:
    """A copy as the replay sees it: the fixed benchmark world, or one engine's options."""

    copy: aas.CopyCapacity
    llmhost: simulator.CapacityModel  # with the queue limit llmhost deploys
    default: simulator.CapacityModel  # with TGI's default queue limit

    @classmethod
    def of(cls, args: argparse.Namespace) -> World:
        if args.max_batch_total_tokens is None:
            copy = aas.BENCHMARK_COPY
            default = simulator.CapacityModel()
            return cls(copy, replace(default, queue_limit=copy.queue_limit or 128), default)
        copy = aas.copy_capacity(args.max_batch_total_tokens, args.max_total_tokens)
        engine = partial(simulator.CapacityModel.from_engine, args.max_batch_total_tokens)
        return cls(copy, engine(copy.queue_limit or 128), engine(aas.ENGINE_QUEUE_MAX))


def llmhost_policy(
    max_capacity: int, overrides: dict[str, Any], copy: aas.CopyCapacity = aas.BENCHMARK_COPY
) -> ScalingPolicy:
    fields = {**Scaling().model_dump(), "max_capacity": max_capacity, **overrides}
    return policy_from_spec(Scaling.model_validate(fields), copy)


def aws_doc_policy(max_capacity: int, *, high_resolution: bool) -> ScalingPolicy:
    """AWS's scale-to-zero example for inference components, expressed as a ScalingPolicy."""
    base = policy_from_spec(
        Scaling(
            min_capacity=0,
            max_capacity=max_capacity,
            scale_to_zero=True,
            target_metric="concurrent-requests-per-copy"
            if high_resolution
            else "invocations-per-copy",
            target_value=5 if high_resolution else 1,
            scale_in_cooldown_s=300,
            scale_out_cooldown_s=300,
        )
    )
    step = aas.StepScalingPolicy(
        adjustment_type="ChangeInCapacity",
        steps=(aas.StepAdjustment(lower=0, upper=None, adjustment=1),),
        cooldown_s=60,
        metric_aggregation="Maximum",
        alarm=aas.AlarmSpec(
            metric_name="NoCapacityInvocationFailures",
            statistic="Sum",
            period_s=60,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            threshold=1,
            comparison="GreaterThanThreshold",
            kind="no_capacity_failures",
        ),
    )
    # AWS's example has no idle alarm: target tracking alone takes it to zero.
    return replace(base, scale_from_zero=step, idle_alarm=None)


def static_policy(copies: int) -> ScalingPolicy:
    copies = max(1, copies)
    return policy_from_spec(Scaling(min_capacity=copies, max_capacity=copies))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in Scaling.model_fields:
            raise SystemExit(
                f"--set {pair!r}: expected field=value with a field of Scaling "
                f"({', '.join(Scaling.model_fields)})"
            )
        out[key] = value
    return out


def select_traces(args: argparse.Namespace) -> list[Callable[[], traces.Trace]]:
    """What to replay: TRACE (a file, else a scenario name), or every file in ``--traces``
    (when it exists) and every scenario."""
    folder = Path(args.traces)
    if args.trace:
        path = Path(args.trace)
        if not path.exists() and args.trace in scenarios.SCENARIOS:
            return [partial(scenarios.scenario, args.trace, args.seed)]
        if not path.exists():
            raise SystemExit(
                f"{args.trace}: no such file, nor a scenario ({', '.join(scenarios.SCENARIOS)})"
            )
        return [partial(open_trace, path, args)]
    files = sorted([*folder.glob("*.csv"), *folder.glob("*.jsonl"), *folder.glob("servegen/*.gz")])
    if not files:
        print(f"no trace files in {folder}: the synthetic scenarios only")
    return [
        *(partial(open_trace, path, args) for path in files),
        *(partial(scenarios.scenario, name, args.seed) for name in scenarios.SCENARIOS),
    ]


def open_trace(path: Path, args: argparse.Namespace) -> traces.Trace:
    tokens = Path(args.tokens) if args.tokens else _find_tokens(path, Path(args.traces))
    return traces.open_trace(
        path,
        token_pairs=lambda: traces.read_token_pairs(tokens),
        start_s=args.start,
        hours=args.hours,
        rate_scale=args.rate_scale,
        mean_rps=args.mean_rps,
        seed=args.seed,
    )


def _find_tokens(trace: Path, traces_dir: Path) -> Path:
    for folder in (trace.parent, trace.parent.parent, traces_dir):
        if (folder / AZURE_CODE).exists():
            return folder / AZURE_CODE
    raise SystemExit(f"no {AZURE_CODE} next to {trace}; pass --tokens")


@dataclass(frozen=True)
class Row:
    policy: str
    start: str  # "warm" | "cold"
    result: simulator.ReplayResult
    secs: float


def run_trace(
    trace: traces.Trace, args: argparse.Namespace, overrides: dict[str, Any]
) -> list[Row]:
    """Replay one trace under every contender from both starts; print its table."""
    started = time.perf_counter()
    world = World.of(args)
    mechanics = simulator.Mechanics(tracking_capacity=args.tracking_capacity)
    oracle = simulator.compute_oracle(trace.batches(), world.default)
    default = world.default
    contenders = [
        Contender(
            "llmhost", llmhost_policy(args.max_capacity, overrides, world.copy), True, world.llmhost
        ),
        Contender(
            "aws-doc", aws_doc_policy(args.max_capacity, high_resolution=False), False, default
        ),
        Contender(
            "aws-highres", aws_doc_policy(args.max_capacity, high_resolution=True), False, default
        ),
        Contender("static-peak", static_policy(oracle.peak_copies), False, default),
    ]
    first = int(oracle.copies[0]) if len(oracle.copies) else 0
    cold = contenders[0].policy.min_capacity
    warm_bound = oracle.startup_bound_gpu_hours(initial_copies=first)
    cold_bound = oracle.startup_bound_gpu_hours(initial_copies=cold)
    print(
        f"\n{trace.name}  requests={oracle.requests}  minutes={len(oracle.copies)}  "
        f"oracle_peak_copies={oracle.peak_copies}  {trace.note}".rstrip()
    )
    print(
        f"  startup_bound_gpu_hours: warm={warm_bound:.2f} (ratio "
        f"{warm_bound / oracle.gpu_hours:.2f}, {first} at start)  cold={cold_bound:.2f} "
        f"(ratio {cold_bound / oracle.gpu_hours:.2f}, llmhost's min_capacity {cold} at start)"
    )
    print(
        f"  {'policy':<12} {'start':<5} {'gpu_h':>9} {'oracle_h':>9} {'ratio':>6} "
        f"{'delayed%':>9} {'refused':>8} {'p99_wait_s':>10} {'max_wait_s':>10} "
        f"{'max_copies':>10} {'secs':>5}"
    )
    rows: list[Row] = []
    for contender in contenders:
        policy = contender.policy
        done: dict[int, simulator.ReplayResult] = {}  # by initial copies
        for start, wanted in (("warm", first), ("cold", policy.min_capacity)):
            began = time.perf_counter()
            initial = policy.clamp(wanted)
            if initial not in done:  # a cold start at the warm start's copies is the same replay
                done[initial] = simulator.replay(
                    trace.batches(),
                    policy,
                    oracle,
                    capacity=contender.capacity,
                    mechanics=mechanics,
                    wake_on_request=contender.wake_on_request,
                    initial_copies=initial,
                )
            result = done[initial]
            secs = time.perf_counter() - began
            rows.append(Row(contender.name, start, result, secs))
            print(
                f"  {contender.name:<12} {start:<5} {result.gpu_hours:>9.2f} "
                f"{result.oracle_gpu_hours:>9.2f} {result.ratio:>6.2f} "
                f"{result.delayed_pct:>9.2f} {result.refused:>8d} {result.p99_wait_s:>10.1f} "
                f"{result.max_wait_s:>10.1f} {result.max_copies:>10d} {secs:>5.1f}"
            )
    print(f"  ({time.perf_counter() - started:.1f}s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "trace",
        nargs="?",
        help=f"a trace file or a scenario ({', '.join(scenarios.SCENARIOS)}); "
        "default: every file in --traces and every scenario",
    )
    parser.add_argument("--traces", default=str(TRACES), help="folder of trace files")
    parser.add_argument("--start", type=int, default=None, help="seconds into the trace")
    parser.add_argument("--hours", type=float, default=None, help="span to replay")
    parser.add_argument(
        "--mean-rps",
        type=float,
        default=traces.DEFAULT_MEAN_RPS,
        help="ServeGen: scale client rates so the span's mean is this many req/s",
    )
    parser.add_argument("--rate-scale", type=float, default=None, help="ServeGen: fixed multiplier")
    parser.add_argument("--seed", type=int, default=traces.DEFAULT_SEED)
    parser.add_argument("--tokens", help="Azure CSV whose token counts ServeGen requests draw")
    parser.add_argument("--max-capacity", type=int, default=64, help="copies, every policy")
    parser.add_argument(
        "--max-batch-total-tokens",
        type=int,
        default=None,
        help="replay copies of an engine with this token budget (TGI's max_batch_total_tokens) "
        "instead of the fixed world's 16 requests at once",
    )
    parser.add_argument(
        "--max-total-tokens",
        type=int,
        default=8192,
        help="with --max-batch-total-tokens: the model's context window, from which llmhost "
        "estimates a copy's concurrency and its default target",
    )
    parser.add_argument(
        "--tracking-capacity",
        choices=("desired", "in_service"),
        default="desired",
        help="what target tracking multiplies its metric by (AWS does not document it)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a Scaling default for the llmhost policy (repeatable)",
    )
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    selected = select_traces(args)
    world = World.of(args)
    mine_policy = llmhost_policy(args.max_capacity, overrides, world.copy)
    print(
        f"llmhost: {mine_policy.target_tracking.configuration()}; a copy runs "
        f"{world.copy.concurrency} requests at once and holds {world.copy.queue_limit} "
        f"(MAX_CONCURRENT_REQUESTS); overload alarm: "
        f"{'on' if mine_policy.overload else 'off'}\naws-doc: {AWS_DOC_URL}"
    )
    mine: list[simulator.ReplayResult] = []
    for open_one in selected:
        rows = run_trace(open_one(), args, overrides)
        mine.extend(row.result for row in rows if row.policy == "llmhost")
    gpu = sum(r.gpu_hours for r in mine)
    oracle = sum(r.oracle_gpu_hours for r in mine)
    requests = sum(r.requests for r in mine)
    delayed = sum(r.delayed for r in mine)
    positive = np.concatenate([r.positive_waits for r in mine])
    p99 = simulator.wait_percentile(positive, requests, 99)
    print(
        f"gpu_hours={gpu:.3f} oracle_gpu_hours={oracle:.3f} ratio={gpu / oracle:.3f} "
        f"delayed_pct={100.0 * delayed / requests:.2f} p99_wait_s={p99:.1f}"
    )


if __name__ == "__main__":
    main()
