"""Sleep/wake rules become EventBridge Scheduler schedules (moto), for every hosting kind.

The reconciler runs against moto (DynamoDB, Scheduler) and the SageMaker / Application Auto
Scaling stand-ins; each test reads back exactly what Scheduler holds.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle import SPECS, Crash, Harness

from conftest import attach_standins
from llmhost import aws, runtime

GROUP = "llmhost-schedules"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:llmhost-scaling"
SCHEDULER_ROLE = "arn:aws:iam::123456789012:role/llmhost-scheduler-invoke"
DEAD_LETTERS = "arn:aws:sqs:us-east-1:123456789012:llmhost-scaling-dead-letters"
NIGHT = {"cron": "0 20 ? * MON-FRI *", "timezone": "Europe/Berlin", "action": "sleep"}
MORNING = {"cron": "0 7 ? * MON-FRI *", "timezone": "Europe/Berlin", "action": "wake"}


@pytest.fixture
def scheduler_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULE_GROUP", GROUP)
    monkeypatch.setenv("SCALING_FUNCTION_ARN", FUNCTION_ARN)
    monkeypatch.setenv("SCHEDULER_ROLE_ARN", SCHEDULER_ROLE)
    monkeypatch.setenv("SCHEDULE_DEAD_LETTER_ARN", DEAD_LETTERS)


@pytest.fixture
def harness(standin: Any, clock: Any, scheduler_env: None) -> Harness:
    aws.client("scheduler").create_schedule_group(Name=GROUP)
    return Harness(standin, clock)


def with_rules(kind: str, *rules: dict[str, str]) -> dict[str, Any]:
    spec = copy.deepcopy(SPECS[kind])
    spec["scaling"] = {"schedules": list(rules)}
    return spec


def schedules() -> dict[str, dict[str, Any]]:
    """Every schedule in llmhost's group, as Scheduler returns it (GetSchedule)."""
    client = aws.client("scheduler")
    names = [s["Name"] for s in client.list_schedules(GroupName=GROUP)["Schedules"]]
    return {name: client.get_schedule(Name=name, GroupName=GROUP) for name in names}


def shape(schedule: dict[str, Any]) -> tuple[Any, ...]:
    target = schedule["Target"]
    return (
        schedule["ScheduleExpression"],
        schedule["ScheduleExpressionTimezone"],
        schedule["FlexibleTimeWindow"],
        schedule["State"],
        target["Arn"],
        target["RoleArn"],
        target["RetryPolicy"],
        target["DeadLetterConfig"],
        json.loads(target["Input"]),
    )


def expected(name: str, schedule: str, cron: str, action: str) -> tuple[Any, ...]:
    return (
        f"cron({cron})",
        "Europe/Berlin",
        {"Mode": "OFF"},
        "ENABLED",
        FUNCTION_ARN,
        SCHEDULER_ROLE,
        {"MaximumEventAgeInSeconds": 900, "MaximumRetryAttempts": 10},
        {"Arn": DEAD_LETTERS},
        {"source": "llmhost.schedule", "deployment": name, "action": action, "schedule": schedule},
    )


@pytest.mark.parametrize("kind", ["dedicated", "shared", "serverless"])
def test_sleep_wake_schedules_are_created_updated_removed_and_deleted(
    harness: Harness, kind: str
) -> None:
    spec = with_rules(kind, NIGHT, MORNING)
    name = spec["name"]
    # Given a fixed-capacity deployment with a weekday night sleep and a morning wake
    harness.create(spec)
    assert harness.settle(name).status == "IN_SERVICE"
    # Then Scheduler holds exactly two schedules invoking the scaling function with event 3
    held = schedules()
    assert len(held) == 2
    by_action = {json.loads(s["Target"]["Input"])["action"]: s for s in held.values()}
    night, morning = by_action["sleep"], by_action["wake"]
    assert shape(night) == expected(name, night["Name"], NIGHT["cron"], "sleep")
    assert shape(morning) == expected(name, morning["Name"], MORNING["cron"], "wake")
    assert all(
        s["Name"].startswith(f"{name}-") and len(s["Name"]) == len(name) + 9 for s in held.values()
    )

    # And GET /v1/deployments/{name}/scaling lists them by the same names
    from llmhost.scaling.view import scaling_view

    view = scaling_view(
        harness.registry.get(name),
        aws.client("application-autoscaling"),
        aws.client("cloudwatch"),
        aws.client("sagemaker"),
    )
    assert {(s["name"], s["action"]) for s in view["sleep_wake_schedules"]} == {
        (night["Name"], "sleep"),
        (morning["Name"], "wake"),
    }

    # When the deployment sleeps, both stay (the wake schedule must fire)
    harness.set_desired(name, "sleeping")
    assert harness.settle(name).status == "SLEEPING"
    assert set(schedules()) == set(held)
    harness.set_desired(name, "in_service")
    assert harness.settle(name).status == "IN_SERVICE"

    # When the sleep rule moves to 22:00, its schedule is replaced; the wake one is untouched
    later = {**NIGHT, "cron": "0 22 ? * MON-FRI *"}
    harness.patch(name, {"scaling": {"schedules": [later, MORNING]}})
    assert harness.settle(name).status == "IN_SERVICE"
    now = schedules()
    assert set(now) - set(held) and morning["Name"] in now and night["Name"] not in now
    (new_night,) = [s for s in now.values() if s["Name"] != morning["Name"]]
    assert shape(new_night) == expected(name, new_night["Name"], later["cron"], "sleep")

    # When the rules are removed from the spec, their schedules go
    harness.patch(name, {"scaling": {"schedules": []}})
    record = harness.settle(name)
    assert record.status == "IN_SERVICE" and schedules() == {}

    # And after re-adding one and deleting the deployment, nothing is left
    harness.patch(name, {"scaling": {"schedules": [MORNING]}})
    harness.settle(name)
    assert len(schedules()) == 1
    harness.set_desired(name, "deleted")
    record = harness.settle(name)
    assert record.status == "DELETED"
    assert schedules() == {}
    # (schedules first, so none fires into the teardown)
    events = [h.event for h in record.history]
    endpoint = harness.reconciler._resolve(record.spec).endpoint_name
    last_endpoint_delete = max(i for i, e in enumerate(events) if e == f"DeleteEndpoint {endpoint}")
    assert events.index(f"DeleteSchedule {morning['Name']}") < last_endpoint_delete


