"""The local engine's answer: extractive, not generated. It makes ``make run``'s serving path
answer questions about the documents it was given without a GPU or a model.

1. find the question: the last user turn (chat messages, or the user segments of the common
   raw chat templates: llama3, ``[INST]``, zephyr, chatml), its ``Question:`` line if it has
   one, else its last line;
2. find the context: numbered passages (``[1] ...``, ``[2] ...``) as a RAG prompt lists them,
   else all the non-assistant text;
3. score the context's sentences against the question (BM25 over lowercased, lightly stemmed
   words, stdlib only) and answer with the best one to three, in reading order, each cited
   with its passage number, after a note saying this is not an LLM.

It is deterministic. Tokens are approximations: every word and every punctuation mark counts
as one (``count_tokens``); streamed tokens are words with their leading whitespace, so
joining them reproduces the answer exactly. ``generate`` cuts the answer as a model's output
is cut (a token limit, stop sequences); ``llmhost_local.engine`` serves it with TGI's protocol.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass

NOTE = "(local extractive engine — not an LLM)"
MAX_SENTENCES = 3


# ---- tokens -------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
_STREAM_TOKEN = re.compile(r"\s*\S+")


def count_tokens(text: str) -> int:
    """Approximate token count: each word and each punctuation mark is one token.

    Real tokenizers give 1.2-1.5x more for English; limits checked with this count are
    therefore looser than the real model's, which is fine for a local stand-in.
    """
    return len(_TOKEN.findall(text))


def split_stream_tokens(text: str) -> list[str]:
    """The answer as streamed tokens: words with their leading whitespace, so that
    ``"".join(split_stream_tokens(t)) == t`` for any ``t`` without trailing whitespace."""
    return _STREAM_TOKEN.findall(text)


def prompt_tokens(text: str) -> list[str]:
    """The words and punctuation marks ``count_tokens`` counts, in order."""
    return _TOKEN.findall(text)


def token_id(text: str) -> int:
    # Stable ids from the token text: clients may log them, nothing depends on them.
    return zlib.crc32(text.encode()) % 32_000 + 1


# ---- prompts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """One conversational turn: ``role`` is system, user, assistant or tool."""

    role: str
    text: str


_SPECIAL = re.compile(r"<\|begin_of_text\|>|<\|endoftext\|>|<\|end_of_text\|>|</?s>")
_LLAMA3 = re.compile(
    r"<\|start_header_id\|>\s*(\w+)\s*<\|end_header_id\|>(.*?)"
    r"(?:<\|eot_id\|>|(?=<\|start_header_id\|>)|\Z)",
    re.S,
)
_CHATML = re.compile(
    r"<\|im_start\|>\s*(\w+)[ \t]*\n?(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.S
)
_ZEPHYR = re.compile(
    r"<\|(system|user|assistant)\|>[ \t]*\n?(.*?)"
    r"(?:</s>|(?=<\|(?:system|user|assistant)\|>)|\Z)",
    re.S,
)
_INST = re.compile(r"\[INST\](.*?)(?:\[/INST\]|\Z)", re.S)
_SYS = re.compile(r"<<SYS>>(.*?)<</SYS>>", re.S)


def parse_prompt(prompt: str) -> list[Turn]:
    """Split a raw prompt into turns by the chat template it was rendered with.

    Recognises llama3 (``<|start_header_id|>user<|end_header_id|>``), chatml
    (``<|im_start|>user``), Mistral/Llama 2 (``[INST] ... [/INST]``, with ``<<SYS>>``) and
    zephyr (``<|user|>``); any other prompt is a single user turn.
    """
    if "<|start_header_id|>" in prompt:
        turns = [Turn(m[1].lower(), m[2]) for m in _LLAMA3.finditer(prompt)]
    elif "<|im_start|>" in prompt:
        turns = [Turn(m[1].lower(), m[2]) for m in _CHATML.finditer(prompt)]
    elif "[INST]" in prompt:
        turns = []
        for match in _INST.finditer(prompt):
            text = match[1]
            for system in _SYS.findall(text):
                turns.append(Turn("system", system))
            turns.append(Turn("user", _SYS.sub("", text)))
    elif re.search(r"<\|(?:user|system)\|>", prompt):
        turns = [Turn(m[1], m[2]) for m in _ZEPHYR.finditer(prompt)]
    else:
        turns = [Turn("user", prompt)]
    cleaned = [Turn(t.role, _SPECIAL.sub("", t.text).strip()) for t in turns]
    return [t for t in cleaned if t.text] or [Turn("user", _SPECIAL.sub("", prompt).strip())]


# ---- the extractive answer ----------------------------------------------------------------

_MARKER = re.compile(r"^\s*\[(\d{1,4})\]\s?(.*)$")
_QUESTION = re.compile(r"^\s*(?:question|query|q)\s*:\s*(.*)$", re.I)
_LABEL = re.compile(r"^\s*[\w ()/-]{1,40}:\s*$")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")
_ENDS_LINE = re.compile(r"[.!?:;][\"')\]]*$")
_STARTS_ITEM = re.compile(r"^(?:[-*•#>|]|\d+[.)]\s)")
_TRAILING_PUNCT = re.compile(r"^(.*?)([.!?]+[\"')\]]*)$", re.S)

_STOPWORD_LIST = (
    "a an and are as at be been being but by can could did do "
    "does for from had has have how i if in into is it its "
    "of on or she he that the their them then there these they this "
    "those to was we were what when where which who whom whose why will "
    "with would you your about above after again against all am any because before "
    "below between both down during each few further here more most no nor not "
    "now only other our out over own same should so some such than too "
    "under until up very me my our us him her his "
)
_STOPWORDS = frozenset(_STOPWORD_LIST.split())
_SUFFIX_LIST = "ingly edly ation ings ness ment ing ies ied ion ed es ly s"
_SUFFIXES = tuple(_SUFFIX_LIST.split())  # longest first: the first match wins


def _stem(word: str) -> str:
    # A light suffix stripper: enough to match erupted/eruption/erupts; no dependency.
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)]
            return base + "y" if suffix in ("ies", "ied") else base
    return word


def _terms(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


@dataclass(frozen=True)
class Sentence:
    """A candidate answer sentence; ``passage`` is its ``[n]`` number, if the context had one."""

    text: str
    passage: int | None
    position: int


@dataclass(frozen=True)
class Reading:
    """What the engine understood of a prompt: the question and the candidate sentences."""

    question: str | None
    sentences: tuple[Sentence, ...]
    numbered: bool


def read_turns(turns: list[Turn]) -> Reading:
    """Find the question (in the last user turn) and the context sentences (everywhere but
    assistant turns, without the question itself)."""
    last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=None)
    question: str | None = None
    blocks: list[tuple[int | None, str]] = []  # (passage number or None, text)
    for index, turn in enumerate(turns):
        if turn.role == "assistant":
            continue
        lines = turn.text.splitlines()
        if index == last_user:
            question, taken = _find_question(lines)
            lines = [line for i, line in enumerate(lines) if i not in taken]
        blocks += _blocks(lines)
    numbered = any(number is not None for number, _ in blocks)
    if numbered:
        # With numbered passages, unnumbered text is instructions, not context.
        blocks = [(number, text) for number, text in blocks if number is not None]
    sentences = [
        Sentence(text, number, position)
        for position, (number, text) in enumerate(
            (number, sentence) for number, block in blocks for sentence in _sentences(block)
        )
    ]
    return Reading(question, tuple(sentences), numbered)


def _find_question(lines: list[str]) -> tuple[str | None, set[int]]:
    for i in range(len(lines) - 1, -1, -1):
        match = _QUESTION.match(lines[i])
        if not match:
            continue
        taken, parts = {i}, [match[1].strip()]
        for j in range(i + 1, len(lines)):
            line = lines[j].strip()
            if not line or _LABEL.match(line) or _MARKER.match(line):
                break
            taken.add(j)
            parts.append(line)
        text = " ".join(p for p in parts if p)
        return (text or None), taken
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if not line or _LABEL.match(line):
            continue
        if _MARKER.match(line):
            return None, set()
        return line, {i}
    return None, set()


def _blocks(lines: list[str]) -> list[tuple[int | None, str]]:
    blocks: list[tuple[int | None, list[str]]] = [(None, [])]
    for line in lines:
        marker = _MARKER.match(line)
        if marker:
            blocks.append((int(marker[1]), [marker[2]]))
        elif _LABEL.match(line):
            continue  # "Context:", "Answer:" and the like carry nothing to quote
        else:
            blocks[-1][1].append(line)
    return [(number, "\n".join(body)) for number, body in blocks if "".join(body).strip()]


def _sentences(block: str) -> list[str]:
    found: list[str] = []
    for line in _unwrap(block):
        for piece in _SENTENCE_END.split(line):
            if _WORD.search(piece):
                found.append(piece.strip())
    return found


def _unwrap(block: str) -> list[str]:
    # Re-join hard-wrapped lines (a sentence running on), but keep list items, headings and
    # lines that end a sentence or a clause as their own lines.
    lines: list[str] = []
    for raw in block.splitlines():
        line = raw.strip()
        if not line:
            lines.append("")
        elif (
            lines
            and lines[-1]
            and not _ENDS_LINE.search(lines[-1])
            and not _STARTS_ITEM.match(line)
        ):
            lines[-1] += " " + line
        else:
            lines.append(line)
    return [line for line in lines if line]


def choose_sentences(reading: Reading) -> list[Sentence]:
    """The best one to three sentences by BM25 against the question, in reading order; the
    runners-up only when they score at least half the best. Empty when nothing matches."""
    if not reading.question or not reading.sentences:
        return []
    query = set(_terms(reading.question))
    docs = [Counter(_terms(s.text)) for s in reading.sentences]
    n = len(docs)
    average = sum(sum(d.values()) for d in docs) / n or 1.0
    frequency = Counter(term for d in docs for term in d)
    k1, b = 1.2, 0.75

    def score(doc: Counter[str]) -> float:
        length = sum(doc.values())
        total = 0.0
        for term in query & doc.keys():
            idf = math.log(1 + (n - frequency[term] + 0.5) / (frequency[term] + 0.5))
            tf = doc[term]
            total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))
        return total

    scored = sorted(
        ((score(doc), s) for doc, s in zip(docs, reading.sentences, strict=True)),
        key=lambda pair: (-pair[0], pair[1].position),
    )
    best = scored[0][0]
    if best <= 0:
        return []
    chosen = [s for value, s in scored[:MAX_SENTENCES] if value >= best / 2]
    return sorted(chosen, key=lambda s: s.position)


def compose_answer(reading: Reading) -> str:
    """The reply text: the note, then the chosen sentences with their citations, or an
    honest sentence about why there is nothing to quote."""
    if not reading.sentences:
        return f"{NOTE} I have no context to answer from: the prompt holds no passages to quote."
    if not reading.question:
        return f"{NOTE} I found no question in the prompt, so there is nothing to look up."
    chosen = choose_sentences(reading)
    if not chosen:
        return f"{NOTE} No passage in the context matches the question."
    return f"{NOTE} " + " ".join(_cite(s) for s in chosen)


def _cite(sentence: Sentence) -> str:
    if sentence.passage is None:
        return sentence.text
    match = _TRAILING_PUNCT.match(sentence.text)
    if match:
        return f"{match[1]} [{sentence.passage}]{match[2]}"
    return f"{sentence.text} [{sentence.passage}]"


# ---- generation (the extractive answer, cut like a model's output) -------------------------


@dataclass(frozen=True)
class Generation:
    """An answer as generated tokens; ``finish_reason`` uses TGI's values (``length``,
    ``eos_token``, ``stop_sequence``)."""

    tokens: tuple[str, ...]
    finish_reason: str
    input_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def generate(
    turns: list[Turn], input_tokens: int, max_new_tokens: int, stop: list[str]
) -> Generation:
    """Answer ``turns`` and cut the answer at ``max_new_tokens`` tokens or just after the first
    stop sequence, as TGI does (the stop sequence stays in the text)."""
    tokens = split_stream_tokens(compose_answer(read_turns(turns)))
    kept: list[str] = []
    text = ""
    for token in tokens:
        if len(kept) == max_new_tokens:
            return Generation(tuple(kept), "length", input_tokens)
        kept.append(token)
        text += token
        if any(s and s in text for s in stop):
            return Generation(tuple(kept), "stop_sequence", input_tokens)
    return Generation(tuple(kept), "eos_token", input_tokens)
