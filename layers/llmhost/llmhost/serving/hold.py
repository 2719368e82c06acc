"""Holding a request for a cold model until a copy is up, instead of refusing it.

Without being asked, a request for a sleeping or zero-copy model is refused with 503 and
Retry-After, and wakes it. A caller may ask to wait instead: ``Prefer: wait=<seconds>``
(RFC 7240) on the chat and RAG routes of both APIs, and on the stream function a streaming
chat request waits by default. A held request wakes the model exactly as a refused one does
(the one wake ``ModelDirectory`` lets a burst record), then tries again with backoff until
the model answers, the wait runs out, or the function must stop holding to answer in time.

``next_step`` is that decision, pure: the time, the hold's bounds and what the last attempt
found -> wait (how long), answer, give up (the last refusal, 503 with Retry-After), or
become a job (the serve function: a wait API Gateway's 29 s cannot hold). ``Hold`` applies
it to one request: it keeps the count of polls, sleeps, and raises the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from llmhost.clock import REAL, CloudClock
from llmhost.errors import LlmhostError

# The longest wait a caller may ask for: Lambda's longest run. A larger value is clamped
# (and Preference-Applied says what was applied).
MAX_WAIT_S = 900
# Polls back off from 1 s to 15 s of cloud time (compressed on a local clock, never below
# MIN_POLL_S real seconds): a held request on a 5-minute wake reads the registry about 25
# times, and notices a failed wake or a copy within 15 s.
FIRST_POLL_S = 1.0
MAX_POLL_S = 15.0
MIN_POLL_S = 0.05
# Kept back from a function's time, beyond the answer's own, so its reply leaves in time.
MARGIN_S = 1.0
# A hold that cannot end in time even by the estimate's reckoning (the wake is estimated
# to take more than this many times the time left) answers at once instead.
HOPELESS_FACTOR = 2.0
# Seconds between SSE comments on a held stream: below the idle timeouts of proxies and
# load balancers (60 s is common), so none of them closes a stream that is only waiting.
KEEPALIVE_S = 10.0


class PreferInvalid(LlmhostError):
    """A ``wait`` preference whose value is not a whole number of seconds."""

    code = "invalid_prefer"
    status = 400

    def __init__(self, value: str) -> None:
        super().__init__(
            f"the Prefer header's wait preference must be a whole number of seconds, 0 to "
            f"{MAX_WAIT_S} (larger values count as {MAX_WAIT_S}), as in 'Prefer: wait=20'; "
            f"got {value!r}"
        )


class HoldOutlastsRequest(LlmhostError):
    """The caller would wait longer than this function may hold the request: it becomes a
    job (``refusal`` is the model's last answer, for a function that cannot make jobs)."""

    code = "hold_outlasts_request"
    status = 503

    def __init__(self, refusal: LlmhostError) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.retry_after = getattr(refusal, "retry_after", None)


class HoldCancelled(LlmhostError):
    """The client went away while its request was held."""

    code = "hold_cancelled"
    status = 499


# ------------------------------------------------------------------------ the preference


def wait_preference(values: Iterable[str]) -> int | None:
    """Seconds of the ``wait`` preference in the values of the Prefer headers, or None.

    RFC 7240: preferences are comma-separated, names are case-insensitive, the first
    ``wait`` counts, its value is delta-seconds (bare or quoted), and ``;`` parameters and
    preferences this server does not know are ignored. A value above MAX_WAIT_S is clamped.
    Raises PreferInvalid for a ``wait`` whose value is not a non-negative integer.
    """
    for value in values:
        for name, raw in _preferences(value):
            if name != "wait":
                continue
            seconds = _unquote(raw.strip()) if raw is not None else ""
            if not seconds.isascii() or not seconds.isdigit():
                raise PreferInvalid(seconds if raw is not None else "wait")
            # More digits than any sane wait (Python refuses int() of very long strings).
            return MAX_WAIT_S if len(seconds) > 6 else min(int(seconds), MAX_WAIT_S)
    return None


def _preferences(value: str) -> Iterator[tuple[str, str | None]]:
    for item in _split(value, ","):
        head = _split(item, ";")[0].strip()
        if not head:
            continue
        name, equals, raw = head.partition("=")
        yield name.strip().lower(), raw if equals else None


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside double-quoted strings (with their escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


# ------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class HoldBounds:
    """When a hold must end, in seconds on a monotonic clock.

    ``wait_until``: the caller's wait runs out. ``hold_until``: the last moment this
    function may still be holding and answer in time. ``as_job``: a wait beyond
    ``hold_until`` becomes a job (the serve function, when jobs exist).
    """

    wait_until: float
    hold_until: float
    as_job: bool = False

    @property
    def end(self) -> float:
        return min(self.wait_until, self.hold_until)

    @property
    def outlasts_function(self) -> bool:
        """The caller would wait longer than this function may hold, and a job can."""
        return self.as_job and self.wait_until > self.hold_until


@dataclass(frozen=True)
class ModelState:
    """What the last attempt found: ``ready`` (answered), ``waking`` (asleep, at zero
    copies, starting: ``expected_s`` seconds left by the estimate, on the hold's clock),
    or ``failed`` (it will not come up by waiting: failed, wake refused, gone)."""

    kind: Literal["ready", "waking", "failed"]
    detail: str = ""
    expected_s: float = 0.0


@dataclass(frozen=True)
class Wait:
    seconds: float


Step = Wait | Literal["answer", "give_up", "become_job", "end"]


def poll_delay(polls: int, clock: CloudClock = REAL) -> float:
    """Seconds before the next attempt after ``polls`` of them: doubling from FIRST_POLL_S
    to MAX_POLL_S of cloud time, never below MIN_POLL_S real seconds."""
    first = max(MIN_POLL_S, clock.seconds(FIRST_POLL_S))
    cap = max(first, clock.seconds(MAX_POLL_S))
    return min(cap, first * 2 ** min(polls, 32))


def next_step(
    now: float, bounds: HoldBounds, state: ModelState, polls: int, clock: CloudClock = REAL
) -> Step:
    """What a held request does next (pure).

    Ready: answer. Failed: end (the refusal is the answer). Waking: wait for the next poll,
    never past the hold's end; at the end, or at once when the estimate says the model will
    not serve before it (by HOPELESS_FACTOR times the time left), give up with the refusal's
    503 and Retry-After, or become a job when the caller would wait longer than this
    function can hold (a hold API Gateway cannot outlast is not started).
    """
    if state.kind == "ready":
        return "answer"
    if state.kind == "failed":
        return "end"
    left = bounds.end - now
    if left <= 0:
        return "become_job" if bounds.outlasts_function else "give_up"
    if bounds.outlasts_function:
        if state.expected_s > bounds.hold_until - now:
            return "become_job"
    elif state.expected_s > HOPELESS_FACTOR * left:
        return "give_up"
    return Wait(min(poll_delay(polls, clock), left))


# ---------------------------------------------------------------------------- the hold


@dataclass(frozen=True)
class HoldPolicy:
    """How a function holds requests: ``answer_s``, the time one model call may take (kept
    for the answer after the wake, at most half the function's time), the cloud's clock for
    the polls, the keep-alive interval of a held stream (real seconds), and the function's
    own limit per request."""

    answer_s: float
    clock: CloudClock = REAL
    keepalive_s: float = KEEPALIVE_S
    # The longest a request may run in this function, when nothing says how long it has
    # left (the stream function's timeout; the serve function reads its Lambda context).
    request_limit_s: float = 300.0

    def hold(
        self,
        wait_s: float,
        time_left_s: float,
        *,
        as_job: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> Hold:
        """A hold for a request that may wait ``wait_s`` seconds in a function with
        ``time_left_s`` seconds left to answer it. ``monotonic`` and ``wait`` (sleep up to
        some seconds, True if cancelled meanwhile) are the hold's time, for tests."""
        now = monotonic()
        reserve = min(self.answer_s, time_left_s / 2) + MARGIN_S
        bounds = HoldBounds(
            wait_until=now + wait_s, hold_until=now + time_left_s - reserve, as_job=as_job
        )
        return Hold(bounds, self.clock, monotonic, keepalive_s=self.keepalive_s, wait=wait)


@dataclass
class Hold:
    """One request's hold: after each refused attempt, ``pause`` sleeps until the next one
    or raises how the hold ends. ``cancel`` (the client left) wakes a sleeping hold."""

    bounds: HoldBounds
    clock: CloudClock = REAL
    monotonic: Callable[[], float] = time.monotonic
    keepalive_s: float = KEEPALIVE_S
    polls: int = 0
    # What the model was doing at the last attempt ("waking up", "scaled to zero"...).
    state: str = "waking"
    # Sleeps up to the given seconds; True when the hold was cancelled meanwhile.
    wait: Callable[[float], bool] | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def next(self, refusal: LlmhostError) -> Wait:
        """The wait before the next attempt after ``refusal``; raises the end instead (the
        refusal itself, or HoldOutlastsRequest)."""
        found = state_of(refusal)
        if found.kind == "waking":
            self.state = found.detail
        step = next_step(self.monotonic(), self.bounds, found, self.polls, self.clock)
        if isinstance(step, Wait):
            return step
        if step == "become_job":
            raise HoldOutlastsRequest(refusal) from refusal
        raise refusal

    def sleep(self, step: Wait) -> None:
        """Sleep ``step``; raises HoldCancelled if the client left meanwhile."""
        self.polls += 1
        wait = self.wait or self._cancelled.wait
        if wait(step.seconds) or self.cancelled:
            raise HoldCancelled("the client closed the connection while its request was held")

    def pause(self, refusal: LlmhostError) -> None:
        self.sleep(self.next(refusal))

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


def state_of(refusal: LlmhostError) -> ModelState:
    """What a refusal says about the model: waking (with its Retry-After as the estimate)
    or failed. Only a model that is asleep, at zero copies, waking, being created or
    starting comes up by waiting."""
    from llmhost.serving.errors import ModelUnavailable
    from llmhost.serving.routing import ModelNotReady, ModelWillNotWake

    retry_after = float(getattr(refusal, "retry_after", None) or 0)
    if isinstance(refusal, ModelWillNotWake):
        return ModelState("failed", refusal.message)
    if isinstance(refusal, ModelNotReady):
        return ModelState("waking", refusal.state, retry_after)
    if isinstance(refusal, ModelUnavailable) and refusal.reason in ("sleeping", "starting"):
        detail = "scaled to zero" if refusal.reason == "sleeping" else "starting"
        return ModelState("waking", detail, retry_after)
    return ModelState("failed", refusal.message)


def waitable(refusal: BaseException) -> bool:
    """Whether ``refusal`` is one a hold may wait out."""
    return isinstance(refusal, LlmhostError) and state_of(refusal).kind == "waking"
