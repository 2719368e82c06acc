"""Prompts: per-model chat templates, RAG messages with numbered sources, token budgets.

Three jobs, all pure:

1. ``render_prompt`` writes chat messages in the exact text format a model was trained on,
   chosen by the catalog's ``chat_template`` name (Llama 3 headers, Llama 2 ``[INST]`` with
   ``<<SYS>>``, Mistral ``[INST]``, Zephyr, ChatML, SOLAR, Code Llama 70B, Falcon, Flan-T5).
   Engines apply a model's own template through their chat API; this rendering is what is
   sent only for models without one (Falcon, Flan-T5) or engines without a chat API
   (hf-inference), and otherwise the text whose tokens are counted to budget a prompt.
2. ``build_rag_messages`` asks the question over numbered sources [1]..[n] and tells the
   model to cite them.
3. ``pack_context`` / ``build_rag_prompt`` fit the retrieved chunks into the model's input
   budget: most relevant first, the last one trimmed at a sentence or word boundary when
   that keeps something useful, the rest dropped and reported; never over the budget.

Token counts come from a ``TokenCounter``. No model tokenizer is available offline, so the
default is ``HeuristicTokenCounter``, calibrated to over-count (see its docstring); when an
engine still finds the prompt too long it says by how much (``PromptTooLong``) and
``budget_after_rejection`` gives the budget for one retry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from llmhost.engines.codecs import ChatMessage
from llmhost.errors import LlmhostError

if TYPE_CHECKING:
    from llmhost.serving.errors import TokenLimits

# ------------------------------------------------------------------------------ errors


class UnknownChatTemplate(LlmhostError):
    code = "unknown_chat_template"
    status = 422

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no chat template named '{name}'; known templates: {', '.join(TEMPLATES)}"
        )
        self.name = name


class ChatMessagesInvalid(LlmhostError):
    """The messages cannot be rendered for this model (order of roles, empty turns)."""

    code = "invalid_messages"
    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(f"messages: {message}")


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


# ---------------------------------------------------------------------- chat templates


def _turns(messages: Sequence[ChatMessage]) -> tuple[str | None, list[ChatMessage]]:
    """(system text or None, user/assistant turns) after checking the conversation's shape.

    Leading system messages are joined; after them roles must alternate user, assistant,
    user... and end with a user turn, the shape every template here requires.
    """
    systems: list[str] = []
    index = 0
    while index < len(messages) and messages[index].role == "system":
        systems.append(messages[index].content)
        index += 1
    turns = list(messages[index:])
    if not turns:
        raise ChatMessagesInvalid("at least one user message is required")
    for position, message in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if message.role != expected:
            raise ChatMessagesInvalid(
                f"message {index + position} has role '{message.role}' where '{expected}' "
                "was expected: system messages come first, then user and assistant alternate"
            )
    if turns[-1].role != "user":
        raise ChatMessagesInvalid("the last message must come from the user")
    return ("\n\n".join(systems) if systems else None), turns


def _llama3(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = []
    if system is not None:
        parts.append(f"<|start_header_id|>system<|end_header_id|>\n\n{system.strip()}<|eot_id|>")
    for m in turns:
        parts.append(
            f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content.strip()}<|eot_id|>"
        )
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "<|begin_of_text|>", "".join(parts)


def _llama2(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    # Llama 2 chat and Code Llama instruct (7B-34B): every user turn opens with BOS.
    text = ""
    for position, m in enumerate(turns):
        content = m.content
        if position == 0 and system is not None:
            content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
        if m.role == "user":
            text += f"<s>[INST] {content.strip()} [/INST]"
        else:
            text += f" {content.strip()} </s>"
    return "<s>", text.removeprefix("<s>")


def _codellama70b(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = [f"Source: system\n\n {system.strip()} <step> "] if system is not None else []
    parts += [f"Source: {m.role}\n\n {m.content.strip()} <step> " for m in turns]
    parts.append("Source: assistant\nDestination: user\n\n ")
    return "<s>", "".join(parts)


def _mistral(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    # Mistral's templates have no system role: it goes in front of the first user turn.
    text = ""
    for position, m in enumerate(turns):
        content = m.content
        if position == 0 and system is not None:
            content = f"{system}\n\n{content}"
        text += f"[INST] {content} [/INST]" if m.role == "user" else f"{content}</s>"
    return "<s>", text


def _zephyr(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = [f"<|system|>\n{system}</s>\n"] if system is not None else []
    parts += [f"<|{m.role}|>\n{m.content}</s>\n" for m in turns]
    parts.append("<|assistant|>\n")
    return "", "".join(parts)


def _chatml(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system is not None else []
    parts += [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in turns]
    parts.append("<|im_start|>assistant\n")
    return "", "".join(parts)


def _solar(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = [f"### System:\n{system}\n\n"] if system else []
    for m in turns:
        parts.append(
            f"### User:\n{m.content}\n\n" if m.role == "user" else f"### Assistant:\n{m.content}"
        )
    parts.append("### Assistant:\n")
    return "", "".join(parts)


def _falcon(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    # Falcon-instruct has no official template; this is the "User:"/"Assistant:" format
    # TII pointed to on the falcon-7b-instruct model page discussion.
    lines = [system.strip()] if system else []
    lines += [f"{'User' if m.role == 'user' else 'Assistant'}: {m.content.strip()}" for m in turns]
    lines.append("Assistant:")
    return "", "\n".join(lines)


def _flan_t5(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    # Flan-T5 is an instruction follower without chat tokens: plain paragraphs.
    head = [system.strip()] if system else []
    if len(turns) == 1:
        return "", "\n\n".join([*head, turns[0].content.strip()])
    lines = [f"{'User' if m.role == 'user' else 'Assistant'}: {m.content.strip()}" for m in turns]
    return "", "\n\n".join([*head, "\n".join(lines), "Assistant:"])


_Renderer = Callable[[str | None, list[ChatMessage]], tuple[str, str]]

TEMPLATES: Mapping[str, _Renderer] = {
    "llama3": _llama3,
    "llama2": _llama2,
    "codellama-70b": _codellama70b,
    "mistral": _mistral,
    "zephyr": _zephyr,
    "chatml": _chatml,
    "solar": _solar,
    "falcon": _falcon,
    "flan-t5": _flan_t5,
}


def render_prompt(template: str, messages: Sequence[ChatMessage], *, bos: bool = False) -> str:
    """``messages`` as one prompt string in the model's format, ending where the model
    should start answering.

    With ``bos=True`` the text is exactly what the model's Hugging Face chat template
    renders with ``add_generation_prompt=True``. The default leaves out the leading BOS
    token because TGI's generate route, vLLM's completions and LMI tokenize the prompt with
    special tokens and add BOS themselves; sending it too would double it. Raises
    ``UnknownChatTemplate`` and ``ChatMessagesInvalid`` (422).
    """
    renderer = TEMPLATES.get(template)
    if renderer is None:
        raise UnknownChatTemplate(template)
    system, turns = _turns(messages)
    bos_token, body = renderer(system, turns)
    return bos_token + body if bos else body


# ------------------------------------------------------------------------ token counting


class TokenCounter(Protocol):
    """Counts the tokens a text costs; must not under-count for budgets to hold."""

    def __call__(self, text: str) -> int: ...


_PIECES = re.compile(
    r"(?P<glue> (?=[A-Za-z]))"  # one space before a word: part of the word's token
    r"|(?P<upper>[A-Z]{2,}(?![a-z]))"  # acronyms, split more finely than words
    r"|(?P<word>[A-Z]?[a-z]+|[A-Z])"  # words and camelCase parts
    r"|(?P<digits>[0-9]+)"
    r"|(?P<newlines>\n+)"
    r"|(?P<blank>[ \t]+)"
    r"|(?P<other>[^\x00-\x7f]+)"
    r"|(?P<symbol>[\x00-\x7f])",
    re.DOTALL,
)
_VOWELS = "aeiouyAEIOUY"
_NOT_VOWELS = str.maketrans("", "", "".join(chr(c) for c in range(128) if chr(c) not in _VOWELS))


@dataclass(frozen=True)
class HeuristicTokenCounter:
    """An estimate of tokens that over-counts on ordinary text, for tokenizers we lack.

    Text is cut into pieces and each piece costs: a word of n letters ``1 + (n-1) //
    letters_per_token`` (2 letters per token for acronyms and vowel-poor runs such as
    identifiers), a digit run ``ceil(n / digits_per_token)``, each newline and each ASCII
    symbol 1, a run of blanks 1 (0 for the single space before a word), and a non-ASCII
    character its UTF-8 byte count (byte fallback, the worst case of byte-level BPE).

    Calibration against the real Llama 2 (32k SentencePiece, the same family as Mistral,
    Code Llama, Zephyr and SOLAR) and Llama 3 (128k byte-level BPE) tokenizers, as
    estimate / real count per document (min, mean):

    ========================  ===============  ===============
    default (3 letters, 1)    Llama 2          Llama 3
    ========================  ===============  ===============
    SciFact abstracts (5183)  1.13, 1.49       1.37, 1.80
    Python source (1442)      1.00, 1.52       1.19, 1.96
    JSON                      1.13, 1.14       1.84, 1.90
    number lists              1.00, 1.00       1.92, 1.99
    markdown                  1.45, 1.56       1.72, 1.83
    10 languages, 6 scripts   1.23, 2.45       1.40, 3.97
    random hex/base64         0.81, 0.85       0.96, 1.02
    ========================  ===============  ===============

    So it is an upper bound on prose, code, JSON, numbers and non-Latin text for both
    families, at the price of budget (about a third of the context unused on English).
    Random-looking strings (hashes, base64 blobs) are the known exception: the engine then
    refuses the prompt with its own count, and the caller retries with a smaller budget.
    ``LLAMA3_COUNTER`` (5 letters, 3 digits per token) is tighter for Llama 3 models:
    SciFact 1.05/1.33, Python 1.01/1.64, JSON 1.22, numbers 1.00; it under-counts Llama 2.
    """

    letters_per_token: int = 3
    digits_per_token: int = 1

    def __call__(self, text: str) -> int:
        total = 0
        k = self.letters_per_token
        d = self.digits_per_token
        for match in _PIECES.finditer(text):
            kind = match.lastgroup
            piece = match.group()
            if kind == "word":
                n = len(piece)
                step = 2 if n > 2 and len(piece.translate(_NOT_VOWELS)) * 5 < n else k
                total += 1 + (n - 1) // step
            elif kind == "upper":
                total += 1 + (len(piece) - 1) // 2
            elif kind == "glue":
                continue
            elif kind == "digits":
                total += -(-len(piece) // d)
            elif kind == "newlines":
                total += len(piece)
            elif kind == "blank":
                total += 1 + len(piece) // 8
            elif kind == "other":
                total += len(piece.encode("utf-8"))
            else:
                total += 1
        return total


CONSERVATIVE_COUNTER = HeuristicTokenCounter()
LLAMA3_COUNTER = HeuristicTokenCounter(letters_per_token=5, digits_per_token=3)


def token_counter_for(chat_template: str | None) -> TokenCounter:
    """The estimator for a catalog model's template name (conservative when unknown)."""
    return LLAMA3_COUNTER if chat_template == "llama3" else CONSERVATIVE_COUNTER


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
    engine's count, so one retry fits unless the counter is wildly off. Returns 0 or more.
    """
    allowed = limits.allowed_input_tokens
    if allowed is None:
        return max(0, context_budget // 2)
    excess = limits.input_tokens - allowed
    ratio = max(1.0, estimated_prompt_tokens / max(1, limits.input_tokens))
    cut = math.ceil(max(0, excess) * ratio) + math.ceil(0.05 * limits.input_tokens)
    return max(0, context_budget - cut)
