"""template.yaml's dashboard, alarms and usage table: every metric the dashboard or an alarm
reads is one llmhost writes (with the dimensions it writes), every alarm notifies AlarmTopic,
and each role touches the usage table only as its function does."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

import sam_template as sam
from llmhost.observe import RequestObservation, StageTiming
from llmhost.usage.capacity import CAPACITY_METRICS, DECISION_METRIC
from llmhost.usage.observers import REQUEST_METRICS, request_metrics

# What llmhost writes to the llmhost namespace, by dimension set: request metrics per
# deployment and per stack (RequestMetrics), capacity per deployment (and $/h, today's spend
# per stack), decisions per deployment and decision (CapacityRecorder).
EMITTED: dict[tuple[str, ...], set[str]] = {
    ("Deployment",): set(REQUEST_METRICS) | {"CopiesDesired", "CopiesInService", "CostPerHour"},
    ("Stack",): set(REQUEST_METRICS) | {"CostPerHour", "SpendToday"},
    ("Decision", "Deployment"): {DECISION_METRIC},
}
SEARCH = re.compile(r"SEARCH\('\{(?P<schema>[^}]*)\} (?P<terms>[^']*)'")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def _body(template: dict[str, Any]) -> dict[str, Any]:
    dashboard = template["Resources"]["Dashboard"]
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    text = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    return json.loads(
        text.replace("${AWS::Region}", "us-east-1").replace("${AWS::StackName}", "llmhost")
    )


def _dashboard_metrics(body: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """(dimension names, metric name) of every metric a widget reads."""
    found = []
    for widget in body["widgets"]:
        for line in widget.get("properties", {}).get("metrics", []):
            first = line[0]
            if isinstance(first, dict):  # an expression
                match = SEARCH.search(first["expression"])
                assert match, first["expression"]
                namespace, *dimensions = match["schema"].split(",")
                assert namespace == "llmhost"
                names = re.findall(r'"(\w+)"', match["terms"].split("MetricName=", 1)[1])
                found += [(tuple(sorted(dimensions)), n) for n in names]
            else:  # [namespace, name, dim, value, ..., {options}]
                namespace, name, *rest = [x for x in line if not isinstance(x, dict)]
                assert namespace == "llmhost"
                found.append((tuple(sorted(rest[0::2])), name))
    return found


def test_every_metric_the_dashboard_shows_is_one_llmhost_writes(template: dict[str, Any]) -> None:
    shown = _dashboard_metrics(_body(template))
    for dimensions, name in shown:
        assert name in EMITTED.get(dimensions, set()), f"{name} by {dimensions} is never written"
    # And it shows what the issue asks for, per deployment
    per_deployment = {n for d, n in shown if "Deployment" in d}
    assert per_deployment >= {
        "Requests",
        "Errors4xx",
        "Errors429",
        "Errors503",
        "Errors5xx",
        "Latency",
        "TimeToFirstToken",
        "InputTokens",
        "OutputTokens",
        "CopiesDesired",
        "CopiesInService",
        "Cold503",
        "WakeTime",
        "ScalingDecisions",
        "CostPerHour",
    }
    assert ((("Stack",), "SpendToday")) in shown


def test_latency_and_ttft_are_shown_at_p50_and_p99(template: dict[str, Any]) -> None:
    expressions = [
        line[0]["expression"]
        for widget in _body(template)["widgets"]
        for line in widget.get("properties", {}).get("metrics", [])
        if isinstance(line[0], dict)
    ]
    for name in ("Latency", "TimeToFirstToken"):
        stats = {re.search(r"', '(\w+)'", e)[1] for e in expressions if f'"{name}"' in e}  # type: ignore[index]
        assert stats == {"p50", "p99"}, name


def test_the_request_observer_writes_exactly_its_declared_metrics() -> None:
    # A cold, held, streamed request exercises every metric the observer can write
    observation = RequestObservation(
        request_id="r",
        kind="chat",
        started_at=1.8e9,
        duration_ms=5000.0,
        status=503,
        model="demo",
        cold=True,
        ttft_ms=400.0,
        input_tokens=10,
        output_tokens=5,
        stages=(StageTiming("wake", 0.0, 3000.0),),
    )
    assert {n for n, _, _ in request_metrics(observation)} == set(REQUEST_METRICS)
    assert set(CAPACITY_METRICS) <= EMITTED[("Deployment",)] | EMITTED[("Stack",)]


def test_alarms_read_written_metrics_and_notify_the_topic(template: dict[str, Any]) -> None:
    alarms = sam.resources(template, "AWS::CloudWatch::Alarm")
    ours = {
        "ApiErrorRateAlarm",
        "ReconcileDeadLetterAlarm",
        "JobsDeadLetterAlarm",
        "BudgetAlarm",
    }
    assert ours <= set(alarms)
    for name in ours:
        properties = alarms[name]["Properties"]
        assert properties["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        metrics = [
            m["MetricStat"]["Metric"] for m in properties.get("Metrics", []) if "MetricStat" in m
        ]
        if "MetricName" in properties:
            metrics.append(properties)
        for metric in metrics:
            if metric["Namespace"] == "llmhost":
                dimensions = tuple(sorted(d["Name"] for d in metric["Dimensions"]))
                assert metric["MetricName"] in EMITTED[dimensions], name
    rate = alarms["ApiErrorRateAlarm"]["Properties"]
    assert rate["Threshold"] == {"Ref": "ErrorRateAlarmPercent"}
    assert {
        m["MetricStat"]["Metric"]["MetricName"] for m in rate["Metrics"] if "MetricStat" in m
    } == {
        "Errors5xx",
        "Requests",
    }
    queues = {
        alarms[n]["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for n in ("ReconcileDeadLetterAlarm", "JobsDeadLetterAlarm")
    }
    assert queues == {"ReconcileDeadLetterQueue", "JobsDeadLetterQueue"}
    budget = alarms["BudgetAlarm"]
    assert budget["Condition"] == "HasDailyBudget"
    assert budget["Properties"]["Threshold"] == {"Ref": "DailyBudgetUsd"}


def test_the_topic_emails_alert_email_only_when_set(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlertEmail"
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": "AlarmTopic"},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlertEmail"},
    }
    assert template["Conditions"]["HasAlertEmail"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlertEmail"}, ""]}]
    }
    policy = resources["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    allowed = [s for s in policy if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allowed] == [{"Service": "cloudwatch.amazonaws.com"}]


def test_each_role_touches_the_usage_table_only_as_its_function_does(
    template: dict[str, Any],
) -> None:
    table = {"Fn::GetAtt": ["UsageTable", "Arn"]}
    expected = {
        "ServeFunctionRole": {"dynamodb:UpdateItem"},
        "StreamFunctionRole": {"dynamodb:UpdateItem"},
        "JobsFunctionRole": {"dynamodb:UpdateItem"},
        "ApiFunctionRole": {"dynamodb:Query"},
        "ScalingFunctionRole": {"dynamodb:PutItem"},
    }
    roles = [name for name in sam.resources(template, "AWS::IAM::Role")]
    for role in roles:
        granted = (
            {
                action
                for statement in sam.role_statements(template, role)
                if table in sam.as_list(statement["Resource"])
                for action in sam.as_list(statement["Action"])
            }
            if "Policies" in template["Resources"][role]["Properties"]
            else set()
        )
        assert granted == expected.get(role, set()), role


def test_the_usage_table_expires_its_items(template: dict[str, Any]) -> None:
    properties = template["Resources"]["UsageTable"]["Properties"]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert [k["AttributeName"] for k in properties["KeySchema"]] == ["pk", "sk"]
