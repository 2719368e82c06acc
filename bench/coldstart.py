"""Cold start per function: a fresh process imports the handler module and builds the clients
its first invocation builds, timed from inside the process (interpreter startup excluded).

Beside it, for the functions SnapStart restores (serve, stream, ingest), a **restore proxy**:
a process imports the handler and runs the before-snapshot hook (``llmhost.snapstart``), then
forks; the child runs the after-restore hook and its first request against a local stack,
and is timed from the fork to the end of that request's answer. A fork is the closest local
analogue of a restore (memory as the hook left it, no thread but the forking one); it is a
proxy, not Lambda's restore, which also loads the snapshot's pages and starts the runtime.
The first request: serve, its handler with the sample ``POST /v1/rag`` (the API Gateway
event); stream, the same RAG request through the serving service the OpenAI server calls
(its HTTP server's own start is ``bench/openai_server_coldstart.py``'s); ingest, its handler
with an S3 notification of a Markdown document. The local stack: ``make run``'s (moto, the
SageMaker stand-in, its demo model) in a process of its own, the model answering through a
SageMaker runtime front and the local engine in another, and the documents in embedded
Qdrant (loaded before the fork: in AWS the store is a server).

The yardstick, measured in the same run and interleaved with the functions, is a bare
``import boto3`` + ``boto3.client("sagemaker")``. The environment is Lambda's (tracing on).
Prints the median per function and its ratio to the yardstick, and last
``coldstart_ratio_max=<worst fresh-process ratio> control_plane_ratio_max=<worst of api,
reconcile, scaling> restore_ratio_max=<worst restore proxy of serve, stream, ingest>``.

    python bench/coldstart.py [--runs 11]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

CONTROL_PLANE = ("api", "reconcile", "scaling")

# Tracing off and on, side by side: the same first invocation (a chat's clients and the
# request observers), without and with the traces table in the environment (template.yaml
# sets TRACES_TABLE for serve, stream and jobs); on, the recorder, its store and its DynamoDB
# client are built too. The restore proxies run serve's first RAG request both ways; on, it
# writes its trace to the local stack's traces table.
TRACES_ON = {"TRACES_TABLE": "llmhost-traces", "TRACE_CONTENT": "redacted"}
OBSERVED = f"{CHAT}; runtime.request_observers()"
STREAM_APP = "layers/llmhost/llmhost/serving/lambda_http.py"
TRACING = {
    "serve traces off": ("functions/serve/app.py", OBSERVED, {}),
    "serve traces on": ("functions/serve/app.py", OBSERVED, TRACES_ON),
    "stream traces off": (STREAM_APP, OBSERVED, {}),
    "stream traces on": (STREAM_APP, OBSERVED, TRACES_ON),
}

# The restore proxy. {init} imports the handler (Lambda's init phase), {before} and {after}
# run the hooks as Lambda's Python runtime does (registration order reversed before the
# snapshot), {request} is the first request; it must leave its answer in ``answer``.
RESTORE = """
import importlib.util, os, time
spec = importlib.util.spec_from_file_location("app", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from snapshot_restore_py import get_after_restore, get_before_snapshot
from llmhost import runtime, snapstart
from llmhost_local.events import LambdaContext
{before}
reader, writer = os.pipe()
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        {after}
        {request}
        assert answer, "no answer"
        os.write(writer, repr(time.perf_counter() - t0).encode())
    finally:
        os._exit(0)
os.close(writer)
elapsed = os.read(reader, 64)
os.waitpid(pid, 0)
print(float(elapsed))
"""
RUNTIME_BEFORE = "for f, a, k in reversed(get_before_snapshot()): f(*a, **k)"
RUNTIME_AFTER = "for f, a, k in get_after_restore(): f(*a, **k)"
# The stream server runs the same hooks from the adapter's hook routes (lambda_http).
STREAM_BEFORE = "snapstart.before_snapshot(snapstart.warm_serving)"
STREAM_AFTER = "snapstart.after_restore(snapstart.warm_serving)"
SERVE_RAG = """import json
        event = json.load(open({event!r}))
        event["body"] = json.dumps({body!r})
        reply = module.handler(event, LambdaContext("bench"))
        assert reply["statusCode"] == 200, reply
        answer = json.loads(reply["body"])["answer"]"""
STREAM_RAG = """from llmhost.serving.requests import RagRequest
        answer = runtime.serving_service().rag(RagRequest.model_validate({body!r}))
        answer = answer["answer"]"""
INGEST = """import json
        event = json.load(open({event!r}))
        event["Records"][0]["s3"]["bucket"]["name"] = {bucket!r}
        event["Records"][0]["s3"]["object"]["key"] = {key!r}
        answer = module.handler(event, LambdaContext("bench"))["results"][0]["indexed"]"""
COLLECTION = "bench"
BUCKET = "llmhost-bench-documents"
KEY = f"collections/{COLLECTION}/coldstart.md"
DOCUMENT = """# Cold starts

A Lambda function's first request waits for its init phase: the runtime starts, the handler
module is imported and the clients it needs are built. With SnapStart, Lambda runs the init
phase once per published version and restores later environments from a snapshot of it.

# Scaling to zero

A model that scaled to zero copies answers 503 with Retry-After while a copy starts.
"""
RAG_BODY = {
    "query": "What does a Lambda function's first request wait for?",
    "model": "demo",
    "collection": COLLECTION,
    "k": 3,
    "max_new_tokens": 64,
}
# Prepares the documents: the bucket and object in the stack's S3, indexed into the Qdrant
# folder the restore proxies open (by the ingest handler itself, in a process of its own).
PREPARE = f"""
import importlib.util, json
from llmhost import aws
from llmhost_local.events import LambdaContext
s3 = aws.client("s3")
s3.create_bucket(Bucket={BUCKET!r})
s3.put_object(Bucket={BUCKET!r}, Key={KEY!r}, Body={DOCUMENT.encode()!r})
spec = importlib.util.spec_from_file_location("app", {str(ROOT / "functions/ingest/app.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
event = json.load(open({str(ROOT / "events/s3-object-created.json")!r}))
event["Records"][0]["s3"]["bucket"]["name"] = {BUCKET!r}
event["Records"][0]["s3"]["object"]["key"] = {KEY!r}
result = module.handler(event, LambdaContext("bench"))
assert result["results"][0]["indexed"] == 1, result
print(0.0)
"""


def restore_code(name: str) -> str:
    event_dir = ROOT / "events"
    if name == "serve":
        path, before, after = "functions/serve/app.py", RUNTIME_BEFORE, RUNTIME_AFTER
        request = SERVE_RAG.format(event=str(event_dir / "api-rag.json"), body=RAG_BODY)
    elif name == "stream":
        path, before, after = (
            "layers/llmhost/llmhost/serving/lambda_http.py",
            STREAM_BEFORE,
            STREAM_AFTER,
        )
        request = STREAM_RAG.format(body=RAG_BODY)
    else:
        path, before, after = "functions/ingest/app.py", RUNTIME_BEFORE, RUNTIME_AFTER
        event = str(event_dir / "s3-object-created.json")
        request = INGEST.format(event=event, bucket=BUCKET, key=KEY)
    return RESTORE.format(path=str(ROOT / path), before=before, after=after, request=request)


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
    # What template.yaml sets for every function (the reconciler refuses to start without it).
    "LLMHOST_STACK_NAME": "llmhost-local",
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


def run(code: str, extra: dict[str, str] | None = None) -> float:
    env = {**os.environ, **ENV, **(extra or {})}
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"a measured process failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalStack:
    """``make run``'s stack (moto, the stand-ins, the demo model) and, in a process of its
    own, the model: the local engine behind a SageMaker runtime front."""

    def __init__(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="llmhost-coldstart-"))
        engine_port, front_port, api_port, self.openai_port, moto_port = (
            free_port() for _ in range(5)
        )
        env = {**os.environ, "PYDANTIC_DISABLE_PLUGINS": "__all__"}
        log = (self.data / "stack.log").open("wb")
        self.engine = subprocess.Popen(
            [sys.executable, __file__, "--serve-engine", str(engine_port), str(front_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.stack = subprocess.Popen(
            [
                sys.executable, "-m", "llmhost_local",
                "--port", str(api_port), "--openai-port", str(self.openai_port),
                "--moto-port", str(moto_port), "--speed", "600", "--drift-seconds", "3600",
                "--runtime-url", f"http://127.0.0.1:{front_port}",
            ],
            env={**env, "QDRANT_PATH": str(self.data / "stack-qdrant")},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        # What the measured processes need to reach it (their own Qdrant folder: embedded
        # Qdrant opens a folder in one process at a time).
        self.env = {
            "LLMHOST_AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
            "LLMHOST_AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": f"http://127.0.0.1:{front_port}",
            "QDRANT_URL": "",
            "QDRANT_PATH": str(self.data / "qdrant"),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }

    def wait_ready(self, timeout: float = 180) -> None:
        """Until the demo model answers a chat through the stack's OpenAI server."""
        from llmhost_local.cloud import LOCAL_API_KEY

        deadline = time.monotonic() + timeout
        chat = {"model": "demo", "messages": [{"role": "user", "content": "ready?"}]}
        headers = {"Authorization": f"Bearer {LOCAL_API_KEY}", "Content-Type": "application/json"}
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.openai_port, timeout=10)
                connection.request("POST", "/v1/chat/completions", json.dumps(chat), headers)
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the local stack never served the demo model: {self.data}")
            time.sleep(0.5)

    def stop(self) -> None:
        for process in (self.stack, self.engine):
            process.terminate()
        for process in (self.stack, self.engine):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:  # a loaded machine: the numbers are kept
                process.kill()
                process.wait()


def serve_engine_process(engine_port: int, front_port: int) -> None:
    """The "SageMaker" side: the engine, and a runtime front routing every endpoint to it."""
    from llmhost_local.engine import LocalEngine
    from llmhost_local.engine_server import serve_engine
    from llmhost_local.runtime_front import RuntimeFront, serve_front
    from llmhost_local.runtime_state import RouteTarget

    engine = LocalEngine()
    serve_engine(engine, port=engine_port)
    serve_front(
        RuntimeFront(lambda endpoint, component: RouteTarget.local(engine)), port=front_port
    )
    while True:
        time.sleep(3600)


def report(samples: dict[str, list[float]], names: Any, label: str, base: float) -> float:
    worst = 0.0
    for name in names:
        median = statistics.median(samples[name])
        ratio = median / base
        worst = max(worst, ratio)
        print(f"{name + label:<22} {median * 1000:>10.1f} {ratio:>7.2f}")
    return worst


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-engine":
        serve_engine_process(int(sys.argv[2]), int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    restored = ("serve", "stream", "ingest")
    samples: dict[str, list[float]] = {
        "baseline": [],
        **{name: [] for name in FUNCTIONS},
        **{f"restore:{name}": [] for name in restored},
        **{name: [] for name in TRACING},
        "restore:serve traces on": [],
    }
    stack = LocalStack()
    try:
        stack.wait_ready()
        run(PREPARE, stack.env)
        for _ in range(args.runs):
            # Interleaved so load on this shared machine hits every candidate alike.
            samples["baseline"].append(run(BASELINE))
            for name, (path, warm) in FUNCTIONS.items():
                samples[name].append(run(FUNCTION.format(path=str(ROOT / path), warm=warm)))
            for name in restored:
                samples[f"restore:{name}"].append(run(restore_code(name), stack.env))
            for name, (path, warm, extra) in TRACING.items():
                code = FUNCTION.format(path=str(ROOT / path), warm=warm)
                samples[name].append(run(code, extra))
            samples["restore:serve traces on"].append(
                run(restore_code("serve"), {**stack.env, **TRACES_ON})
            )
    finally:
        stack.stop()
    base = statistics.median(samples["baseline"])
    print(f"{'function':<22} {'median ms':>10} {'ratio':>7}")
    print(f"{'baseline':<22} {base * 1000:>10.1f} {1.0:>7.2f}")
    print("fresh process (import + first invocation's clients):")
    worst = report(samples, FUNCTIONS, "", base)
    print("restore proxy (fork after the before-snapshot hook -> first answer):")
    restore = report(samples, [f"restore:{name}" for name in restored], "", base)
    print("tracing off and on (fresh process; restore proxy of serve's first RAG request):")
    report(samples, [*TRACING, "restore:serve", "restore:serve traces on"], "", base)
    control = max(statistics.median(samples[name]) / base for name in CONTROL_PLANE)
    print(
        f"coldstart_ratio_max={worst:.2f} control_plane_ratio_max={control:.2f} "
        f"restore_ratio_max={restore:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
