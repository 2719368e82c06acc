"""Ingest files or folders (.txt, .md, .jsonl) into a collection through the API.

    .venv/bin/python -m llmhost_local.ingest_folder ./docs --collection docs \\
        [--api http://127.0.0.1:8080]

Files are read with the same rules as objects dropped in the documents bucket (a .txt/.md
file is one document; each .jsonl line is a document with its own id), then posted in
batches, SigV4-signed like any API client. A .txt/.md document's id is its path relative to
the folder given (``guides/sleep.md``), or its file name for a file given by itself.
Batches are cut by bytes as well as by count, so no request carries more embedding work
than a timeout allows; each request's timeout grows with its size. One line per batch
shows progress (and one before a document too large to share a batch is sent, since it may
take minutes); rejected documents are named by file (and line, for .jsonl).

Works against ``make run`` (its local key pair is the default) or a deployed stack (pass
--api and real credentials via the usual AWS environment variables with --aws). A deployed
API answers within API Gateway's 29 s: documents much over ~100 KB are better dropped into
the documents bucket, where the ingest function has minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmhost.rag.ingest import parse_s3_object

SUFFIXES = {".txt", ".md", ".jsonl"}
# The API takes at most 100 documents a request (MAX_DOCUMENTS_PER_REQUEST).
MAX_BATCH_DOCUMENTS = 100
# Text bytes per request. Embedding on a laptop's CPU ran at ~7.5 KB/s (950 KB, 839 chunks,
# in 126 s): 64 KB is under ten seconds of work, well inside any timeout below.
MAX_BATCH_BYTES = 64_000
# Per request: a base plus time per KB of text. The largest document the API accepts (1 MB)
# took 126 s alone on a laptop, but 530 s for 950 KB on two cores shared with other work,
# which a quarter of the laptop's rate (0.5 s/KB: 535 s) only just covered: 1 s/KB gives it
# ~17 minutes. A timeout bounds a stuck server; a server that answers is never waited for.
BASE_TIMEOUT_S = 60.0
TIMEOUT_S_PER_KB = 1.0
# A batch refused with 429/503 (a busy or failing service) is sent again this many times.
RETRIES = 2
_BATCH_FIELD = re.compile(r"^documents\[(\d+)\](.*)$")


@dataclass
class Batch:
    documents: list[dict[str, Any]] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    files: set[str] = field(default_factory=set)
    size: int = 0

    def add(self, doc: dict[str, Any], location: str, file: str, size: int) -> None:
        self.documents.append(doc)
        self.locations.append(location)
        self.files.add(file)
        self.size += size

    @property
    def timeout_s(self) -> float:
        return BASE_TIMEOUT_S + TIMEOUT_S_PER_KB * self.size / 1000

    def where(self, field_path: str) -> str:
        """``notes.jsonl line 4 (text)`` for the server's ``documents[2].text``."""
        match = _BATCH_FIELD.match(field_path)
        if not match or int(match.group(1)) >= len(self.locations):
            return field_path
        rest = match.group(2).lstrip(".")
        location = self.locations[int(match.group(1))]
        return f"{location} ({rest})" if rest else location


