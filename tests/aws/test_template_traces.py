"""template.yaml's traces table and grants: the serving paths may only add traces (PutItem),
and what the recorder calls, replayed against moto, is exactly that."""

from __future__ import annotations

from typing import Any

import pytest
from test_template_grants import _record_aws_calls

import sam_template as sam
from conftest import ROOT

WRITERS = ("ServeFunctionRole", "StreamFunctionRole", "JobsFunctionRole")
TRACES_ARN = {"Fn::GetAtt": ["TracesTable", "Arn"]}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def _trace_grants(template: dict[str, Any], role: str) -> set[str]:
    return {
        action
        for statement in sam.role_statements(template, role)
        for action in sam.as_list(statement["Action"])
        if statement["Effect"] == "Allow"
        and any("TracesTable" in str(r) for r in sam.as_list(statement["Resource"]))
    }


def test_the_serving_paths_may_only_add_traces(template: dict[str, Any]) -> None:
    for role in WRITERS:
        assert _trace_grants(template, role) == {"dynamodb:PutItem"}, role
    # Every other function has no access to traces at all (the API reads them: its routes)
    roles = sam.resources(template, "AWS::IAM::Role")
    for role in (name for name, r in roles.items() if "Policies" in r["Properties"]):
        if role not in (*WRITERS, "ApiFunctionRole", "TraceExportFunctionRole"):
            assert _trace_grants(template, role) == set(), role


def test_the_table_expires_traces_and_streams_new_images(template: dict[str, Any]) -> None:
    table = template["Resources"]["TracesTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["StreamSpecification"] == {"StreamViewType": "NEW_IMAGE"}
    assert {i["IndexName"] for i in table["GlobalSecondaryIndexes"]} == {"by-model", "by-day"}
    parameters = template["Parameters"]
    assert (
        parameters["TraceSampleRate"]["MinValue"],
        parameters["TraceSampleRate"]["MaxValue"],
    ) == (0, 1)
    assert parameters["TraceContent"]["AllowedValues"] == ["full", "redacted", "none"]
    assert parameters["TraceContent"]["Default"] == "redacted"
    assert (
        parameters["TraceRetentionDays"]["MinValue"],
        parameters["TraceRetentionDays"]["MaxValue"],
    ) == (1, 3650)


def test_recording_a_trace_calls_only_what_the_writers_are_granted(
    template: dict[str, Any], moto_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost import aws, runtime
    from llmhost.observe import RequestObservation, notify
    from llmhost_local.traces import TRACES_TABLE, provision_traces, traces_source

    provision_traces(aws.client("dynamodb"), traces_source(ROOT / "template.yaml"))
    monkeypatch.setenv("TRACES_TABLE", TRACES_TABLE)
    runtime.reset()
    calls = _record_aws_calls()
    # When a request is recorded by the function's own recorder (refusals always are)
    observation = RequestObservation("chatcmpl-x", "chat", 1.8e9, 12.0, 503, model="demo")
    notify(runtime.request_observers(), observation)
    # Then its only call is one PutItem on the traces table, which each writer may make
    assert [(action, params["TableName"]) for action, params in calls] == [
        ("dynamodb:PutItem", TRACES_TABLE)
    ]
    for role in WRITERS:
        grants = sam.grants(template, role)
        assert TRACES_ARN in grants["dynamodb:PutItem"], role
