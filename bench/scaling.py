"""Scaling-policy benchmark: replay real request traces against scaling policies.

For each trace, four policies run through the same simulator (llmhost.scaling.simulator),
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

Every trace also gets the oracle (per minute, the fewest copies that hold that minute's peak
concurrency, no startup time) and a startup-aware bound (the same, but a copy released and
needed again pays its startup; what even a clairvoyant policy cannot beat).

Usage: ``python bench/scaling.py [TRACE] [--start S] [--hours H] [--mean-rps R | --rate-scale X]
[--seed N] [--set field=value ...]``. Without TRACE, every trace in ../shared/data/traces runs
and a table is printed. The last line is
``gpu_hours=<x> oracle_gpu_hours=<y> ratio=<x/y> delayed_pct=<p> p99_wait_s=<s>`` for the
llmhost policy (over all traces when several ran: hours summed, waits pooled).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from llmhost.scaling import policy as aas
from llmhost.scaling import simulator, traces
from llmhost.scaling.policy import ScalingPolicy, policy_from_spec
from llmhost.specs import Scaling

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


def llmhost_policy(max_capacity: int, overrides: dict[str, Any]) -> ScalingPolicy:
    fields = {**Scaling().model_dump(), "max_capacity": max_capacity, **overrides}
    return policy_from_spec(Scaling.model_validate(fields))


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


def open_trace(path: Path, args: argparse.Namespace) -> traces.Trace:
    tokens = Path(args.tokens) if args.tokens else _find_tokens(path)
    return traces.open_trace(
        path,
        token_pairs=lambda: traces.read_token_pairs(tokens),
        start_s=args.start,
        hours=args.hours,
        rate_scale=args.rate_scale,
        mean_rps=args.mean_rps,
        seed=args.seed,
    )


def _find_tokens(trace: Path) -> Path:
    for folder in (trace.parent, trace.parent.parent, TRACES):
        if (folder / AZURE_CODE).exists():
            return folder / AZURE_CODE
    raise SystemExit(f"no {AZURE_CODE} next to {trace}; pass --tokens")


def run_trace(
    path: Path, args: argparse.Namespace, overrides: dict[str, Any]
) -> list[tuple[str, simulator.ReplayResult, float]]:
    trace = open_trace(path, args)
    started = time.perf_counter()
    oracle = simulator.compute_oracle(trace.batches(), simulator.CapacityModel())
    bound = oracle.startup_bound_gpu_hours()
    print(
        f"\n{trace.name}  requests={oracle.requests}  minutes={len(oracle.copies)}  "
        f"oracle_peak_copies={oracle.peak_copies}  startup_bound_gpu_hours={bound:.2f} "
        f"(ratio {bound / oracle.gpu_hours:.2f})  {trace.note}".rstrip()
    )
    contenders = [
        Contender("llmhost", llmhost_policy(args.max_capacity, overrides), True),
        Contender("aws-doc", aws_doc_policy(args.max_capacity, high_resolution=False), False),
        Contender("aws-highres", aws_doc_policy(args.max_capacity, high_resolution=True), False),
        Contender("static-peak", static_policy(oracle.peak_copies), False),
    ]
    print(
        f"  {'policy':<12} {'gpu_h':>9} {'oracle_h':>9} {'ratio':>6} {'delayed%':>9} "
        f"{'p99_wait_s':>10} {'max_wait_s':>10} {'max_copies':>10} {'secs':>5}"
    )
    results = []
    for contender in contenders:
        began = time.perf_counter()
        result = simulator.replay(
            trace.batches(), contender.policy, oracle, wake_on_request=contender.wake_on_request
        )
        secs = time.perf_counter() - began
        results.append((contender.name, result, secs))
        print(
            f"  {contender.name:<12} {result.gpu_hours:>9.2f} {result.oracle_gpu_hours:>9.2f} "
            f"{result.ratio:>6.2f} {result.delayed_pct:>9.2f} {result.p99_wait_s:>10.1f} "
            f"{result.max_wait_s:>10.1f} {result.max_copies:>10d} {secs:>5.1f}"
        )
    print(f"  ({time.perf_counter() - started:.1f}s)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", nargs="?", help=f"a trace file; default: all in {TRACES}")
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
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a Scaling default for the llmhost policy (repeatable)",
    )
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    paths = (
        [Path(args.trace)]
        if args.trace
        else sorted([*TRACES.glob("*.csv"), *TRACES.glob("*.jsonl"), *TRACES.glob("servegen/*.gz")])
    )
    if not paths:
        raise SystemExit(f"no traces in {TRACES}")
    print(
        f"llmhost: {llmhost_policy(args.max_capacity, overrides).target_tracking.configuration()}"
        f"\naws-doc: {AWS_DOC_URL}"
    )
    mine: list[simulator.ReplayResult] = []
    for path in paths:
        results = run_trace(path, args, overrides)
        mine.append(next(r for name, r, _ in results if name == "llmhost"))
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
