"""Typed errors: every failure a user can cause names the field or resource and the fix.

``LlmhostError`` is the base: its ``status`` and ``code`` (and ``retry_after`` where waiting
helps) are what a client sees. This module holds the errors of the deployment registry and
of SageMaker's control plane, which several modules raise; an error only one module raises
lives beside it (``llmhost.rag.store.CollectionNotFound``, ``llmhost.serving.errors`` for
calling a model, ``llmhost.aws_faults.ServiceFault`` for any other AWS service failing).

Each HTTP front turns them into responses in one place: ``llmhost.api.http.
install_error_handlers`` for the API Gateway functions (api, serve) and
``llmhost.serving.http_app`` for the OpenAI-compatible server, in OpenAI's error shape.
Adapters turn SDK errors into them (the registry's table: ``llmhost.lifecycle.registry.
table_errors``), so nothing above the adapter layer sees a botocore exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmhost.aws_faults import Fault


@dataclass(frozen=True)
class FieldIssue:
    """One problem with one field of a request, as a dotted path and what to do about it."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class LlmhostError(Exception):
    """Base class. ``code`` is stable and machine-readable; the message is for people.
    ``log_detail`` (what an SDK or engine said) is for the operator's log, never the client."""

    code = "error"
    status = 500
    log_detail = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecInvalid(LlmhostError):
    """A deployment spec (or another request body) failed validation."""

    code = "invalid_spec"
    status = 422

    def __init__(self, issues: list[FieldIssue]) -> None:
        self.issues = issues
        summary = "; ".join(f"{i.field}: {i.message}" for i in issues[:3])
        super().__init__(f"the request is invalid: {summary}")


class DeploymentNotFound(LlmhostError):
    code = "not_found"
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no deployment named '{name}'; GET /v1/deployments lists the ones that exist"
        )
        self.name = name


class DeploymentDeleted(DeploymentNotFound):
    """The name's record reads DELETED: GET still shows it, nothing can change it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.message = (
            f"deployment '{name}' was deleted; GET /v1/deployments/{name} shows its record, "
            "and POST /v1/deployments creates it again"
        )
        self.args = (self.message,)


class DeploymentExists(LlmhostError):
    code = "already_exists"
    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(
            f"a deployment named '{name}' already exists; PATCH /v1/deployments/{name} "
            "to change it, or DELETE it first"
        )
        self.name = name


class ConflictingChange(LlmhostError):
    """The request is valid on its own but conflicts with the deployment's current state."""

    code = "conflict"
    status = 409


class ConcurrentModification(LlmhostError):
    """Another writer changed the record since it was read (optimistic locking)."""

    code = "concurrent_modification"
    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(
            f"deployment '{name}' was changed by another request while this one ran; "
            "read it again and retry"
        )
        self.name = name


class RegistryError(LlmhostError):
    """DynamoDB refused a read or write of the registry's table for a reason retrying will not
    fix (access denied, no such table): the stack's configuration, not the caller's request.
    The base of every registry failure that is not a domain outcome."""

    code = "registry_error"
    status = 500
    retry_after: int | None = None

    def __init__(self, message: str, log_detail: str = "") -> None:
        super().__init__(message)
        self.log_detail = log_detail


class RegistryUnavailable(RegistryError):
    """DynamoDB answered 5xx, timed out or could not be reached, after botocore's retries:
    503 (504 when it timed out) with Retry-After."""

    code = "registry_unavailable"

    def __init__(self, fault: Fault, log_detail: str = "") -> None:
        verb = "did not answer in time" if fault.kind == "timed out" else "is unavailable"
        super().__init__(
            f"the deployment registry {verb}; retry after {fault.retry_after} s", log_detail
        )
        self.status = fault.status
        self.retry_after = fault.retry_after
        if fault.kind == "timed out":
            self.code = "registry_timeout"


class RegistryBusy(RegistryUnavailable):
    """DynamoDB throttled the registry (ProvisionedThroughputExceededException,
    ThrottlingException, RequestLimitExceeded) after botocore's retries. llmhost's table is
    busy, not the caller too fast, so 503 with Retry-After rather than 429."""

    code = "registry_busy"

    def __init__(self, fault: Fault, log_detail: str = "") -> None:
        super().__init__(fault, log_detail)
        self.status = 503
        self.message = f"the deployment registry is busy; retry after {fault.retry_after} s"
        self.args = (self.message,)


class SageMakerBusy(LlmhostError):
    """SageMaker refused an operation because the resource is in a transitional state.

    The reconciler treats this as "try again on the next event", never as a failure.
    """

    code = "busy"
    status = 409


class SageMakerRejected(LlmhostError):
    """SageMaker rejected a request for a reason retrying will not fix (bad input, quota)."""

    code = "sagemaker_rejected"
    status = 422