def files_under(paths: list[Path]) -> list[tuple[Path, str]]:
    """Each file to read with its name for ids: relative to the folder it was found in."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                (p, p.relative_to(path).as_posix())
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in SUFFIXES
            )
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise SystemExit(f"{path}: no such file or folder")
    return found


def read_documents(paths: list[Path]) -> tuple[list[tuple[dict[str, Any], str, str]], list[str]]:
    """(document, location, file name) for each document, and the problems found reading."""
    documents: list[tuple[dict[str, Any], str, str]] = []
    problems: list[str] = []
    for path, name in files_under(paths):
        parsed = parse_s3_object(name, path.read_bytes())
        problems.extend(f"{r.field}: {r.reason}" for r in parsed.rejected)
        for doc, location in zip(parsed.documents, parsed.locations, strict=True):
            if isinstance(doc, dict):
                metadata = doc.get("metadata")
                if metadata is None or isinstance(metadata, dict):
                    doc["metadata"] = {**(metadata or {}), "source": name}
            documents.append((doc, location, name))
    return documents, problems


def batches(documents: list[tuple[dict[str, Any], str, str]]) -> Iterator[Batch]:
    """Consecutive documents, at most MAX_BATCH_DOCUMENTS and MAX_BATCH_BYTES of text a
    batch; a document larger than that goes alone."""
    batch = Batch()
    for doc, location, name in documents:
        text = doc.get("text") if isinstance(doc, dict) else None
        size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0
        full = len(batch.documents) >= MAX_BATCH_DOCUMENTS or batch.size + size > MAX_BATCH_BYTES
        if batch.documents and full:
            yield batch
            batch = Batch()
        batch.add(doc, location, name, size)
    if batch.documents:
        yield batch


def signed_post(
    url: str, body: dict[str, Any], credentials: Any, region: str, timeout_s: float
) -> tuple[int, Any, dict[str, str]]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    data = json.dumps(body).encode()
    request = AWSRequest(
        method="POST", url=url, data=data, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(credentials, "execute-api", region).add_auth(request)
    http = urllib.request.Request(url, data=data, headers=dict(request.headers), method="POST")
    try:
        with urllib.request.urlopen(http, timeout=timeout_s) as reply:
            return reply.status, json.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as error:
        raw = error.read() or b"{}"
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {"error": {"message": raw.decode("utf-8", "replace")[:300]}}
        return error.code, answer, dict(error.headers or {})


def send(
    url: str, batch: Batch, credentials: Any, region: str, timeout_s: float | None
) -> tuple[int, Any]:
    """POST one batch, sending it again after Retry-After when the API says it is busy.

    Raises TimeoutError when the API took longer than the batch's timeout.
    """
    for attempt in range(RETRIES + 1):
        try:
            status, body, headers = signed_post(
                url,
                {"documents": batch.documents},
                credentials,
                region,
                timeout_s or batch.timeout_s,
            )
        except TimeoutError as error:
            raise TimeoutError(str(error)) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError | socket.timeout):
                raise TimeoutError(str(error.reason)) from None
            raise
        if status not in (429, 503) or attempt == RETRIES:
            return status, body
        wait = headers.get("Retry-After") or headers.get("retry-after") or "5"
        time.sleep(min(float(wait) if wait.isdigit() else 5.0, 60.0))
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument(
        "--aws", action="store_true", help="sign with your AWS credentials, not the local keys"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for each request (default: 60 plus 1 per KB of text sent)",
    )
    args = parser.parse_args(argv)

    from botocore.credentials import Credentials

    if args.aws:
        import boto3

        session = boto3.Session()
        credentials, region = session.get_credentials(), session.region_name or "us-east-1"
    else:
        from llmhost_local.cloud import ACCESS_KEY, REGION, SECRET_KEY

        credentials, region = Credentials(ACCESS_KEY, SECRET_KEY), REGION

    documents, skipped = read_documents(args.paths)
    problems = len(skipped)
    for line in skipped:
        print(f"  skipped {line}", file=sys.stderr)
    url = f"{args.api.rstrip('/')}/v1/collections/{args.collection}/documents"
    planned = list(batches(documents))
    indexed = chunks = 0
    started = time.perf_counter()
    for number, batch in enumerate(planned, start=1):
        if batch.size > MAX_BATCH_BYTES:
            # A document over the batch budget goes alone and may take minutes to embed:
            # say so before waiting, not only once it is done.
            print(
                f"batch {number}/{len(planned)}: sending {', '.join(sorted(batch.files))} "
                f"({batch.size / 1000:.0f} KB) alone; embedding it takes a while (waiting up "
                f"to {args.timeout or batch.timeout_s:.0f} s)",
                flush=True,
            )
        sent = time.perf_counter()
        try:
            status, body = send(url, batch, credentials, region, args.timeout)
        except TimeoutError:
            problems += len(batch.documents)
            print(
                f"  batch {number}: no answer within {args.timeout or batch.timeout_s:.0f} s "
                f"for {', '.join(sorted(batch.files))}; the server may still finish it: check "
                f"GET /v1/collections/{args.collection}, or run again with a larger --timeout",
                file=sys.stderr,
            )
            continue
        if status >= 400 and "indexed" not in body:
            error = body.get("error", body) if isinstance(body, dict) else body
            message = error.get("message", error) if isinstance(error, dict) else error
            print(f"error {status}: {message}", file=sys.stderr)
            return 1
        done = body["indexed"]
        indexed += len(done)
        batch_chunks = sum(item["chunks"] for item in done)
        chunks += batch_chunks
        for item in body["rejected"]:
            problems += 1
            again = " (retryable: send it again later)" if item.get("retryable") else ""
            print(
                f"  rejected {batch.where(item['field'])}: {item['reason']}{again}", file=sys.stderr
            )
        print(
            f"batch {number}/{len(planned)}: {len(batch.files)} files, {len(done)}/"
            f"{len(batch.documents)} documents, {batch_chunks} chunks in "
            f"{time.perf_counter() - sent:.1f} s (elapsed {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    print(
        f"indexed {indexed} documents ({chunks} chunks) into '{args.collection}'"
        + (f"; {problems} problems above" if problems else "")
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    raise SystemExit(main())
