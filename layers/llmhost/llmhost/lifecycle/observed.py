"""What SageMaker (and Application Auto Scaling / CloudWatch / Scheduler) report for one deployment.

Plain values, filled in by ``llmhost.lifecycle.observer`` and read by the pure planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ObservedEndpoint:
    name: str
    status: str
    config_name: str
    failure_reason: str = ""
    # Models named by the endpoint's current config (kept while the endpoint serves them).
    config_models: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ObservedComponent:
    name: str
    status: str
    endpoint_name: str
    model_name: str
    compute: dict[str, float] = field(default_factory=dict)
    desired_copies: int = 0
    current_copies: int = 0
    failure_reason: str = ""


@dataclass(frozen=True)
class Observed:
    """A snapshot. Sets of names hold only resources that match this deployment's patterns."""

    models: frozenset[str] = frozenset()
    configs: frozenset[str] = frozenset()
    endpoint: ObservedEndpoint | None = None
    component: ObservedComponent | None = None
    # Shared hosting only: components on the pool endpoint other than this deployment's,
    # and whether another live deployment in the registry still wants the pool.
    pool_components: frozenset[str] = frozenset()
    pool_wanted_by_others: bool = False
    scalable_targets: frozenset[str] = frozenset()
    # (resource id, policy name): deleted before their target, as not every backend does
    # it on deregistration.
    scaling_policies: frozenset[tuple[str, str]] = frozenset()
    alarms: frozenset[str] = frozenset()
    # llmhost's Application Auto Scaling scheduled actions on this deployment's target.
    scheduled_actions: frozenset[str] = frozenset()
    # EventBridge Scheduler schedules in llmhost's group named for this deployment.
    schedules: frozenset[str] = frozenset()
    # Resources this deployment needs (endpoint or pool, component, model, config) that
    # exist without this stack's tags: why each may not be used. They appear nowhere above.
    conflicts: tuple[str, ...] = ()
