"""template.yaml's trace export: off unless OtlpEndpoint is set; then a function on the traces
table's stream (new traces only) with its own OpenTelemetry dependencies, retries that end
in a dead-letter queue, and a role that reads that stream and that one secret, nothing more.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

import sam_template as sam
from llmhost.runtime import TraceExportSettings

FUNCTION = "TraceExportFunction"
EXPORT_RESOURCES = {
    "TraceExportFunctionLogGroup",
    "TraceExportDeadLetterQueue",
    "TraceExportDeadLetterQueuePolicy",
    "TraceExportFunctionRole",
    FUNCTION,
}
DLQ_ARN = {"Fn::GetAtt": ["TraceExportDeadLetterQueue", "Arn"]}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def _requirements(path: str) -> set[str]:
    lines = (sam.ROOT / path / "requirements.txt").read_text().splitlines()
    return {
        re.split(r"[\[<>=~ ;]", line)[0].lower()
        for line in lines
        if line.strip() and not line.startswith("#")
    }


def test_export_is_off_by_default_and_everything_it_needs_comes_with_the_endpoint(
    template: dict[str, Any],
) -> None:
    parameters = template["Parameters"]
    assert parameters["OtlpEndpoint"]["Default"] == ""
    assert parameters["OtlpHeadersSecretArn"]["Default"] == ""
    assert template["Conditions"]["ExportTraces"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "OtlpEndpoint"}, ""]}]
    }
    conditioned = {
        name for name, r in template["Resources"].items() if r.get("Condition") == "ExportTraces"
    }
    assert conditioned == EXPORT_RESOURCES
    # and a headers secret without an endpoint is refused before anything is created
    rule = template["Rules"]["OtlpHeadersNeedAnEndpoint"]
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "OtlpEndpoint"}, ""]}]
    }


def test_only_the_export_function_ships_opentelemetry(template: dict[str, Any]) -> None:
    functions = sam.functions(template)
    export = functions[FUNCTION]
    assert export["CodeUri"] == "functions/trace_export/"
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= _requirements(
        export["CodeUri"]
    )
    # Not in any layer, so no serving function can import it
    for layer in ("llmhost", "embeddings", "retrieval"):
        assert not any(r.startswith("opentelemetry") for r in _requirements(f"layers/{layer}"))
    assert export["Layers"] == [{"Ref": "LlmhostLayer"}]
    for name, props in functions.items():
        if name != FUNCTION:
            assert not (sam.ROOT / props["CodeUri"] / "requirements.txt").exists(), name
            variables = props.get("Environment", {}).get("Variables", {})
            assert not [v for v in variables if v.startswith("OTLP_")], name


def test_the_function_reads_new_traces_from_the_stream_and_dead_letters_what_it_cannot_send(
    template: dict[str, Any],
) -> None:
    from moto.events.models import EventPattern

    (source,) = sam.functions(template)[FUNCTION]["Events"].values()
    assert source["Type"] == "DynamoDB"
    stream = source["Properties"]
    assert stream["Stream"] == {"Fn::GetAtt": ["TracesTable", "StreamArn"]}
    assert template["Resources"]["TracesTable"]["Properties"]["StreamSpecification"] == {
        "StreamViewType": "NEW_IMAGE"
    }
    assert stream["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert stream["BisectBatchOnFunctionError"] is True
    assert 0 < stream["MaximumRetryAttempts"] <= 10
    assert stream["DestinationConfig"]["OnFailure"]["Destination"] == DLQ_ARN
    assert 1 <= stream["BatchSize"] <= 1000
    # Inserts pass the filter; feedback (MODIFY) and expiry (REMOVE) do not
    patterns = [EventPattern.load(f["Pattern"]) for f in stream["FilterCriteria"]["Filters"]]

    def passes(event_name: str) -> bool:
        record = {"eventName": event_name, "dynamodb": {"Keys": {"id": {"S": "a" * 32}}}}
        return any(p.matches_event(record) for p in patterns)  # type: ignore[arg-type]

    assert [passes(e) for e in ("INSERT", "MODIFY", "REMOVE")] == [True, False, False]
    queue = template["Resources"]["TraceExportDeadLetterQueue"]["Properties"]
    assert queue["MessageRetentionPeriod"] == 1209600
    # The function's timeout leaves room for an export request's whole budget
    props = sam.functions(template)[FUNCTION]
    variables = props["Environment"]["Variables"]
    assert float(variables["OTLP_TIMEOUT_S"]) * 3 <= props["Timeout"]


def test_the_role_reads_the_traces_stream_and_the_headers_secret_only(
    template: dict[str, Any],
) -> None:
    grants = sam.grants(template, "TraceExportFunctionRole")
    assert grants == {
        "logs:CreateLogStream": [{"Fn::GetAtt": ["TraceExportFunctionLogGroup", "Arn"]}],
        "logs:PutLogEvents": [{"Fn::GetAtt": ["TraceExportFunctionLogGroup", "Arn"]}],
        "xray:PutTraceSegments": ["*"],
        "xray:PutTelemetryRecords": ["*"],
        "dynamodb:DescribeStream": [{"Fn::GetAtt": ["TracesTable", "StreamArn"]}],
        "dynamodb:GetRecords": [{"Fn::GetAtt": ["TracesTable", "StreamArn"]}],
        "dynamodb:GetShardIterator": [{"Fn::GetAtt": ["TracesTable", "StreamArn"]}],
        "dynamodb:ListStreams": [{"Fn::GetAtt": ["TracesTable", "StreamArn"]}],
        "sqs:SendMessage": [DLQ_ARN],
        "secretsmanager:GetSecretValue": [{"Ref": "OtlpHeadersSecretArn"}],
        "xray:PutSpans": ["*"],
    }
    # and the secret only when one is named, X-Ray's spans only for CloudWatch's endpoint
    policy = template["Resources"]["TraceExportFunctionRole"]["Properties"]["Policies"][0]
    branches = {
        s["Fn::If"][0]: s["Fn::If"][1:]
        for s in policy["PolicyDocument"]["Statement"]
        if "Fn::If" in s
    }
    assert {c: (when["Action"], otherwise) for c, (when, otherwise) in branches.items()} == {
        "ExportTracesWithHeaders": ("secretsmanager:GetSecretValue", {"Ref": "AWS::NoValue"}),
        "ExportTracesToCloudWatch": ("xray:PutSpans", {"Ref": "AWS::NoValue"}),
    }
    assert sam.functions(template)[FUNCTION]["Role"] == {
        "Fn::GetAtt": ["TraceExportFunctionRole", "Arn"]
    }


def test_the_function_environment_is_what_its_settings_read(template: dict[str, Any]) -> None:
    variables = sam.functions(template)[FUNCTION]["Environment"]["Variables"]
    assert variables["OTLP_ENDPOINT"] == {"Ref": "OtlpEndpoint"}
    assert variables["OTLP_HEADERS_SECRET_ARN"] == {"Ref": "OtlpHeadersSecretArn"}
    assert {name.upper() for name in TraceExportSettings.model_fields} <= set(variables)


@pytest.mark.parametrize(
    ("endpoint", "accepted"),
    [
        ("https://cloud.langfuse.com/api/public/otel/v1/traces", True),
        ("http://collector.internal:4318/v1/traces", True),
        ("https://www.comet.com/opik/api/v1/private/otel/v1/traces", True),
        ("cloud.langfuse.com/v1/traces", False),
        ("ftp://host/v1/traces", False),
        ("https:///v1/traces", False),
        ("https://host/v1/traces with space", False),
    ],
)
def test_the_stack_and_the_function_agree_on_what_an_endpoint_is(
    template: dict[str, Any], endpoint: str, accepted: bool
) -> None:
    from pydantic import ValidationError

    pattern = template["Parameters"]["OtlpEndpoint"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, endpoint)) is accepted
    try:
        TraceExportSettings(otlp_endpoint=endpoint)
        valid = True
    except ValidationError:
        valid = False
    assert valid is accepted


def test_the_headers_secret_parameter_takes_a_secret_arn(template: dict[str, Any]) -> None:
    pattern = template["Parameters"]["OtlpHeadersSecretArn"]["AllowedPattern"]
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:llmhost/langfuse-AbCdEf"
    assert re.fullmatch(pattern, arn)
    assert re.fullmatch(pattern, "")
    assert not re.fullmatch(pattern, "llmhost/langfuse")
    assert json.dumps(pattern)  # a plain string, no intrinsic


def _evaluate(node: Any, parameters: dict[str, str]) -> Any:
    """The few intrinsics the export conditions use, evaluated as CloudFormation does."""
    if isinstance(node, list):
        return [_evaluate(n, parameters) for n in node]
    if not isinstance(node, dict):
        return node
    ((name, args),) = node.items()
    if name == "Ref":
        return parameters[args]
    if name == "Fn::Sub":
        return re.sub(r"\$\{(\w+)\}", lambda m: parameters[m.group(1)], args)
    values = _evaluate(args, parameters)
    if name == "Fn::Split":
        return values[1].split(values[0])
    if name == "Fn::Select":
        return values[1][int(values[0])]
    if name == "Fn::Equals":
        return values[0] == values[1]
    if name == "Fn::Not":
        return not values[0]
    if name == "Fn::And":
        return all(values)
    raise AssertionError(f"unexpected intrinsic {name}")


@pytest.mark.parametrize(
    ("endpoint", "cloudwatch"),
    [
        ("https://xray.eu-west-1.amazonaws.com/v1/traces", True),
        ("https://cloud.langfuse.com/api/public/otel/v1/traces", False),
        ("http://collector:4318/v1/traces", False),
        ("", False),
    ],
)
def test_the_xray_grant_comes_with_cloudwatchs_endpoint_only(
    template: dict[str, Any], endpoint: str, cloudwatch: bool
) -> None:
    from llmhost.traces.export import cloudwatch_region

    conditions = template["Conditions"]
    parameters = {"OtlpEndpoint": endpoint, "OtlpHeadersSecretArn": ""}
    resolved = {
        "Fn::And": [
            _evaluate(conditions["ExportTraces"], parameters),
            *conditions["ExportTracesToCloudWatch"]["Fn::And"][1:],
        ]
    }
    assert _evaluate(resolved, parameters) is cloudwatch
    # the function signs exactly where the role may put spans
    assert (cloudwatch_region(endpoint) is not None) is cloudwatch
