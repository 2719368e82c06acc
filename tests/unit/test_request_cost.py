"""A request's estimated cost: its busy time on a copy, priced as SageMaker bills the copy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmhost import instances
from llmhost.observe import RequestObservation, StageTiming
from llmhost.specs import parse_spec
from llmhost.usage.cost import Rate, busy_ms, rate_of, request_cost_usd


def observation(**changes: object) -> RequestObservation:
    values: dict[str, object] = {
        "request_id": "chatcmpl-1",
        "kind": "chat",
        "started_at": 1_800_000_000.0,
        "duration_ms": 2000.0,
        "status": 200,
        "model": "demo",
        "input_tokens": 100,
        "output_tokens": 50,
    }
    values.update(changes)
    return RequestObservation(**values)  # type: ignore[arg-type]


def dedicated(instance_type: str = "ml.g5.2xlarge") -> object:
    return parse_spec(
        {
            "name": "demo",
            "model": {"model_id": "Qwen/Qwen2.5-0.5B-Instruct"},
            "hosting": {"kind": "dedicated", "instance_type": instance_type},
        }
    )


def test_dedicated_request_pays_its_busy_time_over_what_a_copy_runs_at_once() -> None:
    # Given a dedicated g5.2xlarge deployment and a request whose generate stage took 1.8 s
    spec = dedicated()
    rate = rate_of(spec)  # type: ignore[arg-type]
    assert rate is not None and rate.concurrency >= 1
    obs = observation(
        stages=(
            StageTiming("embed", 0.0, 100.0),
            StageTiming("generate", 200.0, 1800.0),
        )
    )
    # When it is priced
    cost = request_cost_usd(obs, spec)  # type: ignore[arg-type]
    # Then it is the instance's price for 1.8 s, shared by the requests it runs together
    price = instances.get("ml.g5.2xlarge").price_per_hour  # type: ignore[union-attr]
    assert cost == pytest.approx(price * 1.8 / 3600 / rate.concurrency)


def test_shared_copy_pays_its_accelerators_share_of_the_pool_instance() -> None:
    spec = parse_spec(
        {
            "name": "demo",
            "model": {"model_id": "Qwen/Qwen2.5-0.5B-Instruct"},
            "hosting": {
                "kind": "shared",
                "pool": "gpu-pool",
                "instance_type": "ml.g5.12xlarge",
                "accelerators": 1,
            },
        }
    )
    rate = rate_of(spec)
    instance = instances.get("ml.g5.12xlarge")
    assert rate is not None and instance is not None
    assert rate.unit_usd_per_hour == pytest.approx(instance.price_per_hour / instance.gpu_count)


def test_serverless_request_pays_memory_times_duration() -> None:
    spec = parse_spec(
        {
            "name": "tiny",
            "model": {"model_id": "Qwen/Qwen2.5-0.5B-Instruct"},
            "engine": {"name": "hf-inference"},
            "hosting": {"kind": "serverless", "memory_mb": 2048},
        }
    )
    cost = request_cost_usd(observation(duration_ms=1500.0), spec)
    # 2 GB x 1.5 s x $0.00002 per GB-second
    assert cost == pytest.approx(2 * 1.5 * 0.00002)


def test_a_request_refused_before_the_model_costs_nothing() -> None:
    # A cold 503 and a rate-limit 429 never reached a copy
    for status in (503, 429, 400):
        assert request_cost_usd(observation(status=status, cold=status == 503), dedicated()) == 0.0  # type: ignore[arg-type]


def test_a_refusal_by_the_model_itself_is_charged_its_time() -> None:
    obs = observation(status=500, stages=(StageTiming("generate", 0.0, 900.0),))
    assert (request_cost_usd(obs, dedicated()) or 0) > 0  # type: ignore[arg-type]


def test_without_a_spec_the_observations_instance_type_is_priced_or_none() -> None:
    priced = request_cost_usd(observation(instance_type="ml.g5.xlarge", hosting="dedicated"))
    price = instances.get("ml.g5.xlarge").price_per_hour  # type: ignore[union-attr]
    assert priced == pytest.approx(price * 2.0 / 3600)
    assert request_cost_usd(observation()) is None
    assert request_cost_usd(observation(instance_type="ml.zz.huge")) is None
    assert request_cost_usd(observation(hosting="serverless")) is None  # memory unknown


@pytest.mark.parametrize(
    "hosting",
    [
        {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
        {"kind": "serverless", "memory_mb": 6144},
    ],
)
def test_a_served_request_is_priced_from_its_route_as_from_its_spec(hosting: dict) -> None:
    # Given a deployment's route, which the serving path copies into each observation
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.serving.routing import route_for

    engine = {"name": "hf-inference"} if hosting["kind"] == "serverless" else {"name": "tgi"}
    spec = parse_spec(
        {
            "name": "demo",
            "model": {"model_id": "Qwen/Qwen2.5-0.5B-Instruct"},
            "hosting": hosting,
            "engine": engine,
        }
    )
    route = route_for(DeploymentRecord(name="demo", spec=spec))
    obs = observation(
        hosting=route.hosting,
        instance_type=route.instance_type,
        copy_concurrency=route.copy_concurrency,
        memory_mb=route.memory_mb,
        stages=(StageTiming("generate", 0.0, 1500.0),),
    )
    # When it is priced from the observation alone (a trace's cost_usd)
    traced = request_cost_usd(obs)
    # Then it is what the spec's rate gives: shared by the requests a copy runs at once,
    # or memory x duration
    assert traced is not None and traced > 0
    assert traced == pytest.approx(request_cost_usd(obs, spec))


def test_wake_and_wait_are_not_busy_time() -> None:
    obs = observation(
        duration_ms=10_000.0,
        stages=(StageTiming("wake", 0.0, 6000.0), StageTiming("wait", 6000.0, 3000.0)),
    )
    assert busy_ms(obs) == pytest.approx(1000.0)


finite = st.floats(allow_nan=True, allow_infinity=True)


@given(
    duration=finite,
    stage=finite,
    status=st.sampled_from([200, 400, 429, 500, 503]),
    price=st.floats(min_value=0, max_value=200),
    concurrency=st.integers(min_value=-3, max_value=256),
    serverless=st.booleans(),
)
def test_cost_is_never_negative_or_nan(
    duration: float, stage: float, status: int, price: float, concurrency: int, serverless: bool
) -> None:
    obs = observation(
        duration_ms=duration, status=status, stages=(StageTiming("generate", 0.0, stage),)
    )
    rate = (
        Rate(0.0, memory_gb=6.0, gb_second_usd=0.00002)
        if serverless
        else Rate(price, concurrency=concurrency)
    )
    cost = request_cost_usd(obs, rate=rate)
    assert cost is not None and math.isfinite(cost) and cost >= 0
