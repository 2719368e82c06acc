"""A local engine that speaks the TGI protocol but is not an LLM: it answers extractively.

``make run`` needs the whole serving path without a GPU. This engine implements the HTTP API
of Hugging Face Text Generation Inference (TGI 3.x: ``/generate``, ``/generate_stream``,
``/v1/chat/completions``, the SageMaker ``/invocations`` and ``/ping`` contract, ``/health``,
``/info``) with the same request and reply shapes, so codecs, the SageMaker runtime front and
the ``openai`` client work against it unchanged. Its "generation" is extractive:

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
joining them reproduces the answer exactly.

Timing knobs make it a stand-in for benchmarks: ``latency_ms`` (the total time of a
non-streamed reply), ``token_interval_ms`` (the wait before each streamed token, including
the first) and ``first_token_ms`` (extra wait before the first token).

Run it alone: ``python -m llmhost_local.engine --port 8081 --latency-ms 50``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llmhost.errors import LlmhostError

MODEL_ID = "llmhost/local-extractive"
VERSION = "0.1.0"
NOTE = "(local extractive engine — not an LLM)"
TOKENIZER_NOTE = "llmhost's local engine counts each word and each punctuation mark as one token"
# TGI's defaults: max_new_tokens when the request names none, and the stop-sequence cap.
DEFAULT_MAX_NEW_TOKENS = 100
MAX_STOP_SEQUENCES = 4
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


def _token_id(text: str) -> int:
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


def message_text(content: Any) -> str:
    """An OpenAI message's content as text: a string, or the text parts of a part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    raise EngineBodyInvalid(
        'messages: `content` must be a string or a list of {"type": "text", "text": ...} parts'
    )


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


# ---- errors and replies ---------------------------------------------------------------------


class EngineRequestInvalid(LlmhostError):
    """A request TGI's validation refuses (limits, parameters): HTTP 422, ``error_type``
    ``validation``; inside the stream, with HTTP 200, when the request asked for one."""

    code = "validation"
    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(f"Input validation error: {message}")


class EngineBodyInvalid(LlmhostError):
    """JSON of the wrong shape (TGI's deserialisation rejection): HTTP 422, never streamed."""

    code = "validation"
    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(f"Failed to deserialize the JSON body into the target type: {message}")


class EngineRequestMalformed(LlmhostError):
    """A body that is not JSON at all: HTTP 400."""

    code = "validation"
    status = 400


class EngineRouteNotFound(LlmhostError):
    code = "not_found"
    status = 404


@dataclass(frozen=True)
class EngineReply:
    """One HTTP reply: ``body`` for a complete one, ``stream`` (SSE events, each item one
    event, produced lazily with the engine's delays) for a streamed one."""

    status: int
    content_type: str = "application/json"
    body: bytes = b""
    stream: Iterator[bytes] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def _json(value: Any) -> bytes:
    # serde_json's compact output, UTF-8 unescaped, like TGI.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _sse(value: Any) -> bytes:
    # axum's Event::json_data writes "data:" with no space, then a blank line.
    return b"data:" + _json(value) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def _error_reply(error: LlmhostError) -> EngineReply:
    return EngineReply(error.status, body=_json({"error": error.message, "error_type": error.code}))


# ---- the engine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    turns: list[Turn]
    input_tokens: int
    max_new_tokens: int
    stop: list[str]
    inputs: str = ""


