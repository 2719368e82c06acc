"""The request observers of ``llmhost.usage``: a usage counter and the request metrics.

Both see every request (``llmhost.observe``), answered or refused, and neither may slow it
noticeably: the counter is one DynamoDB UpdateItem, the metrics one line of CloudWatch's
embedded metric format (EMF) on stdout, which CloudWatch Logs turns into metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from llmhost.usage.cost import busy_ms, reached_model
from llmhost.usage.store import NO_NAME, UsageCount, UsageStore

if TYPE_CHECKING:
    from llmhost.observe import RequestObservation

NAMESPACE = "llmhost"
# The metrics this observer emits (the dashboard's widgets and the template's alarms name
# them; tests/aws/test_template_dashboard.py checks each is one of these).
REQUEST_METRICS = (
    "Requests",
    "Errors4xx",
    "Errors429",
    "Errors503",
    "Errors5xx",
    "Latency",
    "TimeToFirstToken",
    "InputTokens",
    "OutputTokens",
    "Cold503",
    "WakeTime",
)


def usage_count(observation: RequestObservation) -> UsageCount:
    """What ``observation`` adds to its hour's usage counter (pure)."""
    error_class = observation.error_class
    return UsageCount(
        hour=datetime.fromtimestamp(observation.started_at, UTC),
        deployment=observation.model or NO_NAME,
        caller=observation.caller or NO_NAME,
        errors=1 if error_class else 0,
        error_class=error_class,
        cold=1 if observation.cold else 0,
        input_tokens=max(0, observation.input_tokens),
        output_tokens=max(0, observation.output_tokens),
        busy_ms=round(busy_ms(observation)) if reached_model(observation) else 0,
    )


class UsageCounter:
    """Adds every request to its hour x deployment x caller counter in the usage table."""

    def __init__(self, store: Callable[[], UsageStore]) -> None:
        self._store = store

    def observe(self, observation: RequestObservation) -> None:
        self._store().add(usage_count(observation))


def request_metrics(observation: RequestObservation) -> list[tuple[str, str, float]]:
    """The (name, unit, value) metrics of one request (pure). Every request reports each
    error class (0 or 1), so rates divide counts of the same requests."""
    error_class = observation.error_class
    metrics: list[tuple[str, str, float]] = [("Requests", "Count", 1)]
    metrics += [
        (f"Errors{c}", "Count", 1 if error_class == c else 0) for c in ("4xx", "429", "503", "5xx")
    ]
    metrics.append(("Latency", "Milliseconds", max(0.0, observation.duration_ms)))
    if observation.ttft_ms is not None:
        metrics.append(("TimeToFirstToken", "Milliseconds", max(0.0, observation.ttft_ms)))
    metrics.append(("InputTokens", "Count", max(0, observation.input_tokens)))
    metrics.append(("OutputTokens", "Count", max(0, observation.output_tokens)))
    if observation.status == 503 and observation.cold:
        metrics.append(("Cold503", "Count", 1))
    waited = sum(s.duration_ms for s in observation.stages if s.name in ("wake", "wait"))
    if waited > 0:
        metrics.append(("WakeTime", "Milliseconds", waited))
    return [(n, u, v) for n, u, v in metrics if v == v and v != float("inf")]


class RequestMetrics:
    """Writes each request's metrics as one EMF line, namespace ``llmhost``, dimension
    ``Deployment`` (and the same under ``Stack``, which the stack's alarms read: an alarm
    cannot search across deployments)."""

    def __init__(self, stack: str | None, namespace: str = NAMESPACE) -> None:
        self._stack = stack
        self._namespace = namespace

    def observe(self, observation: RequestObservation) -> None:
        from aws_lambda_powertools.metrics import EphemeralMetrics

        # service="": no "service" dimension, so every function's requests are one metric.
        metrics: Any = EphemeralMetrics(namespace=self._namespace, service="")
        metrics.add_dimension(name="Deployment", value=observation.model or NO_NAME)
        if self._stack:
            metrics.add_dimensions(Stack=self._stack)
        for name, unit, value in request_metrics(observation):
            metrics.add_metric(name=name, unit=unit, value=value)
        metrics.flush_metrics()
