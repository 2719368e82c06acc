"""The account-wide cap on GPU units, kept by leasing each deployment its MaxCapacity.

GPU units are instances of dedicated deployments plus copies of shared ones (serverless
deployments hold none). Application Auto Scaling scales each target between its MinCapacity
and MaxCapacity on its own, and nothing can veto one of its scaling activities. So the cap
is kept ahead of time: each autoscaled deployment's registered MaxCapacity is its *lease*,
and whenever llmhost sets a lease it keeps

    sum over deployments of max(running, floor, lease) <= cap

(``floor``: the units a deployment is owed while it is wanted in service; a deployment with
no scalable target holds what it runs or will run). AWS therefore never scales past the cap
by itself. When a deployment wants more than its lease (its target-tracking AlarmHigh goes to
ALARM), the hook takes unused lease back from others, largest slack first and never below
what they run or are owed, and grants it; when nothing is free the refusal is recorded.

Everything here is pure: ``lease_for``, ``plan_scale_out``, ``plan_wake`` and
``check_admission`` take usage and return a decision. ``llmhost.scaling.capacity_guard``
reads the usage from AWS and applies the decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmhost.errors import LlmhostError
from llmhost.specs import DeploymentSpec

if TYPE_CHECKING:
    from llmhost.lifecycle.record import DeploymentRecord

CAP_PARAMETER = "GpuCapacityCap"


class GpuCapacityExceeded(LlmhostError):
    """A deployment's minimum capacity does not fit under the account's GPU cap."""

    code = "gpu_capacity_cap"
    status = 409

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Holding:
    """What one deployment holds against the cap, in GPU units.

    ``current``: units SageMaker runs or is adding (the larger of current and desired);
    ``floor``: units owed to it (its minimum while wanted in service, else 0);
    ``maximum``: its spec's most (``scaling.max_capacity``; for fixed capacity, its count);
    ``lease``: its registered MaxCapacity, None without a scalable target;
    ``target_min``: its registered MinCapacity (a lease never goes below it).
    """

    deployment: str
    current: int
    floor: int
    maximum: int
    lease: int | None = None
    target_min: int = 0
    resource_id: str = ""
    dimension: str = ""

    @property
    def units(self) -> int:
        return max(self.current, self.floor, self.lease or 0)

    @property
    def lowest_lease(self) -> int:
        """The smallest lease that takes nothing from it: what it runs or is owed."""
        return max(self.current, self.floor, self.target_min)

    @property
    def slack(self) -> int:
        """Leased units it neither runs nor is owed: what may be reclaimed."""
        return 0 if self.lease is None else max(0, self.lease - self.lowest_lease)


@dataclass(frozen=True)
class Usage:
    """Every deployment's holding; ``cap`` None means no cap."""

    cap: int | None
    holdings: tuple[Holding, ...]

    def get(self, name: str) -> Holding | None:
        return next((h for h in self.holdings if h.deployment == name), None)

    @property
    def reserved(self) -> int:
        return sum(h.units for h in self.holdings)

    @property
    def running(self) -> int:
        return sum(h.current for h in self.holdings)

    def others(self, name: str) -> int:
        return sum(h.units for h in self.holdings if h.deployment != name)

    def describe(self) -> str:
        """E.g. '6 of the cap of 8 GPU units are held (4 running): a 4 (running 3), b 2'."""
        held = [h for h in self.holdings if h.units]
        who = ", ".join(
            f"{h.deployment} {h.units}"
            + (f" (running {h.current})" if h.current != h.units else "")
            for h in sorted(held, key=lambda h: (-h.units, h.deployment))
        )
        cap = f"the cap of {self.cap}" if self.cap is not None else "no cap"
        return f"{self.reserved} of {cap} GPU units are held ({self.running} running)" + (
            f": {who}" if who else ""
        )


@dataclass(frozen=True)
class Reclaim:
    """Lease taken back from another deployment to make room."""

    holding: Holding
    lease_after: int

    @property
    def deployment(self) -> str:
        return self.holding.deployment

    def describe(self) -> str:
        return f"{self.deployment} {self.holding.lease} -> {self.lease_after}"


@dataclass(frozen=True)
class Grant:
    """The guardrail's answer to a scale-out or a wake.

    ``event``: ScaleOutGranted, ScaleOutRefused or ScaleOutAtMax for a scale-out;
    WakeAdmitted or WakeRefused for a wake. ``lease_after`` None: no lease change.
    """

    deployment: str
    event: str
    granted: bool
    reason: str
    current: int = 0
    lease_before: int | None = None
    lease_after: int | None = None
    reclaims: tuple[Reclaim, ...] = ()


