"""Request traces for the scaling replay, read from the three public formats.

- Azure LLM inference CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``; timestamps with seven
  fractional digits, CRLF line ends, no newline after the last row).
- JSON lines with ``timestamp`` (milliseconds), ``input_length`` and ``output_length``.
- ServeGen per-client rate windows (gzip CSV: ``client_id, window_start_s, rate, cv,
  arrival_dist, dist_param1, dist_param2``). These hold no requests: each active client
  window is turned into arrivals the way ServeGen's own generator does it
  (``servegen/construct.py::_sample_iats``): draw ``ceil(rate x 600)`` inter-arrival times from
  the fitted Gamma(shape, scale) or Weibull(shape, scale), stretch them to fill the window
  exactly, keep those that land inside it. Token counts are drawn from the Azure code trace's
  (ContextTokens, GeneratedTokens) pairs. Everything comes from one seed, per window, so a
  window yields the same requests whichever replay window contains it.

ServeGen's rates are relative weights whose absolute scale is undocumented (the sum over
m-mid's clients reaches ~3,400 req/s, a fleet, not one deployment). They are multiplied by
``rate_scale``; ``auto_rate_scale`` picks it so the replayed window's mean aggregate rate is a
given single-deployment load.

Traces are streamed as ``RequestBatch`` chunks in time order (one per ServeGen window) so a
14-day trace never sits in memory at once. Times are seconds from the trace's origin: the
minute the first Azure/JSON request falls in, or the start of the replayed ServeGen window.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmhost.errors import LlmhostError

SERVEGEN_WINDOW_S = 600
DAY_S = 86_400
DEFAULT_SEED = 20_250_101
DEFAULT_MEAN_RPS = 20.0


class TraceUnreadable(LlmhostError):
    """A trace file is missing, of an unknown format, or malformed; the message says where."""

    code = "trace_unreadable"
    status = 400


@dataclass(frozen=True)
class RequestBatch:
    """Requests in arrival order: seconds from the trace origin and token counts."""

    arrivals: np.ndarray  # float64, sorted
    context_tokens: np.ndarray  # int64
    generated_tokens: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.arrivals)


@dataclass(frozen=True)
class Trace:
    """A replayable trace: ``batches()`` streams it afresh each call (it may be generated)."""

    name: str
    kind: str  # "azure-csv" | "jsonl" | "servegen" | "synthetic" (scaling.scenarios)
    batches: Callable[[], Iterator[RequestBatch]]
    note: str = ""


# ------------------------------------------------------------------------------ Azure / JSON


def parse_azure_csv(text: str, source: str = "<text>") -> RequestBatch:
    """Parse the Azure LLM inference CSV (CRLF or LF, final newline optional).

    Raises TraceUnreadable naming the line when a row is malformed.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip().split(",") != [
        "TIMESTAMP",
        "ContextTokens",
        "GeneratedTokens",
    ]:
        raise TraceUnreadable(
            f"{source}: the first line must be 'TIMESTAMP,ContextTokens,GeneratedTokens'"
        )
    stamps: list[str] = []
    context: list[int] = []
    generated: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            stamp, ctx, gen = parts
            context.append(int(ctx))
            generated.append(int(gen))
        except ValueError:
            raise TraceUnreadable(
                f"{source}:{number}: expected 'timestamp,context_tokens,generated_tokens', "
                f"got {line[:80]!r}"
            ) from None
        stamps.append(stamp.strip())
    try:
        times = np.array(stamps, dtype="datetime64[ns]")
    except ValueError as error:
        raise TraceUnreadable(
            f"{source}: a TIMESTAMP is not 'YYYY-MM-DD HH:MM:SS.fffffff' ({error})"
        ) from None
    if len(times) == 0:
        raise TraceUnreadable(f"{source}: the trace has a header but no requests")
    nanos = times.astype("int64")
    return _batch_from(nanos / 1e9, np.array(context), np.array(generated))


def parse_jsonl(text: str, source: str = "<text>") -> RequestBatch:
    """Parse JSON lines with ``timestamp`` (ms), ``input_length`` and ``output_length``."""
    stamps: list[float] = []
    context: list[int] = []
    generated: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            stamps.append(float(row["timestamp"]) / 1000.0)
            context.append(int(row["input_length"]))
            generated.append(int(row["output_length"]))
        except (ValueError, KeyError, TypeError) as error:
            raise TraceUnreadable(
                f"{source}:{number}: each line must be a JSON object with numeric "
                f"'timestamp' (ms), 'input_length' and 'output_length' ({error!r})"
            ) from None
    if not stamps:
        raise TraceUnreadable(f"{source}: no requests")
    return _batch_from(np.array(stamps), np.array(context), np.array(generated))


