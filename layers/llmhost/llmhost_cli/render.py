"""How the CLI shows what the API answered: tables and lines with rich, or JSON for scripts.

Consoles are built without markup or highlighting: ids, prompts and answers are printed as
they are (a source id such as ``[notes.md]`` is not a style tag).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Lines for a pipe or a file are never folded to a terminal's width.
UNFOLDED_WIDTH = 4000


def console(stderr: bool = False) -> Console:
    shown = Console(stderr=stderr, markup=False, highlight=False, soft_wrap=False)
    if not shown.is_terminal and "COLUMNS" not in os.environ:
        shown.width = UNFOLDED_WIDTH
    return shown


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


STATUS_STYLES = {
    "IN_SERVICE": "green",
    "FAILED": "red",
    "DELETED": "dim",
    "SLEEPING": "blue",
    "DELETING": "yellow",
    "CREATING": "yellow",
    "UPDATING": "yellow",
    "PENDING": "yellow",
}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def deployments_table(items: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "STATUS", "HOSTING", "MODEL", "GEN", "UPDATED"):
        table.add_column(column, no_wrap=True)
    table.add_column("REASON", overflow="fold")
    for item in items:
        model = item.get("model") or {}
        table.add_row(
            item["name"],
            status_text(item.get("status", "")),
            str(item.get("hosting", "")),
            str(model.get("model_id") or model.get("s3_uri") or model.get("kind") or ""),
            str(item.get("generation", "")),
            str(item.get("updated_at", "")),
            str(item.get("status_reason", "")),
        )
    return table


def history_line(entry: dict[str, Any]) -> Text:
    """``02:10:04  CREATING    CreateEndpoint demo  — waiting for SageMaker``"""
    at = str(entry.get("at", ""))
    clock = at[11:19] if len(at) >= 19 else at
    line = Text(f"  {clock}  ")
    status = str(entry.get("status", ""))
    line.append(f"{status:<11}", style=STATUS_STYLES.get(status, ""))
    line.append(f" {entry.get('event', '')}")
    if entry.get("reason"):
        line.append(f"  ({entry['reason']})", style="dim")
    return line


def deployment_details(record: dict[str, Any], history: int) -> list[Any]:
    """The lines of ``llmhost status``: what it is, where it stands, what it runs on."""
    spec = record.get("spec") or {}
    model = spec.get("model") or {}
    hosting = spec.get("hosting") or {}
    head = Text(f"{record['name']}  ")
    head.append_text(status_text(record.get("status", "")))
    if record.get("status_reason"):
        head.append(f"  {record['status_reason']}")
    lines: list[Any] = [head]
    facts = {
        "model": model.get("model_id") or model.get("s3_uri") or model.get("kind"),
        "hosting": " ".join(
            str(hosting[k]) for k in ("kind", "instance_type", "pool") if hosting.get(k)
        ),
        "desired": record.get("desired_state"),
        "generation": record.get("generation"),
        "endpoint": record.get("endpoint_name"),
        "updated": record.get("updated_at"),
    }
    resources = {k: v for k, v in (record.get("resources") or {}).items() if v}
    facts.update({k.replace("_", " "): v for k, v in resources.items()})
    for key, value in facts.items():
        if value not in (None, ""):
            lines.append(Text(f"  {key:<19}{value}"))
    entries = (record.get("history") or [])[-history:] if history > 0 else []
    if entries:
        lines.append(Text("history:"))
        lines.extend(history_line(e) for e in entries)
    return lines


def flat(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested JSON as (dotted key, value) rows."""
    if isinstance(data, dict):
        rows: list[tuple[str, str]] = []
        for key, value in data.items():
            rows.extend(flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(data, list) and data and any(isinstance(v, dict | list) for v in data):
        rows = []
        for i, value in enumerate(data):
            rows.extend(flat(value, f"{prefix}[{i}]"))
        return rows
    if isinstance(data, list):
        return [(prefix, ", ".join(str(v) for v in data))]
    return [(prefix, "" if data is None else str(data))]


def key_values(data: Any) -> Table:
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in flat(data):
        table.add_row(key, value)
    return table


def sources_lines(sources: list[dict[str, Any]]) -> list[str]:
    """``[1] guides/setup.md#3  score 0.612``: the number the answer cites, the chunk (or the
    document), its score."""
    lines = []
    for number, source in enumerate(sources, start=1):
        score = source.get("score")
        shown = f"{score:.3f}" if isinstance(score, int | float) else "-"
        where = source.get("chunk") or source.get("id")
        lines.append(f"[{source.get('index', number)}] {where}  score {shown}")
    return lines


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "STATUS", "TYPE", "MODEL", "CREATED", "FINISHED", "ERROR"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        error = job.get("error") or {}
        table.add_row(
            str(job.get("id", "")),
            str(job.get("status", "")),
            str(job.get("type", "")),
            str(job.get("model", "")),
            str(job.get("created_at", "")),
            str(job.get("finished_at") or ""),
            str(error.get("message", "") if isinstance(error, dict) else error),
        )
    return table


def _ms(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def trace_line(trace: dict[str, Any]) -> Text:
    """One trace summary: when, what, how it went, how long, what it cost, the query."""
    started = str(trace.get("started_at", ""))
    line = Text(f"{started[:19].replace('T', ' ')}  {trace.get('id', '')}  ")
    line.append(f"{trace.get('kind', ''):<4} {trace.get('model', '')}")
    if trace.get("collection"):
        line.append(f"/{trace['collection']}")
    status = f"{trace.get('status', '')} {trace.get('http_status', '')}".strip()
    line.append(f"  {status}", style="red" if trace.get("status") == "error" else "green")
    line.append(f"  {_ms(trace.get('duration_ms'))} ms")
    if trace.get("ttft_ms") is not None:
        line.append(f" (ttft {_ms(trace.get('ttft_ms'))})")
    if trace.get("cold"):
        line.append("  cold", style="blue")
    cost = trace.get("cost_usd")
    if isinstance(cost, int | float):
        line.append(f"  ${cost:.6f}")
    if trace.get("query"):
        line.append(f"  {str(trace['query'])[:80]!r}", style="dim")
    return line


def trace_details(trace: dict[str, Any]) -> list[Any]:
    lines: list[Any] = [trace_line(trace)]
    attributes = trace.get("attributes") or {}
    tokens_in = attributes.get("gen_ai.usage.input_tokens")
    tokens_out = attributes.get("gen_ai.usage.output_tokens")
    if tokens_in is not None or tokens_out is not None:
        lines.append(Text(f"  tokens in/out  {tokens_in} / {tokens_out}"))
    for feedback in trace.get("feedback") or []:
        comment = f"  {feedback['comment']}" if feedback.get("comment") else ""
        score = feedback.get("score")
        shown = f"{score:g}" if isinstance(score, int | float) else str(score)
        lines.append(Text(f"  feedback {feedback.get('name')}: {shown}{comment}"))
    for span in trace.get("spans") or []:
        lines.append(
            Text(
                f"  {span.get('name', ''):<9} +{_ms(span.get('start_ms'))} ms  "
                f"{_ms(span.get('duration_ms'))} ms"
            )
        )
    for label in ("query", "prompt", "answer"):
        value = trace.get(label)
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            value = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in value)
        lines.append(Text(f"{label}:", style="bold"))
        lines.append(Text(str(value)))
    if trace.get("sources"):
        lines.append(Text("sources:", style="bold"))
        lines.extend(Text(line) for line in sources_lines(trace["sources"]))
    return lines


def usage_table(report: dict[str, Any]) -> Table:
    by = report.get("by", "deployment")
    currency = report.get("currency", "USD")
    table = Table(box=None, pad_edge=False, show_footer=True)
    columns = [
        (by.upper(), by),
        ("REQUESTS", "requests"),
        ("ERRORS", "errors"),
        ("TOKENS IN", "input_tokens"),
        ("TOKENS OUT", "output_tokens"),
        (f"COST {currency}", "cost_usd"),
        (f"PER REQUEST {currency}", "cost_per_request_usd"),
    ]
    total = report.get("total") or {}
    for title, key in columns:
        footer = "total" if key == by else _cell(total.get(key))
        table.add_column(title, footer=footer, justify="left" if key == by else "right")
    for row in report.get("rows") or []:
        table.add_row(*(_cell(row.get(key)) for _, key in columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 1 else f"{value:,.2f}"
    return str(value)
