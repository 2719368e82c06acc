"""RAG with the real model: 20 questions over the README, streamed through llmhost.

``make run``'s stack with the real engine (``--engine llama``: SmolLM2-135M-Instruct run by
llama.cpp on the CPU, ``llmhost_local.llama``) in a process of its own, its ``demo``
deployment serving that model. The README is ingested into a fresh collection with the same
code as ``llmhost ingest``, then each question goes through llmhost's OpenAI-compatible
streaming endpoint with the ``rag`` extension (k=5; temperature 0.2, top_p 0.9 as the model
card advises, a fixed seed so a run can be repeated; ``max_tokens`` 256), one at a time. Per
answer:

- time to first token: from sending the request to the first chunk carrying text;
- tokens/s: the engine's completion tokens (the stream's usage) after the first, over the
  time from the first text chunk to the chunk that ends the answer;
- cites: whether the answer cites at least one of the passages llmhost retrieved (the
  sources in the stream's first chunk), in one of two ways, each counted separately:
  ``marker``, a ``[n]`` naming a retrieved source's number (the RAG prompt numbers them
  and asks for such markers); ``verbatim``, 8 consecutive words of a retrieved passage
  (case and punctuation ignored) repeated in the answer.

Also the engine's load time (the model file into llama.cpp, timed in this process before
the stack starts). Prints a table and medians; last line:
``questions=<n> median_ttft_ms=<x> median_tokens_per_s=<x> cited=<n> cited_marker=<n>
cited_verbatim=<n> engine_load_s=<x>`` (``cited``: by either rule). It is a tiny model for
development: these numbers say how the stack serves a real model, not how good answers are.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What does make run start?",
    "How do I ingest the README into a collection?",
    "Which inference engines can a deployment use?",
    "What are the four hosting kinds?",
    "What does the reconciler do after SageMaker changes an endpoint's state?",
    "How do I make a model scale to zero when it is idle?",
    "What happens when I ask a model that is scaled to zero?",
    "Which embedding model embeds the documents?",
    "Where are the document vectors stored?",
    "How do I stream an answer with the openai package?",
    "What does the Prefer: wait header do?",
    "How do I submit a job to be answered later?",
    "How do I run a batch with OpenAI's Batch API?",
    "How do I export traces to Langfuse?",
    "How do I see the usage and cost of a deployment?",
    "How do I delete a deployment and everything it created?",
    "What does make test run?",
    "How do I deploy llmhost to AWS?",
    "How do I create an API key for the OpenAI-compatible endpoint?",
    "What is SnapStart used for in llmhost?",
]
WARM_UP = "What is llmhost?"  # not one of the questions: its prompt prefix is not reused
K = 5
# SmolLM2's model card samples at temperature 0.2, top_p 0.9 (the demo deployment's defaults
# too; greedy decoding makes this small model repeat itself); a fixed seed repeats a run.
SAMPLING = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 256, "seed": 1}
SPAN_WORDS = 8
MARKER = re.compile(r"\[(\d+)\]")
WORD = re.compile(r"\w+")


@dataclass
class Answer:
    question: str
    text: str
    ttft_s: float
    tokens_per_s: float | None
    completion_tokens: int
    sources: list[dict[str, Any]]
    marker: bool
    verbatim: bool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_load_seconds() -> float:
    """The model file loaded into llama.cpp, as the stack's engine loads it (then freed)."""
    from llmhost_local.llama import LlamaBackend

    backend = LlamaBackend()
    try:
        return float(backend.load_seconds)
    finally:
        backend.close()


