"""A batch's input file checked line by line, and its output and error files (pure).

Input: JSONL, one request a line, ``{"custom_id", "method": "POST", "url", "body"}``, the body
checked as the chat route checks it (``rag`` included). A file with any line that cannot run
fails the batch at validation, with OpenAI's ``errors`` naming each such line (the first
``MAX_REPORTED_ERRORS``). A line that is valid but fails when it runs (an unknown model, a
prompt too long for it) is the error file's, and never fails the batch.

Output: one JSON line per input line, in input order, ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}``: a 2xx response to the output file,
anything else (an error response, or no response at all, ``error`` saying why) to the error
file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from llmhost.api.body import MAX_JSON_DEPTH, InvalidBody, InvalidJson, parse_json_body
from llmhost.batches.record import BatchError, line_request_id
from llmhost.field_errors import issues_from_validation_error
from llmhost.serving.requests import ChatCompletionRequest

# OpenAI's limit on requests in one batch.
MAX_LINES = 50_000
MAX_CUSTOM_ID_CHARS = 512
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True)
class BatchLine:
    """One runnable line: its number (from 1), its custom_id and its request body."""

    line: int
    custom_id: str
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body["model"])


@dataclass(frozen=True)
class LineOutcome:
    """What became of a line: a response (``status_code`` and ``body``), or, when it got
    none (cancelled, expired, failed before reaching a model), ``error`` {code, message}."""

    status_code: int | None = None
    body: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @classmethod
    def answered(cls, body: dict[str, Any]) -> LineOutcome:
        return cls(status_code=200, body=body)

    @classmethod
    def refused(cls, status_code: int, code: str, message: str) -> LineOutcome:
        """An error response, in OpenAI's error body (what the chat route would answer)."""
        from llmhost.serving.http_app import openai_error

        return cls(status_code=status_code, body=openai_error(status_code, code, message))

    @classmethod
    def unanswered(cls, code: str, message: str) -> LineOutcome:
        return cls(error={"code": code, "message": message})


def parse_input(content: bytes, endpoint: str) -> tuple[list[BatchLine], list[BatchError]]:
    """The runnable lines of ``content`` and the errors of the others (empty when every line
    can run). Blank lines are skipped but counted, so a line number is the file's."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        return [], [
            BatchError(
                code="invalid_file",
                message=f"the file is not UTF-8 text (byte {error.start} is not); save it as "
                "UTF-8 JSONL",
            )
        ]
    lines: list[BatchLine] = []
    errors: list[BatchError] = []
    seen: dict[str, int] = {}
    numbered = [(n, raw) for n, raw in enumerate(text.splitlines(), start=1) if raw.strip()]
    if not numbered:
        return [], [BatchError(code="empty_file", message="the file has no request lines")]
    if len(numbered) > MAX_LINES:
        return [], [
            BatchError(
                code="too_many_lines",
                message=f"the file has {len(numbered):,} requests; a batch takes at most "
                f"{MAX_LINES:,}: split it into several batches",
            )
        ]
    for number, raw in numbered:
        parsed = _parse_line(number, raw, endpoint)
        if isinstance(parsed, BatchError):
            errors.append(parsed)
            continue
        first = seen.setdefault(parsed.custom_id, number)
        if first != number:
            errors.append(
                BatchError(
                    code="duplicate_custom_id",
                    message=f"custom_id '{parsed.custom_id[:80]}' is also on line {first}; "
                    "each line needs its own custom_id",
                    param="custom_id",
                    line=number,
                )
            )
            continue
        lines.append(parsed)
    return lines, errors[:MAX_REPORTED_ERRORS]


def _parse_line(number: int, raw: str, endpoint: str) -> BatchLine | BatchError:
    def error(code: str, message: str, param: str | None = None) -> BatchError:
        return BatchError(code=code, message=message, param=param, line=number)

    try:
        data = parse_json_body(raw)
    except (InvalidJson, InvalidBody) as invalid:
        return error("invalid_json_line", f"not a JSON object: {invalid.message}")
    if not isinstance(data, dict):
        return error("invalid_json_line", "each line must be a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return error(
            "missing_required_parameter", "custom_id must be a non-empty string", "custom_id"
        )
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return error(
            "invalid_custom_id",
            f"custom_id has {len(custom_id)} characters; at most {MAX_CUSTOM_ID_CHARS}",
            "custom_id",
        )
    if data.get("method") != "POST":
        return error("invalid_method", 'method must be "POST"', "method")
    if data.get("url") != endpoint:
        return error(
            "invalid_url",
            f"url is {str(data.get('url'))[:80]!r}; this batch's endpoint is {endpoint} and "
            "every line must name it",
            "url",
        )
    body = data.get("body")
    if not isinstance(body, dict):
        return error("missing_required_parameter", "body must be a JSON object", "body")
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as invalid:
        issues = issues_from_validation_error(invalid)
        summary = "; ".join(f"{i.field}: {i.message}" for i in issues[:3]) or "invalid"
        return error("invalid_request", summary, f"body.{issues[0].field}" if issues else "body")
    except RecursionError:
        return error("invalid_json_line", f"nested deeper than {MAX_JSON_DEPTH} levels")
    if request.stream:
        return error(
            "invalid_request", "a batch line cannot stream: leave stream out", "body.stream"
        )
    return BatchLine(number, custom_id, body)


def result_files(
    batch_id: str,
    lines: Sequence[BatchLine],
    outcomes: Mapping[int, LineOutcome],
    unfinished: LineOutcome,
) -> tuple[bytes, bytes, int, int]:
    """The output and error files for every line (in line order; a line with no outcome gets
    ``unfinished``), and how many lines succeeded and failed."""
    output: list[str] = []
    errors: list[str] = []
    for line in sorted(lines, key=lambda item: item.line):
        outcome = outcomes.get(line.line) or unfinished
        request_id = line_request_id(batch_id, line.line)
        entry = {
            "id": request_id,
            "custom_id": line.custom_id,
            "response": None
            if outcome.status_code is None
            else {
                "status_code": outcome.status_code,
                "request_id": request_id,
                "body": outcome.body,
            },
            "error": outcome.error,
        }
        (output if outcome.succeeded else errors).append(json.dumps(entry))
    return _jsonl(output), _jsonl(errors), len(output), len(errors)


def _jsonl(rows: list[str]) -> bytes:
    return "".join(row + "\n" for row in rows).encode()
