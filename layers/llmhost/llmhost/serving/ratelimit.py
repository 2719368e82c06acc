"""Per-key request rates on the OpenAI-compatible server: a token bucket per API key name.

Each key may send ``requests_per_minute`` on average with bursts of ``burst``; a request
over that gets ``429`` with ``Retry-After`` (seconds until the bucket holds a token again).
The buckets live in the process: in AWS that is one warm stream-function instance, so the
rate a key really gets is at most this limit times the instances running at once, which
the function's reserved concurrency bounds (``StreamReservedConcurrency``). It is a brake
on a runaway client, not an exact quota.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from llmhost.errors import LlmhostError

DEFAULT_REQUESTS_PER_MINUTE = 60
DEFAULT_BURST = 20


class RateLimited(LlmhostError):
    code = "rate_limit_exceeded"
    status = 429

    def __init__(self, key_name: str, per_minute: float, retry_after: int) -> None:
        super().__init__(
            f"API key {key_name!r} is over its rate of {per_minute:g} requests per minute: "
            f"retry after {retry_after} s or send fewer requests"
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class RateLimits:
    """``requests_per_minute`` 0 turns limiting off."""

    requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE
    burst: int = DEFAULT_BURST

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, default_rate: float = DEFAULT_REQUESTS_PER_MINUTE
    ) -> RateLimits:
        """``API_KEY_REQUESTS_PER_MINUTE`` and ``API_KEY_BURST`` (defaults 60 and 20)."""
        env = os.environ if env is None else env
        rate = env.get("API_KEY_REQUESTS_PER_MINUTE") or f"{default_rate:g}"
        burst = env.get("API_KEY_BURST") or str(DEFAULT_BURST)
        try:
            limits = cls(float(rate), int(burst))
        except ValueError:
            raise ValueError(
                f"API_KEY_REQUESTS_PER_MINUTE={rate!r} / API_KEY_BURST={burst!r}: "
                "need a number >= 0 and a whole number >= 1"
            ) from None
        if limits.requests_per_minute < 0 or limits.burst < 1:
            raise ValueError(
                f"API_KEY_REQUESTS_PER_MINUTE={rate!r} / API_KEY_BURST={burst!r}: "
                "need a number >= 0 and a whole number >= 1"
            )
        return limits


class KeyRateLimiter:
    """Token buckets by key name (thread-safe). Key names come from the API key secret, so
    the number of buckets is bounded by the number of keys."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, updated at)
        self._lock = threading.Lock()

    def take(self, key_name: str) -> None:
        """Spend one request of ``key_name``'s allowance. Raises RateLimited when empty."""
        per_second = self.limits.requests_per_minute / 60
        if per_second <= 0:
            return
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.get(key_name, (float(self.limits.burst), now))
            tokens = min(float(self.limits.burst), tokens + (now - updated) * per_second)
            if tokens < 1:
                self._buckets[key_name] = (tokens, now)
                wait = max(1, math.ceil((1 - tokens) / per_second))
                raise RateLimited(key_name, self.limits.requests_per_minute, wait)
            self._buckets[key_name] = (tokens - 1, now)
