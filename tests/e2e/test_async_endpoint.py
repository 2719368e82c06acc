"""End to end in the local stack: a job on an async deployment at zero instances.

The product's own path: the API creates an ``async`` deployment with min 0, the reconciler
brings up its endpoint (AsyncInferenceConfig: results to the jobs bucket, notifications to
the two topics) and applies AWS's scale-to-zero for async endpoints. Target tracking on
the empty queue takes the variant to zero instances; then a job is
submitted (``Jobs.submit``: InvokeEndpointAsync); the local CloudWatch sees
HasBacklogWithoutCapacity, the alarm's step policy adds an instance, the instance answers,
SageMaker's notification goes through moto's SNS to an SQS subscription, and the jobs
worker completes the job with it exactly once, a duplicate notification changing nothing.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import local_stack
from llmhost_local.cloud import ACCESS_KEY, REGION, SECRET_KEY, LocalCloud

pytestmark = pytest.mark.e2e

# 600x: an endpoint is created in one second, a one-minute alarm period lasts 0.1 s.
SPEED = 600
NAME = "jobs-demo"
SPEC = {
    "name": NAME,
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "async", "instance_type": "ml.g5.2xlarge"},
    "scaling": {"min_capacity": 0, "max_capacity": 1},
}


class Stack:
    def __init__(self, cloud: LocalCloud, api: str, lines: list[str]) -> None:
        self.cloud, self.api, self.lines = cloud, api, lines

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        url = self.api + path
        request = AWSRequest(
            method=method, url=url, data=data, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION).add_auth(request)
        http = urllib.request.Request(
            url, data=data or None, headers=dict(request.headers), method=method
        )
        try:
            with urllib.request.urlopen(http, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def instances(self) -> int:
        described = self.cloud.standin.describe("endpoint", NAME)
        assert described is not None
        if described["EndpointStatus"] != "InService":
            return -1
        return int(described["ProductionVariants"][0].get("CurrentInstanceCount", 0))

    def until(self, what: str, check: Any, timeout: float = 120) -> Any:
        """Poll ``check`` until it is true (the deadline is for a stuck stack only)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.1)
        raise AssertionError(f"{what} did not happen; console:\n" + "\n".join(self.lines))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    lines: list[str] = []
    with local_stack(
        tmp_path_factory.mktemp("qdrant"),
        log=lines.append,
        openai=False,
        speed=SPEED,
        drift_seconds=0.5,
    ) as running:
        yield Stack(running.cloud, running.api, lines)


def test_a_job_on_an_async_endpoint_at_zero_instances_brings_one_up_and_completes_once(
    stack: Stack,
) -> None:
    from llmhost import aws, runtime
    from llmhost.jobs.async_endpoint import notification_outcome
    from llmhost.jobs.record import JobError
    from llmhost.jobs.service import Jobs
    from llmhost.jobs.worker import handle_record

    # Given an async deployment with min 0, created through the API, in service with its
    # scale-from-zero alarm in place
    code, created = stack.call("POST", "/v1/deployments", SPEC)
    assert code == 201, created
    stack.until(
        "IN_SERVICE",
        lambda: stack.call("GET", f"/v1/deployments/{NAME}")[1]["status"] == "IN_SERVICE",
    )
    # And a synchronous request for it is refused naming the jobs route (SageMaker would
    # refuse InvokeEndpoint on an asynchronous endpoint)
    chat = {"model": NAME, "messages": [{"role": "user", "content": "hi"}]}
    code, refused = stack.call("POST", "/v1/chat/completions", chat)
    assert code == 409, refused
    assert refused["error"]["code"] == "model_answers_jobs_only"
    assert "POST /v1/jobs" in refused["error"]["message"]
    cloudwatch = aws.client("cloudwatch")
    stack.until(
        "the no-capacity alarm",
        lambda: cloudwatch.describe_alarms(AlarmNames=[f"llmhost-{NAME}-no-capacity"])[
            "MetricAlarms"
        ],
    )
    # When its queue stays empty, target tracking on the backlog scales it in to zero
    stack.until("zero instances", lambda: stack.instances() == 0)
    assert any(
        f"{NAME}: backlog target tracking scaled in: {NAME} 1 -> 0" in line for line in stack.lines
    ), stack.lines
    # And a queue of our own subscribed to the success topic (SNS delivers to each)
    sqs, sns = aws.client("sqs"), aws.client("sns")
    inbox = sqs.create_queue(QueueName="async-e2e-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])
    sns.subscribe(
        TopicArn=os.environ["ASYNC_SUCCESS_TOPIC_ARN"],
        Protocol="sqs",
        Endpoint=inbox_arn["Attributes"]["QueueArn"],
    )

    # When a chat job is submitted the jobs' way (Jobs.submit routes an async deployment's
    # job to InvokeEndpointAsync)
    jobs = Jobs.from_runtime()
    body = {"model": NAME, "messages": [{"role": "user", "content": "summarise llmhost"}]}
    job = jobs.submit("chat", body)
    assert job.route == "async" and job.status == "QUEUED"

    # Then HasBacklogWithoutCapacity fires its step policy and an instance comes up
    stack.until("an instance from zero", lambda: stack.instances() == 1)
    assert any("ran llmhost-jobs-demo-wake" in line for line in stack.lines), stack.lines

    # And the answer arrives as SageMaker's notification, through SNS
    def delivered() -> list[dict[str, Any]]:
        return sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=1).get("Messages", [])

    (message,) = stack.until("the notification", delivered)
    envelope = json.loads(message["Body"])
    assert envelope["Type"] == "Notification"
    notice = json.loads(envelope["Message"])
    assert notice["invocationStatus"] == "Completed" and notice["inferenceId"] == job.id
    # (the output is in the jobs bucket, where the endpoint config says)
    location = notice["responseParameters"]["outputLocation"]
    assert location.startswith(f"s3://{runtime.jobs_settings().jobs_bucket}/async/output/")
    job_id, outcome = notification_outcome(envelope)
    assert job_id == job.id
    assert not isinstance(outcome, JobError), outcome
    assert outcome["object"] == "chat.completion" and outcome["model"] == NAME
    assert outcome["choices"][0]["message"]["content"]

    # When the jobs worker gets the notification (as the jobs queue delivers it), twice
    record = {"messageId": "m-1", "body": message["Body"]}
    assert handle_record(record, jobs) == "done"
    ended = jobs.get(job.id)
    assert handle_record({**record, "messageId": "m-2"}, jobs) == "done"
    # Then the job succeeded with the answer, once: the duplicate changed nothing
    again = jobs.get(job.id)
    assert again.status == "SUCCEEDED"
    assert again.finished_at == ended.finished_at
    assert again.result is not None
    assert (
        again.result["choices"][0]["message"]["content"]
        == outcome["choices"][0]["message"]["content"]
    )
    assert jobs.complete(job.id, result=outcome) is False
