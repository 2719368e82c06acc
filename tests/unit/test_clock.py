"""Durations llmhost compares with timestamps pass at the cloud clock's speed: AWS's own in
AWS, compressed in the local runner exactly as its stand-ins' and CloudWatch's are."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import load_event
from llmhost.clock import REAL, CloudClock
from llmhost.lifecycle.record import DeploymentRecord, HistoryEntry
from llmhost.scaling.hook import decide
from llmhost.scaling.hook_events import parse_alarm_event
from llmhost.serving.routing import (
    ModelDirectory,
    ModelNotReady,
    capacity_retry_after_s,
    check_ready,
    wake_estimate_s,
    wake_is_recent,
)
from llmhost.specs import parse_spec

LOCAL = CloudClock(speed=60)
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = {
    "name": "zero",
    "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "shared", "pool": "pool", "instance_type": "ml.g5.12xlarge"},
    "scaling": {"min_capacity": 0, "max_capacity": 1, "scale_to_zero": True, "idle_minutes": 5},
}


def record(*history: tuple[timedelta, str, Any], **changes: Any) -> DeploymentRecord:
    entries = [
        HistoryEntry(
            at=(T0 + after).isoformat().replace("+00:00", "Z"),
            event=event,
            status=status,
            generation=1,
        )
        for after, event, status in history
    ]
    base = DeploymentRecord(name="zero", spec=parse_spec(SPEC))
    return base.model_copy(update={"status": "IN_SERVICE", "history": entries, **changes})


def test_the_woken_guard_lasts_idle_minutes_on_the_clock() -> None:
    # Given a model woken at T0, with 5 idle minutes (5 s at the local 60x)
    woken = record((timedelta(0), "WakeRequested", "IN_SERVICE"))
    change = parse_alarm_event(load_event("cloudwatch-alarm-idle.json"))
    assert change is not None
    change = type(change)(**{**change.__dict__, "deployment": "zero"})
    later = T0 + timedelta(seconds=6)
    # When its idle alarm fires 6 s later: locally that is past the window, it sleeps
    assert decide(woken, change, later, LOCAL).event == "IdleSleep"
    # while in AWS 6 s after a wake the idle window cannot be over
    assert decide(woken, change, later, REAL).desired_state is None
    assert decide(woken, change, T0 + timedelta(seconds=2), LOCAL).desired_state is None


def test_retry_after_and_stale_wakes_use_the_clock() -> None:
    # With no recorded wake: SageMaker's typical 300 s for a component, compressed
    assert wake_estimate_s(record()) == 300
    assert wake_estimate_s(record(), LOCAL) == 5
    with pytest.raises(ModelNotReady) as creating:
        check_ready(record(status="CREATING"), LOCAL)
    assert creating.value.retry_after == 5
    # A wake asked at T0 and not answered: stale after 3 estimates (15 s locally, not 15 min)
    asked = record((timedelta(0), "WakeRequested", "IN_SERVICE"))
    assert wake_is_recent(asked, T0 + timedelta(seconds=14), LOCAL)
    assert not wake_is_recent(asked, T0 + timedelta(seconds=16), LOCAL)
    assert wake_is_recent(asked, T0 + timedelta(seconds=16), REAL)
    # and once past its estimate, the client polls every 15 cloud seconds (1 s locally)
    assert capacity_retry_after_s(asked, T0 + timedelta(seconds=2), LOCAL) == 3
    assert capacity_retry_after_s(asked, T0 + timedelta(seconds=8), LOCAL) == 1
    assert capacity_retry_after_s(asked, T0 + timedelta(seconds=400), REAL) == 15


def test_a_clock_has_a_positive_speed() -> None:
    with pytest.raises(ValueError, match="positive"):
        CloudClock(speed=0)


class CountingRegistry:
    """A registry stand-in that counts its reads (the directory's cache is what's tested)."""

    def __init__(self) -> None:
        self.reads = 0

    def deployments(self) -> list[DeploymentRecord]:
        self.reads += 1
        return [record()]


@pytest.mark.parametrize(("clock", "reads"), [(REAL, 1), (LOCAL, 2)])
def test_the_model_directorys_view_of_the_registry_ages_with_the_clock(clock, reads) -> None:
    # Given a directory whose registry view lasts 10 cloud seconds (1/6 s at the local 60x)
    registry = CountingRegistry()
    now = [0.0]
    directory = ModelDirectory(lambda: registry, clock=lambda: now[0], cloud_clock=clock)
    directory.route("zero")
    # When a second passes, the local view is stale and read again; AWS's is still fresh
    now[0] += 1.0
    directory.route("zero")
    assert registry.reads == reads


@pytest.mark.parametrize(
    "after_wake",
    [
        [],
        [(timedelta(seconds=1), "WakeAdmitted", "SLEEPING")],
        [
            (timedelta(seconds=1), "WakeAdmitted", "SLEEPING"),
            (timedelta(seconds=2), "Creating", "CREATING"),
        ],
    ],
    ids=["requested", "admitted", "being-recreated"],
)
def test_a_model_being_woken_says_so_until_it_serves(after_wake: list[Any]) -> None:
    # A slept model a request woke: whatever the hook and reconciler recorded since, the
    # client is told the model is waking, not that it is being created for the first time
    woken = record((timedelta(0), "WakeRequested", "SLEEPING"), *after_wake, status="CREATING")
    with pytest.raises(ModelNotReady) as waking:
        check_ready(woken, LOCAL)
    assert "waking up" in waking.value.message
    assert "being created" not in waking.value.message
    # while a model that was never woken is still being created
    with pytest.raises(ModelNotReady) as created:
        check_ready(record((timedelta(0), "Created", "CREATING"), status="CREATING"), LOCAL)
    assert "being created" in created.value.message
