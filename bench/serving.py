"""Serving benchmark: what llmhost adds on top of the model, and how big its functions are.

Three processes, as in production: an engine behind a SageMaker runtime front, llmhost
(``make run`` calling that runtime as it would call SageMaker, ``--runtime-url``), and this
client. Two rows, each with its own engine and stack, one after the other:

- the extractive engine (the local TGI-protocol engine: 50 ms per reply, a token every 20 ms
  when streaming): what llmhost adds to a model of fixed, known timing;
- the real engine (``llmhost_local.llama``: SmolLM2-135M-Instruct run by llama.cpp on the
  CPU, no added delays), asked greedily (temperature 0) for a fixed ``max_tokens``, so both
  paths generate the same tokens (checked); the engine reads every prompt afresh (no
  prefix cache), so each request pays for its whole prompt. Skipped, with the reason, when
  the engine is not installed (``make llm-engine``).

In each row, measured side by side, interleaved, medians:

(a) a chat request through llmhost's OpenAI-compatible endpoint vs a bare boto3
    ``invoke_endpoint`` of the same engine (through a SageMaker runtime front, as boto3 needs);
(b) time to first token of a streamed chat through llmhost's OpenAI-compatible endpoint vs
    a bare boto3 ``invoke_endpoint_with_response_stream`` through the same runtime (straight
    from the engine is printed for reference);
(c) the unzipped size of the largest function with its layers after ``sam build``.

Last line: ``overhead_ratio=<a> ttft_ratio=<b> max_unzipped_mb=<c>`` (the extractive row)
followed by ``llm_overhead_ratio=<a> llm_ttft_ratio=<b>`` (the real engine's row; left out
when it was skipped).
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


def wait_http(
    port: int, path: str, timeout: float = 120, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Until something answers ``path`` on ``port`` (``process``, when given, must live)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the process serving port {port} ended ({process.returncode})")
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


def measure(args: argparse.Namespace, kind: str = "extractive") -> tuple[float, float]:
    """One row: an engine process of ``kind`` and a stack calling it; returns the overhead
    and time-to-first-token ratios (llmhost over bare boto3)."""
    import boto3

    from llmhost_local.cloud import LOCAL_API_KEY

    llm = kind == "llama"
    ports = engine_port, front_port, api_port, openai_port, moto_port, console_port = [
        free_port() for _ in range(6)
    ]
    if len(set(ports)) < len(ports):  # the system handed a port out twice: pick again
        return measure(args, kind)
    env = {**os.environ, "PYDANTIC_DISABLE_PLUGINS": "__all__"}
    # "AWS": the engine behind a SageMaker runtime front, in a process of its own, as the
    # endpoint runs on other machines in production; the engine's own API is published
    # too, for the direct measurements.
    engine = subprocess.Popen(
        [sys.executable, __file__, "--serve-engine", str(engine_port), str(front_port), kind],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    # llmhost: the local stack, calling that runtime as it would call SageMaker (with the
    # real engine, its demo deployment names that model, with the engine's token limits).
    stack_log = Path(tempfile.mkdtemp(prefix="llmhost-bench-log-")) / "stack.log"
    with stack_log.open("wb") as log:
        stack = subprocess.Popen(
            [
                sys.executable, "-m", "llmhost_local",
                "--port", str(api_port), "--openai-port", str(openai_port),
                "--moto-port", str(moto_port), "--console-port", str(console_port),
                "--speed", "600", "--drift-seconds", "3600",
                "--runtime-url", f"http://127.0.0.1:{front_port}",
                "--engine", kind,
            ],
            # At 600x a route cache of 10 cloud seconds lasts 17 ms, and every request would read
            # the registry; a warm Lambda environment reads it once per 10 s (real) at most.
            env={
                **env,
                "QDRANT_PATH": tempfile.mkdtemp(prefix="llmhost-bench-"),
                "ROUTE_CACHE_S": str(10 * 600),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert engine.stdout is not None
        ready = engine.stdout.readline().decode().split(maxsplit=2)
        if not ready or ready[0] != "ready":  # "ready <model id> <load seconds>"
            raise SystemExit(f"the {kind} engine did not start: {' '.join(ready[1:])}")
        model_id, load_s = ready[1], float(ready[2])
        wait_http(engine_port, "/health", process=engine)
        try:
            wait_http(openai_port, "/health", process=stack)
        except SystemExit as failed:
            tail = stack_log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{failed}; the stack's log ends:\n{tail}") from None
        auth = {"Authorization": f"Bearer {LOCAL_API_KEY}"}
        llmhost = http.client.HTTPConnection("127.0.0.1", openai_port, timeout=60)
        chat: dict[str, Any] = {"model": "demo", "messages": [{"role": "user", "content": PROMPT}]}
        if llm:
            # Greedy, a fixed length: both paths generate the same tokens.
            chat.update(max_tokens=args.llm_tokens, temperature=0)
        deadline = time.monotonic() + 60
        while True:  # the demo deployment comes up in about a second
            reply = post(llmhost, "/v1/chat/completions", chat, auth)
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
        tgi_body = json.dumps(
            {**chat, "model": "tgi"} if llm else {"model": "tgi", **chat, "max_tokens": 512}
        )
        bare = json.loads(
            runtime.invoke_endpoint(
                EndpointName="demo", Body=tgi_body, ContentType="application/json"
            )["Body"].read()
        )
        direct = http.client.HTTPConnection("127.0.0.1", engine_port, timeout=60)
        bare_s, through_s, direct_ttft, llm_ttft, boto_ttft = [], [], [], [], []
        for _ in range(args.llm_runs if llm else args.runs):
            started = time.perf_counter()
            runtime.invoke_endpoint(
                EndpointName="demo", Body=tgi_body, ContentType="application/json"
            )["Body"].read()
            bare_s.append(time.perf_counter() - started)

            started = time.perf_counter()
            reply = post(llmhost, "/v1/chat/completions", chat, auth)
            reply.read()
            through_s.append(time.perf_counter() - started)

            started = time.perf_counter()
            reply = post(
                direct, "/v1/chat/completions", {**chat, "model": "tgi", "stream": True}, {}
            )
            direct_ttft.append(first_stream_token(reply, started))

            started = time.perf_counter()
            reply = post(llmhost, "/v1/chat/completions", {**chat, "stream": True}, auth)
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
    answer = payload["choices"][0]["message"]["content"]
    assert answer, "llmhost returned no text"
    med = statistics.median
    if llm:
        usage = payload["usage"]
        same = answer == bare["choices"][0]["message"]["content"]
        print(
            f"real engine: {model_id} (llama.cpp, loaded in {load_s:.2f} s), greedy, "
            f"max_tokens {args.llm_tokens}: {usage['prompt_tokens']} prompt tokens, "
            f"{usage['completion_tokens']} generated, the same text through llmhost and bare: "
            f"{'yes' if same else 'NO'}"
        )
        if not same:
            raise SystemExit(
                f"the two paths generated different text:\n  llmhost: {answer!r}\n"
                f"  bare:    {bare['choices'][0]['message']['content']!r}"
            )
    else:
        print(f"extractive engine: {model_id} (50 ms per reply, a token every 20 ms streamed)")
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


def serve_engine_process(engine_port: int, front_port: int, kind: str) -> None:
    """The "SageMaker" side: the engine, and a runtime front routing every endpoint to it.
    Prints ``ready <model id> <load seconds>`` once it serves (``failed <why>`` if the model
    cannot load)."""
    from llmhost_local.engine import LocalEngine
    from llmhost_local.engine_server import serve_engine
    from llmhost_local.runtime_front import RuntimeFront, serve_front
    from llmhost_local.runtime_state import RouteTarget

    if kind == "llama":
        from llmhost_local.llama import EngineUnavailable, LlamaBackend, llama_engine

        try:
            backend = LlamaBackend()
        except EngineUnavailable as error:
            print(f"failed {error}", flush=True)
            raise SystemExit(1) from error
        engine = llama_engine(backend)
        load_s = backend.load_seconds
    else:
        engine = LocalEngine(latency_ms=50, token_interval_ms=20)
        load_s = 0.0
    serve_engine(engine, port=engine_port)
    serve_front(
        RuntimeFront(lambda endpoint, component: RouteTarget.local(engine)), port=front_port
    )
    print(f"ready {engine.model_id} {load_s:.4f}", flush=True)
    while True:
        time.sleep(3600)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-engine":
        serve_engine_process(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=41)
    parser.add_argument(
        "--llm-runs", type=int, default=21, help="rounds of the real engine's row (0: skip it)"
    )
    parser.add_argument(
        "--llm-tokens", type=int, default=32, help="max_tokens of the real engine's answers"
    )
    parser.add_argument("--skip-build", action="store_true", help="size the existing .aws-sam")
    args = parser.parse_args()
    overhead, ttft = measure(args)
    llm_keys = ""
    from llmhost_local.llama import unavailable

    why = unavailable() if args.llm_runs > 0 else "--llm-runs 0"
    if os.environ.get("LLMHOST_ENGINE") == "extractive":
        why = "LLMHOST_ENGINE=extractive"
    if why:
        print(f"real engine: skipped ({why})")
    else:
        llm_overhead, llm_ttft = measure(args, "llama")
        llm_keys = f" llm_overhead_ratio={llm_overhead:.3f} llm_ttft_ratio={llm_ttft:.3f}"
    largest = function_sizes(args.skip_build)
    print(
        f"overhead_ratio={overhead:.3f} ttft_ratio={ttft:.3f} max_unzipped_mb={largest:.1f}"
        f"{llm_keys}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
