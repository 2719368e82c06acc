"""Jobs end to end inside AWS's wiring, against moto: submitted through ``Jobs.submit``,
delivered by moto's SQS to the jobs function as Lambda's event source mapping does
(``llmhost_local.queues.QueuePoller``), completed in DynamoDB, published to EventBridge.

The model is a stand-in serving service (what ``/v1/chat/completions`` calls), so each test
decides how the generation goes: answers, dies, fails, or finds the model asleep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import ROOT

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
RAG = {"model": "demo", "query": "why?", "collection": "docs"}
# moto keeps a message invisible this long after a receive (the template's 5400 s, compressed).
SPEED = 5400.0


class WorkerKilled(BaseException):
    """The worker's process dying mid-generation: nothing after it runs, not even excepts."""


class StandInServing:
    """What the worker calls for each job; ``behave`` says what each call does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.behave: list[Callable[[], dict[str, Any]]] = []

    def _next(self, kind: str, request: Any) -> dict[str, Any]:
        self.calls.append((kind, request))
        if self.behave:
            return self.behave.pop(0)()
        return {"answer": f"answer {len(self.calls)}", "model": request.model}

    def chat(self, request: Any, watch: Any = None) -> dict[str, Any]:
        return self._next("chat", request)

    def rag(self, request: Any, watch: Any = None) -> dict[str, Any]:
        return self._next("rag", request)


class World:
    """The jobs' AWS (moto), the operations, the jobs function and its queue's poller."""

    def __init__(self) -> None:
        import boto3

        from llmhost import aws, runtime
        from llmhost.jobs.service import Jobs, JobsConfig
        from llmhost.jobs.store import JobStore
        from llmhost_local.cloud import load_handler
        from llmhost_local.events import LambdaContext
        from llmhost_local.queues import QueuePoller, jobs_source, provision_jobs

        self.sqs = aws.client("sqs")
        self.s3 = aws.client("s3")
        self.source = jobs_source(ROOT / "template.yaml")
        self.resources = provision_jobs(
            aws.client("dynamodb"), self.s3, self.sqs, self.source, speed=SPEED
        )
        # A rule on the default bus sending llmhost's events to a queue the test reads.
        events = boto3.client("events", region_name="us-east-1")
        self.events_url = self.sqs.create_queue(QueueName="job-events")["QueueUrl"]
        events_arn = self.sqs.get_queue_attributes(
            QueueUrl=self.events_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        events.put_rule(
            Name="jobs", EventPattern=json.dumps({"source": ["llmhost"]}), State="ENABLED"
        )
        events.put_targets(Rule="jobs", Targets=[{"Id": "q", "Arn": events_arn}])
        self.serving = StandInServing()
        self.hosting: dict[str, str] = {"demo": "dedicated"}
        self.store = JobStore(aws.client("dynamodb"), self.resources.table)
        self.jobs = Jobs(
            self.store,
            JobsConfig(
                bucket=self.resources.bucket,
                queue_url=self.resources.queue_url,
                max_receive_count=self.source.max_receive_count,
                lease_s=self.resources.lease_s,
                retry_delay_s=0,
            ),
            sqs=lambda: self.sqs,
            s3=lambda: self.s3,
            events=aws.lazy("events"),
            serving=lambda: self.serving,  # type: ignore[arg-type,return-value]
            hosting_of=self.hosting.get,
        )
        # A batch line's job is counted on its batch (none here: the count finds no batch).
        runtime.override(
            jobs=self.jobs,
            jobs_settings=runtime.JobsSettings(
                jobs_table=self.resources.table,
                jobs_bucket=self.resources.bucket,
                jobs_queue_url=self.resources.queue_url,
            ),
        )
        handler = load_handler("jobs", "llmhost-jobs").handler
        self.answers: list[dict[str, Any]] = []

        def invoke(event: dict[str, Any]) -> dict[str, Any]:
            answer: dict[str, Any] = handler(event, LambdaContext("llmhost-jobs"))
            self.answers.append(answer)
            return answer

        self.poller = QueuePoller(
            self.sqs,
            self.resources.queue_url,
            self.resources.queue_arn,
            self.source,
            invoke,
            region="us-east-1",
            wait_s=0,
        )

    def deliver_until(self, done: Callable[[], bool], rounds: int = 60) -> None:
        """Let the event source mapping poll until ``done()`` (messages kept invisible come
        back after their visibility timeout, about a second here)."""
        for _ in range(rounds):
            if done():
                return
            if not self.poller.poll():
                time.sleep(0.2)
        raise AssertionError("the queue did not get there")

    def status(self, job_id: str) -> str:
        return str(self.store.get(job_id).status)

    def published(self) -> list[dict[str, Any]]:
        got = self.sqs.receive_message(QueueUrl=self.events_url, MaxNumberOfMessages=10).get(
            "Messages", []
        )
        return [json.loads(m["Body"]) for m in got]

    def queue_depth(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )


@pytest.fixture
def world(moto_aws: None) -> World:
    return World()


def test_a_chat_job_is_queued_run_and_published(world: World) -> None:
    # Given a chat job submitted with the synchronous route's body
    job = world.jobs.submit("chat", CHAT)
    assert job.status == "QUEUED" and job.route == "queue" and job.model == "demo"
    # When the queue delivers it to the jobs function
    world.deliver_until(lambda: world.status(job.id) == "SUCCEEDED")
    # Then the serving code got the same request the route would parse, and the job keeps
    # its answer inline, with its timings, and the message is gone
    ((kind, request),) = world.serving.calls
    assert kind == "chat" and request.messages[0].content == "hello" and request.max_tokens == 8
    done = world.store.get(job.id)
    assert done.result == {"answer": "answer 1", "model": "demo"}
    assert done.attempts == 1 and done.started_at and done.finished_at
    assert world.queue_depth(world.resources.queue_url) == 0
    # And one Job Completed event went to the default bus
    (event,) = world.published()
    assert (event["source"], event["detail-type"]) == ("llmhost", "Job Completed")
    assert event["detail"] == {
        "job_id": job.id,
        "status": "SUCCEEDED",
        "model": "demo",
        "batch_id": None,
        "custom_id": None,
        "error": None,
    }
    assert world.store.get(job.id).notified_at is not None


def test_a_rag_job_runs_the_rag_operation(world: World) -> None:
    job = world.jobs.submit("rag", RAG)
    world.deliver_until(lambda: world.status(job.id) == "SUCCEEDED")
    ((kind, request),) = world.serving.calls
    assert kind == "rag" and request.collection == "docs"


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("chat", {"model": "demo"}, "body.messages"),
        ("chat", {**CHAT, "temperature": 9}, "body.temperature"),
        ("chat", {**CHAT, "stream": True}, "body.stream"),
        ("rag", {"model": "demo", "query": "q"}, "body.collection"),
        ("rag", {**RAG, "surprise": 1}, "body.surprise"),
    ],
)
def test_a_request_the_route_would_refuse_is_refused_naming_the_field(
    world: World, kind: str, body: dict[str, Any], field: str
) -> None:
    from llmhost.errors import SpecInvalid

    with pytest.raises(SpecInvalid) as refused:
        world.jobs.submit(kind, body)  # type: ignore[arg-type]
    assert field in [i.field for i in refused.value.issues]
    assert world.queue_depth(world.resources.queue_url) == 0


def test_a_job_for_a_model_that_does_not_exist_is_refused(world: World) -> None:
    from llmhost.serving.routing import ModelNotFound

    with pytest.raises(ModelNotFound, match="no model named 'ghost'"):
        world.jobs.submit("chat", {**CHAT, "model": "ghost"})


def test_the_same_job_id_again_is_the_same_job(world: World) -> None:
    # Given a batch line's job, submitted (say the batch crashed after this)
    first = world.jobs.submit("chat", CHAT, job_id="batch_1-000000", batch_id="batch_1")
    # When the resumed batch submits it again
    again = world.jobs.submit("chat", {**CHAT, "max_tokens": 99}, job_id="batch_1-000000")
    # Then it is the same job, its message sent again (it may be the one that was lost), and
    # it runs once
    assert again == first
    world.deliver_until(lambda: world.status(first.id) == "SUCCEEDED")
    world.deliver_until(lambda: world.queue_depth(world.resources.queue_url) == 0)
    assert len(world.serving.calls) == 1
    assert len(world.published()) == 1
    # And once ended, submitting it again changes nothing and queues nothing
    assert world.jobs.submit("chat", CHAT, job_id=first.id).status == "SUCCEEDED"
    assert world.queue_depth(world.resources.queue_url) == 0


def test_the_worker_killed_mid_job_leaves_it_to_the_next_delivery(world: World) -> None:
    # Given a job whose first worker dies after taking the message and claiming the job,
    # before it wrote the result
    job = world.jobs.submit("chat", CHAT)

    def die() -> dict[str, Any]:
        raise WorkerKilled

    world.serving.behave.append(die)
    with pytest.raises(WorkerKilled):
        world.poller.poll()
    assert world.status(job.id) == "RUNNING"
    # When the message comes back after its visibility timeout (the lease has run out too)
    world.deliver_until(lambda: world.status(job.id) == "SUCCEEDED")
    # Then the job completed exactly once, on its second attempt, and was published once
    done = world.store.get(job.id)
    assert done.attempts == 2 and done.result == {"answer": "answer 2", "model": "demo"}
    assert len(world.serving.calls) == 2
    assert [e["detail"]["status"] for e in world.published()] == ["SUCCEEDED"]
    assert world.queue_depth(world.resources.queue_url) == 0


def test_a_duplicate_delivery_runs_the_job_once(world: World) -> None:
    # Given a job whose message SQS delivers twice (at-least-once delivery)
    job = world.jobs.submit("chat", CHAT)
    world.sqs.send_message(
        QueueUrl=world.resources.queue_url, MessageBody=json.dumps({"job_id": job.id})
    )
    # When both are delivered
    world.deliver_until(lambda: world.queue_depth(world.resources.queue_url) == 0)
    # Then the job ran and was published once
    assert world.status(job.id) == "SUCCEEDED"
    assert len(world.serving.calls) == 1
    assert len(world.published()) == 1


def test_a_duplicate_delivered_while_the_job_runs_waits_for_it(world: World) -> None:
    # Given a job another worker is running (its lease still runs)
    job = world.jobs.submit("chat", CHAT)
    world.store.claim(job.id, now_s=time.time(), now_iso="x", lease_s=3600)
    # When a second copy of the message is delivered
    outcome = world.jobs.run(job.id)
    # Then it is left for later, without running the job
    assert outcome == "retry" and world.serving.calls == []
    assert world.status(job.id) == "RUNNING"


def test_a_poison_job_ends_failed_with_its_reason_and_its_message_dead_lettered(
    world: World,
) -> None:
    from llmhost.serving.errors import ModelFailed

    # Given a job whose every run fails on the model's side
    def crash() -> dict[str, Any]:
        raise ModelFailed("the engine crashed", log_detail="CUDA error")

    world.serving.behave.extend([crash] * 5)
    job = world.jobs.submit("chat", CHAT)
    # When the queue has delivered it maxReceiveCount times
    dlq = world.resources.dlq_url
    world.deliver_until(lambda: world.queue_depth(dlq) == 1)
    # Then it ran that many times, is FAILED with the reason, and its message is in the
    # dead-letter queue (moved there by the queue's redrive)
    assert len(world.serving.calls) == world.source.max_receive_count == 3
    failed = world.store.get(job.id)
    assert failed.status == "FAILED"
    assert failed.error is not None and failed.error.code == "model_failed"
    assert "the engine crashed" in failed.error.message
    (dead,) = world.sqs.receive_message(QueueUrl=dlq).get("Messages", [])
    assert json.loads(dead["Body"]) == {"job_id": job.id}
    assert world.queue_depth(world.resources.queue_url) == 0
    (event,) = world.published()
    assert event["detail"]["status"] == "FAILED"
    assert event["detail"]["error"]["code"] == "model_failed"


def test_a_job_the_model_refuses_fails_at_once(world: World) -> None:
    from llmhost.serving.routing import ModelNotFound

    def deleted() -> dict[str, Any]:
        raise ModelNotFound("no model named 'demo'; GET /v1/models lists them")

    world.serving.behave.append(deleted)
    job = world.jobs.submit("chat", CHAT)
    world.deliver_until(lambda: world.status(job.id) == "FAILED")
    assert world.store.get(job.id).error.code == "model_not_found"  # type: ignore[union-attr]
    assert len(world.serving.calls) == 1
    assert world.queue_depth(world.resources.queue_url) == 0


def test_a_job_for_a_sleeping_model_waits_for_it(world: World) -> None:
    from llmhost.serving.errors import ModelUnavailable

    # Given a model asleep on the first try (it wakes; Retry-After 1 s)
    def asleep() -> dict[str, Any]:
        raise ModelUnavailable("sleeping", retry_after=1)

    world.serving.behave.append(asleep)
    job = world.jobs.submit("chat", CHAT)
    world.poller.poll()
    # Then the job is queued again, not failed, and no receive of the message was spent
    assert world.status(job.id) == "QUEUED"
    # When the delayed message is delivered, it runs
    world.deliver_until(lambda: world.status(job.id) == "SUCCEEDED")
    assert len(world.serving.calls) == 2
    assert [e["detail"]["status"] for e in world.published()] == ["SUCCEEDED"]


def test_a_large_result_is_kept_in_the_bucket_behind_a_presigned_url(world: World) -> None:
    from llmhost.jobs.service import INLINE_RESULT_BYTES

    big = "x" * (INLINE_RESULT_BYTES + 1)
    world.serving.behave.append(lambda: {"answer": big})
    job = world.jobs.submit("chat", CHAT)
    world.deliver_until(lambda: world.status(job.id) == "SUCCEEDED")
    done = world.store.get(job.id)
    assert done.result is None and done.result_key == f"jobs/{job.id}/result.json"
    stored = world.s3.get_object(Bucket=world.resources.bucket, Key=done.result_key)
    assert json.loads(stored["Body"].read()) == {"answer": big}
    shown = world.jobs.view(done)
    assert f"jobs/{job.id}/result.json" in shown["result_url"]
    assert "X-Amz-Signature=" in shown["result_url"] or "Signature=" in shown["result_url"]


def test_a_large_request_is_kept_in_the_bucket_and_run_from_there(world: World) -> None:
    long_chat = {
        **CHAT,
        "messages": [{"role": "user", "content": "y" * 30_000} for _ in range(3)],
    }
    job = world.jobs.submit("chat", long_chat)
    assert job.request == {} and job.request_key == f"jobs/{job.id}/input.json"
    world.deliver_until(lambda: world.status(job.id) == "SUCCEEDED")
    ((_, request),) = world.serving.calls
    assert len(request.messages) == 3 and request.messages[2].content == "y" * 30_000


def test_a_cancelled_job_never_runs_and_its_ending_is_published(world: World) -> None:
    job = world.jobs.submit("chat", CHAT)
    assert world.jobs.cancel(job.id).status == "CANCELLED"
    world.deliver_until(lambda: world.queue_depth(world.resources.queue_url) == 0)
    assert world.serving.calls == []
    assert [e["detail"]["status"] for e in world.published()] == ["CANCELLED"]
    # Cancelling it again changes nothing and publishes nothing more (the event read above
    # is still invisible, so any event seen now would be a second one)
    assert world.jobs.cancel(job.id).status == "CANCELLED"
    world.deliver_until(lambda: world.queue_depth(world.resources.queue_url) == 0)
    assert world.published() == []


def test_a_message_that_is_not_a_job_is_left_to_the_dead_letter_queue(world: World) -> None:
    world.sqs.send_message(QueueUrl=world.resources.queue_url, MessageBody='{"hello": 1}')
    world.poller.poll()
    (answer,) = world.answers
    assert len(answer["batchItemFailures"]) == 1


def test_a_queue_failure_on_submit_fails_the_job_and_says_retry(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    from llmhost.jobs.service import JobsUnavailable

    def unavailable(**_: Any) -> Any:
        raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "x"}}, "Send")

    monkeypatch.setattr(world.sqs, "send_message", unavailable)
    with pytest.raises(JobsUnavailable) as raised:
        world.jobs.submit("chat", CHAT)
    assert raised.value.status == 503 and raised.value.retry_after
    (failed,) = world.store.list().jobs
    assert failed.status == "FAILED" and failed.error.code == "service_unavailable"  # type: ignore[union-attr]


def test_a_job_the_async_endpoint_refuses_is_not_left_behind(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.jobs import async_endpoint
    from llmhost.serving.errors import ModelInputRejected

    # Given an async deployment whose endpoint refuses the request
    world.hosting["slow"] = "async"

    def refused(job: Any) -> None:
        raise ModelInputRejected("the prompt is too long for this model")

    monkeypatch.setattr(async_endpoint, "submit_async", refused)
    # When a job is submitted
    with pytest.raises(ModelInputRejected):
        world.jobs.submit("chat", {**CHAT, "model": "slow"})
    # Then the caller has the error, and no job is left (neither QUEUED for ever nor a
    # FAILED one whose id the caller never saw)
    assert world.store.list(model="slow").jobs == []


def test_cancelling_an_async_job_publishes_its_ending(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.jobs import async_endpoint

    world.hosting["slow"] = "async"
    submitted: list[str] = []
    monkeypatch.setattr(async_endpoint, "submit_async", lambda job: submitted.append(job.id))
    job = world.jobs.submit("chat", {**CHAT, "model": "slow"})
    assert submitted == [job.id] and world.queue_depth(world.resources.queue_url) == 0
    # When it is cancelled, then its ending is published (there is no queue message of its own)
    world.jobs.cancel(job.id)
    world.deliver_until(lambda: world.queue_depth(world.resources.queue_url) == 0)
    assert [e["detail"]["status"] for e in world.published()] == ["CANCELLED"]
    # And the endpoint's late answer changes nothing
    assert world.jobs.complete(job.id, result={"answer": "late"}) is False
    assert world.status(job.id) == "CANCELLED" and world.serving.calls == []


def test_a_job_message_for_a_running_async_job_never_runs_it_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.jobs import async_endpoint

    world.hosting["slow"] = "async"
    monkeypatch.setattr(async_endpoint, "submit_async", lambda job: None)
    job = world.jobs.submit("chat", {**CHAT, "model": "slow"})
    # When a message naming it is delivered (its endpoint has it: only its notification ends it)
    assert world.jobs.run(job.id) == "done"
    # Then the worker does not call the model through the real-time path
    assert world.serving.calls == [] and world.status(job.id) == "QUEUED"
