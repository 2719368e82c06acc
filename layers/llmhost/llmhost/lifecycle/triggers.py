"""Which deployments an incoming event asks the reconciler to look at (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Trigger:
    """``names``: deployments named directly; ``endpoint``: all deployments on an endpoint;
    ``everything``: the drift-repair sweep over every live deployment."""

    source: Literal["spec-change", "sagemaker", "schedule", "direct", "ignored"]
    names: tuple[str, ...] = ()
    endpoint: str | None = None
    everything: bool = False


def trigger_from_event(event: dict[str, Any]) -> Trigger:
    """Classify a DynamoDB stream batch, an EventBridge event, a schedule or a direct call."""
    records = event.get("Records")
    if isinstance(records, list):
        names: list[str] = []
        for record in records:
            if record.get("eventSource") != "aws:dynamodb":
                continue
            name = record.get("dynamodb", {}).get("Keys", {}).get("name", {}).get("S")
            if name and name not in names:
                names.append(name)
        return Trigger("spec-change", names=tuple(names)) if names else Trigger("ignored")
    detail_type = event.get("detail-type", "")
    if event.get("source") == "aws.sagemaker" and detail_type == "SageMaker Endpoint State Change":
        endpoint = event.get("detail", {}).get("EndpointName")
        return Trigger("sagemaker", endpoint=endpoint) if endpoint else Trigger("ignored")
    if detail_type == "Scheduled Event" or event.get("action") == "reconcile-all":
        return Trigger("schedule", everything=True)
    if isinstance(event.get("name"), str):
        return Trigger("direct", names=(event["name"],))
    return Trigger("ignored")
