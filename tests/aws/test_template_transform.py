"""template.yaml for Batch Transform and scheduled batches: the batch function's role grants
every call the transform runner and the schedule make (replayed against moto and the
SageMaker stand-in), transform jobs are created tagged and stopped only when tagged, a
transform job's end reaches the batch function (the rule's pattern matched by moto's
EventBridge matcher), and the batch schedule runs it at the stack's time."""

from __future__ import annotations

import json
from typing import Any

import pytest

import sam_template as sam

ROLE = "BatchFunctionRole"
STATE_CHANGE = "SageMaker Transform Job State Change"
TRANSFORM_JOBS = sam.ACCOUNT_ARN + "transform-job/llmhost-*"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def _record(service: str, client: Any, calls: list[tuple[str, dict[str, Any]]]) -> None:
    """Record each call ``client`` makes from now on as (IAM-style action, params)."""

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((f"{service}:{model.name}", dict(params)))

    client.meta.events.register("before-parameter-build", record)


def test_the_batch_role_grants_every_call_of_the_transform_runner_and_the_schedule(
    template: dict[str, Any], standin: Any, clock: Any
) -> None:
    from test_template_batch_grants import _granted

    from llmhost import aws, runtime
    from llmhost.batches.lines import BatchLine
    from llmhost.batches.record import Batch
    from llmhost.batches.schedule import ScheduledBatches
    from llmhost.batches.transform_runner import TransformRunner
    from llmhost.lifecycle.record import DeploymentRecord, Resources
    from llmhost.serving.service import ServingService
    from llmhost.specs import parse_spec

    # Given a sleeping deployment with its kept model, and the jobs bucket
    aws.client("sagemaker").create_model(
        ModelName="night-0a1b2c3d",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
        PrimaryContainer={"Image": "tgi:latest"},
    )
    aws.client("s3").create_bucket(Bucket="llmhost-jobs")
    spec = parse_spec(
        {
            "name": "night",
            "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
            "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
        }
    )
    runtime.registry().create(
        DeploymentRecord(
            name="night",
            spec=spec,
            status="SLEEPING",
            resources=Resources(model="night-0a1b2c3d"),
        )
    )
    aws.client("s3").put_object(Bucket="llmhost-jobs", Key="scheduled/n.jsonl", Body=b"{}\n")
    calls: list[tuple[str, dict[str, Any]]] = []
    for service in ("sagemaker", "s3", "dynamodb"):
        _record(service, aws.client(service), calls)
    runner = TransformRunner(
        sagemaker=aws.client("sagemaker"),
        s3=aws.client("s3"),
        bucket="llmhost-jobs",
        stack="llmhost-local",
        registry=runtime.registry(),
        service=ServingService(None, None, None, None),  # type: ignore[arg-type]
    )
    batch = Batch(id="batch_iam", endpoint="/v1/chat/completions", input_file_id="f", created_at=0)
    lines = [
        BatchLine(n, f"r{n}", {"model": "night", "messages": [{"role": "user", "content": "hi"}]})
        for n in (1, 2)
    ]
    # When a batch starts, is adopted again after a crash, is cancelled and read back, and the
    # schedule runs
    runner.start(batch, lines)
    runner.start(batch, lines)
    runner.cancel(batch, lines)
    standin.tick()
    assert len(runner.outcomes(batch, lines)) == 2
    ScheduledBatches(aws.client("s3"), "llmhost-jobs", lambda *args: True).run()
    # Then each call is granted to the batch function's role, down to the bucket prefix
    made = {action for action, _ in calls}
    assert {
        "sagemaker:CreateTransformJob",
        "sagemaker:DescribeTransformJob",
        "sagemaker:StopTransformJob",
        "sagemaker:ListTags",
        "s3:PutObject",
        "s3:GetObject",
        "s3:ListObjectsV2",
        "dynamodb:GetItem",
    } <= made
    _granted(template, ROLE, calls)
    # and the transform job actions only on jobs named as llmhost names them
    grants = sam.grants(template, ROLE)
    for action in {a for a in made if a.startswith("sagemaker:")}:
        assert grants[action] == [{"Fn::Sub": TRANSFORM_JOBS}], action


