"""The trace recorder: the ``RequestObserver`` that samples, builds and stores a trace.

Errors and refusals are always kept; answered requests at the stack's TraceSampleRate. The
write is one PutItem after the answer is complete; ``llmhost.observe.notify`` keeps its
failure from reaching the request.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llmhost.observe import RequestObservation
from llmhost.traces.record import build_trace, keep, trace_id_for
from llmhost.traces.redact import TraceContent
from llmhost.traces.store import TraceStore

CostFn = Callable[[RequestObservation], "float | None"]


def default_cost(observation: RequestObservation) -> float | None:
    """The request's estimated cost (``llmhost.usage.cost``), None where it is unknown."""
    from llmhost.usage.cost import request_cost_usd

    value = request_cost_usd(observation)
    return float(value) if value is not None and math.isfinite(value) else None


class TraceRecorder:
    """Records the traces of the requests it observes (see the module's docstring)."""

    def __init__(
        self,
        store: TraceStore,
        *,
        sample_rate: float,
        content: TraceContent,
        retention_days: int,
        cost: CostFn = default_cost,
    ) -> None:
        self._store = store
        self.sample_rate = sample_rate
        self.content = content
        self.retention_days = retention_days
        self._cost = cost

    def observe(self, observation: RequestObservation) -> None:
        if not keep(observation, trace_id_for(observation.request_id), self.sample_rate):
            return
        self._store.put(self.trace(observation), self.expires_at(observation))

    def trace(self, observation: RequestObservation) -> dict[str, Any]:
        try:
            cost = self._cost(observation)
        except Exception:  # a cost the usage model cannot work out leaves the trace whole
            cost = None
        return build_trace(
            observation,
            content=self.content,
            retention_days=self.retention_days,
            cost_usd=cost,
        )

    def expires_at(self, observation: RequestObservation) -> int:
        return int(observation.started_at) + self.retention_days * 86400
