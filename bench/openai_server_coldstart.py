"""Cold start of the OpenAI-compatible server: the uvicorn/ASGI app against the ``http.server``
app it replaced, side by side in one run, interleaved, each in a fresh process.

Timed from inside the process (interpreter startup excluded): import the server module,
build the app, bind, start serving, and receive the first ``GET /health`` answer (what the
Lambda Web Adapter waits for before it forwards the first request), then the first
authenticated ``GET /v1/models``. The old server is read from git history
(``--old-commit``), so this needs a git checkout. Prints the medians in milliseconds.

    python bench/openai_server_coldstart.py [--runs 15] [--old-commit de2430f]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_PATH = "layers/llmhost/llmhost/serving/http_app.py"

PROBE = """
import time
t0 = time.perf_counter()
import http.client, importlib.util, threading
spec = importlib.util.spec_from_file_location("server_under_test", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from llmhost.serving.auth import ApiKeyAuth, hash_key

class Service:
    def models(self):
        return {{"object": "list", "data": []}}

service = Service()
auth = ApiKeyAuth(lambda: {{"bench": hash_key("k")}})
server = module.serve(module.ServingHttpApp(lambda: service, auth), port=0)
threading.Thread(target=server.serve_forever, daemon=True).start()
host, port = server.server_address[:2]
while True:
    try:
        connection = http.client.HTTPConnection(host, port, timeout=5)
        connection.request("GET", "/health")
        break
    except ConnectionRefusedError:
        time.sleep(0.001)
assert connection.getresponse().read()
t1 = time.perf_counter()
connection.request("GET", "/v1/models", headers={{"Authorization": "Bearer k"}})
reply = connection.getresponse()
assert reply.status == 200, reply.status
reply.read()
t2 = time.perf_counter()
print(t1 - t0, t2 - t0)
server.shutdown()
"""


def run_probe(path: Path) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "layers" / "llmhost")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(path=str(path))],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return float(out[0]) * 1000, float(out[1]) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--old-commit", default="de2430f")
    args = parser.parse_args()
    old_source = subprocess.run(
        ["git", "show", f"{args.old_commit}:{OLD_PATH}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    servers: dict[str, list[tuple[float, float]]] = {"http.server (old)": [], "uvicorn (new)": []}
    with tempfile.TemporaryDirectory() as scratch:
        old = Path(scratch) / "old_http_app.py"
        old.write_text(old_source)
        paths = {"http.server (old)": old, "uvicorn (new)": ROOT / OLD_PATH}
        run_probe(paths["uvicorn (new)"])  # warm the OS file cache for both
        run_probe(paths["http.server (old)"])
        for _ in range(args.runs):
            for name, path in paths.items():
                servers[name].append(run_probe(path))
    print(
        f"{'server':20} {'first /health ms':>17} {'first /v1/models ms':>20}"
        f"  (median of {args.runs})"
    )
    for name, samples in servers.items():
        health = statistics.median(s[0] for s in samples)
        models = statistics.median(s[1] for s in samples)
        print(f"{name:20} {health:17.1f} {models:20.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
