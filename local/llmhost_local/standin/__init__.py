"""SageMaker and Application Auto Scaling stand-ins that plug into real boto3 clients.

moto has no inference components or ``UpdateEndpoint``, rejects ``ml.g5.*`` instance types
and settles every resource at once. The stand-in validates each request against botocore's
service model (a malformed call fails as it would in AWS), applies SageMaker's rules, and
moves resources through ``Creating``/``Updating``/``Deleting`` on a clock the caller owns.

    standin = SageMakerStandIn(clock=lambda: now[0], on_event=events.append)
    sagemaker = standin.attach(boto3.client("sagemaker", region_name="us-east-1", ...))

With ``s3`` (a function returning an S3 client: moto's) and ``invoke_model`` (plays a
model's container: ``(model name, body) -> (status, body)``), it also runs Batch Transform
jobs (``transform_jobs``): ``InProgress`` until ``transform_start_seconds`` pass, then every
record through the container and the ``.out`` files written as SageMaker writes them.

``AutoScalingStandIn`` covers what moto's Application Auto Scaling refuses: the inference
component and provisioned-concurrency dimensions. Every other request goes on to moto:

    autoscaling = AutoScalingStandIn(standin).attach(boto3.client("application-autoscaling"))

The rules and state live in ``sagemaker_state`` and ``autoscaling_state``; the wire format,
shared by both, in ``wire``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from botocore.client import BaseClient

from llmhost_local.standin.autoscaling_state import AutoScalingControlPlane, AutoScalingError
from llmhost_local.standin.sagemaker_state import (
    Clock,
    Durations,
    EventSink,
    FailureKind,
    ResourceKind,
    SageMakerControlPlane,
    SageMakerError,
)
from llmhost_local.standin.transform_jobs import Invoke, TransformJobs
from llmhost_local.standin.wire import (
    AUTOSCALING_OPERATIONS,
    OPERATIONS,
    AutoScalingWire,
    SageMakerWire,
    StandInResponseInvalid,
)

__all__ = [
    "AUTOSCALING_OPERATIONS",
    "OPERATIONS",
    "AutoScalingError",
    "AutoScalingStandIn",
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
        transform_start_seconds: float = 300.0,
        s3: Callable[[], Any] | None = None,
        invoke_model: Invoke | None = None,
        transform_in_background: bool = False,
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
        self.transforms = TransformJobs(
            clock=clock,
            region=region,
            account_id=account_id,
            start_seconds=transform_start_seconds,
            model_exists=self._plane.model_exists,
            s3=s3,
            invoke=invoke_model,
            on_event=on_event,
            background=transform_in_background,
        )
        self._plane.transforms = self.transforms

    def attach(self, client: ClientT) -> ClientT:
        """Serve this ``sagemaker`` client's calls from the stand-in; no request reaches HTTP.

        Raises ``ValueError`` for a client of another service or region (ARNs and quotas
        would silently disagree).
        """
        _check_client(client, "sagemaker", self.region)
        endpoint = getattr(client, "_endpoint", None)
        wire = SageMakerWire(self._plane, getattr(endpoint, "_response_parser_factory", None))
        client.meta.events.register(
            "before-call.sagemaker",
            cast(Any, wire.handle),
            unique_id=f"llmhost-sagemaker-standin-{id(self)}",
        )
        return client

    def tick(self) -> list[dict[str, Any]]:
        """Settle every resource whose transitional state has elapsed, and run the transform
        jobs whose instances are up; return (and emit) events."""
        return self._plane.tick() + self.transforms.tick()

    def fail_transform_records(self, job_name: str, records: set[int]) -> None:
        """Make the container answer 500 to these records (0-based, over the job's whole
        input in key order) of the transform job ``job_name``, created now or later: the
        input objects holding them get no ``.out`` and the job ends ``Failed``."""
        self.transforms.fail_records(job_name, records)

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


class AutoScalingStandIn:
    """Application Auto Scaling for the SageMaker dimensions moto refuses, in front of moto.

    Serves ``sagemaker:inference-component:DesiredCopyCount`` and
    ``sagemaker:variant:DesiredProvisionedConcurrency`` targets, policies and scheduled
    actions; any other request reaches whatever is behind the client (moto in tests), and a
    Describe that could hold both is answered with both (the rule is in ``autoscaling_state``).
    Every request, passed on or not, is first validated against botocore's service model.
    With ``sagemaker``, registering a target checks that its inference component (or
    serverless variant with provisioned concurrency) exists there. Thread-safe.

    Target tracking policies report the alarms AWS would create, but no alarm is created in
    CloudWatch, and nothing ever scales: tests drive copy counts through SageMaker.
    """

    def __init__(
        self,
        sagemaker: SageMakerStandIn | None = None,
        clock: Clock = time.time,
        region: str = "us-east-1",
        account_id: str = "123456789012",
    ) -> None:
        if sagemaker is not None and (sagemaker.region, sagemaker.account_id) != (
            region,
            account_id,
        ):
            raise ValueError(
                f"the SageMaker stand-in emulates {sagemaker.account_id} in {sagemaker.region}; "
                f"create the auto scaling stand-in with region={sagemaker.region!r} and "
                f"account_id={sagemaker.account_id!r}"
            )
        self.region = region
        self.account_id = account_id
        self._plane = AutoScalingControlPlane(
            clock=clock,
            region=region,
            account_id=account_id,
            describe_sagemaker=sagemaker.describe if sagemaker is not None else None,
        )

    def attach(self, client: ClientT) -> ClientT:
        """Serve this ``application-autoscaling`` client's calls for the dimensions moto lacks.

        Raises ``ValueError`` for a client of another service or region.
        """
        _check_client(client, "application-autoscaling", self.region)
        endpoint = getattr(client, "_endpoint", None)
        wire = AutoScalingWire(
            self._plane, client, getattr(endpoint, "_response_parser_factory", None)
        )
        event = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(
            f"before-call.{event}",
            cast(Any, wire.handle),
            unique_id=f"llmhost-autoscaling-standin-{id(self)}",
        )
        return client

    def targets(self) -> set[tuple[str, str]]:
        """(ResourceId, ScalableDimension) of every target the stand-in holds (not moto's)."""
        return self._plane.targets()

    def target_tags(self, resource_id: str) -> dict[str, str]:
        """The tags given when the stand-in's targets on ``resource_id`` were registered."""
        return self._plane.target_tags(resource_id)

    def policies(self) -> set[tuple[str, str]]:
        """(ResourceId, PolicyName) of every scaling policy the stand-in holds."""
        return self._plane.policies()

    def scheduled_actions(self) -> set[tuple[str, str]]:
        """(ResourceId, ScheduledActionName) of every scheduled action the stand-in holds."""
        return self._plane.scheduled_actions()


def _check_client(client: BaseClient, service: str, region: str) -> None:
    actual = client.meta.service_model.service_name
    if actual != service:
        raise ValueError(f"this stand-in attaches to a {service!r} client, not {actual!r}")
    if client.meta.region_name != region:
        raise ValueError(
            f"the stand-in emulates {region}; this client is for "
            f"{client.meta.region_name}: create the stand-in with region="
            f"{client.meta.region_name!r} or the client with region_name={region!r}"
        )


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