def test_transform_jobs_are_created_tagged_and_stopped_only_when_tagged(
    template: dict[str, Any],
) -> None:
    by_sid = {s["Sid"]: s for s in sam.role_statements(template, ROLE)}
    stack = {"Ref": "AWS::StackName"}
    create = by_sid["TransformJobCreate"]
    assert create["Action"] == "sagemaker:CreateTransformJob"
    assert create["Condition"] == {
        "StringEquals": {"aws:RequestTag/llmhost:stack": stack},
        "ForAnyValue:StringEquals": {"aws:TagKeys": ["llmhost:stack"]},
    }
    tags = by_sid["TransformJobTags"]
    assert tags["Condition"]["StringEquals"]["sagemaker:TaggingAction"] == ["CreateTransformJob"]
    stop = by_sid["TransformJobStop"]
    assert stop["Condition"] == {"StringEquals": {"aws:ResourceTag/llmhost:stack": stack}}
    # and no role is passed: a transform job runs with its model's execution role
    assert "iam:PassRole" not in sam.grants(template, ROLE)


def test_a_transform_jobs_end_reaches_the_batch_function(template: dict[str, Any]) -> None:
    from moto.events.models import EventPattern

    from llmhost.batches.transform import batch_of_state_change

    events = sam.functions(template)["BatchFunction"]["Events"]
    (rule,) = [
        e["Properties"]
        for e in events.values()
        if e["Type"] == "EventBridgeRule"
        and e["Properties"]["Pattern"].get("detail-type") == [STATE_CHANGE]
    ]
    pattern = EventPattern.load(json.dumps(rule["Pattern"]))
    ended = {
        "version": "0",
        "id": "1",
        "detail-type": "SageMaker Transform Job State Change",
        "source": "aws.sagemaker",
        "account": "123456789012",
        "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "TransformJobName": "llmhost-batch-1-1",
            "TransformJobStatus": "Completed",
            "Tags": {"llmhost:stack": "s", "llmhost:batch": "batch_1"},
        },
    }
    # An ended job of llmhost's matches, and names its batch
    assert pattern.matches_event(ended)
    assert batch_of_state_change(ended, "s") == "batch_1"
    # Someone else's job, a job still running, and an endpoint's change do not
    other = {**ended, "detail": {**ended["detail"], "TransformJobName": "their-job"}}
    running = {**ended, "detail": {**ended["detail"], "TransformJobStatus": "InProgress"}}
    endpoint = {**ended, "detail-type": "SageMaker Endpoint State Change"}
    assert not any(pattern.matches_event(e) for e in (other, running, endpoint))
    # and a lost event is not a lost batch: the sweep reads the job's status every 5 minutes
    assert events["Sweep"]["Type"] == "ScheduleV2"


def test_the_batch_schedule_runs_the_batch_function_when_the_stack_says(
    template: dict[str, Any],
) -> None:
    from llmhost.batches.schedule import is_schedule_event

    scheduled = sam.functions(template)["BatchFunction"]["Events"]["Scheduled"]
    assert scheduled["Type"] == "ScheduleV2"
    props = scheduled["Properties"]
    assert props["ScheduleExpression"] == {"Ref": "BatchScheduleExpression"}
    assert props["ScheduleExpressionTimezone"] == {"Ref": "BatchScheduleTimezone"}
    assert is_schedule_event(json.loads(props["Input"]))
    parameters = template["Parameters"]
    assert parameters["BatchScheduleExpression"]["Default"] == "cron(0 2 * * ? *)"
    assert parameters["BatchScheduleTimezone"]["Default"] == "UTC"
