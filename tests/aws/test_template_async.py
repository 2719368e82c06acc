"""template.yaml's asynchronous inference resources: the two topics the async endpoints
announce results on, the jobs queue subscribed to exactly those, and who may read what."""

from __future__ import annotations

from typing import Any

import pytest

import sam_template as sam

TOPICS = [{"Ref": "AsyncSuccessTopic"}, {"Ref": "AsyncErrorTopic"}]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def test_the_topics_are_encrypted_and_the_jobs_queue_reads_their_envelopes(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    for topic in ("AsyncSuccessTopic", "AsyncErrorTopic"):
        assert resources[topic]["Type"] == "AWS::SNS::Topic"
        assert resources[topic]["Properties"]["KmsMasterKeyId"] == "alias/aws/sns"
    subscriptions = {
        name: s
        for name, s in sam.resources(template, "AWS::SNS::Subscription").items()
        if s["Properties"]["TopicArn"]["Ref"] != "AlarmTopic"  # the alarms' email
    }
    assert sorted(
        (s["Properties"]["TopicArn"]["Ref"], s["Properties"]["Protocol"])
        for s in subscriptions.values()
    ) == [("AsyncErrorTopic", "sqs"), ("AsyncSuccessTopic", "sqs")]
    for subscription in subscriptions.values():
        properties = subscription["Properties"]
        assert properties["Endpoint"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
        # The worker tells a notification from a job message by SNS's envelope
        assert properties["RawMessageDelivery"] is False


def test_only_the_two_topics_may_send_to_the_jobs_queue(template: dict[str, Any]) -> None:
    policy = template["Resources"]["JobsQueuePolicy"]["Properties"]["PolicyDocument"]
    allows = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    (sns,) = allows
    assert sns["Principal"] == {"Service": "sns.amazonaws.com"}
    assert sns["Action"] == "sqs:SendMessage"
    assert sns["Resource"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    assert sns["Condition"] == {"ArnEquals": {"aws:SourceArn": TOPICS}}


def test_the_reconciler_configures_async_endpoints_with_the_stacks_bucket_and_topics(
    template: dict[str, Any],
) -> None:
    variables = sam.functions(template)["ReconcileFunction"]["Environment"]["Variables"]
    assert variables["JOBS_BUCKET"] == {"Ref": "JobsBucket"}
    assert variables["ASYNC_SUCCESS_TOPIC_ARN"] == TOPICS[0]
    assert variables["ASYNC_ERROR_TOPIC_ARN"] == TOPICS[1]
    # (and nothing else may publish to them: only SageMaker's execution role has sns:*)
    for role, resource in sam.resources(template, "AWS::IAM::Role").items():
        if "Policies" not in resource["Properties"]:
            continue  # managed policies only (API Gateway's logging role)
        published = {a for a in sam.actions(sam.role_statements(template, role)) if "sns:" in a}
        assert published == ({"sns:Publish"} if role == "SageMakerExecutionRole" else set()), role


def test_the_jobs_worker_reads_async_results_and_writes_none(template: dict[str, Any]) -> None:
    statements = {s["Sid"]: s for s in sam.role_statements(template, "JobsFunctionRole")}
    results = statements["AsyncResults"]
    assert results["Action"] == "s3:GetObject"
    assert results["Resource"] == [
        {"Fn::Sub": "${JobsBucket.Arn}/async/input/*"},
        {"Fn::Sub": "${JobsBucket.Arn}/async/output/*"},
        {"Fn::Sub": "${JobsBucket.Arn}/async/failure/*"},
    ]
