"""Token-aware chunking: split a document into overlapping pieces the embedder can take whole.

Pure: it takes the text and the embedder's wordpiece spans (``Embedder.token_spans``) and
returns chunks that keep their document id and character offsets, so a retrieved chunk can
always be traced back to ``text[start:end]`` of its source. Cuts fall only between tokens,
preferring paragraph ends, then sentence ends, then word gaps near the size limit; the last
pieces of a long document are balanced so no tiny trailing chunk is left over. The same
input always gives the same chunks (re-ingesting a document yields the same point ids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# all-MiniLM-L6-v2 reads 256 wordpieces with [CLS]/[SEP], so a chunk holds up to 254. It was
# trained on at most 128, and on SciFact 128-token chunks did help dense retrieval (nDCG@10
# 0.684 vs 0.670) but hurt BM25 more (0.670 vs 0.693: a term's evidence is split across
# twice the chunks), so hybrid came out a little lower (0.726 vs 0.728) with twice the points
# to embed and store (192 tokens: 0.731, the same within noise). 32 tokens of overlap (a
# sentence or two) give each chunk the lead-in to its first sentence; SciFact's abstracts,
# cut at sentence ends, did as well without (0.731), but longer prose carries ideas across
# sentences, and the overlap costs only ~3% more chunks.
DEFAULT_MAX_TOKENS = 254
DEFAULT_OVERLAP_TOKENS = 32

# Boundary strength between two adjacent tokens.
_NONE, _WORD, _SENTENCE, _PARAGRAPH = 0, 1, 2, 3
_SENTENCE_END = ".!?"
_CJK_SENTENCE_END = "\u3002\uff01\uff1f"  # ideographic full stop, ! and ?
_CLOSERS = "\"')]}\u00bb\u201d\u2019"  # quotes and brackets that close a sentence


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: ``text == source_text[start:end]`` (character offsets).

    ``index`` counts from 0 within the document; ``token_count`` is in embedder wordpieces,
    special tokens excluded.
    """

    doc_id: str
    index: int
    text: str
    start: int
    end: int
    token_count: int


def chunk_document(
    doc_id: str,
    text: str,
    spans: Sequence[tuple[int, int]],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` wordpieces.

    ``spans`` are the (start, end) character offsets of each wordpiece of ``text`` in order,
    without special tokens. Consecutive chunks share up to ``overlap_tokens`` tokens (the
    overlap starts at a sentence start when one is close). A text with no tokens gives no
    chunks. Raises ValueError when ``max_tokens < 8`` or the overlap is not below half of it.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens // 2:
        raise ValueError(
            f"overlap_tokens must be in [0, {max_tokens // 2}) for max_tokens={max_tokens}, "
            f"got {overlap_tokens}"
        )
    n = len(spans)
    ranges: list[tuple[int, int]] = []  # [first, last) token index per chunk
    first = 0
    while n - first > max_tokens:
        cut = _pick_cut(text, spans, first, max_tokens, overlap_tokens)
        ranges.append((first, cut))
        first = _overlap_start(text, spans, first, cut, overlap_tokens)
    if n:
        ranges.append((first, n))
    return [
        Chunk(
            doc_id=doc_id,
            index=index,
            text=text[spans[a][0] : spans[b - 1][1]],
            start=spans[a][0],
            end=spans[b - 1][1],
            token_count=b - a,
        )
        for index, (a, b) in enumerate(ranges)
    ]


def _pick_cut(
    text: str, spans: Sequence[tuple[int, int]], first: int, max_tokens: int, overlap: int
) -> int:
    """The token index where the chunk starting at ``first`` ends (exclusive).

    The target length spreads what is left evenly over the chunks still needed, so the
    last chunk is never a sliver; the cut then moves to the strongest boundary within a
    quarter of ``max_tokens`` of the target (closest to it on ties), never past the limit.
    """
    remaining = len(spans) - first
    stride = max_tokens - overlap
    needed = math.ceil((remaining - overlap) / stride)
    target = first + min(max_tokens, math.ceil((remaining - overlap) / needed) + overlap)
    slack = max(1, max_tokens // 4)
    low = max(first + overlap + 1, target - slack)
    high = min(first + max_tokens, target + slack)
    return max(
        range(low, high + 1),
        key=lambda k: (_boundary(text, spans, k), -abs(k - target), -k),
    )


def _overlap_start(
    text: str, spans: Sequence[tuple[int, int]], first: int, cut: int, overlap: int
) -> int:
    """Where the next chunk starts: ``overlap`` tokens before ``cut``, moved forward (by at
    most half the overlap) to a sentence or paragraph start when there is one."""
    if overlap == 0:
        return cut
    low = max(first + 1, cut - overlap)
    high = max(low, cut - overlap // 2)
    return max(range(low, high + 1), key=lambda k: (_boundary(text, spans, k), -k))


def _boundary(text: str, spans: Sequence[tuple[int, int]], k: int) -> int:
    """How good a place to cut is the gap before token ``k`` (0 < k < len(spans))."""
    if k <= 0 or k >= len(spans):
        return _PARAGRAPH
    gap = text[spans[k - 1][1] : spans[k][0]]
    previous = text[spans[k - 1][0] : spans[k - 1][1]]
    if gap.count("\n") >= 2:
        return _PARAGRAPH
    if "\n" in gap or previous[-1:] in _CJK_SENTENCE_END:
        return _SENTENCE
    if not gap:
        return _NONE  # inside a word (a ##subword follows) or next to punctuation
    # 'He said "no." Then' gives the closing quote a token of its own: look one further back.
    if previous and not previous.strip(_CLOSERS) and k >= 2:
        previous = text[spans[k - 2][0] : spans[k - 2][1]]
    # A lowercase word after a period is an abbreviation ("e.g. the"), not a new sentence.
    if previous[-1:] in _SENTENCE_END and not text[spans[k][0]].islower():
        return _SENTENCE
    return _WORD