def test_other_deployments_schedules_are_left_alone(harness: Harness) -> None:
    # Given two deployments whose names share a prefix, both with schedules
    harness.create(with_rules("dedicated", NIGHT))
    other = with_rules("dedicated", MORNING)
    other["name"] = "llama-2"
    harness.create(other)
    harness.settle("llama")
    harness.settle("llama-2")
    assert len(schedules()) == 2
    # When "llama" is deleted, only its own schedule goes
    harness.set_desired("llama", "deleted")
    assert harness.settle("llama").status == "DELETED"
    (left,) = schedules().values()
    assert json.loads(left["Target"]["Input"])["deployment"] == "llama-2"


def test_without_scheduler_settings_the_reason_names_them(
    standin: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a reconcile function deployed without SCHEDULE_GROUP and SCHEDULER_ROLE_ARN
    monkeypatch.setenv("SCALING_FUNCTION_ARN", FUNCTION_ARN)
    harness = Harness(standin, clock)
    harness.create(with_rules("dedicated", NIGHT))
    # When the deployment with a sleep rule is reconciled
    record = harness.settle("llama")
    # Then it still comes up, and its status says what to set instead of failing silently
    assert record.status == "IN_SERVICE"
    assert "SCHEDULE_GROUP" in record.status_reason
    assert "SCHEDULER_ROLE_ARN" in record.status_reason
    assert "SCALING_FUNCTION_ARN" not in record.status_reason


class RecordingHarness(Harness):
    """Also remembers which action each AWS call was, to crash only at schedule calls."""

    def __init__(self, standin: Any, clock: Any) -> None:
        super().__init__(standin, clock)
        self.kinds: list[str] = []

    def _maybe_crash(self, *args: Any) -> None:
        self.kinds.append(args[0].kind)
        super()._maybe_crash(*args)


def _fresh_harness(clock: Any) -> RecordingHarness:
    from llmhost_local.standin import SageMakerStandIn

    aws.reset()
    runtime.reset()
    scheduler = aws.client("scheduler")
    for item in scheduler.list_schedules(GroupName=GROUP)["Schedules"]:
        scheduler.delete_schedule(Name=item["Name"], GroupName=GROUP)
    table = aws.client("dynamodb")
    for item in table.scan(TableName="llmhost-registry-test")["Items"]:
        table.delete_item(TableName="llmhost-registry-test", Key={"name": item["name"]})
    fake = SageMakerStandIn(clock=clock, region="us-east-1")
    attach_standins(fake, clock)
    return RecordingHarness(fake, clock)


@pytest.mark.parametrize("phase", ["create", "delete"])
def test_schedules_converge_despite_a_crash_at_any_schedule_call(
    moto_aws: None, clock: Any, scheduler_env: None, phase: str
) -> None:
    spec = with_rules("dedicated", NIGHT, MORNING)
    aws.client("scheduler").create_schedule_group(Name=GROUP)

    def run(crash_at: int | None) -> RecordingHarness:
        harness = _fresh_harness(clock)
        harness.create(spec)
        if phase == "delete":
            harness.settle("llama")
            harness.set_desired("llama", "deleted")
        harness.calls, harness.kinds, harness.crash_at = 0, [], crash_at
        with contextlib.suppress(Crash):
            harness.settle("llama")
        record = harness.settle("llama")
        # Then retries converge on exactly the schedules the spec asks for
        if phase == "create":
            assert record.status == "IN_SERVICE", record
            assert len(schedules()) == 2
        else:
            assert record.status == "DELETED", record
            assert schedules() == {}
        return harness

    # Given the calls a clean run makes
    kinds = run(None).kinds
    points = [i + 1 for i, kind in enumerate(kinds) if kind.endswith("Schedule")]
    assert len(points) == 2, kinds
    # When the reconciler dies right after each schedule call, before recording it
    for crash_at in points:
        assert run(crash_at).calls > crash_at


def test_schedule_samples_are_what_the_schedules_send() -> None:
    from llmhost.lifecycle.desired import generation_pattern, wanted_sleep_wake
    from llmhost.specs import parse_spec

    # Given a spec with a sleep and a wake rule, named like the samples' deployment
    events = Path(__file__).resolve().parents[2] / "events"
    samples = {
        action: json.loads((events / f"scheduler-{action}.json").read_text())
        for action in ("sleep", "wake")
    }
    spec = parse_spec(
        {
            "name": samples["sleep"]["deployment"],
            "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
            "scaling": {
                "schedules": [
                    {"cron": "0 20 ? * MON-FRI *", "action": "sleep"},
                    {"cron": "0 7 ? * MON-FRI *", "action": "wake"},
                ]
            },
        }
    )
    # Then each schedule's Input has exactly the sample's keys and values, up to the name
    for schedule in wanted_sleep_wake(spec):
        sent = json.loads(schedule.target_input())
        sample = samples[schedule.action]
        assert set(sent) == set(sample)
        assert {**sent, "schedule": ""} == {**sample, "schedule": ""}
        # and the sample's name has the form of a real schedule's name
        assert generation_pattern(spec.name).match(sample["schedule"])
