"""``llmhost ingest``'s display: a progress bar over the documents sent, above the lines
``LineReport`` prints for each batch and each rejected document. Without a terminal (a
pipe, a log) the bar is left out and only the lines are printed."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmhost_cli.ingest import LineReport


class ProgressReport(LineReport):
    """Lines on rich consoles (``out``; problems on ``err``), with a live bar on ``out``."""

    def __init__(self, out: Console, err: Console) -> None:
        super().__init__(out, err)
        self.bar = Progress(
            TextColumn("ingesting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("documents"),
            TimeElapsedColumn(),
            console=out,
            transient=True,
            disable=not out.is_terminal,
        )
        self.task = self.bar.add_task("ingest", total=None)

    def __enter__(self) -> ProgressReport:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def write(self, line: str, *, problem: bool = False) -> None:
        if problem:
            self.err.print(line, style="yellow")
        else:
            self.out.print(line)

    def advance(self, documents: int) -> None:
        self.bar.advance(self.task, documents)

    def planned(self, documents: int, batches: int) -> None:
        super().planned(documents, batches)
        self.bar.update(self.task, total=documents)
