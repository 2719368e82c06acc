"""Typed errors: every failure a user can cause names the field or resource and the fix.

The API maps these to HTTP in one place (``llmhost.api.errors``); adapters turn SDK errors
into them so nothing above the adapter layer ever sees a botocore exception.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldIssue:
    """One problem with one field of a request, as a dotted path and what to do about it."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class LlmhostError(Exception):
    """Base class. ``code`` is stable and machine-readable; the message is for people."""

    code = "error"
    status = 500

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
