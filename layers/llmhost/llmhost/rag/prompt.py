"""The RAG prompt: the question over numbered sources, packed into the model's token budget.

Pure:

1. ``build_rag_messages`` asks the question over numbered sources [1]..[n] and tells the
   model to cite them.
2. ``pack_context`` / ``build_rag_prompt`` fit the retrieved chunks into the model's input
   budget: most relevant first, the last one trimmed at a sentence or word boundary when
   that keeps something useful, the rest dropped and reported; never over the budget.

Messages are rendered with ``llmhost.engines.chat_templates`` and counted with a
``llmhost.token_counting.TokenCounter``; when an engine still finds the prompt too long it
says by how much (``PromptTooLong``) and ``budget_after_rejection`` gives the budget for one
retry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llmhost.engines.chat_templates import render_prompt
from llmhost.engines.codecs import ChatMessage
from llmhost.errors import LlmhostError
from llmhost.token_counting import TokenCounter

if TYPE_CHECKING:
    from llmhost.serving.errors import TokenLimits


class PromptBudgetExceeded(LlmhostError):
    """The question and instructions alone do not fit the model's input limit."""

    code = "prompt_too_long"
    status = 422

    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(
            f"the question and instructions need about {needed} tokens but the model accepts "
            f"{limit} input tokens with this max_tokens; shorten the question or the system "
            "prompt, or ask for fewer tokens"
        )
        self.needed = needed
        self.limit = limit


# ---------------------------------------------------------------------- RAG messages


DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources given with the question. "
    "Cite the sources you use by their numbers in square brackets, like [1] or [2][3], "
    "right after the statement they support. If the sources do not contain the answer, "
    "say that the documents do not answer the question instead of guessing."
)
SOURCE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ContextChunk:
    """One retrieved passage: its id, text, relevance score (higher is better), metadata."""

    id: str
    text: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)


def format_source(number: int, chunk: ContextChunk) -> str:
    """How passage ``number`` appears in the prompt: ``[n] title`` on its own line when the
    metadata has a title, then the text."""
    title = chunk.metadata.get("title") if chunk.metadata else None
    head = f"[{number}] {title}\n" if isinstance(title, str) and title.strip() else f"[{number}] "
    return head + chunk.text.strip()


def format_sources(chunks: Sequence[ContextChunk]) -> str:
    return SOURCE_SEPARATOR.join(format_source(i, c) for i, c in enumerate(chunks, start=1))


def _user_content(question: str, sources: str) -> str:
    if not sources:
        return f"Sources: none were found.\n\nQuestion: {question.strip()}"
    return f"Sources:\n\n{sources}\n\nQuestion: {question.strip()}"


def build_rag_messages(
    question: str, contexts: Sequence[ContextChunk], system: str | None = None
) -> list[ChatMessage]:
    """A system message with the citation rules and a user message with the sources
    numbered [1]..[n] in the given order, then the question."""
    return [
        ChatMessage("system", system if system is not None else DEFAULT_SYSTEM_PROMPT),
        ChatMessage("user", _user_content(question, format_sources(contexts))),
    ]


# -------------------------------------------------------------------- context packing

MIN_TRIM_TOKENS = 24
TRIM_MARK = " …"
_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*(?=\s)")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class PackedContext:
    """The passages that fit (in relevance order, the last possibly trimmed), the ones that
    did not, the ids of trimmed passages and the estimated tokens of the sources block."""

    included: tuple[ContextChunk, ...]
    dropped: tuple[ContextChunk, ...]
    trimmed: tuple[str, ...]
    tokens: int

    def sources(self) -> list[dict[str, Any]]:
        """What a reply lists as its sources: number, id, score, trimmed, metadata."""
        return [
            {
                "index": number,
                "id": chunk.id,
                "score": chunk.score,
                "trimmed": chunk.id in self.trimmed,
                "metadata": dict(chunk.metadata),
            }
            for number, chunk in enumerate(self.included, start=1)
        ]


def pack_context(
    chunks: Sequence[ContextChunk],
    budget_tokens: int,
    count_tokens: TokenCounter,
    *,
    min_trim_tokens: int = MIN_TRIM_TOKENS,
) -> PackedContext:
    """Choose and number the passages for a sources block of at most ``budget_tokens``.

    Passages are taken by descending score (ties keep their order) while they fit, each
    costing its ``format_source`` text plus the separator. The first one that does not
    fit is cut at the last sentence end that fits (or the last word end, when no sentence
    leaves ``min_trim_tokens``) and kept if at least ``min_trim_tokens`` remain; it and
    everything after it are otherwise dropped. The block, as ``format_sources`` writes it,
    never costs more than ``budget_tokens`` by ``count_tokens``.
    """
    ranked = [c for _, c in sorted(enumerate(chunks), key=lambda p: (-p[1].score, p[0]))]
    budget = max(0, budget_tokens)
    kept: list[ContextChunk] = []
    trimmed: list[str] = []
    used = 0
    stop_at = len(ranked)
    for position, chunk in enumerate(ranked):
        number = len(kept) + 1
        cost = count_tokens(format_source(number, chunk) + SOURCE_SEPARATOR)
        if used + cost <= budget:
            kept.append(chunk)
            used += cost
            continue
        stop_at = position
        cut = _trim(number, chunk, budget - used, count_tokens, min_trim_tokens)
        if cut is not None:
            kept.append(cut)
            trimmed.append(chunk.id)
            stop_at = position + 1
        break
    dropped = list(ranked[stop_at:])
    # A counter need not be additive over concatenation: check the block as written and
    # give back the least relevant passages until it fits. ``kept`` is a prefix of
    # ``ranked``, so the original of the last kept passage is ranked[len(kept) - 1].
    while kept and count_tokens(format_sources(kept)) > budget:
        kept.pop()
        original = ranked[len(kept)]
        dropped.insert(0, original)
        if original.id in trimmed:
            trimmed.remove(original.id)
    block_tokens = count_tokens(format_sources(kept)) if kept else 0
    return PackedContext(tuple(kept), tuple(dropped), tuple(trimmed), block_tokens)


