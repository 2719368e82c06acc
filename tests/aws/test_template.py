"""template.yaml and events/: least-privilege IAM, signed routes, triggers, and samples in sync.

These read the SAM template as written (before the transform), so they run offline and in
milliseconds; `sam validate --lint` and `sam build` cover what only the transform can check.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
EVENTS = ROOT / "events"

# The routes the deployment API serves (all behind one /{proxy+} ANY route).
ROUTES: dict[tuple[str, str], str] = {
    ("POST", r"/v1/deployments"): "create",
    ("GET", r"/v1/deployments"): "list",
    ("GET", r"/v1/deployments/[A-Za-z0-9-]+"): "get",
    ("PATCH", r"/v1/deployments/[A-Za-z0-9-]+"): "patch",
    ("DELETE", r"/v1/deployments/[A-Za-z0-9-]+"): "delete",
    ("POST", r"/v1/deployments/[A-Za-z0-9-]+/sleep"): "sleep",
    ("POST", r"/v1/deployments/[A-Za-z0-9-]+/wake"): "wake",
    ("POST", r"/v1/plan"): "plan",
    ("GET", r"/v1/openapi\.json"): "openapi",
}

# Actions that have no resource-level permissions, so "Resource": "*" is the only option.
RESOURCE_STAR_ALLOWED = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "ecr:GetAuthorizationToken",
    "cloudwatch:PutMetricData",  # only with a cloudwatch:namespace condition (checked below)
    "sagemaker:ListModels",
    "sagemaker:ListEndpointConfigs",
    "sagemaker:ListEndpoints",
    "sagemaker:ListInferenceComponents",
    "application-autoscaling:DescribeScalableTargets",
    "application-autoscaling:DescribeScalingPolicies",
    "application-autoscaling:DescribeScheduledActions",
}


# ------------------------------------------------------------------------------ loading


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags (!Ref, !Sub, ...) into long form."""


def _cfn_tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        return {"Fn::GetAtt": value.split(".", 1)}
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    # _CfnLoader is a SafeLoader: tags become plain dicts, never Python objects.
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def _resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def _merge(base: Any, override: Any) -> Any:
    """SAM's Globals rule: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = _merge(merged[key], value) if key in merged else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every AWS::Serverless::Function's properties with Globals.Function applied."""
    defaults = template.get("Globals", {}).get("Function", {})
    return {
        name: _merge(defaults, resource["Properties"])
        for name, resource in _resources(template, "AWS::Serverless::Function").items()
    }


