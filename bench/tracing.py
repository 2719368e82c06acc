"""What recording a trace costs a request: per-request latency with tracing on and off.

One local stack in this process (``make run``'s: moto's DynamoDB over HTTP for the traces
table, the local engine for the model, embedded Qdrant for the documents), and the serving
function's API Gateway front on a port, called over loopback with SigV4 as a client would.
Each round sends the same request in each mode, in a shuffled order, so drift and warm-up
fall on every mode alike:

- ``off``: no request observers at all (nothing watched, nothing written);
- ``built``: the trace recorder with a store that does everything but the network call (the
  trace built, redacted, cut to fit and encoded as DynamoDB's JSON): llmhost's own CPU cost;
- ``traced``: the trace recorder only (``TraceContent`` redacted, every request sampled: one
  PutItem per request, before the answer returns);
- ``all``: the trace recorder and the usage counters, as the stack runs.

Printed: the median (and p90) per mode for RAG (embed, retrieve, generate) and for chat, and
the ratio of the medians. Last line: ``rag_traced_ratio=<x> chat_traced_ratio=<y>``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

MODES = ("off", "built", "traced", "all")
QUESTION = "Where is Mount Etna, and is it active?"
DOCUMENTS = [
    "Mount Etna is an active stratovolcano on the east coast of Sicily, Italy.",
    "Sourdough bread is leavened by wild yeast and lactic acid bacteria.",
    "The Danube flows through ten countries before reaching the Black Sea.",
    "Contact the support desk at help@example.com or +44 20 7946 0958.",
]


class Client:
    """One keep-alive connection to the serving API; every request SigV4-signed."""

    def __init__(self, api: str) -> None:
        from botocore.credentials import Credentials

        from llmhost_local.cloud import ACCESS_KEY, SECRET_KEY

        parts = urlsplit(api)
        self.api = api.rstrip("/")
        self.connection = http.client.HTTPConnection(str(parts.hostname), int(parts.port or 80))
        self.credentials = Credentials(ACCESS_KEY, SECRET_KEY)

    def post(self, path: str, body: Any) -> tuple[int, dict[str, Any], float]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        from llmhost_local.cloud import REGION

        data = json.dumps(body).encode()
        request = AWSRequest(
            method="POST",
            url=self.api + path,
            data=data,
            headers={"Content-Type": "application/json"},
        )
        SigV4Auth(self.credentials, "execute-api", REGION).add_auth(request)
        started = time.perf_counter()
        self.connection.request("POST", path, body=data, headers=dict(request.headers))
        reply = self.connection.getresponse()
        raw = reply.read()
        elapsed = (time.perf_counter() - started) * 1000
        return reply.status, json.loads(raw), elapsed


def built_only(recorder: Any) -> Any:
    """The recorder with a store that encodes the item as a PutItem would, and sends nothing."""
    from llmhost.traces.recorder import TraceRecorder
    from llmhost.traces.store import TraceStore, fit, item_from_view

    class Unsent(TraceStore):
        def put(self, view: dict[str, Any], expires_at_s: int) -> dict[str, Any]:
            stored = fit(view)
            self._encode(item_from_view(stored, expires_at_s))
            return stored

    return TraceRecorder(
        Unsent(None, "unsent"),
        sample_rate=recorder.sample_rate,
        content=recorder.content,
        retention_days=recorder.retention_days,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=150, help="requests per mode and kind")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    os.environ.setdefault("QDRANT_PATH", tempfile.mkdtemp(prefix="llmhost-bench-tracing-"))
    os.environ["POWERTOOLS_LOG_LEVEL"] = "ERROR"
    # As bench/serving.py: a warm Lambda environment reads the registry once per 10 s at most.
    os.environ.setdefault("ROUTE_CACHE_S", str(10 * 600))
    from llmhost import runtime
    from llmhost_local import runner
    from llmhost_local.cloud import LocalCloud

    cloud = LocalCloud(moto_port=0, speed=600, drift_seconds=3600)
    cloud.log = lambda line: None
    cloud.start()
    server = runner.serve(0, cloud)
    try:
        cloud.create_demo(scale_to_zero=False)
        deadline = time.monotonic() + 180
        while runtime.registry().get("demo").status != "IN_SERVICE":
            if time.monotonic() > deadline:
                raise SystemExit("demo did not come up in 180 s")
            time.sleep(0.2)
        runtime.collections().add_documents(
            "docs", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(DOCUMENTS)]
        )
        traced = runtime.trace_observers()
        usage = runtime.usage_observers()
        if not traced:
            raise SystemExit("the local stack records no traces (TRACES_TABLE unset?)")
        observers = {
            "off": [],
            "built": [built_only(traced[0])],
            "traced": traced,
            "all": [*traced, *usage],
        }
        print(
            f"trace settings: {runtime.trace_settings().model_dump()} "
            f"(usage observers: {[type(o).__name__ for o in usage]})"
        )
        client = Client(runner.url_of(server))
        kinds = {
            "rag": ("/v1/rag", {"model": "demo", "collection": "docs", "query": QUESTION}),
            "chat": (
                "/v1/chat/completions",
                {"model": "demo", "messages": [{"role": "user", "content": QUESTION}]},
            ),
        }
        samples: dict[tuple[str, str], list[float]] = {(k, m): [] for k in kinds for m in MODES}
        order = random.Random(12)
        for round_ in range(args.warmup + args.rounds):
            for kind, (path, body) in kinds.items():
                modes = list(MODES)
                order.shuffle(modes)
                for mode in modes:
                    runtime.override(request_observers=observers[mode])
                    status, answer, ms = client.post(path, body)
                    if status != 200:
                        raise SystemExit(f"{kind} ({mode}): {status} {answer}")
                    if round_ >= args.warmup:
                        samples[(kind, mode)].append(ms)
        now = time.time()
        stored = runtime.trace_store().list(since_s=now - 3600, until_s=now, limit=5)
    finally:
        server.shutdown()
        cloud.stop()

    def p90(values: list[float]) -> float:
        return sorted(values)[int(0.9 * (len(values) - 1))]

    med = statistics.median
    print(f"{args.rounds} requests per mode and kind, interleaved (modes shuffled each round)")
    print(f"{'kind':5} {'mode':7} {'median ms':>10} {'p90 ms':>8}")
    for (kind, mode), values in samples.items():
        print(f"{kind:5} {mode:7} {med(values):10.2f} {p90(values):8.2f}")
    ratios = {}
    for kind in kinds:
        off = med(samples[(kind, "off")])
        ratios[kind] = med(samples[(kind, "traced")]) / off
        added = med(samples[(kind, "traced")]) - off
        built = med(samples[(kind, "built")]) - off
        print(
            f"{kind}: traced/off {ratios[kind]:.3f} ({added:+.2f} ms; built but not sent "
            f"{built:+.2f} ms), all/off {med(samples[(kind, 'all')]) / off:.3f}"
        )
    print(f"traces listed afterwards: {len(stored.traces)} (newest: {stored.traces[0]['id']})")
    print(f"rag_traced_ratio={ratios['rag']:.3f} chat_traced_ratio={ratios['chat']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