def _trim(
    number: int,
    chunk: ContextChunk,
    room: int,
    count_tokens: TokenCounter,
    min_trim_tokens: int,
) -> ContextChunk | None:
    """``chunk`` cut to fit ``room`` tokens with the trim mark, or None if not worthwhile."""
    if room < min_trim_tokens:
        return None
    text = chunk.text.strip()

    def fits(end: int) -> bool:
        cut = replace(chunk, text=text[:end].rstrip() + TRIM_MARK)
        return count_tokens(format_source(number, cut) + SOURCE_SEPARATOR) <= room

    for boundaries in (
        [m.end() for m in _SENTENCE_END.finditer(text)],
        [m.start() for m in _SPACE.finditer(text)],
    ):
        end = _last_fitting(boundaries, fits)
        if end is not None and count_tokens(text[:end]) >= min_trim_tokens:
            return replace(chunk, text=text[:end].rstrip() + TRIM_MARK)
    return None


def _last_fitting(boundaries: list[int], fits: Callable[[int], bool]) -> int | None:
    """The largest boundary for which ``fits`` holds (binary search; costs grow with length)."""
    lo, hi, best = 0, len(boundaries) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(boundaries[mid]):
            best, lo = boundaries[mid], mid + 1
        else:
            hi = mid - 1
    return best


# ------------------------------------------------------------------ the whole RAG prompt

DEFAULT_SAFETY_MARGIN = 16


@dataclass(frozen=True)
class RagPrompt:
    """A packed RAG request: the chat messages (for engines that apply the template), the
    rendered prompt without BOS (for the generate payload), the packing, and the
    estimated prompt tokens against the input limit used."""

    messages: list[ChatMessage]
    prompt: str
    packed: PackedContext
    estimated_tokens: int
    input_limit: int


def input_limit(
    max_input_tokens: int, max_total_tokens: int | None = None, max_new_tokens: int = 0
) -> int:
    """The most prompt tokens the engine accepts: TGI checks both ``input <=
    MAX_INPUT_TOKENS`` and ``input + max_new_tokens <= MAX_TOTAL_TOKENS``."""
    limit = max_input_tokens
    if max_total_tokens is not None:
        limit = min(limit, max_total_tokens - max_new_tokens)
    return limit


def build_rag_prompt(
    question: str,
    chunks: Sequence[ContextChunk],
    *,
    template: str,
    count_tokens: TokenCounter,
    max_input_tokens: int,
    max_total_tokens: int | None = None,
    max_new_tokens: int = 0,
    system: str | None = None,
    safety_margin: int = DEFAULT_SAFETY_MARGIN,
) -> RagPrompt:
    """The prompt for ``question`` over the best ``chunks`` that fit the model's input.

    The context budget is the input limit minus the estimated cost of the template, system
    prompt and question (rendered with BOS) minus ``safety_margin``. The final prompt is
    measured again and repacked smaller if the counter is not additive. Raises
    ``PromptBudgetExceeded`` (422) when the question and instructions alone do not fit.
    """
    limit = input_limit(max_input_tokens, max_total_tokens, max_new_tokens)
    bare = build_rag_messages(question, [], system)
    bare[1] = ChatMessage("user", _user_content(question, "\0"))
    overhead = count_tokens(render_prompt(template, bare, bos=True))
    budget = limit - overhead - safety_margin
    if budget < 0:
        raise PromptBudgetExceeded(overhead + safety_margin, limit)
    for _ in range(4):
        packed = pack_context(chunks, budget, count_tokens)
        messages = build_rag_messages(question, packed.included, system)
        estimated = count_tokens(render_prompt(template, messages, bos=True))
        if estimated + safety_margin <= limit or not packed.included:
            if estimated > limit:
                raise PromptBudgetExceeded(estimated, limit)
            return RagPrompt(
                messages=messages,
                prompt=render_prompt(template, messages),
                packed=packed,
                estimated_tokens=estimated,
                input_limit=limit,
            )
        budget -= estimated + safety_margin - limit
    packed = pack_context(chunks, 0, count_tokens)
    messages = build_rag_messages(question, [], system)
    return RagPrompt(
        messages=messages,
        prompt=render_prompt(template, messages),
        packed=packed,
        estimated_tokens=count_tokens(render_prompt(template, messages, bos=True)),
        input_limit=limit,
    )


def budget_after_rejection(
    context_budget: int, limits: TokenLimits, *, estimated_prompt_tokens: int
) -> int:
    """A smaller context budget after an engine refused a prompt as too long.

    ``limits`` comes from the engine's ``PromptTooLong``; ``estimated_prompt_tokens`` is
    what the counter said for the refused prompt. The budget shrinks by the real excess
    scaled to estimate units (never by less than the excess itself), plus 5% of the
    engine's count, so one retry fits unless the counter is wildly off. The cut is taken
    from what was sent when that was less than the budget (fewer passages than the budget
    had room for, an engine whose limit is below the one llmhost was told): cutting an
    unused budget would send the same prompt again. Returns 0 or more.
    """
    base = min(context_budget, estimated_prompt_tokens)
    allowed = limits.allowed_input_tokens
    if allowed is None:
        return max(0, base // 2)
    excess = limits.input_tokens - allowed
    ratio = max(1.0, estimated_prompt_tokens / max(1, limits.input_tokens))
    cut = math.ceil(max(0, excess) * ratio) + math.ceil(0.05 * limits.input_tokens)
    return max(0, base - cut)