def _statements(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement anywhere in ``node``, including both branches of an Fn::If."""
    if isinstance(node, dict):
        if "Fn::If" in node:
            _, when_true, when_false = node["Fn::If"]
            yield from _statements_or_branch(when_true, where)
            yield from _statements_or_branch(when_false, where)
            return
        statement = node.get("Statement")
        if isinstance(statement, list):
            for item in statement:
                yield from _statements_or_branch(item, where)
        elif isinstance(statement, dict):
            yield where, statement
        for key, value in node.items():
            if key != "Statement":
                yield from _statements(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _statements(item, f"{where}[{index}]")


def _statements_or_branch(item: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(item, dict) and "Fn::If" in item:
        yield from _statements(item, where)
    elif isinstance(item, dict) and ("Action" in item or "NotAction" in item):
        yield where, item


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _events(prefix: str) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(EVENTS.glob(f"{prefix}*.json"))}


# ------------------------------------------------------------------------------------ IAM


def test_no_iam_statement_grants_a_wildcard_action(template: dict[str, Any]) -> None:
    # Given every IAM statement in the template (roles, queue policies, conditional branches)
    statements = list(_statements(template["Resources"]))
    # Then there are plenty of them and none uses "*", "service:*" or NotAction
    assert len(statements) >= 20, "the statement walker found too few statements to be trusted"
    for where, statement in statements:
        assert "NotAction" not in statement, f"{where}: NotAction grants everything else"
        for action in _as_list(statement["Action"]):
            assert isinstance(action, str), f"{where}: action {action!r} is not a literal"
            assert action != "*" and not action.endswith(":*"), f"{where}: wildcard {action}"


def test_resource_star_only_where_the_api_has_no_resource_level_permissions(
    template: dict[str, Any],
) -> None:
    for where, statement in _statements(template["Resources"]):
        if statement.get("Effect") != "Allow" or "*" not in _as_list(statement.get("Resource")):
            continue
        actions = set(_as_list(statement["Action"]))
        # sts:AssumeRole in a trust policy has a Principal, not a Resource.
        assert actions <= RESOURCE_STAR_ALLOWED, f"{where}: {actions - RESOURCE_STAR_ALLOWED}"
        if "cloudwatch:PutMetricData" in actions:
            namespace = statement.get("Condition", {}).get("StringLike", {})
            assert "cloudwatch:namespace" in namespace, f"{where}: PutMetricData needs a namespace"


def test_star_allowlist_matches_the_service_authorization_reference() -> None:
    # cfn-lint ships AWS's service authorization data: an action listed with resource types
    # can be scoped, so it must not be on the "*" allowlist.
    import cfnlint  # moto's CloudFormation support brings it

    data = Path(cfnlint.__path__[0]) / "data" / "AdditionalSpecs" / "Policies.json"
    services = json.loads(data.read_text())
    for action in RESOURCE_STAR_ALLOWED - {"cloudwatch:PutMetricData"}:
        service, name = action.split(":")
        entry = services[service]["Actions"][name.lower()]
        assert not entry.get("Resources"), f"{action} supports resource-level permissions"


def _role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    policies = template["Resources"][role]["Properties"]["Policies"]
    return [s for _, s in _statements(policies)]


def test_functions_use_their_own_least_privilege_roles(template: dict[str, Any]) -> None:
    roles = {name: props.get("Role") for name, props in _functions(template).items()}
    assert roles == {
        "ApiFunction": {"Fn::GetAtt": ["ApiFunctionRole", "Arn"]},
        "ReconcileFunction": {"Fn::GetAtt": ["ReconcileFunctionRole", "Arn"]},
    }
    api_actions = {
        a for s in _role_statements(template, "ApiFunctionRole") for a in _as_list(s["Action"])
    }
    # The API only touches the registry (plus its own logs and traces).
    assert {a.split(":")[0] for a in api_actions} == {"dynamodb", "logs", "xray"}
    assert not any(a.startswith("sagemaker:") or a == "iam:PassRole" for a in api_actions)


def test_pass_role_is_limited_to_the_sagemaker_execution_role(template: dict[str, Any]) -> None:
    pass_role = [
        s
        for s in _role_statements(template, "ReconcileFunctionRole")
        if "iam:PassRole" in _as_list(s["Action"])
    ]
    assert len(pass_role) == 1
    assert pass_role[0]["Resource"] == {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]}
    assert pass_role[0]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }


def test_sagemaker_writes_are_scoped_to_this_account_and_region(template: dict[str, Any]) -> None:
    for statement in _role_statements(template, "ReconcileFunctionRole"):
        actions = _as_list(statement["Action"])
        if not any(
            a.startswith("sagemaker:") and not a.startswith("sagemaker:List") for a in actions
        ):
            continue
        for resource in _as_list(statement["Resource"]):
            arn = resource["Fn::Sub"]
            if actions == ["sagemaker:DescribeModelPackage"]:
                # Marketplace model packages belong to the seller's account.
                assert arn.endswith(":*:model-package/*")
            else:
                assert arn.startswith(
                    "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"
                )


def test_sagemaker_execution_role(template: dict[str, Any]) -> None:
    role = template["Resources"]["SageMakerExecutionRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "sagemaker.amazonaws.com"}]
    statements = _role_statements(template, "SageMakerExecutionRole")
    by_sid = {s["Sid"]: s for s in statements}
    # Model weights: only when a bucket is given (both branches of the Fn::If are walked).
    s3 = [s for s in statements if any(a.startswith("s3:") for a in _as_list(s["Action"]))]
    assert {s["Sid"] for s in s3} == {"ModelArtifactsRead", "ModelArtifactsList"}
    raw = json.dumps(role["Policies"])
    assert raw.count('"HasModelArtifactBucket"') == 2
    assert by_sid["TokenSecrets"]["Resource"]["Fn::Sub"].endswith(":secret:${SecretsPrefix}*")


# -------------------------------------------------------------------------------- the API


def test_every_api_route_requires_iam_signing(template: dict[str, Any]) -> None:
    apis = _resources(template, "AWS::Serverless::Api")
    assert list(apis) == ["Api"]
    props = apis["Api"]["Properties"]
    assert props["Auth"]["DefaultAuthorizer"] == "AWS_IAM"
    # API Gateway invokes the function through its resource policy, not caller credentials.
    assert props["Auth"]["InvokeRole"] == "NONE"
    assert "DefinitionBody" not in props and "DefinitionUri" not in props
    assert props["TracingEnabled"] is True
    assert "DestinationArn" in props["AccessLogSetting"]
    # Nothing reachable around the signed API.
    assert not _resources(template, "AWS::Serverless::HttpApi")
    routes = 0
    for name, function in _functions(template).items():
        assert "FunctionUrlConfig" not in function, f"{name} has an unsigned function URL"
        for event in function.get("Events", {}).values():
            assert event["Type"] not in {"HttpApi"}, f"{name}: HTTP API bypasses the REST API"
            if event["Type"] != "Api":
                continue
            routes += 1
            # Without RestApiId SAM would create an implicit API with no authorizer.
            assert event["Properties"]["RestApiId"] == {"Ref": "Api"}
            override = event["Properties"].get("Auth", {}).get("Authorizer", "AWS_IAM")
            assert override == "AWS_IAM", f"{name}: route overrides IAM auth"
    assert routes >= 1


def _served_routes(template: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (event["Properties"]["Method"].upper(), event["Properties"]["Path"])
        for function in _functions(template).values()
        for event in function.get("Events", {}).values()
        if event["Type"] == "Api"
    ]


def test_api_events_route_to_paths_the_template_serves(template: dict[str, Any]) -> None:
    served = _served_routes(template)
    stage = template["Parameters"]["StageName"]["Default"]
    samples = _events("api-")
    covered = set()
    assert samples, "no API sample events"
    for name, event in samples.items():
        method, path = event["httpMethod"], event["path"]
        # The REST proxy event names the template route that matched.
        assert (event["resource"], event["requestContext"]["resourcePath"]) == ("/{proxy+}",) * 2
        assert any(p == event["resource"] and m in {"ANY", method} for m, p in served), (
            f"{name}: {method} {event['resource']} is not a route of the template"
        )
        assert event["pathParameters"] == {"proxy": path.lstrip("/")}, name
        assert event["requestContext"]["path"] == f"/{stage}{path}", name
        assert event["requestContext"]["stage"] == stage, name
        # Every route is IAM-signed: the caller is an IAM principal.
        identity = event["requestContext"]["identity"]
        assert identity["userArn"].startswith("arn:aws:"), name
        assert identity["accessKey"] and identity["accountId"], name
        assert event["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256 "), name
        matches = [
            r for (m, pattern), r in ROUTES.items() if m == method and re.fullmatch(pattern, path)
        ]
        assert len(matches) == 1, f"{name}: {method} {path} is not an llmhost route"
        covered.add(matches[0])
        if event["body"] is not None:
            json.loads(event["body"])
            assert event["headers"]["Content-Type"] == "application/json", name
    assert covered == set(ROUTES.values()), (
        f"routes without a sample: {set(ROUTES.values()) - covered}"
    )


def test_api_sample_bodies_match_the_spec_model() -> None:
    from llmhost.errors import SpecInvalid
    from llmhost.specs import DeploymentPatch, parse_spec

    samples = _events("api-")
    for name in ("api-create-deployment.json", "api-plan.json"):
        spec = parse_spec(json.loads(samples[name]["body"]))
        assert spec.name == "llama3-8b"
    DeploymentPatch.model_validate(json.loads(samples["api-patch-deployment.json"]["body"]))
    with pytest.raises(SpecInvalid) as caught:
        parse_spec(json.loads(samples["api-create-deployment-invalid.json"]["body"]))
    assert [i.field for i in caught.value.issues] == ["scaling.min_capacity"]


# ---------------------------------------------------------------------------- functions


def test_every_function_runs_python313_arm64_with_the_layer(template: dict[str, Any]) -> None:
    functions = _functions(template)
    assert set(functions) == {"ApiFunction", "ReconcileFunction"}
    for name, props in functions.items():
        assert props["Runtime"] == "python3.13", name
        assert props["Architectures"] == ["arm64"], name
        assert props["Tracing"] == "Active", name
        assert {"Ref": "LlmhostLayer"} in props["Layers"], name
        handler_file = ROOT / props["CodeUri"] / (props["Handler"].split(".")[0] + ".py")
        assert handler_file.is_file(), f"{name}: {handler_file} is missing"
        assert props["LoggingConfig"]["LogGroup"]["Ref"] in template["Resources"], name
    sizes = {name: (props["MemorySize"], props["Timeout"]) for name, props in functions.items()}
    # 29 s is API Gateway's integration timeout.
    assert sizes == {"ApiFunction": (512, 29), "ReconcileFunction": (512, 120)}


def test_layer_builds_the_llmhost_package_for_arm64(template: dict[str, Any]) -> None:
    layer = template["Resources"]["LlmhostLayer"]
    # SAM runs `make build-LlmhostLayer` in ContentUri (checked below with `make -n`).
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    content = ROOT / layer["Properties"]["ContentUri"]
    assert (content / "Makefile").is_file()
    assert (content / "llmhost" / "__init__.py").is_file()
    requirements = (content / "requirements.txt").read_text().lower()
    names = {
        re.split(r"[\[<>=~ ]", line)[0]
        for line in requirements.splitlines()
        if line and line[0] != "#"
    }
    # boto3 is in the Lambda runtime; shipping it would only grow the layer.
    assert names == {"aws-lambda-powertools", "pydantic"}
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]


def test_layer_makefile_installs_arm64_wheels_and_leaves_boto3_to_the_runtime(
    template: dict[str, Any], tmp_path: Path
) -> None:
    # Given the layer's Makefile, dry-run (`make -n` prints the commands, runs none)
    make = shutil.which("make")
    assert make is not None, "make runs the layer builds; install it"
    content = ROOT / template["Resources"]["LlmhostLayer"]["Properties"]["ContentUri"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    artifacts = tmp_path / "LlmhostLayer"
    result = subprocess.run(
        [make, "-n", "build-LlmhostLayer", f"ARTIFACTS_DIR={artifacts}"],
        cwd=content,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    commands = result.stdout.replace("\\\n", " ").split()
    # Then pip installs only cp313 aarch64 wheels into the layer's python/ folder
    assert "pip" in commands and "install" in commands
    assert commands[commands.index("--platform") + 1] == "manylinux2014_aarch64"
    assert commands[commands.index("--python-version") + 1] == "3.13"
    assert commands[commands.index("--implementation") + 1] == "cp"
    assert "--only-binary=:all:" in commands
    assert commands[commands.index("--target") + 1].strip('"') == f"{artifacts}/python"
    # And what the runtime provides is deleted again (aws-xray-sdk pulls in botocore)
    removed = set(commands[commands.index("rm", commands.index("--target")) :])
    assert {"boto3", "botocore", "s3transfer", "urllib3", "dateutil", "six.py"} <= removed
    # And the llmhost package itself is copied in
    assert "llmhost" in commands and f'"{artifacts}/python/"' in commands


def test_environment_variables_the_code_reads(template: dict[str, Any]) -> None:
    functions = _functions(template)
    common = {
        "REGISTRY_TABLE_NAME": {"Ref": "RegistryTable"},
        "POWERTOOLS_METRICS_NAMESPACE": "llmhost",
        "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
        "PYDANTIC_DISABLE_PLUGINS": "__all__",
    }
    assert functions["ApiFunction"]["Environment"]["Variables"] == {
        **common,
        "POWERTOOLS_SERVICE_NAME": "llmhost-api",
    }
    assert functions["ReconcileFunction"]["Environment"]["Variables"] == {
        **common,
        "POWERTOOLS_SERVICE_NAME": "llmhost-reconcile",
        "SAGEMAKER_EXECUTION_ROLE_ARN": {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]},
        "HISTORY_LIMIT": {"Ref": "HistoryLimit"},
    }


def test_history_limit_parameter_fits_the_reconciler_settings(template: dict[str, Any]) -> None:
    # A value CloudFormation accepts but the function rejects would break every reconcile.
    from llmhost.runtime import ReconcileSettings

    parameter = template["Parameters"]["HistoryLimit"]
    for value in (parameter["MinValue"], parameter["Default"], parameter["MaxValue"]):
        settings = ReconcileSettings.model_validate(
            {
                "registry_table_name": "llmhost-registry",
                "sagemaker_execution_role_arn": "arn:aws:iam::123456789012:role/llmhost-sm",
                "history_limit": value,
            }
        )
        assert settings.history_limit == value


# ---------------------------------------------------------------------- the reconciler


def _reconcile_events(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    events = _functions(template)["ReconcileFunction"]["Events"]
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
    patterns = [json.loads(f["Pattern"]) for f in stream["FilterCriteria"]["Filters"]]
    assert patterns == [{"eventName": ["INSERT", "MODIFY"]}]

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


def test_failed_async_invocations_land_in_the_dead_letter_queue(template: dict[str, Any]) -> None:
    config = _functions(template)["ReconcileFunction"]["EventInvokeConfig"]
    assert config["DestinationConfig"]["OnFailure"] == {"Type": "SQS", "Destination": DLQ_ARN}
    # EventBridge may only deliver dead letters from the SageMaker rule.
    policy = template["Resources"]["ReconcileDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]
    allow = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allow] == [{"Service": "events.amazonaws.com"}]
    assert allow[0]["Condition"]["ArnEquals"]["aws:SourceArn"] == {
        "Fn::GetAtt": ["ReconcileFunctionSageMakerStateChange", "Arn"]
    }


def test_registry_table(template: dict[str, Any]) -> None:
    table = template["Resources"]["RegistryTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "name", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "name", "AttributeType": "S"}]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"


def test_every_function_logs_to_a_group_with_retention(template: dict[str, Any]) -> None:
    for name, props in _functions(template).items():
        group = template["Resources"][props["LoggingConfig"]["LogGroup"]["Ref"]]
        assert group["Type"] == "AWS::Logs::LogGroup", name
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    for key in (
        "ApiUrl",
        "RegistryTableName",
        "SageMakerExecutionRoleArn",
        "ReconcileFunctionName",
        "ReconcileDeadLetterQueueUrl",
    ):
        assert key in outputs and outputs[key].get("Description"), key
    assert outputs["ApiUrl"]["Value"] == {
        "Fn::Sub": "https://${Api}.execute-api.${AWS::Region}.amazonaws.com/${StageName}"
    }


def test_every_parameter_has_a_description_and_a_default(template: dict[str, Any]) -> None:
    for name, parameter in template["Parameters"].items():
        assert parameter.get("Description"), name
        assert "Default" in parameter, f"{name}: `sam deploy` should work without answers"


# ------------------------------------------------------------------------ other samples


def test_every_sample_event_is_a_json_object() -> None:
    files = sorted(EVENTS.glob("*"))
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
    samples = _events("sagemaker-endpoint-state-change-")
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
    records = json.loads((EVENTS / "dynamodb-stream-spec-change.json").read_text())["Records"]
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
    sample = json.loads((EVENTS / "schedule-reconcile.json").read_text())

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
