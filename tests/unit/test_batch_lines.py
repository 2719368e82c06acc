"""A batch's input checked line by line, its output and error files, and the runner choice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmhost.batches.lines import MAX_LINES, LineOutcome, parse_input, result_files
from llmhost.batches.record import Batch, can_move, line_job_id, result_file_id
from llmhost.batches.runners import FANOUT_MAX_LINES, ModelState, choose_runner

ENDPOINT = "/v1/chat/completions"


def _line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": "demo", "messages": [{"role": "user", "content": "hi"}], **body},
    }


def _jsonl(*rows: Any) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def test_valid_lines_are_numbered_as_the_file_is_and_keep_their_body() -> None:
    # Given two requests with a blank line between them, one asking for RAG
    content = _jsonl(_line("a"), "", _line("b", rag={"collection": "kb", "k": 2}))
    # When the file is checked
    lines, errors = parse_input(content, ENDPOINT)
    # Then both can run, numbered by the file's lines
    assert errors == []
    assert [(line.line, line.custom_id) for line in lines] == [(1, "a"), (3, "b")]
    assert lines[1].body["rag"] == {"collection": "kb", "k": 2}
    assert lines[0].model == "demo"


@pytest.mark.parametrize(
    ("row", "code", "param"),
    [
        ("{not json", "invalid_json_line", None),
        ('["a list"]', "invalid_json_line", None),
        ({**_line("x"), "custom_id": ""}, "missing_required_parameter", "custom_id"),
        ({**_line("x"), "method": "GET"}, "invalid_method", "method"),
        ({**_line("x"), "url": "/v1/embeddings"}, "invalid_url", "url"),
        ({**_line("x"), "body": "text"}, "missing_required_parameter", "body"),
        (_line("x", temperature=9), "invalid_request", "body.temperature"),
        (_line("x", stream=True), "invalid_request", "body.stream"),
        (_line("x", rag={"collection": "no spaces allowed"}), "invalid_request", None),
    ],
)
def test_a_line_that_cannot_run_is_named_with_its_number_and_field(
    row: Any, code: str, param: str | None
) -> None:
    # Given a valid line, then a bad one
    lines, errors = parse_input(_jsonl(_line("ok"), row), ENDPOINT)
    # Then the error names line 2 and what to fix, and the batch has no runnable bad line
    assert len(errors) == 1, errors
    assert errors[0].line == 2
    assert errors[0].code == code
    if param is not None:
        assert errors[0].param == param
    assert [line.custom_id for line in lines] == ["ok"]


def test_a_repeated_custom_id_is_refused_naming_the_first() -> None:
    lines, errors = parse_input(_jsonl(_line("a"), _line("b"), _line("a")), ENDPOINT)
    assert [(e.code, e.line) for e in errors] == [("duplicate_custom_id", 3)]
    assert [line.custom_id for line in lines] == ["a", "b"]
    assert "line 1" in errors[0].message


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"", "empty_file"), (b"\n \n", "empty_file"), (b"\xff\xfe", "invalid_file")],
)
def test_a_file_with_nothing_to_run_fails_as_a_whole(content: bytes, code: str) -> None:
    lines, errors = parse_input(content, ENDPOINT)
    assert lines == []
    assert [e.code for e in errors] == [code]


def test_a_file_over_the_line_limit_is_refused_before_any_line_is_read() -> None:
    row = json.dumps(_line("x"))
    lines, errors = parse_input(("\n".join([row] * (MAX_LINES + 1))).encode(), ENDPOINT)
    assert [e.code for e in errors] == ["too_many_lines"]
    assert lines == []


def test_result_files_keep_line_order_and_send_every_non_2xx_to_the_error_file() -> None:
    # Given four lines: answered, refused by the model, unknown model, never run
    lines, _ = parse_input(_jsonl(*(_line(f"c{i}") for i in range(4))), ENDPOINT)
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    outcomes = {
        3: LineOutcome.answered(answer),
        1: LineOutcome.answered(answer),
        2: LineOutcome.refused(404, "not_found", "no deployment named 'x'"),
    }
    cancelled = LineOutcome.unanswered("batch_cancelled", "cancelled")
    # When the files are written
    output, errors, completed, failed = result_files("batch_1", lines, outcomes, cancelled)
    out = [json.loads(row) for row in output.decode().splitlines()]
    err = [json.loads(row) for row in errors.decode().splitlines()]
    # Then each custom_id is in exactly one file, in line order, in OpenAI's shape
    assert [row["custom_id"] for row in out] == ["c0", "c2"]
    assert [row["custom_id"] for row in err] == ["c1", "c3"]
    assert (completed, failed) == (2, 2)
    assert out[0]["response"]["status_code"] == 200
    assert out[0]["response"]["body"] == answer
    assert out[0]["error"] is None
    assert err[0]["response"]["status_code"] == 404
    assert err[0]["response"]["body"]["error"]["code"] == "not_found"
    assert err[1]["response"] is None
    assert err[1]["error"] == {"code": "batch_cancelled", "message": "cancelled"}
    # And the ids are stable: finalising again writes the same files
    assert result_files("batch_1", lines, outcomes, cancelled)[:2] == (output, errors)


def test_ids_a_resumed_batch_finds_again() -> None:
    assert line_job_id("batch_abc", 7) == "batch_abc-000007"
    assert result_file_id("batch_abc", "output") == result_file_id("batch_abc", "output")
    assert result_file_id("batch_abc", "output") != result_file_id("batch_abc", "error")


def test_an_ended_batch_never_moves_again() -> None:
    assert can_move("validating", "in_progress")
    assert can_move("cancelling", "cancelled")
    assert not can_move("completed", "in_progress")
    assert not can_move("cancelled", "completed")
    assert not can_move("in_progress", "validating")


def test_public_batch_is_openais_object_with_the_runner_beside_it() -> None:
    batch = Batch(id="batch_1", endpoint=ENDPOINT, input_file_id="file-1", created_at=5)
    body = batch.moved("in_progress", 9, runner="fanout").public()
    assert body["object"] == "batch"
    assert body["in_progress_at"] == 9
    assert body["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert body["llmhost"] == {"runner": "fanout"}
    assert "runner" not in body


@pytest.mark.parametrize(
    ("asked", "lines", "live", "available", "chosen"),
    [
        ("fanout", 10_000, False, ["fanout", "transform"], "fanout"),
        ("transform", 3, True, ["fanout", "transform"], "transform"),
        (None, 10, True, ["fanout", "transform"], "fanout"),
        ("auto", FANOUT_MAX_LINES + 1, True, ["fanout", "transform"], "transform"),
        (None, 10, False, ["fanout", "transform"], "transform"),
        (None, FANOUT_MAX_LINES + 1, False, ["fanout"], "fanout"),
    ],
)
def test_the_runner_is_the_asked_one_else_from_size_and_state(
    asked: str | None, lines: int, live: bool, available: list[str], chosen: str
) -> None:
    assert choose_runner(asked, lines, ModelState(live=live), available) == chosen
