"""Cold start per function: a fresh process imports the handler module and builds the clients
its first invocation builds, timed from inside the process (interpreter startup excluded).

The yardstick, measured in the same run and interleaved with the functions, is a bare
``import boto3`` + ``boto3.client("sagemaker")``. The environment is Lambda's (tracing on).
Prints the median per function, its ratio to the yardstick, and last
``coldstart_ratio_max=<ratio>``.

    python bench/coldstart.py [--runs 11]
"""

from __future__ import annotations

import argparse
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
print(time.perf_counter() - t0)
"""

FUNCTION = """
import time, importlib.util
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("app", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from llmhost import aws, runtime
{warm}
print(time.perf_counter() - t0)
"""

# What each function's first invocation builds, besides importing its module. The serving
# functions build everything a RAG request needs: AWS clients, the ONNX embedding session
# (loaded, not just constructed) and the Qdrant client.
RAG = "runtime.warm_rag()"
CHAT = "runtime.registry(); runtime.serving_service()._invoker()"
FUNCTIONS = {
    "api": ("functions/api/app.py", "runtime.registry()"),
    "reconcile": ("functions/reconcile/app.py", "runtime.reconciler()"),
    "scaling": ("functions/scaling/app.py", "runtime.scaling_hook()"),
    # Serving functions, twice: what a chat request needs, and with the RAG stack too
    # (built on the first request that retrieves). The worst ratio counts the latter.
    "serve": ("functions/serve/app.py", CHAT),
    "serve+rag": ("functions/serve/app.py", f"{CHAT}; {RAG}"),
    "stream": ("layers/llmhost/llmhost/serving/lambda_http.py", CHAT),
    "stream+rag": ("layers/llmhost/llmhost/serving/lambda_http.py", f"{CHAT}; {RAG}"),
    "ingest+rag": ("functions/ingest/app.py", f"aws.client('s3'); {RAG}"),
}

ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    # What the Lambda runtime sets: the X-Ray SDK, for one, behaves differently in Lambda
    # (no sampling client of its own), so the measurement must look like Lambda.
    "AWS_LAMBDA_FUNCTION_NAME": "bench",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "LAMBDA_TASK_ROOT": str(ROOT / "functions"),
    "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
    "REGISTRY_TABLE_NAME": "llmhost-registry",
    "SAGEMAKER_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/bench",
    "GPU_CAPACITY_CAP": "8",
    "DAILY_BUDGET_USD": "100",
    "POWERTOOLS_METRICS_NAMESPACE": "llmhost",
    "POWERTOOLS_SERVICE_NAME": "bench",
    "QDRANT_URL": "http://127.0.0.1:6333",  # constructing the client opens no connection
    "EMBEDDING_MODEL_DIR": str(ROOT / "layers" / "embeddings" / "model"),
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
    # As template.yaml sets it for every function.
    "PYDANTIC_DISABLE_PLUGINS": "__all__",
}


def run(code: str) -> float:
    env = {**os.environ, **ENV}
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"baseline": [], **{name: [] for name in FUNCTIONS}}
    for _ in range(args.runs):
        # Interleaved so load on this shared machine hits every candidate alike.
        samples["baseline"].append(run(BASELINE))
        for name, (path, warm) in FUNCTIONS.items():
            samples[name].append(run(FUNCTION.format(path=str(ROOT / path), warm=warm)))
    base = statistics.median(samples["baseline"])
    print(f"{'function':<12} {'median ms':>10} {'ratio':>7}")
    print(f"{'baseline':<12} {base * 1000:>10.1f} {1.0:>7.2f}")
    worst = 0.0
    for name in FUNCTIONS:
        median = statistics.median(samples[name])
        ratio = median / base
        worst = max(worst, ratio)
        print(f"{name:<12} {median * 1000:>10.1f} {ratio:>7.2f}")
    print(f"coldstart_ratio_max={worst:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
