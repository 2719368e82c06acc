"""A SageMaker control-plane stand-in that plugs into a real boto3 ``sagemaker`` client.

moto has no inference components or ``UpdateEndpoint``, rejects ``ml.g5.*`` instance types
and settles every resource at once. The stand-in validates each request against botocore's
service model (a malformed call fails as it would in AWS), applies SageMaker's rules, and
moves resources through ``Creating``/``Updating``/``Deleting`` on a clock the caller owns.

    standin = SageMakerStandIn(clock=lambda: now[0], on_event=events.append)
    sagemaker = standin.attach(boto3.client("sagemaker", region_name="us-east-1", ...))

The rules and state live in ``sagemaker_state``; the wire format in ``wire``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from botocore.client import BaseClient

from llmhost.local.standin.sagemaker_state import (
    Clock,
    Durations,
    EventSink,
    FailureKind,
    ResourceKind,
    SageMakerControlPlane,
    SageMakerError,
)
from llmhost.local.standin.wire import OPERATIONS, SageMakerWire, StandInResponseInvalid

__all__ = [
    "OPERATIONS",
    "SageMakerError",
    "SageMakerStandIn",
    "StandInResponseInvalid",
    "manual_clock",
]

ClientT = TypeVar("ClientT", bound=BaseClient)


class SageMakerStandIn:
    """One emulated SageMaker account and region, shared by every client attached to it.

    Durations are seconds of the given ``clock`` (``time.time`` by default; tests pass a
    manual one). ``on_event`` receives an EventBridge "SageMaker Endpoint State Change"
    event on every endpoint status change. ``instance_quotas`` caps "<type> for endpoint
    usage" per instance type (``ResourceLimitExceeded`` beyond it); unlisted types are
    unlimited. Thread-safe.
    """

    def __init__(
        self,
        clock: Clock = time.time,
        *,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        create_seconds: float = 600.0,
        update_seconds: float = 300.0,
        delete_seconds: float = 60.0,
        ic_create_seconds: float = 240.0,
        ic_update_seconds: float = 180.0,
        ic_delete_seconds: float = 60.0,
        instance_quotas: Mapping[str, int] | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.region = region
        self.account_id = account_id
        self._plane = SageMakerControlPlane(
            clock=clock,
            region=region,
            account_id=account_id,
            durations=Durations(
                create=create_seconds,
                update=update_seconds,
                delete=delete_seconds,
                ic_create=ic_create_seconds,
                ic_update=ic_update_seconds,
                ic_delete=ic_delete_seconds,
            ),
            instance_quotas=instance_quotas,
            on_event=on_event,
        )

    def attach(self, client: ClientT) -> ClientT:
        """Serve this ``sagemaker`` client's calls from the stand-in; no request reaches HTTP.

        Raises ``ValueError`` for a client of another service or region (ARNs and quotas
        would silently disagree).
        """
        service = client.meta.service_model.service_name
        if service != "sagemaker":
            raise ValueError(
                f"the SageMaker stand-in attaches to a 'sagemaker' client, not {service!r}"
            )
        if client.meta.region_name != self.region:
            raise ValueError(
                f"the stand-in emulates {self.region}; this client is for "
                f"{client.meta.region_name}: create the stand-in with region="
                f"{client.meta.region_name!r} or the client with region_name={self.region!r}"
            )
        endpoint = getattr(client, "_endpoint", None)
        wire = SageMakerWire(self._plane, getattr(endpoint, "_response_parser_factory", None))
        client.meta.events.register(
            "before-call.sagemaker",
            cast(Any, wire.handle),
            unique_id=f"llmhost-sagemaker-standin-{id(self)}",
        )
        return client

    def tick(self) -> list[dict[str, Any]]:
        """Settle every resource whose transitional state has elapsed; return (and emit) events."""
        return self._plane.tick()

    def fail_next(self, kind: FailureKind, name: str, reason: str) -> None:
        """Make the next create/update of that endpoint or inference component fail with reason.

        The failure lands when the operation's duration has elapsed: a create ends
        ``Failed``; an update rolls back to the previous config/specification, ``InService``,
        with ``FailureReason`` set.
        """
        self._plane.fail_next(kind, name, reason)

    def resources(self) -> dict[str, set[str]]:
        """Names currently existing, by kind; a resource still ``Deleting`` counts."""
        return self._plane.resources()

    def describe(self, kind: ResourceKind, name: str) -> dict[str, Any] | None:
        """The matching Describe* result (UTC datetimes), or None if the resource is gone."""
        return self._plane.describe(kind, name)


def manual_clock(
    start: float = 1_700_000_000.0,
) -> tuple[Callable[[], float], Callable[[float], None]]:
    """A clock for tests: ``(now, advance)``; ``advance(seconds)`` moves it forward."""
    current = [start]

    def now() -> float:
        return current[0]

    def advance(seconds: float) -> None:
        current[0] += seconds

    return now, advance
