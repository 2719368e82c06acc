"""What trace export costs at cold start, and that it costs the serving functions nothing.

Fresh processes, interleaved, timed from inside (interpreter startup excluded), median of
``--runs``:

- ``otel import``: importing the OpenTelemetry SDK and its OTLP/HTTP span exporter, the
  import only the trace export function pays;
- ``trace_export``: that function's cold start (its handler imported and its exporter built,
  as its first batch builds it; no headers secret, so no Secrets Manager call);
- ``serve``, export off and on: the serve function's handler imported and what a chat
  request builds, without and with the OTLP settings in its environment (they never are in
  AWS: only the export function gets them) - the same code either way, so the two rows
  differ by noise only; the last column says whether any opentelemetry module was loaded;
- ``baseline``: a bare ``import boto3`` + ``boto3.client("sagemaker")``, the yardstick
  ``bench/coldstart.py`` uses.

    python bench/trace_export.py [--runs 11]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINE = """
import time
t0 = time.perf_counter()
import boto3
boto3.client("sagemaker", region_name="us-east-1")
print(json.dumps([time.perf_counter() - t0, False]))
"""
OTEL_IMPORT = """
import time
t0 = time.perf_counter()
import opentelemetry.sdk.trace
import opentelemetry.exporter.otlp.proto.http.trace_exporter
print(json.dumps([time.perf_counter() - t0, True]))
"""
FUNCTION = """
import time, importlib.util, sys
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("app", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from llmhost import runtime
{warm}
elapsed = time.perf_counter() - t0
print(json.dumps([elapsed, any(m.split(".")[0] == "opentelemetry" for m in sys.modules)]))
"""
SERVE = str(ROOT / "functions" / "serve" / "app.py")
CHAT = "runtime.registry(); runtime.serving_service()._invoker(); runtime.request_observers()"
OTLP = {
    "OTLP_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
    "OTLP_HEADERS_SECRET_ARN": "",
}
CASES = {
    "baseline": (BASELINE, {}),
    "otel import": (OTEL_IMPORT, {}),
    "trace_export": (
        FUNCTION.format(
            path=str(ROOT / "functions" / "trace_export" / "app.py"),
            warm="module._exporter()",
        ),
        OTLP,
    ),
    "serve, export off": (FUNCTION.format(path=SERVE, warm=CHAT), {}),
    "serve, export on": (FUNCTION.format(path=SERVE, warm=CHAT), OTLP),
}
ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_LAMBDA_FUNCTION_NAME": "bench",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
    "REGISTRY_TABLE_NAME": "llmhost-registry",
    "TRACES_TABLE": "llmhost-traces",  # tracing on: serve builds its trace recorder
    "LLMHOST_STACK_NAME": "llmhost-local",
    "POWERTOOLS_SERVICE_NAME": "bench",
    "POWERTOOLS_METRICS_NAMESPACE": "llmhost",
    "PYDANTIC_DISABLE_PLUGINS": "__all__",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "llmhost"), str(ROOT / "local")]),
}


def run(code: str, extra: dict[str, str]) -> tuple[float, bool]:
    env = {**os.environ, **ENV, **extra}
    for name in ("POWERTOOLS_TRACE_DISABLED", *OTLP):
        if name not in extra:
            env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise SystemExit(f"a measured process failed:\n{out.stderr[-3000:]}")
    elapsed, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    return float(elapsed), bool(loaded)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    loaded: dict[str, bool] = {}
    names = list(CASES)
    for round_ in range(args.runs):
        # Interleaved, so shared-machine noise hits every case alike, and every other round
        # in reverse order, so no case always runs right after another (a warm file cache).
        for name in names if round_ % 2 == 0 else reversed(names):
            code, extra = CASES[name]
            elapsed, otel = run(code, extra)
            samples[name].append(elapsed)
            loaded[name] = loaded.get(name, False) or otel
    base = statistics.median(samples["baseline"])
    print(f"python {sys.version.split()[0]}, {args.runs} runs each, interleaved, order alternating")
    print(f"{'case':<20} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'ratio':>6}  otel loaded")
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"{name:<20} {median * 1000:>10.1f} {min(values) * 1000:>8.1f} "
            f"{max(values) * 1000:>8.1f} {median / base:>6.2f}  {'yes' if loaded[name] else 'no'}"
        )
    off = statistics.median(samples["serve, export off"])
    on = statistics.median(samples["serve, export on"])
    print(f"serve_export_on_minus_off_ms={(on - off) * 1000:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