def _batch_from(seconds: np.ndarray, context: np.ndarray, generated: np.ndarray) -> RequestBatch:
    order = np.argsort(seconds, kind="stable")
    seconds = seconds[order]
    # Minutes (metric periods, the oracle) are aligned to the wall-clock minute of the start.
    origin = math.floor(seconds[0] / 60.0) * 60.0
    return RequestBatch(
        seconds - origin,
        context[order].astype(np.int64),
        generated[order].astype(np.int64),
    )


def read_token_pairs(path: Path) -> np.ndarray:
    """(ContextTokens, GeneratedTokens) pairs of an Azure CSV, shape (n, 2), for sampling."""
    batch = parse_azure_csv(_read_text(path), str(path))
    return np.stack([batch.context_tokens, batch.generated_tokens], axis=1)


# ---------------------------------------------------------------------------------- ServeGen


@dataclass(frozen=True)
class ServeGenWindows:
    """The active client windows of one ServeGen file, as arrays (one row per window)."""

    window_start: np.ndarray  # int64 seconds from trace start
    rate: np.ndarray  # requests per second (relative; see module doc)
    weibull: np.ndarray  # bool: Weibull, else Gamma
    shape: np.ndarray
    scale: np.ndarray
    span_s: int  # end of the last window

    def aggregate_rate(self) -> dict[int, float]:
        """Sum of client rates per window start (windows with no active client are absent)."""
        starts, inverse = np.unique(self.window_start, return_inverse=True)
        sums = np.bincount(inverse, weights=self.rate)
        return {int(s): float(v) for s, v in zip(starts, sums, strict=True)}


def read_servegen(path: Path) -> ServeGenWindows:
    """Load a ServeGen client-window file; rows of silent windows (rate 0) are dropped."""
    starts: list[int] = []
    rates: list[float] = []
    weibull: list[bool] = []
    shapes: list[float] = []
    scales: list[float] = []
    span = 0
    header = "client_id,window_start_s,rate,cv,arrival_dist,dist_param1,dist_param2"
    with _open_text(path) as handle:
        first = handle.readline().strip()
        if first != header:
            raise TraceUnreadable(f"{path}: the first line must be '{header}'")
        for number, line in enumerate(handle, start=2):
            parts = line.rstrip("\r\n").split(",")
            if len(parts) != 7:
                raise TraceUnreadable(f"{path}:{number}: expected 7 columns, got {len(parts)}")
            try:
                start = int(parts[1])
                rate = float(parts[2])
                span = max(span, start + SERVEGEN_WINDOW_S)
                if rate <= 0 or not parts[4]:
                    continue
                shape, scale = float(parts[5]), float(parts[6])
            except ValueError:
                raise TraceUnreadable(f"{path}:{number}: a number is malformed") from None
            if parts[4] not in ("Gamma", "Weibull"):
                raise TraceUnreadable(
                    f"{path}:{number}: arrival_dist must be Gamma, Weibull or empty, "
                    f"got {parts[4]!r}"
                )
            starts.append(start)
            rates.append(rate)
            weibull.append(parts[4] == "Weibull")
            shapes.append(shape)
            scales.append(scale)
    return ServeGenWindows(
        np.array(starts, dtype=np.int64),
        np.array(rates),
        np.array(weibull, dtype=bool),
        np.array(shapes),
        np.array(scales),
        span,
    )


