"""Ingest files or folders (.txt, .md, .jsonl) into a collection through the API.

Files are read with the same rules as objects dropped in the documents bucket (a .txt/.md
file is one document; each .jsonl line is a document with its own id), then posted in
batches. A .txt/.md document's id is its path relative to the folder given
(``guides/sleep.md``), or its file name for a file given by itself. Batches are cut by bytes
as well as by count, so no request carries more embedding work than a timeout allows; each
request's timeout grows with its size. Rejected documents are named by file (and line, for
.jsonl). What to show is the caller's (``IngestReport``): ``llmhost ingest`` draws a progress
bar, ``python -m llmhost_local.ingest_folder`` prints lines.

A deployed API answers within API Gateway's 29 s: documents much over ~100 KB are better
dropped into the documents bucket, where the ingest function has minutes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llmhost_cli.client import Client, Reply
from llmhost_cli.errors import CliFailure, RequestTimedOut, refusal_from_body

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

Document = tuple[dict[str, Any], str, str]  # (document, location, file name)


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
    """Each file to read with its name for ids: relative to the folder it was found in.
    A file given by name is read whatever its suffix (and refused, with the reason, if it is
    not one llmhost reads); in a folder, only .txt, .md and .jsonl files that are not hidden.

    Raises CliFailure for a path that does not exist."""
    return [(path, name) for path, name, given in _found(paths) if given or _readable(path)]


def ignored_under(paths: list[Path]) -> list[str]:
    """The files in the folders given that are not read (hidden ones aside: ``.git/``)."""
    return [name for path, name, given in _found(paths) if not given and not _readable(path)]


def _readable(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def _found(paths: list[Path]) -> list[tuple[Path, str, bool]]:
    """Each file given, or in a folder given and not hidden: (path, name for ids, given)."""
    found: list[tuple[Path, str, bool]] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path)
                if file.is_file() and not any(p.startswith(".") for p in relative.parts):
                    found.append((file, relative.as_posix(), False))
        elif path.is_file():
            found.append((path, path.name, True))
        else:
            raise CliFailure(f"{path}: no such file or folder", field="PATHS")
    return found


def read_documents(paths: list[Path]) -> tuple[list[Document], list[str]]:
    """(document, location, file name) for each document, and the problems found reading."""
    from llmhost.rag.ingest import parse_s3_object

    documents: list[Document] = []
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


def batches(documents: list[Document]) -> Iterator[Batch]:
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


def post_batch(client: Client, collection: str, batch: Batch, timeout_s: float) -> Reply:
    """One POST of a batch (raises RequestTimedOut, StackUnreachable)."""
    path = f"/v1/collections/{collection}/documents"
    return client.request("POST", path, {"documents": batch.documents}, timeout_s=timeout_s)


def send(client: Client, collection: str, batch: Batch, timeout_s: float | None) -> Reply:
    """POST one batch, sending it again after Retry-After when the API says it is busy.

    Raises RequestTimedOut when the API took longer than the batch's timeout."""
    for attempt in range(RETRIES + 1):
        reply = post_batch(client, collection, batch, timeout_s or batch.timeout_s)
        if reply.status not in (429, 503) or attempt == RETRIES:
            return reply
        wait = reply.headers.get("Retry-After") or reply.headers.get("retry-after") or "5"
        time.sleep(min(float(wait) if wait.isdigit() else 5.0, 60.0))
    raise AssertionError("unreachable")


class IngestReport(Protocol):
    """What an ingest tells its user, as it happens."""

    def planned(self, documents: int, batches: int) -> None: ...

    def skipped(self, problem: str) -> None: ...

    def ignored(self, name: str) -> None: ...

    def sending_alone(self, number: int, total: int, batch: Batch, timeout_s: float) -> None: ...

    def timed_out(self, number: int, batch: Batch, timeout_s: float, collection: str) -> None: ...

    def rejected(self, where: str, reason: str, retryable: bool) -> None: ...

    def batch_done(
        self, number: int, total: int, batch: Batch, indexed: int, chunks: int, seconds: float
    ) -> None: ...


@dataclass
class Outcome:
    indexed: int = 0
    chunks: int = 0
    problems: int = 0


