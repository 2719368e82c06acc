"""Which deployments an incoming event asks the reconciler to look at (pure).

Anything the reconciler cannot act on is ``ignored`` rather than an error: events are
delivered by AWS, not typed by users, and an event that names nothing llmhost owns (an
internal registry item, another service's record, a malformed field) is not worth a retry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from llmhost.lifecycle.registry import INTERNAL_PREFIX
from llmhost.specs import NAME_PATTERN

# The stream records that can change what a deployment should be. A REMOVE leaves nothing to
# reconcile (deployments are never deleted from the table, only marked DELETED).
STREAM_EVENT_NAMES = ("INSERT", "MODIFY")


@dataclass(frozen=True)
class Trigger:
    """``names``: deployments named directly; ``endpoint``: all deployments on an endpoint;
    ``everything``: the drift-repair sweep over every live deployment."""

    source: Literal["spec-change", "sagemaker", "schedule", "direct", "ignored"]
    names: tuple[str, ...] = ()
    endpoint: str | None = None
    everything: bool = False


def is_deployment_name(value: Any) -> bool:
    """Whether ``value`` can be a deployment's name (internal items' keys cannot)."""
    return (
        isinstance(value, str)
        and not value.startswith(INTERNAL_PREFIX)
        and re.fullmatch(NAME_PATTERN, value) is not None
    )


def is_stream_batch(event: Any) -> bool:
    """A batch from an event source mapping (``Records``), as opposed to a single event."""
    return isinstance(event, dict) and isinstance(event.get("Records"), list)


def deployment_of_record(record: Any) -> str | None:
    """The deployment a DynamoDB stream record changed, or None when the record is anything
    else: an internal item (budget ledger, capacity lock), a REMOVE, another source, or a
    record without a usable key."""
    if not isinstance(record, dict) or record.get("eventSource") != "aws:dynamodb":
        return None
    if record.get("eventName") not in STREAM_EVENT_NAMES:
        return None
    change = record.get("dynamodb")
    keys = change.get("Keys") if isinstance(change, dict) else None
    key = keys.get("name") if isinstance(keys, dict) else None
    name = key.get("S") if isinstance(key, dict) else None
    return name if is_deployment_name(name) else None


def trigger_from_event(event: Any) -> Trigger:
    """Classify a DynamoDB stream batch, an EventBridge event, a schedule or a direct call."""
    if not isinstance(event, dict):
        return Trigger("ignored")
    if is_stream_batch(event):
        names = [n for n in map(deployment_of_record, event["Records"]) if n is not None]
        if not names:
            return Trigger("ignored")
        return Trigger("spec-change", names=tuple(dict.fromkeys(names)))
    detail_type = event.get("detail-type")
    detail = event.get("detail")
    if event.get("source") == "aws.sagemaker" and detail_type == "SageMaker Endpoint State Change":
        endpoint = detail.get("EndpointName") if isinstance(detail, dict) else None
        if isinstance(endpoint, str) and endpoint:
            return Trigger("sagemaker", endpoint=endpoint)
        return Trigger("ignored")
    if detail_type == "Scheduled Event" or event.get("action") == "reconcile-all":
        return Trigger("schedule", everything=True)
    if is_deployment_name(event.get("name")):
        return Trigger("direct", names=(event["name"],))
    return Trigger("ignored")
