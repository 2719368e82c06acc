"""Local asynchronous inference: InvokeEndpointAsync over the real runtime API, the queue
held at zero instances, results in moto's S3, notifications through moto's SNS to SQS, the
backlog metrics, and the step policy an alarm runs to bring an instance up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from llmhost_local.async_inference import AsyncInference
from llmhost_local.runtime_front import RuntimeFront, serve_front
from llmhost_local.scaling_actions import StepScalingActions

BUCKET = "llmhost-jobs"
ASYNC_SPEC = {
    "name": "jobs",
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "async", "instance_type": "ml.g5.2xlarge"},
    "scaling": {"min_capacity": 0, "max_capacity": 1},
}
CONFIG = {
    "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2},
    "OutputConfig": {
        "S3OutputPath": f"s3://{BUCKET}/async/output/",
        "S3FailurePath": f"s3://{BUCKET}/async/failure/",
        "NotificationConfig": {},
        # topics filled in by the fixture
    },
}


class World:
    """One async endpoint ("jobs") and one real-time endpoint ("rt"), their instance counts
    set by the test, a container whose answer the test sets, and an SQS inbox per topic."""

    def __init__(self) -> None:
        self.instances = {"jobs": 0, "rt": 1}
        self.answer: tuple[int, str, bytes] = (200, "application/json", b'{"ok": true}')
        self.seen: list[bytes] = []
        self.now = 0.0
        self.sqs = boto3.client("sqs", region_name="us-east-1")
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.s3.create_bucket(Bucket=BUCKET)
        sns = boto3.client("sns", region_name="us-east-1")
        self.inbox: dict[str, str] = {}
        topics = {}
        for kind in ("success", "error"):
            arn = sns.create_topic(Name=f"llmhost-async-{kind}")["TopicArn"]
            url = self.sqs.create_queue(QueueName=f"inbox-{kind}")["QueueUrl"]
            queue = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue["Attributes"]["QueueArn"])
            self.inbox[kind], topics[kind] = url, arn
        self.config = json.loads(json.dumps(CONFIG))
        self.config["OutputConfig"]["NotificationConfig"] = {
            "SuccessTopic": topics["success"],
            "ErrorTopic": topics["error"],
            "IncludeInferenceResponseIn": ["SUCCESS_NOTIFICATION_TOPIC"],
        }
        self.plane = AsyncInference(
            self.describe,
            lambda: self.s3,
            lambda: sns,
            self.container,
            clock=lambda: self.now,
        )

    def describe(self, endpoint: str) -> dict[str, Any] | None:
        if endpoint not in self.instances:
            return None
        described: dict[str, Any] = {
            "EndpointName": endpoint,
            "EndpointStatus": "InService",
            "ProductionVariants": [
                {"VariantName": "AllTraffic", "CurrentInstanceCount": self.instances[endpoint]}
            ],
        }
        if endpoint == "jobs":
            described["AsyncInferenceConfig"] = self.config
        return described

    def container(
        self, endpoint: str, body: bytes, content_type: str, accept: str
    ) -> tuple[int, str, bytes]:
        self.seen.append(body)
        return self.answer

    def notifications(self, kind: str) -> list[dict[str, Any]]:
        messages = self.sqs.receive_message(QueueUrl=self.inbox[kind], MaxNumberOfMessages=10).get(
            "Messages", []
        )
        return [json.loads(json.loads(m["Body"])["Message"]) for m in messages]


@pytest.fixture
def world(moto_aws: None) -> World:
    return World()


@pytest.fixture
def runtime_client(world: World) -> Iterator[Any]:
    front = RuntimeFront(lambda endpoint, component: None, async_inference=world.plane)
    server, url = serve_front(front)
    try:
        yield boto3.client(
            "sagemaker-runtime",
            region_name="us-east-1",
            endpoint_url=url,
            # The front checks what botocore would: a client that does not check reaches it.
            config=Config(retries={"max_attempts": 1}, parameter_validation=False),
        )
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_waits_at_zero_instances_and_is_answered_once_one_runs(
    world: World, runtime_client: Any
) -> None:
    # Given an async endpoint at zero instances
    # When a request is queued with InvokeEndpointAsync (inline body, our inference id)
    reply = runtime_client.invoke_endpoint_async(
        EndpointName="jobs",
        Body=b'{"inputs": "hi"}',
        ContentType="application/json",
        InferenceId="job-1",
    )
    # Then SageMaker's answer says where the result will be, and nothing ran yet
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert reply["InferenceId"] == "job-1"
    assert reply["OutputLocation"].startswith(f"s3://{BUCKET}/async/output/")
    assert reply["OutputLocation"].endswith(".out")
    assert reply["FailureLocation"].startswith(f"s3://{BUCKET}/async/failure/")
    assert world.plane.step() == 0 and world.seen == []
    # And the backlog metrics say a request waits without capacity
    dims = {"EndpointName": "jobs"}
    assert world.plane.gauge(dims, "HasBacklogWithoutCapacity", 0, 1) == 1.0
    assert world.plane.gauge(dims, "ApproximateBacklogSize", 0, 1) == 1.0
    # When an instance runs
    world.instances["jobs"] = 1
    world.now = 5.0
    assert world.plane.step() == 1
    # Then the container got the body, the output is in S3, and the success topic said so,
    # with the response included
    assert world.seen == [b'{"inputs": "hi"}']
    bucket, key = reply["OutputLocation"].removeprefix("s3://").split("/", 1)
    assert world.s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b'{"ok": true}'
    (notice,) = world.notifications("success")
    assert notice["invocationStatus"] == "Completed" and notice["inferenceId"] == "job-1"
    assert notice["responseParameters"]["outputLocation"] == reply["OutputLocation"]
    assert notice["responseBody"]["content"] == '{"ok": true}'
    assert world.notifications("error") == []
    # And the backlog is empty again
    assert world.plane.gauge(dims, "HasBacklogWithoutCapacity", 5, 6) == 0.0


def test_an_input_in_s3_is_read_and_a_container_error_goes_to_the_error_topic(
    world: World, runtime_client: Any
) -> None:
    # Given an instance, an input in S3, and a container that fails
    world.instances["jobs"] = 1
    world.s3.put_object(Bucket=BUCKET, Key="async/input/job-2.json", Body=b'{"inputs": "big"}')
    world.answer = (500, "text/plain", b"CUDA out of memory")
    reply = runtime_client.invoke_endpoint_async(
        EndpointName="jobs", InputLocation=f"s3://{BUCKET}/async/input/job-2.json"
    )
    world.plane.step()
    # Then the input was read from S3, and the failure is written and announced
    assert world.seen == [b'{"inputs": "big"}']
    (notice,) = world.notifications("error")
    assert notice["invocationStatus"] == "Failed"
    assert "Received server error (500)" in notice["failureReason"]
    assert notice["responseParameters"]["failureLocation"] == reply["FailureLocation"]
    bucket, key = reply["FailureLocation"].removeprefix("s3://").split("/", 1)
    assert world.s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"CUDA out of memory"
    # (the error topic does not include the response: only SUCCESS_NOTIFICATION_TOPIC does)
    assert "responseBody" not in notice


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        ({"EndpointName": "rt", "Body": b"{}"}, "not an asynchronous inference endpoint"),
        ({"EndpointName": "nope", "Body": b"{}"}, "Endpoint nope of account"),
        (
            {"EndpointName": "jobs", "Body": b"{}", "InputLocation": "s3://b/k"},
            "mutually exclusive",
        ),
        ({"EndpointName": "jobs"}, "Either Body or InputLocation"),
        (
            {"EndpointName": "jobs", "Body": b"{}", "RequestTTLSeconds": 30},
            "requestTTLSeconds",
        ),
    ],
)
def test_requests_sagemaker_refuses_get_its_validation_error(
    world: World, runtime_client: Any, call: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(runtime_client.exceptions.ValidationError, match=fragment):
        runtime_client.invoke_endpoint_async(**call)
    assert world.plane.backlog("jobs") == 0


def test_the_no_capacity_alarms_step_policy_adds_an_instance_within_the_targets_bounds(
    moto_aws: None,
) -> None:
    from llmhost.scaling.policy import async_policy
    from llmhost.specs import Scaling

    # Given an async variant at zero instances with its scalable target and step policy
    class Endpoint:
        count = 0
        updates: list[int] = []

        def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:
            return {
                "EndpointStatus": "InService",
                "ProductionVariants": [
                    {"VariantName": "AllTraffic", "DesiredInstanceCount": self.count}
                ],
            }

        def update_endpoint_weights_and_capacities(self, **request: Any) -> None:
            (wanted,) = request["DesiredWeightsAndCapacities"]
            self.updates.append(wanted["DesiredInstanceCount"])
            self.count = wanted["DesiredInstanceCount"]

    endpoint = Endpoint()
    aas = boto3.client("application-autoscaling", region_name="us-east-1")
    policy = async_policy(Scaling(min_capacity=0, max_capacity=1), concurrency=2)
    rid = "endpoint/jobs/variant/AllTraffic"
    aas.register_scalable_target(**policy.register_scalable_target_request(rid))
    arn = aas.put_scaling_policy(**policy.step_scaling_request(rid, "llmhost-jobs-wake"))[
        "PolicyARN"
    ]
    now = [0.0]
    actions = StepScalingActions(lambda: aas, lambda: endpoint, clock=lambda: now[0])
    alarm = {"AlarmName": "llmhost-jobs-no-capacity", "AlarmActions": [arn]}
    # When the alarm invokes it: one instance
    assert actions.run(alarm) == ["jobs 0 -> 1"]
    # And again (the alarm is still in ALARM a period later): never past MaxCapacity
    now[0] = 1000.0
    assert actions.run(alarm) == []
    assert endpoint.updates == [1]
    # And an alarm without scaling actions changes nothing
    assert actions.run({"AlarmName": "other", "AlarmActions": []}) == []


def test_backlog_target_tracking_scales_in_to_zero_on_an_empty_queue_and_out_on_a_long_one(
    moto_aws: None,
) -> None:
    from llmhost.scaling.policy import async_policy
    from llmhost.specs import Scaling
    from llmhost_local.scaling_actions import BacklogTargetTracking

    # Given an async variant with one instance, 0-3 instances, 2 queued requests per
    # instance as the target, and a backlog the test sets
    count = [1]
    now = [0.0]

    class Endpoint:
        def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:
            return {
                "EndpointStatus": "InService",
                "ProductionVariants": [
                    {"VariantName": "AllTraffic", "DesiredInstanceCount": count[0]}
                ],
            }

        def update_endpoint_weights_and_capacities(self, **request: Any) -> None:
            count[0] = request["DesiredWeightsAndCapacities"][0]["DesiredInstanceCount"]

    queued_since: list[tuple[float, float]] = [(0.0, 0.0)]  # (since, requests queued)

    def gauge(dims: Any, metric: str, start: float, end: float) -> float | None:
        # what was queued during the period (a change counts from the period it fell in)
        known = [q for since, q in queued_since if since < end]
        if not known:
            return None  # before the first sample: a missing datapoint
        queued = known[-1]
        if metric == "ApproximateBacklogSize":
            return queued
        return queued / count[0] if count[0] else queued

    aas = boto3.client("application-autoscaling", region_name="us-east-1")
    policy = async_policy(
        Scaling(min_capacity=0, max_capacity=3, scale_in_cooldown_s=0, scale_out_cooldown_s=0),
        concurrency=2,
    )
    rid = "endpoint/jobs/variant/AllTraffic"
    aas.register_scalable_target(**policy.register_scalable_target_request(rid))
    aas.put_scaling_policy(**policy.target_tracking_request(rid, "llmhost-jobs-target"))
    tracking = BacklogTargetTracking(
        lambda: aas, Endpoint, gauge, lambda endpoint: None, clock=lambda: now[0]
    )
    # When the queue stays empty for fewer than fifteen minutes, nothing changes
    assert tracking.tick() == []
    for _ in range(14):
        now[0] += 60
        assert tracking.tick() == []
    # Then after fifteen, target tracking scales in to zero
    now[0] += 60
    assert tracking.tick() == ["jobs 1 -> 0"]
    # When 5 requests wait on one instance (2.5 per instance, above 2) for three minutes
    count[0] = 1
    queued_since.append((now[0], 5.0))
    now[0] += 60
    assert tracking.tick() == []
    now[0] += 60
    assert tracking.tick() == []
    now[0] += 60
    # Then it scales out to what holds the backlog at the target: ceil(5 / 2) = 3
    assert tracking.tick() == ["jobs 1 -> 3"]


def test_a_job_refused_for_an_async_deployment_not_in_service_leaves_no_job_behind(
    moto_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from llmhost import aws, runtime
    from llmhost.jobs.async_endpoint import AsyncModelNotInService
    from llmhost.jobs.service import Jobs
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.specs import parse_spec
    from llmhost_local.queues import jobs_source, provision_jobs

    # Given an async deployment that sleeps
    jobs = provision_jobs(
        aws.client("dynamodb"),
        aws.client("s3"),
        aws.client("sqs"),
        jobs_source(Path(__file__).resolve().parents[2] / "template.yaml"),
    )
    for name, value in jobs.environment(3).items():
        monkeypatch.setenv(name, value)
    record = DeploymentRecord(name="jobs", spec=parse_spec(ASYNC_SPEC))
    runtime.registry().create(record.model_copy(update={"status": "SLEEPING"}))
    # When a job is submitted for it
    service = Jobs.from_runtime()
    with pytest.raises(AsyncModelNotInService) as refused:
        service.submit("chat", {"model": "jobs", "messages": [{"role": "user", "content": "hi"}]})
    # Then nothing was sent, the caller gets a 409 that says how to go on, and no job is
    # left behind: the caller never learned its id, and submitting again after the wake
    # is the whole of what it has to do
    assert refused.value.status == 409 and "/v1/deployments/jobs/wake" in refused.value.message
    assert "SLEEPING" in refused.value.message
    assert service.store.list(model="jobs").jobs == []


def test_a_throttled_submission_is_the_jobs_retryable_fault_and_its_job_ends_failed(
    moto_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from botocore.stub import Stubber

    from llmhost import aws, runtime
    from llmhost.jobs.service import Jobs, JobsUnavailable
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.specs import parse_spec
    from llmhost_local.queues import jobs_source, provision_jobs

    # Given an async deployment in service, and SageMaker throttling InvokeEndpointAsync
    jobs = provision_jobs(
        aws.client("dynamodb"),
        aws.client("s3"),
        aws.client("sqs"),
        jobs_source(Path(__file__).resolve().parents[2] / "template.yaml"),
    )
    for name, value in jobs.environment(3).items():
        monkeypatch.setenv(name, value)
    record = DeploymentRecord(name="jobs", spec=parse_spec(ASYNC_SPEC))
    runtime.registry().create(record.model_copy(update={"status": "IN_SERVICE"}))
    throttled = aws.client("sagemaker-runtime")
    stubber = Stubber(throttled)
    stubber.add_client_error(
        "invoke_endpoint_async", "ThrottlingException", "Rate exceeded", http_status_code=400
    )
    stubber.activate()  # (the cached client llmhost calls SageMaker's runtime with)
    # When a job is submitted through the jobs' own path
    service = Jobs.from_runtime()
    with pytest.raises(JobsUnavailable) as refused:
        service.submit("chat", {"model": "jobs", "messages": [{"role": "user", "content": "hi"}]})
    # Then the caller is told to retry, and the job did not stay QUEUED for ever
    assert refused.value.code == "service_throttled"
    (ended,) = service.store.list(model="jobs").jobs
    assert ended.status == "FAILED" and ended.error is not None
    assert ended.error.code == "service_throttled"
