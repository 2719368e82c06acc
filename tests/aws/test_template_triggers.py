"""template.yaml's triggers: what invokes the reconciler and the scaling hook (the
registry stream, EventBridge rules, schedules), their retries and dead letters, and the
samples in events/ that those triggers deliver.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

import sam_template as sam


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def _reconcile_events(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    events = sam.functions(template)["ReconcileFunction"]["Events"]
    return {event["Type"]: event["Properties"] for event in events.values()}


DLQ_ARN = {"Fn::GetAtt": ["ReconcileDeadLetterQueue", "Arn"]}


def test_reconciler_has_the_three_triggers(template: dict[str, Any]) -> None:
    events = _reconcile_events(template)
    schedule_type = "ScheduleV2" if "ScheduleV2" in events else "Schedule"
    assert set(events) == {"DynamoDB", "EventBridgeRule", schedule_type}

    stream = events["DynamoDB"]
    assert stream["Stream"] == {"Fn::GetAtt": ["RegistryTable", "StreamArn"]}
    assert stream["StartingPosition"] == "LATEST"
    assert stream["BisectBatchOnFunctionError"] is True
    assert 0 <= stream["MaximumRetryAttempts"] <= 10
    assert stream["DestinationConfig"]["OnFailure"]["Destination"] == DLQ_ARN
    assert stream["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    patterns = [json.loads(f["Pattern"]) for f in stream["FilterCriteria"]["Filters"]]
    assert [p["eventName"] for p in patterns] == [["INSERT", "MODIFY"]]

    rule = events["EventBridgeRule"]
    assert rule["Pattern"] == {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Endpoint State Change"],
    }
    assert rule["DeadLetterConfig"] == {"Arn": DLQ_ARN}
    assert rule["RetryPolicy"]["MaximumRetryAttempts"] >= 1

    schedule = events[schedule_type]
    expression = "ScheduleExpression" if schedule_type == "ScheduleV2" else "Schedule"
    assert schedule[expression] == {"Ref": "ReconcileSchedule"}
    assert template["Parameters"]["ReconcileSchedule"]["Default"] == "rate(2 minutes)"
    assert schedule["DeadLetterConfig"] == {"Arn": DLQ_ARN}


def test_the_stream_filter_passes_deployment_changes_and_nothing_else(
    template: dict[str, Any],
) -> None:
    from datetime import date

    from moto.events.models import EventPattern

    from llmhost.lifecycle.registry import INTERNAL_PREFIX
    from llmhost.scaling.budget import STATE_KEY, day_key
    from llmhost.scaling.capacity_guard import LOCK_KEY
    from llmhost.specs import NAME_PATTERN

    (stream,) = [
        e["Properties"]
        for e in sam.functions(template)["ReconcileFunction"]["Events"].values()
        if e["Type"] == "DynamoDB"
    ]
    patterns = [EventPattern.load(f["Pattern"]) for f in stream["FilterCriteria"]["Filters"]]

    def passes(event_name: str, key: str) -> bool:
        record = {
            "eventName": event_name,
            "eventSource": "aws:dynamodb",
            "dynamodb": {"Keys": {"name": {"S": key}}, "SequenceNumber": "1"},
        }
        return any(p.matches_event(record) for p in patterns)

    # Every name a deployment can have (each possible first character), on INSERT and MODIFY
    first = [chr(c) for c in range(33, 127)]
    deployments = [c + "x" for c in first if re.fullmatch(NAME_PATTERN, c + "x")]
    assert len(deployments) == 62
    for name in deployments:
        assert passes("INSERT", name) and passes("MODIFY", name), name
        assert not passes("REMOVE", name)
    # and nothing else: internal items and keys no deployment can have
    internal = [STATE_KEY, day_key(date(2026, 11, 21)), LOCK_KEY]
    assert all(k.startswith(INTERNAL_PREFIX) for k in internal)
    for key in internal + [c + "x" for c in first if c + "x" not in deployments]:
        assert not passes("MODIFY", key) and not passes("INSERT", key), key


def test_failed_async_invocations_land_in_the_dead_letter_queue(template: dict[str, Any]) -> None:
    config = sam.functions(template)["ReconcileFunction"]["EventInvokeConfig"]
    assert config["DestinationConfig"]["OnFailure"] == {"Type": "SQS", "Destination": DLQ_ARN}
    # EventBridge may only deliver dead letters from the SageMaker rule.
    policy = template["Resources"]["ReconcileDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]
    allow = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allow] == [{"Service": "events.amazonaws.com"}]
    assert allow[0]["Condition"]["ArnEquals"]["aws:SourceArn"] == {
        "Fn::GetAtt": ["ReconcileFunctionSageMakerStateChange", "Arn"]
    }


def _scaling_rule(template: dict[str, Any]) -> dict[str, Any]:
    events = sam.functions(template)["ScalingFunction"]["Events"]
    assert list(events) == ["AlarmStateChange"]
    assert events["AlarmStateChange"]["Type"] == "EventBridgeRule"
    return events["AlarmStateChange"]["Properties"]


def _matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """EventBridge's matching for the pattern features llmhost uses: every field of the
    pattern must be present; a list is a choice of literal values or {"prefix": ...} matchers
    (case-sensitive); an array in the event matches if any element does. Any other matcher
    fails loudly, so a pattern this cannot judge is never passed."""
    for key, wanted in pattern.items():
        if key not in event:
            return False
        value = event[key]
        if isinstance(wanted, dict):
            if not isinstance(value, dict) or not _matches(wanted, value):
                return False
            continue
        values = value if isinstance(value, list) else [value]
        if not any(_matches_one(choice, v) for choice in wanted for v in values):
            return False
    return True


def _matches_one(choice: Any, value: Any) -> bool:
    if isinstance(choice, dict):
        (kind, operand), *rest = choice.items()
        assert not rest and kind in {"prefix", "wildcard"}, f"matcher {choice} is not modelled"
        if not isinstance(value, str):
            return False
        if kind == "prefix":
            return value.startswith(operand)
        # EventBridge wildcards: "*" matches any run of characters, case-sensitively.
        return re.fullmatch(".*".join(map(re.escape, operand.split("*"))), value) is not None
    return bool(choice == value)


def test_pattern_matcher_follows_eventbridge_rules() -> None:
    # Given a pattern with a literal choice and a nested prefix matcher
    pattern = {"source": ["a", "b"], "detail": {"name": [{"prefix": "x-"}]}}
    # Then a matching event passes, and a missing field, a wrong literal or prefix fails
    assert _matches(pattern, {"source": "b", "detail": {"name": "x-1"}, "other": 1})
    assert _matches(pattern, {"source": ["c", "a"], "detail": {"name": "x-"}})
    assert not _matches(pattern, {"source": "c", "detail": {"name": "x-1"}})
    assert not _matches(pattern, {"source": "a", "detail": {"name": "X-1"}})
    assert not _matches(pattern, {"source": "a", "detail": {}})
    assert not _matches(pattern, {"source": "a"})
    with pytest.raises(AssertionError):
        _matches({"a": [{"suffix": "z"}]}, {"a": "z"})
    # And a wildcard matches whole values only, any run of characters per "*"
    wildcard = {"name": [{"wildcard": "T-*-High-*"}]}
    assert _matches(wildcard, {"name": "T-a/b-High-1"})
    assert not _matches(wildcard, {"name": "T-a-Low-1"})
    assert not _matches(wildcard, {"name": "xT-a-High-1"})


def test_alarm_rule_sends_llmhost_alarms_to_the_hook_and_nothing_else(
    template: dict[str, Any],
) -> None:
    from llmhost.lifecycle.ownership import alarm_prefix
    from llmhost.scaling.hook_events import KINDS, parse_alarm_event, parse_target_alarm

    pattern = _scaling_rule(template)["Pattern"]
    # Given the alarm samples: llmhost's four, and target tracking's scale-out alarm
    samples = sam.sample_events("cloudwatch-alarm-")
    high = samples.pop("cloudwatch-alarm-target-tracking-high.json")
    assert set(samples) == {
        "cloudwatch-alarm-idle.json",
        "cloudwatch-alarm-no-capacity.json",
        "cloudwatch-alarm-overload.json",
        "cloudwatch-alarm-underload.json",
    }
    # Then the scale-out alarm reaches the hook, which finds the deployment behind it
    assert _matches(pattern, high)
    target = parse_target_alarm(high)
    assert target is not None and target.deployment == "zephyr"
    assert parse_alarm_event(high) is None
    expected = {
        "cloudwatch-alarm-idle.json": ("llama3-8b", "idle"),
        "cloudwatch-alarm-no-capacity.json": ("zephyr", "no-capacity"),
        "cloudwatch-alarm-overload.json": ("zephyr", "overload"),
        "cloudwatch-alarm-underload.json": ("zephyr", "underload"),
    }
    for name, event in samples.items():
        # Then each reaches the hook, which reads the deployment and alarm kind from it
        assert _matches(pattern, event), f"{name} would not reach the scaling hook"
        detail = event["detail"]
        assert event["resources"] == [
            f"arn:aws:cloudwatch:{event['region']}:{event['account']}:alarm:{detail['alarmName']}"
        ], name
        change = parse_alarm_event(event)
        assert change is not None, name
        assert (change.deployment, change.kind) == expected[name]
        # And every transition is delivered, not only into ALARM (the history records all)
        for state in ("OK", "INSUFFICIENT_DATA"):
            moved = copy.deepcopy(event)
            moved["detail"]["state"]["value"] = state
            assert _matches(pattern, moved), f"{name}: {state} transitions are dropped"
    # And every alarm the reconciler creates (and only those) passes the filter
    idle = samples["cloudwatch-alarm-idle.json"]
    for kind in KINDS:
        ours = copy.deepcopy(idle)
        ours["detail"]["alarmName"] = alarm_prefix("my-model") + kind
        assert _matches(pattern, ours), kind
    # And target tracking's scale-out alarms reach it for both kinds of scalable target
    for name in (
        "TargetTracking-endpoint/llama3-8b/variant/AllTraffic-AlarmHigh-5e1b3c6a-0f1d",
        "TargetTracking-inference-component/zephyr-AlarmHigh-9a8b7c6d-1e2f",
    ):
        other = copy.deepcopy(idle)
        other["detail"]["alarmName"] = name
        assert _matches(pattern, other), name
    for foreign in (
        # target tracking's scale-in alarm: capacity going down needs no guardrail
        "TargetTracking-inference-component/zephyr-AlarmLow-9a8b7c6d-1e2f",
        "billing-llmhost-idle",
        "LLMHOST-llama3-8b-idle",  # prefixes match case-sensitively
    ):
        other = copy.deepcopy(idle)
        other["detail"]["alarmName"] = foreign
        assert not _matches(pattern, other), foreign
        assert parse_alarm_event(other) is None, foreign
    # And other sources or event types with an llmhost-looking name never start it
    for field, value in (("source", "llmhost.custom"), ("detail-type", "Scheduled Event")):
        other = copy.deepcopy(idle)
        other[field] = value
        assert not _matches(pattern, other), field


def test_alarm_events_are_retried_then_dead_lettered(template: dict[str, Any]) -> None:
    rule = _scaling_rule(template)
    # EventBridge retries failed deliveries, then parks them in the hook's own queue
    assert rule["DeadLetterConfig"] == {"Arn": sam.SCALING_DLQ_ARN}
    assert rule["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    # Invocations that fail after Lambda's retries land there too
    config = sam.functions(template)["ScalingFunction"]["EventInvokeConfig"]
    assert config["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": sam.SCALING_DLQ_ARN,
    }
    assert config["MaximumRetryAttempts"] >= 1
    # A stale idle alarm could sleep a model that has been busy since: neither path keeps
    # an event for longer than a quarter of an hour (EventBridge's minimum age is 60 s).
    assert 60 <= rule["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 900
    assert 60 <= config["MaximumEventAgeInSeconds"] <= 900
    # Only this rule may deliver dead letters; plain HTTP is refused for everyone
    queue = template["Resources"]["ScalingDeadLetterQueue"]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["MessageRetentionPeriod"] == 1209600
    policy = template["Resources"]["ScalingDeadLetterQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": "ScalingDeadLetterQueue"}]
    allow, deny = policy["PolicyDocument"]["Statement"]
    assert allow["Effect"] == "Allow" and allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage" and allow["Resource"] == sam.SCALING_DLQ_ARN
    # SAM names the rule <function><event>.
    assert allow["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ScalingFunctionAlarmStateChange", "Arn"]}}
    }
    assert deny["Effect"] == "Deny" and deny["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }


def test_the_tick_runs_with_or_without_a_budget_or_a_cap(template: dict[str, Any]) -> None:
    tick = template["Resources"]["BudgetTick"]
    # It also gives back the MaxCapacity the overload hook held while copies started, which
    # happens in every stack: without the tick a hold would never end.
    assert "Condition" not in tick
    target = tick["Properties"]["Target"]
    assert target["Arn"] == {"Fn::GetAtt": ["ScalingFunction", "Arn"]}
    assert target["RoleArn"] == {"Fn::GetAtt": ["SchedulerInvokeRole", "Arn"]}
    assert json.loads(target["Input"]) == json.loads((sam.EVENTS / "budget-tick.json").read_text())
    assert tick["Properties"]["ScheduleExpression"] == "rate(5 minutes)"


def test_every_sample_event_is_a_json_object() -> None:
    files = sorted(sam.EVENTS.glob("*"))
    assert {p.name for p in files} >= {
        "api-create-deployment.json",
        "api-create-deployment-invalid.json",
        "dynamodb-stream-spec-change.json",
        "sagemaker-endpoint-state-change-inservice.json",
        "sagemaker-endpoint-state-change-creating.json",
        "sagemaker-endpoint-state-change-failed.json",
        "schedule-reconcile.json",
    }
    for path in files:
        assert path.suffix == ".json", path.name
        assert isinstance(json.loads(path.read_text()), dict), path.name


def test_sagemaker_samples_match_the_rule(template: dict[str, Any]) -> None:
    pattern = _reconcile_events(template)["EventBridgeRule"]["Pattern"]
    samples = sam.sample_events("sagemaker-endpoint-state-change-")
    statuses = {}
    for name, event in samples.items():
        assert event["source"] in pattern["source"], name
        assert event["detail-type"] in pattern["detail-type"], name
        detail = event["detail"]
        assert event["resources"] == [detail["EndpointArn"]], name
        assert detail["EndpointArn"].endswith(":endpoint/" + detail["EndpointName"].lower()), name
        assert set(detail) >= {"EndpointName", "EndpointConfigName", "EndpointStatus", "Tags"}, name
        statuses[name.removeprefix("sagemaker-endpoint-state-change-")] = detail["EndpointStatus"]
    # EventBridge spells statuses IN_SERVICE, not DescribeEndpoint's InService.
    assert statuses == {
        "creating.json": "CREATING",
        "failed.json": "FAILED",
        "inservice.json": "IN_SERVICE",
    }


def test_stream_sample_passes_the_filter_and_carries_registry_items(
    template: dict[str, Any],
) -> None:
    (pattern,) = _reconcile_events(template)["DynamoDB"]["FilterCriteria"]["Filters"]
    wanted = json.loads(pattern["Pattern"])["eventName"]
    records = json.loads((sam.EVENTS / "dynamodb-stream-spec-change.json").read_text())["Records"]
    assert records
    for record in records:
        assert record["eventSource"] == "aws:dynamodb"
        assert record["eventName"] in wanted
        change = record["dynamodb"]
        assert change["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        image = change["NewImage"]
        assert image["name"] == change["Keys"]["name"]
        assert {"name", "generation", "status"} <= set(image)
        body = json.loads(image["body"]["S"])
        assert (body["name"], body["generation"], body["status"]) == (
            image["name"]["S"],
            int(image["generation"]["N"]),
            image["status"]["S"],
        )
        if record["eventName"] == "MODIFY":
            assert int(image["generation"]["N"]) > int(change["OldImage"]["generation"]["N"])


def test_schedule_sample_is_what_the_schedule_sends(template: dict[str, Any]) -> None:
    schedule = _reconcile_events(template).get("ScheduleV2")
    if schedule is None:
        pytest.skip("a classic Schedule sends EventBridge's own Scheduled Event")
    sent = json.loads(schedule["Input"])
    sample = json.loads((sam.EVENTS / "schedule-reconcile.json").read_text())

    def same_shape(template_value: Any, sample_value: Any, where: str) -> None:
        if isinstance(template_value, dict):
            assert set(template_value) == set(sample_value), where
            for key in template_value:
                same_shape(template_value[key], sample_value[key], f"{where}.{key}")
        elif isinstance(template_value, list):
            assert len(template_value) == len(sample_value), where
            for index, (t, s) in enumerate(zip(template_value, sample_value, strict=True)):
                same_shape(t, s, f"{where}[{index}]")
        elif isinstance(template_value, str) and template_value.startswith("<aws.scheduler."):
            # Scheduler fills its context attributes in at run time.
            assert isinstance(sample_value, str) and not sample_value.startswith("<"), where
        else:
            assert template_value == sample_value, where

    same_shape(sent, sample, "input")