class LocalEngine:
    """The TGI-compatible extractive engine. Thread-safe and stateless; call ``handle``
    in-process or serve it over HTTP with ``serve_engine``.

    ``latency_ms``: total time of a non-streamed reply; ``token_interval_ms``: wait before
    each streamed token (the first included); ``first_token_ms``: extra wait before the first
    token. Token limits are checked with ``count_tokens`` (an approximation, see there).
    """

    def __init__(
        self,
        latency_ms: float = 0,
        token_interval_ms: float = 0,
        first_token_ms: float = 0,
        max_input_tokens: int = 4096,
        max_total_tokens: int = 8192,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if min(latency_ms, token_interval_ms, first_token_ms) < 0:
            raise ValueError("latency_ms, token_interval_ms and first_token_ms must be >= 0")
        if not 0 < max_input_tokens < max_total_tokens:
            raise ValueError(
                f"need 0 < max_input_tokens < max_total_tokens, got {max_input_tokens} "
                f"and {max_total_tokens}"
            )
        self.latency_ms = latency_ms
        self.token_interval_ms = token_interval_ms
        self.first_token_ms = first_token_ms
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self._sleep = sleep

    # -- dispatch

    def handle(self, method: str, path: str, body: bytes = b"") -> EngineReply:
        """Serve one request as TGI would; never raises for a client's mistake (those become
        TGI-shaped error replies)."""
        started = time.perf_counter()
        route = path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if method == "GET":
                return self._get(route)
            if method != "POST":
                raise EngineRouteNotFound(f"{method} {route} is not served; use GET or POST")
            payload = self._payload(body)
            if route in ("/invocations", "/"):
                return self._invocations(payload, started)
            if route == "/generate":
                return self._generate(payload, started, wrap=False)
            if route == "/generate_stream":
                return self._generate_stream(payload)
            if route == "/v1/chat/completions":
                return self._chat(payload, started)
            raise EngineRouteNotFound(
                f"POST {route} is not served; try /invocations, /generate, /generate_stream "
                "or /v1/chat/completions"
            )
        except LlmhostError as error:
            return _error_reply(error)
        except Exception as error:  # a bug here must still reach the client as TGI would say it
            return EngineReply(
                500,
                body=_json(
                    {
                        "error": f"Incomplete generation: {type(error).__name__}: {error}",
                        "error_type": "incomplete_generation",
                    }
                ),
            )

    def info(self) -> dict[str, Any]:
        """TGI's ``/info``, plus a note on how tokens are counted."""
        return {
            "model_id": MODEL_ID,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 1,
            "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "llmhost-local-engine",
            "version": VERSION,
            "sha": None,
            "docker_label": None,
            "tokenizer": TOKENIZER_NOTE,
        }

    def _get(self, route: str) -> EngineReply:
        if route in ("/health", "/ping"):
            return EngineReply(200, content_type="text/plain")
        if route == "/info":
            return EngineReply(200, body=_json(self.info()))
        if route == "/v1/models":
            model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "llmhost"}
            return EngineReply(200, body=_json({"object": "list", "data": [model]}))
        raise EngineRouteNotFound(f"GET {route} is not served; try /health, /info or /ping")

    @staticmethod
    def _payload(body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as error:
            raise EngineRequestMalformed(
                f"Failed to parse the request body as JSON: {error}"
            ) from error
        if not isinstance(payload, dict):
            raise EngineBodyInvalid(
                "expected a JSON object with `inputs` (generate) or `messages` (chat)"
            )
        return payload

    def _invocations(self, payload: dict[str, Any], started: float) -> EngineReply:
        # TGI's SagemakerRequest is an untagged enum tried in this order.
        if "inputs" in payload:
            if payload.get("stream") is True:
                return self._generate_stream(payload)
            return self._generate(payload, started, wrap=True)
        if "messages" in payload:
            return self._chat(payload, started)
        raise EngineBodyInvalid(
            "data did not match any variant of untagged enum SagemakerRequest (send "
            '{"inputs": ..., "parameters": ...} or an OpenAI chat payload with `messages`)'
        )

    # -- generate

    def _generate_request(self, payload: dict[str, Any]) -> tuple[_Request, dict[str, Any]]:
        inputs = payload.get("inputs")
        if not isinstance(inputs, str):
            raise EngineBodyInvalid("`inputs` must be a string")
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise EngineBodyInvalid("`parameters` must be an object")
        return self._checked(
            [*parse_prompt(inputs)],
            count_tokens(inputs),
            params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
            params.get("stop") or [],
            params,
            inputs,
        ), params

    def _checked(
        self,
        turns: list[Turn],
        input_tokens: int,
        max_new_tokens: Any,
        stop: Any,
        params: Mapping[str, Any],
        inputs: str = "",
    ) -> _Request:
        """TGI's validation, in TGI's order and wording (limits use ``count_tokens``)."""
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise EngineRequestInvalid("`stop` must be a list of strings")
        best_of = params.get("best_of")
        if best_of not in (None, 1):
            raise EngineRequestInvalid("`best_of` != 1 is not allowed for this endpoint")
        temperature = params.get("temperature")
        if temperature is not None and (not _number(temperature) or temperature < 0):
            raise EngineRequestInvalid("`temperature` must be strictly positive")
        top_p = params.get("top_p")
        if top_p is not None and (not _number(top_p) or not 0 < top_p <= 1):
            raise EngineRequestInvalid("`top_p` must be > 0.0 and < 1.0")
        if max_new_tokens is None:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool):
            raise EngineRequestInvalid("`max_new_tokens` must be an integer")
        if max_new_tokens <= 0:
            raise EngineRequestInvalid("`max_new_tokens` must be strictly positive")
        if len(stop) > MAX_STOP_SEQUENCES:
            raise EngineRequestInvalid(
                f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(stop)}"
            )
        if not any(t.text for t in turns):
            raise EngineRequestInvalid("`inputs` cannot be empty")
        if input_tokens + max_new_tokens > self.max_total_tokens:
            raise EngineRequestInvalid(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {input_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens` "
                f"({TOKENIZER_NOTE})"
            )
        if input_tokens > self.max_input_tokens:
            raise EngineRequestInvalid(
                f"`inputs` must have less than {self.max_input_tokens} tokens. "
                f"Given: {input_tokens} ({TOKENIZER_NOTE})"
            )
        return _Request(turns, input_tokens, max_new_tokens, stop, inputs)

    def _generate(self, payload: dict[str, Any], started: float, *, wrap: bool) -> EngineReply:
        request, params = self._generate_request(payload)
        result = generate(request.turns, request.input_tokens, request.max_new_tokens, request.stop)
        text = result.text
        if params.get("return_full_text"):
            text = request.inputs + text
        reply: dict[str, Any] = {"generated_text": text}
        if params.get("details"):
            reply["details"] = {
                "finish_reason": result.finish_reason,
                "generated_tokens": len(result.tokens),
                "seed": params.get("seed"),
                "prefill": _prefill(request.inputs) if params.get("decoder_input_details") else [],
                "tokens": [_token(t) for t in result.tokens],
            }
        self._wait_until(started)
        # TGI's compat route (/ and /invocations) wraps the reply in a list; /generate doesn't.
        return EngineReply(
            200, body=_json([reply] if wrap else reply), headers=_usage_headers(result)
        )

    def _generate_stream(self, payload: dict[str, Any]) -> EngineReply:
        try:
            request, params = self._generate_request(payload)
            if params.get("decoder_input_details"):
                raise EngineRequestInvalid(
                    "`decoder_input_details` == true is not supported when streaming tokens"
                )
        except EngineRequestInvalid as error:
            # TGI reports validation failures of a stream inside the stream, with HTTP 200.
            return _stream_reply(iter([_sse({"error": error.message, "error_type": error.code})]))
        result = generate(request.turns, request.input_tokens, request.max_new_tokens, request.stop)

        def events() -> Iterator[bytes]:
            last = len(result.tokens) - 1
            for index, (token, _) in enumerate(self._paced(result.tokens)):
                done = index == last
                yield _sse(
                    {
                        "index": index + 1,
                        "token": _token(token),
                        "generated_text": result.text if done else None,
                        "details": {
                            "finish_reason": result.finish_reason,
                            "generated_tokens": len(result.tokens),
                            "seed": params.get("seed"),
                            "input_length": result.input_tokens,
                        }
                        if done and params.get("details")
                        else None,
                    }
                )

        return _stream_reply(events())

    # -- chat

    def _chat(self, payload: dict[str, Any], started: float) -> EngineReply:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise EngineBodyInvalid('`messages` must be a list of {"role", "content"} objects')
        turns = [Turn(str(m.get("role", "user")), message_text(m.get("content"))) for m in messages]
        stream = payload.get("stream") is True
        options = payload.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        created = int(time.time())
        ident = "chatcmpl-" + hashlib.sha1(_json(payload)).hexdigest()[:24]
        try:
            request = self._checked(
                turns,
                sum(count_tokens(t.text) for t in turns),
                payload.get("max_tokens", payload.get("max_completion_tokens")),
                payload.get("stop") or [],
                payload,
            )
        except EngineRequestInvalid as error:
            if not stream:
                raise
            return _stream_reply(iter([_sse({"error": error.message, "error_type": error.code})]))
        result = generate(request.turns, request.input_tokens, request.max_new_tokens, request.stop)
        usage = {
            "prompt_tokens": result.input_tokens,
            "completion_tokens": len(result.tokens),
            "total_tokens": result.input_tokens + len(result.tokens),
        }
        finish = "stop" if result.finish_reason == "eos_token" else result.finish_reason
        common = {
            "id": ident,
            "created": created,
            "model": MODEL_ID,
            "system_fingerprint": f"{VERSION}-local-extractive",
        }
        if not stream:
            self._wait_until(started)
            reply = {
                "object": "chat.completion",
                **common,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
            return EngineReply(200, body=_json(reply), headers=_usage_headers(result))

        def events() -> Iterator[bytes]:
            last = len(result.tokens) - 1
            for index, (token, _) in enumerate(self._paced(result.tokens)):
                chunk = {
                    "object": "chat.completion.chunk",
                    **common,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": token},
                            "logprobs": None,
                            "finish_reason": finish if index == last else None,
                        }
                    ],
                    "usage": None,
                }
                yield _sse(chunk)
            if include_usage:
                # OpenAI's shape: a last chunk with no choices that carries the usage.
                yield _sse(
                    {"object": "chat.completion.chunk", **common, "choices": [], "usage": usage}
                )
            yield SSE_DONE

        return _stream_reply(events())

    # -- timing

    def _paced(self, tokens: tuple[str, ...]) -> Iterator[tuple[str, int]]:
        for index, token in enumerate(tokens):
            delay = self.token_interval_ms + (self.first_token_ms if index == 0 else 0)
            if delay > 0:
                self._sleep(delay / 1000)
            yield token, index

    def _wait_until(self, started: float) -> None:
        left = self.latency_ms / 1000 - (time.perf_counter() - started)
        if left > 0:
            self._sleep(left)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _token(text: str) -> dict[str, Any]:
    return {"id": _token_id(text), "text": text, "logprob": 0.0, "special": False}


def _prefill(inputs: str) -> list[dict[str, Any]]:
    tokens = _TOKEN.findall(inputs)
    return [
        {"id": _token_id(t), "text": t, "logprob": None if i == 0 else 0.0}
        for i, t in enumerate(tokens)
    ]


def _usage_headers(result: Generation) -> dict[str, str]:
    return {
        "x-compute-type": "local-extractive",
        "x-prompt-tokens": str(result.input_tokens),
        "x-generated-tokens": str(len(result.tokens)),
    }


def _stream_reply(events: Iterator[bytes]) -> EngineReply:
    return EngineReply(200, content_type="text/event-stream", stream=events)


# ---- HTTP ---------------------------------------------------------------------------------


class StreamingHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler base with complete and chunked replies, shared by the
    engine and the SageMaker runtime front. Quiet: no per-request log lines."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Without this, a small chunk written right after the headers waits for the peer's
        # delayed ACK (Nagle), adding ~40 ms to time-to-first-token.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        """The request body, sent with a Content-Length or chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            pieces = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass  # trailers
            return b"".join(pieces)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_complete(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def send_chunked(
        self, status: int, headers: Mapping[str, str], chunks: Iterator[bytes]
    ) -> None:
        """Send each item as one HTTP chunk as soon as it is produced; a client that hangs up
        ends the iteration (and with it the engine's work)."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in chunks:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()


class _EngineHandler(StreamingHandler):
    engine: LocalEngine

    def do_GET(self) -> None:
        self._serve("GET", b"")

    def do_POST(self) -> None:
        self._serve("POST", self.read_body())

    def _serve(self, method: str, body: bytes) -> None:
        reply = self.engine.handle(method, self.path, body)
        headers = {"Content-Type": reply.content_type, **reply.headers}
        if reply.stream is not None:
            self.send_chunked(reply.status, {**headers, "Cache-Control": "no-cache"}, reply.stream)
        else:
            self.send_complete(reply.status, headers, reply.body)


def serve_engine(
    engine: LocalEngine, host: str = "127.0.0.1", port: int = 0
) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``engine`` over HTTP from a daemon thread. Returns the server (stop it with
    ``shutdown()`` then ``server_close()``) and its base URL. ``port=0`` picks a free port."""
    handler = type("LocalEngineHandler", (_EngineHandler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},  # shutdown() waits up to one interval
        name="llmhost-local-engine",
        daemon=True,
    ).start()
    return server, f"http://{host}:{server.server_port}"


def main(argv: list[str] | None = None) -> None:
    """``python -m llmhost_local.engine``: serve the extractive engine until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m llmhost_local.engine",
        description="A TGI-compatible extractive engine (not an LLM) for local runs and benchmarks",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--latency-ms", type=float, default=0, help="total time of a non-streamed reply"
    )
    parser.add_argument(
        "--token-interval-ms", type=float, default=0, help="wait before each streamed token"
    )
    parser.add_argument(
        "--first-token-ms", type=float, default=0, help="extra wait before the first token"
    )
    parser.add_argument("--max-input-tokens", type=int, default=4096)
    parser.add_argument("--max-total-tokens", type=int, default=8192)
    args = parser.parse_args(argv)
    engine = LocalEngine(
        latency_ms=args.latency_ms,
        token_interval_ms=args.token_interval_ms,
        first_token_ms=args.first_token_ms,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
    )
    server, url = serve_engine(engine, args.host, args.port)
    print(f"llmhost local extractive engine (not an LLM) on {url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
