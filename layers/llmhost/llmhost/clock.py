"""The clock llmhost measures the cloud's durations on: AWS's own, or a compressed local one.

In AWS a duration is what it says: an idle window of 5 minutes lasts 5 minutes, SageMaker
adds a copy in about 5. The local runner compresses the cloud's time by ``speed`` (60 in
``make run``): its SageMaker stand-in creates an endpoint in 10 s instead of 10 minutes and
its CloudWatch evaluates a 60 s period in 1 s. Every duration llmhost compares with a
timestamp, or tells a client to wait, must then be compressed the same way, or a guard
meant to hold for 5 minutes holds for 5 real ones (300 local minutes) and a client is told
to come back in 300 s for a copy that is added in 5.

So such durations go through one ``CloudClock``: ``now()`` for timestamps, ``span(s)`` and
``seconds(s)`` for how long ``s`` seconds of cloud time last on it. Code takes a clock
(``REAL`` by default, AWS's) and the local runner hands the same compressed one to the
scaling hook, serving (its wake estimates, and how long its view of the registry may lag
the cloud's state) and its stand-ins (``llmhost.runtime.clock``). Durations that bound
this process rather than the cloud (a lock's lease, an HTTP timeout) stay real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CloudClock:
    """Wall time, with the cloud's durations compressed ``speed`` times (1 in AWS)."""

    speed: float = 1.0
    wall: Callable[[], datetime] = field(default=_utc_now, compare=False)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be a positive factor, got {self.speed}")

    def now(self) -> datetime:
        return self.wall()

    def seconds(self, cloud_seconds: float) -> float:
        """How many seconds on this clock ``cloud_seconds`` of cloud time last."""
        return cloud_seconds / self.speed

    def span(self, cloud_seconds: float) -> timedelta:
        """``seconds`` as a timedelta, to compare with differences of timestamps."""
        return timedelta(seconds=self.seconds(cloud_seconds))


REAL = CloudClock()
