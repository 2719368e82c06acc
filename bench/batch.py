"""Batch benchmark: 1,000 OpenAI batch lines through the local stack, one worker crash injected.

The stack runs in this process as ``make run`` runs it (moto, the SageMaker stand-in, the
jobs queue delivered to the jobs function, the batch function, the OpenAI-compatible server
on a real socket), with the local engine answering each request in ``--latency-ms``. The
client is the real ``openai`` package: it uploads the file, creates the batch, polls it and
downloads the output and error files, as a user would.

One crash of the jobs worker is injected: the first time a worker has the answer of a line
and is about to record it, it dies (the job stays RUNNING under its lease, its message comes
back after the queue's visibility timeout, and another delivery takes the job over once the
lease has run out). Nothing may be lost or duplicated for it.

Side by side, in the same run, the same lines go straight to the same engine (its
``/v1/chat/completions``, in process, no HTTP), as many at once as the jobs function's
event source runs: the batch's overhead is its wall time over that one.

Last line: ``lines_done=<n> lost=<n> duplicated=<n> lines_per_s=<x> overhead_ratio=<x>``
(medians over ``--runs``); exit status 1 if a line was lost or duplicated, or no crash
happened.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-batch"
SPEC = {"name": MODEL, "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"}}


def _line(n: int) -> dict[str, Any]:
    return {
        "custom_id": f"line-{n}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Summarise document {n} in one line."}],
            "max_tokens": 32,
        },
    }


class CrashOnce:
    """Kills the jobs worker once, after it has a batch line's answer and before it records
    it (what a Lambda timeout or an out-of-memory kill looks like to the job)."""

    def __init__(self) -> None:
        self.crashed: list[str] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        from llmhost.jobs.service import Jobs

        original = Jobs.complete
        crash = self

        def complete(jobs: Any, job_id: str, **outcome: Any) -> bool:
            with crash._lock:
                if not crash.crashed and "-" in job_id and job_id.startswith("batch_"):
                    crash.crashed.append(job_id)
                    raise WorkerCrash(f"the worker died before recording {job_id}")
            return original(jobs, job_id, **outcome)

        Jobs.complete = complete  # type: ignore[method-assign]


class WorkerCrash(RuntimeError):
    pass


def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()

    os.environ.setdefault("QDRANT_PATH", tempfile.mkdtemp(prefix="llmhost-bench-batch-"))
    os.environ["POWERTOOLS_LOG_LEVEL"] = "ERROR"
    # At 600x a route cache of 10 cloud seconds lasts 17 ms and every line would read the
    # registry; a warm Lambda environment reads it once per 10 s (real) at most (as
    # bench/serving.py).
    os.environ.setdefault("ROUTE_CACHE_S", str(10 * 600))
    from openai import OpenAI

    from llmhost import runtime
    from llmhost.specs import parse_spec
    from llmhost_local import runner
    from llmhost_local.cloud import JOBS_POLLERS, LOCAL_API_KEY, LocalCloud

    cloud = LocalCloud(
        moto_port=0, speed=600, drift_seconds=3600, engine_latency_ms=args.latency_ms
    )
    cloud.log = lambda line: None
    cloud.start()
    servers = [runner.serve(0, cloud), cloud.start_openai_server(0)]
    crash = CrashOnce()
    crash.install()
    try:
        runtime.deployments().create(parse_spec(SPEC))
        _until("the model", lambda: runtime.registry().get(MODEL).status == "IN_SERVICE", 120)
        client = OpenAI(base_url=runner.url_of(servers[1]) + "/v1", api_key=LOCAL_API_KEY)
        # As many at once as the local jobs function runs (its pollers).
        concurrency = min(cloud.jobs_source.max_concurrency, JOBS_POLLERS)
        results = [
            _run(client, cloud, args.lines, concurrency, first=run == 0) for run in range(args.runs)
        ]
    finally:
        for server in servers:
            server.shutdown()
        cloud.stop()
    med = statistics.median
    lost = max(r["lost"] for r in results)
    duplicated = max(r["duplicated"] for r in results)
    for n, r in enumerate(results, start=1):
        print(
            f"run {n}: batch {r['batch_s']:.1f} s, engine directly {r['direct_s']:.1f} s "
            f"({concurrency} at once), {r['failed']} lines in the error file"
        )
    print(f"worker crashes injected: {len(crash.crashed)} ({', '.join(crash.crashed)})")
    print(
        f"lines_done={int(med(r['done'] for r in results))} lost={lost} "
        f"duplicated={duplicated} "
        f"lines_per_s={med(r['done'] / r['batch_s'] for r in results):.1f} "
        f"overhead_ratio={med(r['batch_s'] / r['direct_s'] for r in results):.2f}"
    )
    return 1 if lost or duplicated or not crash.crashed else 0


def _run(client: Any, cloud: Any, lines: int, concurrency: int, first: bool) -> dict[str, Any]:
    rows = [_line(n) for n in range(1, lines + 1)]

    # The same requests straight to the engine, as many at once as the jobs function runs.
    def direct(row: dict[str, Any]) -> None:
        body = json.dumps({**row["body"], "model": "tgi"}).encode()
        answer = cloud.engine.handle("POST", "/v1/chat/completions", body)
        assert answer.status == 200, answer.body[:200]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(direct, rows))
    direct_s = time.perf_counter() - started

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))
    started = time.perf_counter()
    with open(handle.name, "rb") as content:
        uploaded = client.files.create(file=content, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"llmhost_runner": "fanout"},
    )
    ended = _until(
        "the batch to end",
        lambda: (
            (b := client.batches.retrieve(batch.id)).status
            in {"completed", "failed", "expired", "cancelled"}
            and b
        ),
        1800,
    )
    batch_s = time.perf_counter() - started
    os.unlink(handle.name)
    if ended.status != "completed":
        raise SystemExit(f"the batch ended {ended.status}: {ended.errors}")
    seen: Counter[str] = Counter()
    failed = 0
    for file_id, is_error in ((ended.output_file_id, False), (ended.error_file_id, True)):
        if file_id:
            for row in client.files.content(file_id).text.splitlines():
                seen[json.loads(row)["custom_id"]] += 1
                failed += is_error
    expected = {row["custom_id"] for row in rows}
    return {
        "done": sum(1 for c in seen if c in expected),
        "lost": len(expected - set(seen)),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1) + len(set(seen) - expected),
        "failed": failed,
        "batch_s": batch_s,
        "direct_s": direct_s,
    }


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
