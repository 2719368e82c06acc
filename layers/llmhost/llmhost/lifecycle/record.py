"""A deployment as the registry stores it: the spec (desired), status (observed), history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmhost.specs import DeploymentSpec

Status = Literal[
    "PENDING",
    "CREATING",
    "IN_SERVICE",
    "UPDATING",
    "SLEEPING",
    "DELETING",
    "DELETED",
    "FAILED",
]
DesiredState = Literal["in_service", "sleeping", "deleted"]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: str
    event: str = Field(description="What happened, e.g. CreateEndpoint or SpecUpdated.")
    status: Status
    reason: str = ""
    generation: int


class Resources(BaseModel):
    """The SageMaker resources this deployment currently uses (as last observed)."""

    model_config = ConfigDict(frozen=True)

    model: str | None = None
    endpoint_config: str | None = None
    endpoint: str | None = None
    inference_component: str | None = None


class Attempt(BaseModel):
    """The last create/update llmhost asked SageMaker for: tells a new failure from an old one."""

    model_config = ConfigDict(frozen=True)

    generation: int
    target: str


class PinnedPlan(BaseModel):
    """The sizing plan (``llmhost.sizing.plan.Plan.as_dict()``) a generation of the spec was built
    with. Kept so that a later release's catalog or price list never re-sizes, and so
    re-creates, what is already running."""

    model_config = ConfigDict(frozen=True)

    generation: int
    plan: dict[str, Any]


class DeploymentRecord(BaseModel):
    """One registry item. ``version`` is the optimistic-locking counter, bumped on each save."""

    model_config = ConfigDict(frozen=True)

    name: str
    spec: DeploymentSpec
    generation: int = 1
    version: int = 0
    desired_state: DesiredState = "in_service"
    status: Status = "PENDING"
    status_reason: str = ""
    failed_generation: int | None = None
    attempt: Attempt | None = None
    # Hash of the autoscaling configuration last applied (None: none applied).
    scaling_applied: str | None = None
    resources: Resources = Resources()
    plan: PinnedPlan | None = None
    # The MaxCapacity the scaling hook holds the scalable target at while the copies (or
    # instances) it asked for on overload start; the budget tick gives the lease back once
    # they serve (None: nothing held).
    capacity_held: int | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    created_at: str = Field(default_factory=utc_now)
    updated_at: str = Field(default_factory=utc_now)

    @property
    def endpoint_name(self) -> str:
        hosting = self.spec.hosting
        return hosting.pool if hosting.kind == "shared" else self.name

    @property
    def pool(self) -> str | None:
        hosting = self.spec.hosting
        return hosting.pool if hosting.kind == "shared" else None

    def pinned_plan(self) -> dict[str, Any] | None:
        """The plan this generation of the spec was built with, if one was pinned."""
        if self.plan is None or self.plan.generation != self.generation:
            return None
        return self.plan.plan

    def with_event(
        self,
        event: str,
        *,
        status: Status | None = None,
        reason: str | None = None,
        repeat: bool = False,
        **changes: object,
    ) -> DeploymentRecord:
        """Return a copy with a status change and one history entry appended.

        An entry that would say again what the last one says (same event, status, reason and
        generation) is not appended, and when nothing else changes either the record itself
        is returned, so callers write nothing (``updated is record``). ``repeat``: append it
        anyway, for entries that mark a moment (a wake asked for again restarts its clock).
        The registry trims the history to its configured limit when it writes.
        """
        new_status = status or self.status
        new_reason = self.status_reason if reason is None else reason
        last = self.history[-1] if self.history else None
        if (
            not repeat
            and last is not None
            and (last.event, last.status, last.reason, last.generation)
            == (event, new_status, new_reason, self.generation)
        ):
            changed = {k: v for k, v in changes.items() if getattr(self, k) != v}
            if new_status == self.status and new_reason == self.status_reason and not changed:
                return self
            return self.model_copy(
                update={
                    "status": new_status,
                    "status_reason": new_reason,
                    "updated_at": utc_now(),
                    **changed,
                }
            )
        entry = HistoryEntry(
            at=utc_now(),
            event=event,
            status=new_status,
            reason=new_reason,
            generation=self.generation,
        )
        return self.model_copy(
            update={
                "status": new_status,
                "status_reason": new_reason,
                "history": [*self.history, entry],
                "updated_at": entry.at,
                **changes,
            }
        )

    def trimmed(self, history_limit: int) -> DeploymentRecord:
        """This record with only its newest ``history_limit`` history entries."""
        if len(self.history) <= history_limit:
            return self
        return self.model_copy(update={"history": self.history[-history_limit:]})

    def public_view(self) -> dict[str, object]:
        """What the API returns: everything except the locking counter."""
        data = self.model_dump(mode="json", exclude={"version", "attempt", "plan", "capacity_held"})
        data["endpoint_name"] = self.endpoint_name
        return data
