"""End to end over real HTTP against the local runner: a generation too long for the
synchronous route finishes as a job.

The synchronous limit is scaled down with the engine: the serve function's model timeout
(SERVING_TIMEOUT_S, which keeps a synchronous request inside API Gateway's 29 s) is 1 s here
and the engine takes 3 s to answer. The job goes the product's whole way: SigV4-signed POST
to the serve function, moto's SQS, the jobs function invoked by the local event source
mapping with the worker's timeout from template.yaml, DynamoDB, and its Job Completed event
on moto's EventBridge.
"""

from __future__ import annotations

import json
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
from llmhost_local.cloud import ACCESS_KEY, REGION, SECRET_KEY

pytestmark = pytest.mark.e2e

ENGINE_LATENCY_MS = 3000
SYNC_TIMEOUT_S = "1"


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
        data = json.dumps(body).encode() if body is not None else b""
        request = AWSRequest(
            method=method,
            url=self.url + path,
            data=data,
            headers={"Content-Type": "application/json"},
        )
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION).add_auth(request)
        http = urllib.request.Request(
            self.url + path, data=data or None, headers=dict(request.headers), method=method
        )
        try:
            with urllib.request.urlopen(http, timeout=60) as reply:
                return reply.status, json.loads(reply.read()), dict(reply.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}"), dict(error.headers)

    def until(self, path: str, done: Any, timeout: float = 120) -> Any:
        # A deadline for a stuck stack, not a slow one.
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            code, body, _ = self.call("GET", path)
            if code == 200 and done(body):
                return body
            time.sleep(0.2)
        raise AssertionError(f"{path} never got there: {body}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERVING_TIMEOUT_S", SYNC_TIMEOUT_S)  # read when the stack starts
        with local_stack(
            tmp_path_factory.mktemp("qdrant"),
            openai=False,
            speed=600,
            drift_seconds=0.5,
            engine_latency_ms=ENGINE_LATENCY_MS,
        ) as running:
            yield running


def test_a_generation_longer_than_the_synchronous_limit_completes_as_a_job(stack: Any) -> None:
    import boto3

    api = Api(stack.api)
    # Given a rule on moto's default event bus sending llmhost's events to a queue
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    sqs = session.client("sqs", endpoint_url=stack.cloud.moto_url)
    events = session.client("events", endpoint_url=stack.cloud.moto_url)
    sink = sqs.create_queue(QueueName="job-events")["QueueUrl"]
    sink_arn = sqs.get_queue_attributes(QueueUrl=sink, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(
        Name="job-completed",
        EventPattern=json.dumps({"source": ["llmhost"], "detail-type": ["Job Completed"]}),
    )
    events.put_targets(Rule="job-completed", Targets=[{"Id": "sink", "Arn": sink_arn}])
    # And a real-time model in service
    spec = {"name": "slow", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}
    assert api.call("POST", "/v1/deployments", spec)[0] == 201
    api.until("/v1/deployments/slow", lambda d: d["status"] == "IN_SERVICE")
    chat = {"model": "slow", "messages": [{"role": "user", "content": "Write a long story."}]}

    # When the synchronous route is asked: the generation outlasts its limit
    code, refused, _ = api.call("POST", "/v1/chat/completions", chat)
    assert code == 504 and refused["error"]["code"] == "model_timeout", refused

    # When the same body is submitted as a job
    code, job, headers = api.call(
        "POST", "/v1/jobs", {"type": "chat", "body": chat, "custom_id": "story-1"}
    )
    # Then it is accepted at once, with where to poll
    assert code == 202, job
    assert job["status"] == "QUEUED" and headers["Location"] == f"/v1/jobs/{job['id']}"
    # And it completes, its answer the engine's
    done = api.until(headers["Location"], lambda j: j["status"] not in {"QUEUED", "RUNNING"})
    assert done["status"] == "SUCCEEDED", done
    assert done["attempts"] == 1
    reply = done["result"]
    assert reply["object"] == "chat.completion" and reply["model"] == "slow"
    assert reply["choices"][0]["message"]["content"]
    assert reply["llmhost"]["latency_ms"]["generate"] >= ENGINE_LATENCY_MS
    # And it is listed among the model's succeeded jobs
    code, listed, _ = api.call("GET", "/v1/jobs?model=slow&status=SUCCEEDED")
    assert code == 200 and [j["id"] for j in listed["jobs"]] == [job["id"]]
    # And once done it cannot be cancelled
    code, conflict, _ = api.call("DELETE", headers["Location"])
    assert code == 409 and conflict["error"]["code"] == "job_started"
    # And its Job Completed event reached the bus
    delivered: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not delivered and time.monotonic() < deadline:
        got = sqs.receive_message(QueueUrl=sink, WaitTimeSeconds=1).get("Messages", [])
        delivered += [json.loads(m["Body"]) for m in got]
    (event,) = delivered
    assert event["source"] == "llmhost" and event["detail-type"] == "Job Completed"
    assert event["detail"]["job_id"] == job["id"] and event["detail"]["status"] == "SUCCEEDED"
    assert event["detail"]["custom_id"] == "story-1"
