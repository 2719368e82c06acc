"""Incremental decoders for streamed model replies: server-sent events and JSON lines.

SageMaker hands a streamed reply over as ``PayloadPart`` byte chunks cut wherever the
network cut them: inside a line, inside a multi-byte UTF-8 character, between the ``\\r``
and ``\\n`` of a line ending. ``SseDecoder.feed`` takes chunks as they come and returns the
events completed so far; feeding the same bytes split any other way gives the same events.

The SSE rules follow the WHATWG event-stream format: lines end in CRLF, LF or CR; a line
starting with ``:`` is a comment; ``field: value`` loses one space after the colon; ``data``
lines accumulate (joined with newlines); a blank line dispatches the event; an event with
no data is not dispatched. TGI, vLLM and OpenAI end a stream with ``data: [DONE]``
(``SseEvent.is_done``). LMI streams JSON lines instead (``JsonLinesDecoder``).
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass

DONE = "[DONE]"


class StreamDecodeError(ValueError):
    """The byte stream is not a complete event stream (it ended in the middle of an event)."""


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event: its ``data`` (lines joined with '\\n'), type and last id."""

    data: str
    event: str = "message"
    id: str | None = None

    @property
    def is_done(self) -> bool:
        """True for the ``[DONE]`` sentinel that ends OpenAI-style streams."""
        return self.data.strip() == DONE


class _LineSplitter:
    """Bytes in, complete text lines out, with any line ending and any chunk boundary."""

    def __init__(self) -> None:
        # "replace": a stray invalid byte from a model must not kill the whole answer.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._started = False

    def feed(self, chunk: bytes) -> list[str]:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        return self._split(text)

    def finish(self) -> tuple[list[str], str]:
        """Lines completed by the end of the stream, and the unterminated rest (or '')."""
        lines = self._split(self._decoder.decode(b"", final=True))
        rest = self._pending
        self._pending = ""
        if rest.endswith("\r"):
            # A lone CR at the very end terminates its line; nothing more can follow it.
            lines.append(rest[:-1])
            rest = ""
        return lines, rest

    def _split(self, text: str) -> list[str]:
        buffer = self._pending + text
        if "\r" not in buffer:
            # The common case (TGI and vLLM end lines with LF only): let str.split do it.
            parts = buffer.split("\n")
            self._pending = parts.pop()
            return parts
        lines: list[str] = []
        start = 0
        length = len(buffer)
        i = 0
        while i < length:
            ch = buffer[i]
            if ch == "\n":
                lines.append(buffer[start:i])
                start = i + 1
            elif ch == "\r":
                if i + 1 == length:
                    # Maybe the first half of CRLF: keep the CR until the next chunk says.
                    break
                lines.append(buffer[start:i])
                start = i + 2 if buffer[i + 1] == "\n" else i + 1
                i = start - 1
            i += 1
        self._pending = buffer[start:]
        return lines


class SseDecoder:
    """Incremental server-sent-events decoder; one instance per stream."""

    def __init__(self) -> None:
        self._lines = _LineSplitter()
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._fields_seen = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by ``chunk`` (possibly none), in stream order."""
        return self._process(self._lines.feed(chunk))

    def finish(self, *, strict: bool = True) -> list[SseEvent]:
        """Flush at end of stream and return any last events.

        With ``strict`` (the default) a stream that stops inside an event (an unterminated
        line, or fields with no blank line after them) raises ``StreamDecodeError``: the
        answer was cut off. ``strict=False`` dispatches such a last event instead.
        """
        lines, rest = self._lines.finish()
        events = self._process(lines)
        if rest:
            if strict:
                raise StreamDecodeError(
                    f"the event stream ended in the middle of a line ({rest[:40]!r})"
                )
            events += self._process([rest])
        if self._fields_seen:
            if strict:
                raise StreamDecodeError("the event stream ended before its last event was closed")
            events += self._process([""])
        return events

    def _process(self, lines: list[str]) -> list[SseEvent]:
        events: list[SseEvent] = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                continue
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            name, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            self._fields_seen = True
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id" and "\0" not in value:
                self._last_id = value
            # 'retry' and unknown fields are ignored, as the format requires.
        return events

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event
        self._data, self._event, self._fields_seen = [], "", False
        if not data:
            return None
        return SseEvent(data="\n".join(data), event=event or "message", id=self._last_id)


class JsonLinesDecoder:
    """Incremental JSON-lines decoder (LMI's streaming format); one instance per stream.

    Returns each non-blank line as an ``SseEvent`` whose ``data`` is the line, so the engine
    codecs read both framings the same way. The JSON itself is parsed by the codec.
    """

    def __init__(self) -> None:
        self._lines = _LineSplitter()

    def feed(self, chunk: bytes) -> list[SseEvent]:
        return [SseEvent(data=line) for line in self._lines.feed(chunk) if line.strip()]

    def finish(self, *, strict: bool = True) -> list[SseEvent]:
        """Flush at end of stream; an unterminated last line is returned when it is a whole
        JSON value and raises ``StreamDecodeError`` (with ``strict``) when it is cut off."""
        lines, rest = self._lines.finish()
        events = [SseEvent(data=line) for line in lines if line.strip()]
        if rest.strip():
            if strict and not _is_json(rest):
                raise StreamDecodeError(
                    f"the JSON-lines stream ended in the middle of a line ({rest[:40]!r})"
                )
            events.append(SseEvent(data=rest))
        return events


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