def lease_for(
    usage: Usage, name: str, minimum: int, maximum: int, *, budget_exceeded: bool = False
) -> int:
    """The MaxCapacity to register for ``name``: its spec maximum, less what others hold,
    never below ``minimum`` (a minimum the cap cannot hold is refused at the API)."""
    if budget_exceeded:
        return minimum
    if usage.cap is None:
        return maximum
    return max(minimum, min(maximum, usage.cap - usage.others(name)))


def _reclaim(usage: Usage, name: str, wanted: int) -> tuple[int, tuple[Reclaim, ...]]:
    """Take up to ``wanted`` units of others' slack, largest slack first."""
    taken, reclaims = 0, []
    others = [h for h in usage.holdings if h.deployment != name and h.slack > 0]
    for holding in sorted(others, key=lambda h: (-h.slack, h.deployment)):
        if taken >= wanted:
            break
        take = min(holding.slack, wanted - taken)
        assert holding.lease is not None
        reclaims.append(Reclaim(holding, holding.lease - take))
        taken += take
    return taken, tuple(reclaims)


def _fix(usage: Usage) -> str:
    return (
        f"raise the {CAP_PARAMETER} stack parameter or lower another deployment's "
        "scaling.max_capacity"
    )


def plan_scale_out(
    usage: Usage,
    name: str,
    *,
    budget_block: str | None = None,
    wanted: int | None = None,
    why: str = "AlarmHigh",
) -> Grant:
    """Reclaim and grant lease so ``name`` can grow towards its maximum (pure).

    ``budget_block``: why today's budget forbids growth (None: it does not). The grant is
    everything free (after reclaiming others' slack) up to the spec maximum, or, with
    ``wanted`` (units the overload hook computed demand needs), up to that many only: it
    takes from others no more than it asks for. ``why`` starts each reason.
    """
    holding = usage.get(name)
    if holding is None or holding.lease is None:
        return Grant(
            name,
            "ScaleOutRefused",
            False,
            f"{why}: no scalable target is registered yet (the reconciler registers it "
            "once the deployment is in service)",
        )
    lease, current = holding.lease, holding.current
    common: dict[str, Any] = {"current": current, "lease_before": lease}
    if wanted is not None and wanted <= lease:
        return Grant(
            name,
            "ScaleOutGranted",
            True,
            f"{why}: {wanted} fit(s) within the lease of {lease}",
            lease_after=lease,
            **common,
        )
    base = max(lease, current)
    goal = holding.maximum if wanted is None else min(holding.maximum, wanted)
    more = goal - base
    if more <= 0:
        if current < lease:
            return Grant(
                name,
                "ScaleOutGranted",
                True,
                f"{why}: AWS may scale {current} -> up to {lease} within the lease "
                f"(lease {lease} -> {lease}, scaling.max_capacity {holding.maximum})",
                lease_after=lease,
                **common,
            )
        return Grant(
            name,
            "ScaleOutAtMax",
            False,
            f"{why}: already at scaling.max_capacity ({holding.maximum}); raise it to "
            "let the deployment grow",
            lease_after=lease,
            **common,
        )
    if budget_block:
        return Grant(
            name,
            "ScaleOutRefused",
            False,
            f"{why}: {budget_block}; lease stays {lease} (running {current})",
            lease_after=lease,
            **common,
        )
    if usage.cap is None:
        return Grant(
            name,
            "ScaleOutGranted",
            True,
            f"{why}: no GPU cap; lease {lease} -> {goal} (running {current})",
            lease_after=goal,
            **common,
        )
    free = usage.cap - usage.reserved
    taken, reclaims = _reclaim(usage, name, max(0, more - max(0, free) + max(0, -free)))
    extra = min(more, max(0, free + taken))
    after = base + extra
    if after <= current:
        return Grant(
            name,
            "ScaleOutRefused",
            False,
            f"{why}: no GPU unit is free under the cap of {usage.cap} ({CAP_PARAMETER}); "
            f"{usage.describe()}; lease stays {lease} (running {current}); {_fix(usage)}",
            lease_after=lease,
            **common,
        )
    from_others = _reclaimed_note(taken, reclaims)
    return Grant(
        name,
        "ScaleOutGranted",
        True,
        f"{why}: lease {lease} -> {after} (running {current}, scaling.max_capacity "
        f"{holding.maximum}){from_others}; cap {usage.cap}",
        lease_after=after,
        reclaims=reclaims,
        **common,
    )


