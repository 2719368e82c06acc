"""Serving benchmark: what llmhost adds on top of the model, and how big its functions are.

Three processes, as in production: an engine (the local TGI-protocol engine: 50 ms per
reply, a token every 20 ms when streaming), llmhost (``make run`` pointed at that engine
with ``--engine-url``), and this client. Measured side by side, interleaved, medians:

(a) a chat request through llmhost's OpenAI-compatible endpoint vs a bare boto3
    ``invoke_endpoint`` of the same engine (through a SageMaker runtime front, as boto3 needs);
(b) time to first token of a streamed chat through llmhost's OpenAI-compatible endpoint vs
    a bare boto3 ``invoke_endpoint_with_response_stream`` through the same runtime (straight
    from the engine is printed for reference);
(c) the unzipped size of the largest function with its layers after ``sam build``.

Last line: ``overhead_ratio=<a> ttft_ratio=<b> max_unzipped_mb=<c>``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "How is sourdough bread leavened?"
LWA_LAYER_MB = 6.0  # the Lambda Web Adapter layer is AWS's; its arm64 zip unpacks to ~6 MB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing answered on port {port}")


def post(
    conn: http.client.HTTPConnection, path: str, body: dict[str, Any], headers: dict[str, str]
) -> http.client.HTTPResponse:
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **headers})
    return conn.getresponse()


def first_stream_token(response: http.client.HTTPResponse, started: float) -> float:
    """Seconds until the first SSE event carrying generated text."""
    first = None
    buffer = b""
    while True:
        line = response.readline()
        if not line:
            break
        buffer = line.strip()
        if first is None and buffer.startswith(b"data:") and _has_text(buffer[5:]):
            first = time.perf_counter() - started
    if first is None:
        raise SystemExit("the stream carried no text")
    return first


def _has_text(data: bytes) -> bool:
    data = data.strip()
    if not data or data == b"[DONE]":
        return False
    event = json.loads(data)
    if "token" in event:  # TGI generate_stream
        return bool(event["token"].get("text"))
    choices = event.get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


def measure(args: argparse.Namespace) -> tuple[float, float]:
    import boto3

    from llmhost_local.cloud import LOCAL_API_KEY

    engine_port, front_port, api_port, openai_port, moto_port = (free_port() for _ in range(5))
    env = {**os.environ, "PYDANTIC_DISABLE_PLUGINS": "__all__"}
    # "AWS": the engine behind a SageMaker runtime front, in a process of its own, as the
    # endpoint runs on other machines in production; the engine's own API is published
    # too, for the direct measurements.
    engine = subprocess.Popen(
        [sys.executable, __file__, "--serve-engine", str(engine_port), str(front_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # llmhost: the local stack, calling that runtime as it would call SageMaker.
    stack = subprocess.Popen(
        [
            sys.executable, "-m", "llmhost_local",
            "--port", str(api_port), "--openai-port", str(openai_port),
            "--moto-port", str(moto_port), "--speed", "600", "--drift-seconds", "3600",
            "--runtime-url", f"http://127.0.0.1:{front_port}",
        ],
        # At 600x a route cache of 10 cloud seconds lasts 17 ms, and every request would read
        # the registry; a warm Lambda environment reads it once per 10 s (real) at most.
        env={
            **env,
            "QDRANT_PATH": tempfile.mkdtemp(prefix="llmhost-bench-"),
            "ROUTE_CACHE_S": str(10 * 600),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(engine_port, "/health")
        wait_http(openai_port, "/health")
        auth = {"Authorization": f"Bearer {LOCAL_API_KEY}"}
        llm = http.client.HTTPConnection("127.0.0.1", openai_port, timeout=30)
        chat = {"model": "demo", "messages": [{"role": "user", "content": PROMPT}]}
        deadline = time.monotonic() + 60
        while True:  # the demo deployment comes up in about a second
            reply = post(llm, "/v1/chat/completions", chat, auth)
            body = reply.read()
            if reply.status == 200:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"llmhost never served the demo model: {body[:300]!r}")
            time.sleep(0.3)
        payload = json.loads(body)  # every path warmed once before measuring

        # The bare baseline: boto3 against the same engine, through the same runtime.
        runtime = boto3.client(
            "sagemaker-runtime",
            endpoint_url=f"http://127.0.0.1:{front_port}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        tgi_body = json.dumps({"model": "tgi", **chat, "max_tokens": 512})
        runtime.invoke_endpoint(EndpointName="demo", Body=tgi_body, ContentType="application/json")
        direct = http.client.HTTPConnection("127.0.0.1", engine_port, timeout=30)
        bare_s, through_s, direct_ttft, llm_ttft, boto_ttft = [], [], [], [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            runtime.invoke_endpoint(
                EndpointName="demo", Body=tgi_body, ContentType="application/json"
            )["Body"].read()
            bare_s.append(time.perf_counter() - started)

            started = time.perf_counter()
            reply = post(llm, "/v1/chat/completions", chat, auth)
            reply.read()
            through_s.append(time.perf_counter() - started)

            started = time.perf_counter()
            reply = post(
                direct, "/v1/chat/completions", {**chat, "model": "tgi", "stream": True}, {}
            )
            direct_ttft.append(first_stream_token(reply, started))

            started = time.perf_counter()
            reply = post(llm, "/v1/chat/completions", {**chat, "stream": True}, auth)
            llm_ttft.append(first_stream_token(reply, started))

            # The yardstick: a bare boto3 streaming call through the same runtime.
            streamed = json.dumps({**json.loads(tgi_body), "stream": True})
            started = time.perf_counter()
            events = runtime.invoke_endpoint_with_response_stream(
                EndpointName="demo", Body=streamed, ContentType="application/json"
            )["Body"]
            for event in events:
                part = event.get("PayloadPart", {}).get("Bytes", b"")
                if any(
                    _has_text(line[5:]) for line in part.split(b"\n") if line.startswith(b"data:")
                ):
                    boto_ttft.append(time.perf_counter() - started)
                    break
            for _ in events:
                pass
    finally:
        stack.terminate()
        engine.terminate()
        stack.wait(10)
        engine.wait(10)
    assert payload["choices"][0]["message"]["content"], "llmhost returned no text"
    med = statistics.median
    print(
        f"chat request      bare boto3 {med(bare_s) * 1000:7.1f} ms   "
        f"through llmhost {med(through_s) * 1000:7.1f} ms"
    )
    print(
        f"time to 1st token bare boto3 {med(boto_ttft) * 1000:7.1f} ms   "
        f"through llmhost {med(llm_ttft) * 1000:7.1f} ms   "
        f"(straight from the engine: {med(direct_ttft) * 1000:.1f} ms)"
    )
    return med(through_s) / med(bare_s), med(llm_ttft) / med(boto_ttft)


def function_sizes(skip_build: bool) -> float:
    """Build with sam in a scratch copy; size every function with its layers (MB)."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="llmhost-sam-"))
    build_dir = work / "build"
    if not skip_build:
        sam = ROOT / ".venv-sam" / "bin" / "sam"
        # `make bench-serving` puts the Lambda runtime's python3.13 on PATH, as for sam build.
        env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "SAM_CLI_TELEMETRY": "0"}
        subprocess.run(
            [
                str(sam),
                "build",
                "--build-dir",
                str(build_dir),
                "--cached",
                "--cache-dir",
                str(ROOT / ".aws-sam" / "cache"),
            ],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:
        build_dir = ROOT / ".aws-sam" / "build"

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, tag, node: None)
    template = yaml.load((build_dir / "template.yaml").read_text(), Loader=Loader)
    resources = template["Resources"]
    globals_layers = template.get("Globals", {}).get("Function", {}).get("Layers") or []

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    worst = 0.0
    print(f"{'function':<22} {'unzipped MB':>12}")
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        total = size(build_dir / name)
        # SAM appends a function's own Layers to the Globals' (it does not replace them).
        layers = [*globals_layers, *(resource["Properties"].get("Layers") or [])]
        external = 0.0
        for layer in layers:
            ref = layer.get("Ref") if isinstance(layer, dict) else None
            if ref and (build_dir / ref).is_dir():
                total += size(build_dir / ref)
            elif layer is None or not ref:
                external += LWA_LAYER_MB
        mb = total / 1e6 + external
        worst = max(worst, mb)
        note = f" (incl. ~{external:g} MB Lambda Web Adapter)" if external else ""
        print(f"{name:<22} {mb:>12.1f}{note}")
    shutil.rmtree(work, ignore_errors=True)
    return worst


def serve_engine_process(engine_port: int, front_port: int) -> None:
    """The "SageMaker" side: the engine, and a runtime front routing every endpoint to it."""
    from llmhost_local.engine import LocalEngine
    from llmhost_local.engine_server import serve_engine
    from llmhost_local.runtime_front import RuntimeFront, serve_front
    from llmhost_local.runtime_state import RouteTarget

    engine = LocalEngine(latency_ms=50, token_interval_ms=20)
    serve_engine(engine, port=engine_port)
    serve_front(
        RuntimeFront(lambda endpoint, component: RouteTarget.local(engine)), port=front_port
    )
    while True:
        time.sleep(3600)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-engine":
        serve_engine_process(int(sys.argv[2]), int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=41)
    parser.add_argument("--skip-build", action="store_true", help="size the existing .aws-sam")
    args = parser.parse_args()
    overhead, ttft = measure(args)
    largest = function_sizes(args.skip_build)
    print(f"overhead_ratio={overhead:.3f} ttft_ratio={ttft:.3f} max_unzipped_mb={largest:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
