"""Load benchmark: mixed traffic from many concurrent clients against the local stack.

The stack runs as ``make run`` runs it, in its own process (``python -m llmhost_local``,
SageMaker time compressed ``--speed`` times, documents in a temporary Qdrant), unless
``--api`` points at one already running. Each client keeps one keep-alive connection to the
control API (API Gateway in AWS) and signs every request with SigV4, as an AWS SDK would.
Clients pick, by weight, among:

- deployments: each client cycles its own deployment through create, get, patch, delete;
- chat: ``POST /v1/chat/completions`` to a model that is up;
- RAG: ``POST /v1/rag`` over a collection ingested before the run;
- ingest: ``POST /v1/collections/{name}/documents`` with a small batch.

The run stops after ``--requests`` requests or ``--duration`` seconds, whichever comes first.

What counts as an error: a transport failure (refused or reset connection, timeout, a reply
that is not HTTP) or a 5xx other than 503, which the API documents (with Retry-After) for a
model that cannot answer yet. A 4xx is the API's answer to this client (e.g. a 409 for a
change while one is under way): counted by status, not as an error. Latencies are whole
requests (send to last byte), all operations together.

Last line: ``requests=<n> errors=<n> p50_ms=<x> p99_ms=<x>``; the exit status is 1 if any
request was an error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ROOT = Path(__file__).resolve().parents[1]
ACCESS_KEY, SECRET_KEY, REGION = "llmhost-local", "llmhost-local-secret", "us-east-1"
MODEL = "bench"
COLLECTION = "bench"
MODEL_SPEC = {"name": MODEL, "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}
DOCUMENTS = [
    "Mount Etna is an active stratovolcano on the east coast of Sicily.",
    "Sourdough bread is leavened by wild yeast and lactic acid bacteria.",
    "Tides are caused mainly by the gravity of the Moon and the Sun.",
    "Comets have nuclei of ice and dust that sublimate near the Sun.",
]
QUESTIONS = ["Where is Mount Etna?", "How is sourdough leavened?", "What causes tides?"]
WEIGHTS = {"deployment": 25, "chat": 35, "rag": 25, "ingest": 15}


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # a few 4xx answers, to show them
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, operation: str, status: int | None, ms: float, error: str = "", detail: str = ""
    ) -> None:
        with self.lock:
            self.latencies_ms.append(ms)
            self.statuses[f"{operation} {status if status else 'transport'}"] += 1
            if error:
                self.errors.append(error)
            elif status and status >= 400 and len(self.refusals) < 5:
                self.refusals.append(f"{operation} {status}: {detail}")


class Client:
    """One keep-alive connection to the control API; every request SigV4-signed."""

    def __init__(self, api: str) -> None:
        self.api = api.rstrip("/")
        parts = urlsplit(self.api)
        self.host, self.port = str(parts.hostname), int(parts.port or 80)
        self.credentials = Credentials(ACCESS_KEY, SECRET_KEY)
        self.connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        request = AWSRequest(
            method=method,
            url=self.api + path,
            data=data,
            headers={"Content-Type": "application/json"},
        )
        SigV4Auth(self.credentials, "execute-api", REGION).add_auth(request)
        if self.connection is None:
            self.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            self.connection.request(method, path, body=data, headers=dict(request.headers))
            reply = self.connection.getresponse()
            return reply.status, reply.read()
        except Exception:
            self.connection.close()
            self.connection = None
            raise


class Worker:
    """A client's choice of operations; its own deployment goes create, get, patch, delete."""

    def __init__(self, index: int, api: str, seed: int) -> None:
        self.index = index
        self.client = Client(api)
        self.random = random.Random(seed + index)
        self.cycle = 0
        self.step = 0

    def next_request(self) -> tuple[str, str, str, Any]:
        operation = self.random.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        if operation == "chat":
            question = self.random.choice(QUESTIONS)
            body = {"model": MODEL, "messages": [{"role": "user", "content": question}]}
            return operation, "POST", "/v1/chat/completions", body
        if operation == "rag":
            body = {
                "model": MODEL,
                "collection": COLLECTION,
                "query": self.random.choice(QUESTIONS),
            }
            return operation, "POST", "/v1/rag", body
        if operation == "ingest":
            n = self.random.randrange(1000)
            docs = [{"id": f"c{self.index}-{n}", "text": self.random.choice(DOCUMENTS)}]
            return operation, "POST", f"/v1/collections/{COLLECTION}/documents", {"documents": docs}
        name = f"load-{self.index}-{self.cycle}"
        step = self.step
        self.step = (self.step + 1) % 4
        if self.step == 0:
            self.cycle += 1
        if step == 0:
            spec = {**MODEL_SPEC, "name": name}
            return "create", "POST", "/v1/deployments", spec
        if step == 1:
            return "get", "GET", f"/v1/deployments/{name}", None
        if step == 2:
            return "patch", "PATCH", f"/v1/deployments/{name}", {"generation": {"temperature": 0.2}}
        return "delete", "DELETE", f"/v1/deployments/{name}", None

    def run(self, tally: Tally, take: Callable[[], bool]) -> None:
        while take():
            operation, method, path, body = self.next_request()
            started = time.perf_counter()
            try:
                status, data = self.client.call(method, path, body)
            except Exception as error:
                ms = (time.perf_counter() - started) * 1000
                tally.add(operation, None, ms, f"{operation} {method} {path}: {error!r}")
                continue
            ms = (time.perf_counter() - started) * 1000
            error = ""
            if status >= 500 and status != 503:
                error = f"{operation} {method} {path}: {status} {data[:200]!r}"
            tally.add(operation, status, ms, error, data[:200].decode(errors="replace"))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_stack(speed: float, data_dir: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port, openai_port = free_port(), free_port()
    env = {**os.environ, "QDRANT_PATH": data_dir}
    command = [
        sys.executable,
        "-m",
        "llmhost_local",
        "--port",
        str(port),
        "--openai-port",
        str(openai_port),
        "--moto-port",
        "0",
        "--no-demo",
        "--speed",
        str(speed),
        # The API under concurrent clients, not a CPU model's speed: the instant stand-in.
        "--engine",
        "extractive",
    ]
    with log.open("wb") as out:
        stack = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return stack, f"http://127.0.0.1:{port}"


def prepare(api: str, timeout: float = 180) -> None:
    """A model that is up and a collection with documents, before the clock starts."""
    client = Client(api)
    deadline = time.monotonic() + timeout
    while True:  # the stack is starting
        try:
            status, _ = client.call("GET", "/v1/deployments")
            if status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the stack at {api} did not answer in {timeout:g} s")
        time.sleep(0.5)
    status, data = client.call("GET", f"/v1/deployments/{MODEL}")
    if status == 404:
        status, data = client.call("POST", "/v1/deployments", MODEL_SPEC)
        if status != 201:
            raise SystemExit(f"could not create the model: {status} {data[:300]!r}")
    while json.loads(client.call("GET", f"/v1/deployments/{MODEL}")[1])["status"] != "IN_SERVICE":
        if time.monotonic() > deadline:
            raise SystemExit(f"'{MODEL}' did not come up in {timeout:g} s")
        time.sleep(0.5)
    docs = [{"id": f"seed-{i}", "text": text} for i, text in enumerate(DOCUMENTS)]
    status, data = client.call(
        "POST", f"/v1/collections/{COLLECTION}/documents", {"documents": docs}
    )
    if status != 200:
        raise SystemExit(f"could not ingest the seed documents: {status} {data[:300]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (200)")
    parser.add_argument("--requests", type=int, default=2000, help="stop after this many (2000)")
    parser.add_argument("--duration", type=float, default=120, help="or these seconds (120)")
    parser.add_argument("--api", default=None, help="a running stack's control API URL")
    parser.add_argument("--speed", type=float, default=600, help="the stack's SageMaker speed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--stack-log",
        type=Path,
        default=Path(tempfile.gettempdir()) / "llmhost-load-stack.log",
        help="where the stack's console goes",
    )
    args = parser.parse_args(argv)

    stack = None
    with tempfile.TemporaryDirectory(prefix="llmhost-load-") as data_dir:
        api = args.api
        if api is None:
            stack, api = start_stack(args.speed, data_dir, args.stack_log)
        try:
            prepare(api)
            tally = Tally()
            left = [args.requests]
            lock = threading.Lock()
            deadline = time.monotonic() + args.duration

            def take() -> bool:
                with lock:
                    if left[0] <= 0 or time.monotonic() >= deadline:
                        return False
                    left[0] -= 1
                    return True

            workers = [Worker(i, api, args.seed) for i in range(args.clients)]
            started = time.monotonic()
            with ThreadPoolExecutor(args.clients) as pool:
                for future in [pool.submit(w.run, tally, take) for w in workers]:
                    future.result()
            elapsed = time.monotonic() - started
        finally:
            if stack is not None:
                stack.terminate()
                stack.wait(timeout=30)

    for line in tally.errors[:10]:
        print(f"error: {line}")
    for line in tally.refusals:
        print(f"refused (not an error): {line}")
    for key, count in sorted(tally.statuses.items()):
        print(f"  {key}: {count}")
    n = len(tally.latencies_ms)
    print(f"clients={args.clients} seconds={elapsed:.1f} rps={n / elapsed:.1f}")
    print(
        f"requests={n} errors={len(tally.errors)} "
        f"p50_ms={percentile(tally.latencies_ms, 0.5):.1f} "
        f"p99_ms={percentile(tally.latencies_ms, 0.99):.1f}"
    )
    return 1 if tally.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