def _reclaimed_note(taken: int, reclaims: tuple[Reclaim, ...]) -> str:
    """What a grant took from others, for its history reason ("" when nothing)."""
    if not reclaims:
        return ""
    return f"; reclaimed {taken} unused unit(s): {', '.join(r.describe() for r in reclaims)}"


def plan_wake(usage: Usage, name: str, units: int) -> Grant:
    """Admit ``name`` to run ``units`` units, reclaiming others' slack if needed (pure).

    The lease (if any) becomes at least ``units``, so Application Auto Scaling keeps them.
    """
    holding = usage.get(name) or Holding(name, current=0, floor=0, maximum=units)
    lease = holding.lease
    lease_after = None if lease is None else max(lease, units)
    common: dict[str, Any] = {
        "current": holding.current,
        "lease_before": lease,
        "lease_after": lease_after,
    }
    needed = units - holding.units
    if usage.cap is None or needed <= 0:
        return Grant(name, "WakeAdmitted", True, f"capacity {holding.current} -> {units}", **common)
    free = usage.cap - usage.reserved
    taken, reclaims = _reclaim(usage, name, needed - max(0, free) + max(0, -free))
    if free + taken < needed:
        return Grant(
            name,
            "WakeRefused",
            False,
            f"waking needs {units} GPU unit(s) but only {max(0, free + taken)} can be freed "
            f"under the cap of {usage.cap} ({CAP_PARAMETER}); {usage.describe()}; "
            f"{_fix(usage)}",
            **{**common, "lease_after": lease},
        )
    from_others = _reclaimed_note(taken, reclaims)
    return Grant(
        name,
        "WakeAdmitted",
        True,
        f"capacity {holding.current} -> {units}{from_others}",
        reclaims=reclaims,
        **common,
    )


def required_units(spec: DeploymentSpec) -> tuple[int, str]:
    """GPU units a deployment needs to be in service at all, and the field that sets them.

    The initial count (``hosting.instance_count`` / ``hosting.copies``) runs before
    autoscaling takes over, so it counts as much as ``scaling.min_capacity``. A dedicated
    endpoint never runs below one instance.
    """
    from llmhost.lifecycle.desired import wanted_scaling

    hosting, scaling = spec.hosting, spec.scaling
    if hosting.kind == "serverless":
        return 0, ""
    initial, field = (
        (hosting.copies, "hosting.copies")
        if hosting.kind == "shared"
        else (hosting.instance_count, "hosting.instance_count")
    )
    if wanted_scaling(spec) is None:
        return initial, field
    # A dedicated variant never goes below one instance; copies and async instances reach 0.
    floor = max(1, scaling.min_capacity) if hosting.kind == "dedicated" else scaling.min_capacity
    if scaling.min_capacity >= initial and floor >= initial:
        return floor, "scaling.min_capacity"
    return max(initial, floor), field


def owed_units(record: DeploymentRecord) -> int:
    """Units a registry record is owed: its minimum while wanted in service, else none."""
    if record.status == "DELETED" or record.desired_state != "in_service":
        return 0
    return required_units(record.spec)[0]


def check_admission(
    cap: int | None, records: list[DeploymentRecord], spec: DeploymentSpec, *, waking: bool = False
) -> None:
    """Refuse a spec whose minimum would take the account's minimums over the cap.

    ``records``: the registry's live deployments (the one named like ``spec`` is replaced).
    Raises GpuCapacityExceeded (409) naming the field to lower.
    """
    if not cap:
        return
    units, field = required_units(spec)
    if units == 0:
        return
    others = [(r.name, owed_units(r)) for r in records if r.name != spec.name]
    held = sum(n for _, n in others)
    if held + units <= cap:
        return
    who = ", ".join(f"{name} {n}" for name, n in sorted(others, key=lambda o: -o[1]) if n)
    what = "waking it" if waking else "it"
    raise GpuCapacityExceeded(
        field,
        f"{field}: {what} needs {units} GPU unit(s) (instances or copies) at its minimum, but "
        f"the minimums of other deployments already take {held} of the cap of {cap}"
        + (f" ({who})" if who else "")
        + f"; raise the {CAP_PARAMETER} stack parameter or lower {field}",
    )
