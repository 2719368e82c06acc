"""What requests cost: the price of a deployment's capacity and one request's estimated share.

SageMaker bills instance-hours, not tokens. A real-time deployment (dedicated, async, or a
copy on a shared pool) costs its unit's on-demand price for every hour a unit is in service,
whether it answers one request or a thousand; serverless inference bills memory x inference
duration. So a request's cost is an estimate of its share:

- ``request_cost_usd`` (at the moment a request ends, for its trace): the time it held its
  copy, x the copy's price, / the requests that copy runs at once (its sizing plan's
  concurrency, which the serving route carries into the observation), so the sum of these
  estimates is at most what the copies cost; serverless: memory x duration. Idle hours are
  in no request's estimate.
- ``llmhost.usage.report`` (``GET /v1/usage``) shares what the copies actually cost over a
  period (from the capacity history) over the requests they served, idle cost included.

Prices are ``llmhost.instances``' us-east-1 list prices (estimates, not a bill), the same the
daily budget bills with (``llmhost.scaling.budget.unit_price``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmhost import instances

if TYPE_CHECKING:
    from llmhost.observe import RequestObservation
    from llmhost.sizing.plan import Plan
    from llmhost.specs import DeploymentSpec

# Stages that happen before the model is asked (embedding the query, searching the store) or
# while nothing runs (a wake, a wait for a copy): no instance time of this deployment.
_OFF_MODEL_STAGES = frozenset({"embed", "retrieve", "wake", "wait"})


@dataclass(frozen=True)
class Rate:
    """What a deployment costs while it runs.

    ``unit_usd_per_hour``: one unit in service (an instance of a dedicated or async
    endpoint, one copy on a shared pool: its share of the pool instance); 0 for serverless.
    ``concurrency``: requests one unit runs at once. ``gb_second_usd``: serverless only,
    USD per GB-second of inference (``memory_gb`` per request); ``provisioned_usd_per_hour``:
    serverless provisioned concurrency, billed while provisioned.
    """

    unit_usd_per_hour: float
    concurrency: int = 1
    memory_gb: float = 0.0
    gb_second_usd: float = 0.0
    provisioned_usd_per_hour: float = 0.0

    @property
    def serverless(self) -> bool:
        return self.gb_second_usd > 0


def rate_of(spec: DeploymentSpec, plan: Plan | None = None) -> Rate | None:
    """The rate of ``spec`` (its pinned or computed sizing plan), None when its instance
    type has no known price."""
    from llmhost.sizing.plan import (
        SERVERLESS_PRICE_PER_GB_SECOND,
        SERVERLESS_PROVISIONED_PRICE_PER_GB_SECOND,
    )
    from llmhost.sizing.plan import plan as plan_of

    hosting = spec.hosting
    if hosting.kind == "serverless":
        gb = hosting.memory_mb / 1024
        provisioned = hosting.provisioned_concurrency or 0
        return Rate(
            unit_usd_per_hour=0.0,
            concurrency=1,
            memory_gb=gb,
            gb_second_usd=SERVERLESS_PRICE_PER_GB_SECOND,
            provisioned_usd_per_hour=provisioned
            * gb
            * SERVERLESS_PROVISIONED_PRICE_PER_GB_SECOND
            * 3600,
        )
    sized = plan or plan_of(spec)
    name = hosting.instance_type or sized.instance_type
    instance = instances.get(name) if name else None
    if instance is None:
        return None
    price = instance.price_per_hour
    if hosting.kind == "shared":
        price = price * hosting.accelerators / max(1, instance.gpu_count)
    from llmhost.engines import copy_capacity_of

    return Rate(
        unit_usd_per_hour=price, concurrency=max(1, copy_capacity_of(spec, sized).concurrency)
    )


def rate_of_observation(observation: RequestObservation) -> Rate | None:
    """A rate from what the observation says of the copy that answered: its instance type
    shared by the requests a copy runs at once (a shared copy as one GPU's share), or a
    serverless endpoint's memory. None when that is not enough (an unknown instance type,
    a serverless endpoint whose memory it does not carry)."""
    from llmhost.sizing.plan import SERVERLESS_PRICE_PER_GB_SECOND

    if observation.hosting == "serverless":
        if not observation.memory_mb:
            return None
        return Rate(
            unit_usd_per_hour=0.0,
            concurrency=1,
            memory_gb=observation.memory_mb / 1024,
            gb_second_usd=SERVERLESS_PRICE_PER_GB_SECOND,
        )
    name = observation.instance_type
    instance = instances.get(name) if name else None
    if instance is None:
        return None
    price = instance.price_per_hour
    if observation.hosting == "shared":
        price = price / max(1, instance.gpu_count)
    return Rate(unit_usd_per_hour=price, concurrency=max(1, observation.copy_concurrency))


def busy_ms(observation: RequestObservation) -> float:
    """How long the request held the model, in ms: its generate stage when recorded, else
    its duration less the stages spent elsewhere (embed, retrieve, wake, wait)."""
    generate = [s.duration_ms for s in observation.stages if s.name == "generate"]
    if generate:
        return max(0.0, _finite(sum(generate)))
    elsewhere = sum(s.duration_ms for s in observation.stages if s.name in _OFF_MODEL_STAGES)
    return max(0.0, _finite(observation.duration_ms) - _finite(elsewhere))


def reached_model(observation: RequestObservation) -> bool:
    """Whether the request used the model at all: answered, or refused by the model itself
    (a generate stage was recorded). A cold 503, a 429 of the gateway's rate limit or a 4xx
    for a bad body cost no instance time."""
    if any(s.name == "generate" for s in observation.stages):
        return True
    return observation.status < 400


def request_cost_usd(
    observation: RequestObservation,
    spec: DeploymentSpec | None = None,
    *,
    plan: Plan | None = None,
    rate: Rate | None = None,
) -> float | None:
    """One request's estimated cost in USD (>= 0, finite), or None when its price is unknown.

    Real-time hosting: busy time x the unit's $/h / requests a unit runs at once. Serverless:
    busy time x memory x $/GB-second (how SageMaker bills it). Pass the deployment's ``spec``
    (and its pinned ``plan`` if at hand) or a precomputed ``rate``; with neither, the
    observation's own facts are used (its instance type, the requests its copy runs at once,
    a serverless endpoint's memory). A request that never
    reached the model (a cold 503, a refusal before the call) costs 0.
    """
    if rate is None:
        rate = rate_of(spec, plan) if spec is not None else rate_of_observation(observation)
    if not reached_model(observation):
        return 0.0
    if rate is None:
        return None
    seconds = busy_ms(observation) / 1000.0
    if rate.serverless:
        usd = seconds * rate.memory_gb * rate.gb_second_usd
    else:
        usd = rate.unit_usd_per_hour * seconds / 3600.0 / max(1, rate.concurrency)
    return usd if math.isfinite(usd) and usd > 0 else 0.0


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