def ingest(
    client: Client,
    paths: list[Path],
    collection: str,
    report: IngestReport,
    *,
    timeout_s: float | None = None,
) -> Outcome:
    """Read, batch and send ``paths`` into ``collection``; each problem goes to ``report``.

    Raises ApiRefused when the API refuses a batch as a whole (nothing of it landed),
    CliFailure for a path that does not exist, StackUnreachable."""
    documents, skipped = read_documents(paths)
    outcome = Outcome(problems=len(skipped))
    planned = list(batches(documents))
    report.planned(len(documents), len(planned))
    for name in ignored_under(paths):
        report.ignored(name)
    for line in skipped:
        report.skipped(line)
    for number, batch in enumerate(planned, start=1):
        wait = timeout_s or batch.timeout_s
        if batch.size > MAX_BATCH_BYTES:
            # A document over the batch budget goes alone and may take minutes to embed:
            # say so before waiting, not only once it is done.
            report.sending_alone(number, len(planned), batch, wait)
        sent = time.perf_counter()
        try:
            reply = send(client, collection, batch, timeout_s)
        except RequestTimedOut:
            outcome.problems += len(batch.documents)
            report.timed_out(number, batch, wait, collection)
            continue
        body = reply.body
        if reply.status >= 400 and not (isinstance(body, dict) and "indexed" in body):
            raise refusal_from_body(reply.status, body, reply.headers)
        done = body["indexed"]
        outcome.indexed += len(done)
        chunks = sum(item["chunks"] for item in done)
        outcome.chunks += chunks
        for item in body["rejected"]:
            outcome.problems += 1
            report.rejected(batch.where(item["field"]), item["reason"], bool(item.get("retryable")))
        report.batch_done(
            number, len(planned), batch, len(done), chunks, time.perf_counter() - sent
        )
    return outcome


class LineReport:
    """One line per batch on ``out``, one per problem on ``err`` (for logs and pipes).
    Subclasses change where lines go (``write``) and what else a batch moves (``advance``)."""

    def __init__(self, out: Any, err: Any) -> None:
        self.out, self.err = out, err
        self.started = time.perf_counter()

    def write(self, line: str, *, problem: bool = False) -> None:
        print(line, file=self.err if problem else self.out, flush=True)

    def advance(self, documents: int) -> None:
        """``documents`` more were answered for (landed, rejected or timed out)."""

    def planned(self, documents: int, batches: int) -> None:
        self.started = time.perf_counter()

    def skipped(self, problem: str) -> None:
        self.write(f"  skipped {problem}", problem=True)

    def ignored(self, name: str) -> None:
        self.write(f"  ignored {name}: not .txt, .md or .jsonl", problem=True)

    def sending_alone(self, number: int, total: int, batch: Batch, timeout_s: float) -> None:
        self.write(
            f"batch {number}/{total}: sending {', '.join(sorted(batch.files))} "
            f"({batch.size / 1000:.0f} KB) alone; embedding it takes a while (waiting up "
            f"to {timeout_s:.0f} s)"
        )

    def timed_out(self, number: int, batch: Batch, timeout_s: float, collection: str) -> None:
        self.advance(len(batch.documents))
        self.write(
            f"  batch {number}: no answer within {timeout_s:.0f} s for "
            f"{', '.join(sorted(batch.files))}; the server may still finish it: check "
            f"GET /v1/collections/{collection}, or run again with a larger --timeout",
            problem=True,
        )

    def rejected(self, where: str, reason: str, retryable: bool) -> None:
        again = " (retryable: send it again later)" if retryable else ""
        self.write(f"  rejected {where}: {reason}{again}", problem=True)

    def batch_done(
        self, number: int, total: int, batch: Batch, indexed: int, chunks: int, seconds: float
    ) -> None:
        self.advance(len(batch.documents))
        self.write(
            f"batch {number}/{total}: {len(batch.files)} files, {indexed}/"
            f"{len(batch.documents)} documents, {chunks} chunks in {seconds:.1f} s "
            f"(elapsed {time.perf_counter() - self.started:.1f} s)"
        )


def summary(outcome: Outcome, collection: str) -> str:
    return f"indexed {outcome.indexed} documents ({outcome.chunks} chunks) into '{collection}'" + (
        f"; {outcome.problems} problems above" if outcome.problems else ""
    )
