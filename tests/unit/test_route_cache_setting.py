"""The serving functions' view of the registry lasts ROUTE_CACHE_S cloud seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmhost import runtime
from llmhost.clock import CloudClock
from llmhost.runtime import ServingSettings


@pytest.fixture(autouse=True)
def clean_runtime() -> Iterator[None]:
    runtime.reset()
    yield
    runtime.reset()


def test_the_route_cache_defaults_to_ten_seconds() -> None:
    assert ServingSettings(registry_table_name="llmhost-registry").route_cache_s == 10.0


@pytest.mark.parametrize(("speed", "setting", "real_s"), [(1, 30.0, 30.0), (600, 6000.0, 10.0)])
def test_the_route_cache_lasts_what_the_function_is_told_on_the_cloud_clock(
    speed: float, setting: float, real_s: float
) -> None:
    runtime.override(
        serving_settings=ServingSettings(
            registry_table_name="llmhost-registry", route_cache_s=setting
        ),
        clock=CloudClock(speed=speed),
    )
    directory = runtime.serving_service()._directory
    assert directory._ttl == pytest.approx(real_s)


def test_a_route_cache_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="route_cache_s"):
        ServingSettings(registry_table_name="llmhost-registry", route_cache_s=0)