def representative_day(windows: ServeGenWindows) -> int:
    """Start (s) of the day to replay by default: among whole days with traffic in every
    window, the one whose mean aggregate rate is the median of those days' means.

    Days with silent windows are skipped: the README calls those gaps in the data, not idle
    time. A trace of at most one day starts at 0.
    """
    days = windows.span_s // DAY_S
    if days <= 1:
        return 0
    totals = windows.aggregate_rate()
    per_day = DAY_S // SERVEGEN_WINDOW_S
    candidates: list[tuple[float, int]] = []
    for day in range(days):
        rates = [totals.get(day * DAY_S + i * SERVEGEN_WINDOW_S, 0.0) for i in range(per_day)]
        if min(rates) > 0:
            candidates.append((sum(rates) / per_day, day))
    if not candidates:
        return 0
    candidates.sort()
    return candidates[(len(candidates) - 1) // 2][1] * DAY_S


def auto_rate_scale(
    windows: ServeGenWindows, start_s: int, duration_s: int, mean_rps: float
) -> float:
    """The rate multiplier that makes the replayed span's mean aggregate rate ``mean_rps``."""
    inside = (windows.window_start >= start_s) & (windows.window_start < start_s + duration_s)
    total = float(windows.rate[inside].sum()) * SERVEGEN_WINDOW_S
    if total <= 0:
        raise TraceUnreadable(
            f"no traffic between {start_s} s and {start_s + duration_s} s; choose another "
            "--start/--hours"
        )
    return mean_rps * duration_s / total


def servegen_batches(
    windows: ServeGenWindows,
    token_pairs: np.ndarray,
    *,
    start_s: int,
    duration_s: int,
    rate_scale: float,
    seed: int = DEFAULT_SEED,
) -> Iterator[RequestBatch]:
    """Requests of [start_s, start_s + duration_s), one batch per 600 s window, in order.

    Follows ServeGen's ``_sample_iats``: n = ceil(rate x 600) inter-arrival times from the
    window's fitted distribution, rescaled to sum to 600 s, cumulated; the last one lands on
    the window's end and, as in ServeGen, is not kept. Arrivals are seconds from ``start_s``.
    """
    if len(token_pairs) == 0:
        raise TraceUnreadable("the token-count sample is empty; pass the Azure code trace")
    order = np.argsort(windows.window_start, kind="stable")
    starts = windows.window_start[order]
    first = math.ceil(start_s / SERVEGEN_WINDOW_S) * SERVEGEN_WINDOW_S
    for window in range(first, start_s + duration_s, SERVEGEN_WINDOW_S):
        lo, hi = np.searchsorted(starts, [window, window + 1])
        rows = order[lo:hi]
        rng = np.random.default_rng([seed, window])
        chunks: list[np.ndarray] = []
        for row in rows:
            n = math.ceil(windows.rate[row] * rate_scale * SERVEGEN_WINDOW_S)
            if n < 2:
                continue  # one gap, stretched to the whole window, lands on its end
            if windows.weibull[row]:
                gaps = windows.scale[row] * rng.weibull(windows.shape[row], n)
            else:
                gaps = rng.gamma(windows.shape[row], windows.scale[row], n)
            total = gaps.sum()
            if not total > 0:
                continue
            times = np.cumsum(gaps[:-1]) * (SERVEGEN_WINDOW_S / total)
            chunks.append(times[times < SERVEGEN_WINDOW_S])
        arrivals = np.sort(np.concatenate(chunks)) if chunks else np.empty(0)
        picks = rng.integers(0, len(token_pairs), len(arrivals))
        yield RequestBatch(
            arrivals + (window - start_s),
            token_pairs[picks, 0].astype(np.int64),
            token_pairs[picks, 1].astype(np.int64),
        )


# ----------------------------------------------------------------------------------- opening


def detect_kind(path: Path) -> str:
    """'azure-csv', 'jsonl' or 'servegen', from the file's first line."""
    with _open_text(path) as handle:
        first = handle.readline().strip()
    if first.startswith("TIMESTAMP,"):
        return "azure-csv"
    if first.startswith("client_id,window_start_s"):
        return "servegen"
    if first.startswith("{"):
        return "jsonl"
    raise TraceUnreadable(
        f"{path}: unknown trace format; expected an Azure CSV (TIMESTAMP,ContextTokens,"
        "GeneratedTokens), JSON lines (timestamp, input_length, output_length) or a ServeGen "
        "client-window CSV"
    )


def open_trace(
    path: Path,
    *,
    token_pairs: Callable[[], np.ndarray] | None = None,
    start_s: int | None = None,
    hours: float | None = None,
    rate_scale: float | None = None,
    mean_rps: float = DEFAULT_MEAN_RPS,
    seed: int = DEFAULT_SEED,
) -> Trace:
    """Open any supported trace. ``start_s``/``hours`` select a span (ServeGen: default one
    representative day; others: the whole file); ``rate_scale`` None means auto (ServeGen)."""
    kind = detect_kind(path)
    if kind != "servegen":
        parse = parse_azure_csv if kind == "azure-csv" else parse_jsonl
        full = parse(_read_text(path), str(path))
        lo = float(start_s or 0)
        hi = math.inf if hours is None else lo + hours * 3600
        keep = (full.arrivals >= lo) & (full.arrivals < hi)
        batch = RequestBatch(
            full.arrivals[keep] - lo, full.context_tokens[keep], full.generated_tokens[keep]
        )
        if len(batch) == 0:
            raise TraceUnreadable(f"{path}: no requests in the chosen --start/--hours span")
        return Trace(path.name, kind, lambda: iter([batch]))
    if token_pairs is None:
        raise TraceUnreadable(
            f"{path}: ServeGen windows carry no token counts; pass the Azure code trace for them"
        )
    windows = read_servegen(path)
    start = representative_day(windows) if start_s is None else int(start_s)
    duration = int((hours if hours is not None else 24) * 3600)
    scale = (
        rate_scale
        if rate_scale is not None
        else auto_rate_scale(windows, start, duration, mean_rps)
    )
    pairs = token_pairs()
    note = f"start={start}s hours={duration / 3600:g} rate_scale={scale:.4g} seed={seed}"
    return Trace(
        path.name,
        kind,
        lambda: servegen_batches(
            windows, pairs, start_s=start, duration_s=duration, rate_scale=scale, seed=seed
        ),
        note,
    )


def _open_text(path: Path):  # type: ignore[no-untyped-def]
    if not path.exists():
        raise TraceUnreadable(f"{path}: no such file")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _read_text(path: Path) -> str:
    with _open_text(path) as handle:
        return str(handle.read())
