"""Deployment specs from files: YAML or JSON (JSON is YAML), ``-`` for standard input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from llmhost_cli.errors import CliFailure


def load_spec(path: str) -> dict[str, Any]:
    """The spec in ``path`` as a mapping. Raises CliFailure naming the file and the line of
    a syntax error, or saying what the file holds instead of a mapping."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CliFailure(f"cannot read {path}: {error}", field="SPEC") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise CliFailure(
            f"{path} is not valid YAML or JSON{where}: {problem}", field="SPEC"
        ) from None
    if not isinstance(data, dict):
        raise CliFailure(
            f"{path} holds {type(data).__name__}, not a deployment spec (a mapping with "
            "name, model, hosting...)",
            field="SPEC",
        )
    return data
