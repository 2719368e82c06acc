"""pydantic's validation errors as field issues a newcomer can act on.

pydantic's own messages speak of its internals: regular expressions, discriminator
functions, tags and union members. Every error type a request can produce gets a plain
message here, and the field path is the one the client wrote (no ``body``, no union tags).
"""

from __future__ import annotations

import re
from typing import Any

from llmhost.errors import FieldIssue

# The patterns request fields use, in words (tests check every pattern in the API has one).
PATTERN_HINTS = {
    r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,53}$": "must be letters, digits and hyphens, at most 54 "
    "characters, starting and ending with a letter or digit (e.g. 'llama3-8b')",
    r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$": "must be letters, digits, '_' and '-', at most 63 "
    "characters, starting with a letter or digit (e.g. 'docs')",
    r"^ml\.[a-z0-9-]+\.[a-z0-9]+$": "must be a SageMaker instance type such as 'ml.g5.2xlarge'",
    r"^\d+(\.\d+){0,2}$": "must be a version number such as '3.0' or '2.4.0'",
    # llmhost.jobs.record.ID_PATTERN; the Jobs API's next_token
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$": "must be a job id as POST /v1/jobs returned it "
    "(e.g. 'job-01jbz3kq8w5n6m7p9r0s1t2v3x')",
    r"^[A-Za-z0-9_-]{1,4096}$": "must be the next_token (next_cursor) of the previous page, "
    "unchanged",
    # llmhost.api.traces: a trace's id, and a feedback's name
    r"(^[0-9a-f]{32}$)|(^[A-Za-z][A-Za-z0-9]{0,15}-[A-Za-z0-9_-]{1,128}$)": "must be a trace id "
    "(32 lowercase hex digits) or the request id a reply carried (e.g. 'chatcmpl-...')",
    r"^[A-Za-z0-9_.:-]+$": "must be letters, digits, '_', '.', ':' and '-' (e.g. 'user')",
}
# Tags of llmhost's discriminated unions: pydantic puts them in the path; clients never do.
UNION_TAGS = frozenset(
    {
        "hub",
        "s3",
        "model-package",
        "dedicated",
        "shared",
        "serverless",
        "async",
        "string-content",
        "content-parts",
    }
)
# Where a request's part is named in the path: the client knows where it put it.
_SOURCES = frozenset({"body", "path", "query", "header", "cookie"})
# A member of an undiscriminated union, as pydantic labels it: "str", "list[str]"...
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|dict|list|none|[a-z-]+\[.*\])$")
_KINDS = {"kind()", "kind"}


def issues_from_validation_error(error: Any) -> list[FieldIssue]:
    """Turn pydantic errors (a ValidationError or Powertools' RequestValidationError) into
    field issues, expanding cross-field conflicts; one issue per field."""
    issues: list[FieldIssue] = []
    for item in error.errors():
        ctx = item.get("ctx") or {}
        if item.get("type") == "spec_conflict" and "issues" in ctx:
            issues.extend(FieldIssue(i["field"], i["message"]) for i in ctx["issues"])
            continue
        issues.append(FieldIssue(_field(item), plain_message(item)))
    return one_per_field(issues)


def _field(item: dict[str, Any]) -> str:
    loc = list(item.get("loc", ()))
    if loc and loc[0] in _SOURCES:
        loc = loc[1:]
    path = [
        str(p)
        for p in loc
        if not (isinstance(p, str) and (p in UNION_TAGS or _UNION_MEMBER.match(p)))
    ]
    ctx = item.get("ctx") or {}
    if item.get("type") in {"union_tag_invalid", "union_tag_not_found"} and (
        ctx.get("discriminator") in _KINDS or "'kind'" in str(ctx.get("discriminator"))
    ):
        path.append("kind")
    return ".".join(path) or "body"


def plain_message(item: dict[str, Any]) -> str:
    """One pydantic error in words: what is wrong and what is accepted."""
    kind = item.get("type", "")
    ctx = item.get("ctx") or {}
    value = item.get("input")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field; check its spelling against GET /v1/openapi.json"
    if kind in {"union_tag_invalid", "union_tag_not_found"}:
        expected = ctx.get("expected_tags", "")
        if kind == "union_tag_not_found":
            return f"needs a kind: one of {expected}"
        return f"'{ctx.get('tag')}' is not a known kind; use one of {expected}"
    if kind in {"literal_error", "enum"}:
        return f"must be one of {ctx.get('expected')}; got {_shown(value)}"
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(str(ctx.get("pattern")))
        return (
            f"{hint}; got {_shown(value)}" if hint else f"has the wrong form; got {_shown(value)}"
        )
    if kind == "string_too_long":
        size = f"is {len(value):,} characters" if isinstance(value, str) else "is too long"
        return f"{size}; at most {ctx.get('max_length'):,} are accepted"
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"must be at least {least} characters"
    if kind == "too_long":
        return f"has {ctx.get('actual_length')} items; at most {ctx.get('max_length')} are accepted"
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return f"needs at least {least} item{'s' if least != 1 else ''}"
    bounds = {
        "greater_than_equal": ("must be at least", "ge"),
        "greater_than": ("must be above", "gt"),
        "less_than_equal": ("must be at most", "le"),
        "less_than": ("must be below", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"{words} {ctx.get(key)}; got {_shown(value)}"
    types = {
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "list_type": "must be an array",
        "string_unicode": "must be valid Unicode text",
        "json_invalid": "is not valid JSON",
        "recursion_loop": "is nested too deeply",
    }
    if kind in types:
        return f"{types[kind]}; got {_shown(value)}"
    message = str(item.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if message.startswith("Input should be"):
        message = "must be" + message[len("Input should be") :]
    return message


def _shown(value: Any) -> str:
    """The rejected value, short: enough to recognise it, never a whole body."""
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def one_per_field(issues: list[FieldIssue]) -> list[FieldIssue]:
    """The issues with one line per field (a union reports each member's error; two rules
    may name the same field), messages joined by "; or "."""
    merged: dict[str, list[str]] = {}
    for issue in issues:
        messages = merged.setdefault(issue.field, [])
        if issue.message not in messages:
            messages.append(issue.message)
    return [FieldIssue(field, "; or ".join(messages)) for field, messages in merged.items()]