def start_stack(api_port: int, openai_port: int) -> subprocess.Popen[bytes]:
    """``make run`` with the real engine, its state in a fresh folder, quiet."""
    moto_port = free_port()
    env = {
        **os.environ,
        "PYDANTIC_DISABLE_PLUGINS": "__all__",
        "QDRANT_PATH": tempfile.mkdtemp(prefix="llmhost-bench-llm-"),
        # As bench/serving.py: a warm Lambda environment reads the registry once per 10 s.
        "ROUTE_CACHE_S": str(10 * 600),
    }
    return subprocess.Popen(
        [
            sys.executable, "-m", "llmhost_local", "--engine", "llama",
            "--port", str(api_port), "--openai-port", str(openai_port),
            "--moto-port", str(moto_port), "--speed", "600", "--drift-seconds", "3600",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def post(
    conn: http.client.HTTPConnection, path: str, body: dict[str, Any]
) -> http.client.HTTPResponse:
    from llmhost_local.cloud import LOCAL_API_KEY

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {LOCAL_API_KEY}"}
    try:
        conn.request("POST", path, json.dumps(body), headers)
        return conn.getresponse()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        conn.close()  # the server closed the idle keep-alive connection: once more, anew
        conn.request("POST", path, json.dumps(body), headers)
        return conn.getresponse()


def wait_for_model(conn: http.client.HTTPConnection, timeout: float = 180) -> str:
    """Until the demo deployment answers (it comes up in a few seconds); its model id."""
    deadline = time.monotonic() + timeout
    body = b""
    while time.monotonic() < deadline:
        try:
            reply = post(
                conn,
                "/v1/chat/completions",
                {
                    "model": "demo",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4,
                },
            )
            body = reply.read()
            if reply.status == 200:
                return str(json.loads(body)["model"])
        except OSError:
            conn.close()
        time.sleep(0.5)
    raise SystemExit(f"llmhost never served the demo model: {body[:300]!r}")


def ingest_readme(api: str, collection: str) -> None:
    from llmhost_local import ingest_folder

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = ingest_folder.main(
            [str(ROOT / "README.md"), "--collection", collection, "--api", api]
        )
    if code != 0:
        raise SystemExit(f"ingesting README.md failed ({code}):\n{out.getvalue()}")


def ask(conn: http.client.HTTPConnection, question: str, collection: str) -> Answer:
    body = {
        "model": "demo",
        "messages": [{"role": "user", "content": question}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **SAMPLING,
        "rag": {"collection": collection, "k": K},
    }
    started = time.perf_counter()
    reply = post(conn, "/v1/chat/completions", body)
    if reply.status != 200:
        raise SystemExit(f"{question!r}: {reply.status} {reply.read()[:500]!r}")
    first = last = None
    sources: list[dict[str, Any]] = []
    parts: list[str] = []
    usage: dict[str, Any] = {}
    while line := reply.readline():
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            reply.read()  # the stream's end, so the connection can carry the next request
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise SystemExit(f"{question!r}: the stream failed: {chunk['error']}")
        sources = (chunk.get("llmhost") or {}).get("sources", sources)
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                first = first or time.perf_counter()
                parts.append(text)
            if choice.get("finish_reason"):
                last = time.perf_counter()
    if first is None or last is None:
        raise SystemExit(f"{question!r}: the stream carried no text or never finished")
    completion = int(usage.get("completion_tokens") or 0)
    generation_s = last - first
    rate = (completion - 1) / generation_s if completion > 1 and generation_s > 0 else None
    text = "".join(parts)
    return Answer(
        question,
        text,
        first - started,
        rate,
        completion,
        sources,
        cites_by_marker(text, sources),
        cites_verbatim(text, sources, readme()),
    )


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def cites_by_marker(text: str, sources: list[dict[str, Any]]) -> bool:
    """A ``[n]`` in the answer names one of the retrieved sources."""
    numbers = {int(s["index"]) for s in sources}
    return any(int(n) in numbers for n in MARKER.findall(text))


def cites_verbatim(text: str, sources: list[dict[str, Any]], document: str) -> bool:
    """Some run of ``SPAN_WORDS`` words of a retrieved passage (``document[start:end]``, the
    chunk's offsets) appears in the answer, case and punctuation ignored."""
    words = [w.lower() for w in WORD.findall(text)]
    spans = {tuple(words[i : i + SPAN_WORDS]) for i in range(len(words) - SPAN_WORDS + 1)}
    for source in sources:
        if source.get("start") is None or source.get("end") is None:
            continue
        passage = [w.lower() for w in WORD.findall(document[source["start"] : source["end"]])]
        for i in range(len(passage) - SPAN_WORDS + 1):
            if tuple(passage[i : i + SPAN_WORDS]) in spans:
                return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="the first N")
    parser.add_argument("--show", action="store_true", help="print every answer in full")
    args = parser.parse_args()

    from llmhost_local.llama import MODEL_ID, unavailable

    why = unavailable()
    if why:
        print(f"the real engine is not available: {why}")
        return 1
    load_s = engine_load_seconds()
    api_port, openai_port = free_port(), free_port()
    stack = start_stack(api_port, openai_port)
    collection = f"readme-{uuid.uuid4().hex[:8]}"
    answers: list[Answer] = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", openai_port, timeout=300)
        model = wait_for_model(conn)
        if model != "demo" and MODEL_ID not in model:
            print(f"note: the demo deployment answered as {model!r}")
        ingest_readme(f"http://127.0.0.1:{api_port}", collection)
        ask(conn, WARM_UP, collection)  # the embedder, retrieval, the model's pages
        for question in QUESTIONS[: args.questions]:
            answers.append(ask(conn, question, collection))
    finally:
        stack.terminate()
        try:
            stack.wait(15)
        except subprocess.TimeoutExpired:
            stack.kill()
            stack.wait()

    print(f"model: {MODEL_ID} (llama.cpp), loaded in {load_s:.2f} s")
    print(
        f"{len(answers)} RAG questions over README.md (k={K}, {json.dumps(SAMPLING)}), "
        "one at a time through the OpenAI-compatible streaming endpoint; srcs: the passages "
        "packed into the prompt"
    )
    print(
        f"{'#':>2} {'ttft ms':>8} {'tok/s':>6} {'tokens':>6} {'srcs':>4} {'[n]':>4} {'span':>4}"
        "  question"
    )
    for i, a in enumerate(answers, start=1):
        rate = f"{a.tokens_per_s:6.1f}" if a.tokens_per_s is not None else f"{'-':>6}"
        print(
            f"{i:>2} {a.ttft_s * 1000:8.0f} {rate} {a.completion_tokens:>6} {len(a.sources):>4} "
            f"{'yes' if a.marker else 'no':>4} {'yes' if a.verbatim else 'no':>4}  {a.question}"
        )
        if args.show:
            print(f"     {a.text!r}")
    med = statistics.median
    ttft_ms = med(a.ttft_s for a in answers) * 1000
    rates = [a.tokens_per_s for a in answers if a.tokens_per_s is not None]
    rate_med = med(rates) if rates else 0.0
    marker = sum(a.marker for a in answers)
    verbatim = sum(a.verbatim for a in answers)
    cited = sum(a.marker or a.verbatim for a in answers)
    print(
        f"cites >= 1 retrieved source: {cited}/{len(answers)} ([n] naming a retrieved source: "
        f"{marker}; {SPAN_WORDS}+ words verbatim from a retrieved passage: {verbatim})"
    )
    print(f"median time to first token {ttft_ms:.0f} ms, median {rate_med:.1f} tokens/s")
    print(
        f"questions={len(answers)} median_ttft_ms={ttft_ms:.0f} median_tokens_per_s={rate_med:.1f} "
        f"cited={cited} cited_marker={marker} cited_verbatim={verbatim} engine_load_s={load_s:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
