"""A batch on SageMaker Batch Transform: the runner against the SageMaker stand-in (every
request checked against botocore's model) and moto's S3, with the local engine playing the
model's container. Each line ends exactly once, whatever the job does."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmhost.batches.lines import BatchLine
from llmhost.batches.record import Batch
from llmhost.batches.transform import PART_LINES, transform_job_name

BUCKET = "llmhost-jobs"
STACK = "llmhost-local"
MODEL = "zephyr-night"
SAGEMAKER_MODEL = "zephyr-night-0a1b2c3d"
SPEC = {
    "name": MODEL,
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}


def _batch(batch_id: str) -> Batch:
    return Batch(id=batch_id, endpoint="/v1/chat/completions", input_file_id="file-1", created_at=0)


def _line(n: int, text: str | None = None, model: str = MODEL) -> BatchLine:
    body = {"model": model, "messages": [{"role": "user", "content": text or f"question {n}"}]}
    return BatchLine(n, f"request-{n}", {**body, "max_tokens": 16})


@pytest.fixture
def world(moto_aws: None, clock: Any) -> Any:
    """A sleeping deployment whose SageMaker model the reconciler kept, the jobs bucket, and
    a stand-in that runs transform jobs on the local engine."""
    import boto3

    from llmhost import aws, runtime
    from llmhost.lifecycle.record import DeploymentRecord, Resources
    from llmhost.serving.service import ServingService
    from llmhost.specs import parse_spec
    from llmhost_local.engine import LocalEngine
    from llmhost_local.standin import SageMakerStandIn

    engine = LocalEngine()
    events: list[dict[str, Any]] = []

    calls = [0]
    sent: set[bytes] = set()

    def invoke(model: str, body: bytes) -> tuple[int, bytes]:
        calls[0] += 1
        sent.add(body)
        reply = engine.handle("POST", "/invocations", body)
        return reply.status, reply.body

    standin = SageMakerStandIn(
        clock=clock,
        region="us-east-1",
        on_event=events.append,
        s3=lambda: aws.client("s3"),
        invoke_model=invoke,
    )
    sagemaker = standin.attach(boto3.client("sagemaker", region_name="us-east-1"))
    sagemaker.create_model(
        ModelName=SAGEMAKER_MODEL,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
        PrimaryContainer={"Image": "tgi:latest"},
    )
    aws.client("s3").create_bucket(Bucket=BUCKET)
    registry = runtime.registry()
    record = DeploymentRecord(
        name=MODEL,
        spec=parse_spec(SPEC),
        status="SLEEPING",
        desired_state="sleeping",
        resources=Resources(model=SAGEMAKER_MODEL),
    )
    registry.create(record)

    def unused() -> Any:
        raise AssertionError("a plain chat line needs no retrieval")

    service = ServingService(None, unused, unused, unused)  # type: ignore[arg-type]

    class World:
        pass

    w = World()
    w.standin, w.sagemaker, w.events = standin, sagemaker, events
    w.registry, w.clock, w.engine = registry, clock, engine
    type(w).engine_calls = property(lambda _: calls[0])
    type(w).distinct_records = property(lambda _: len(sent))
    w.runner = _runner(sagemaker, registry, service)
    w.s3 = aws.client("s3")
    return w


def _runner(sagemaker: Any, registry: Any, service: Any) -> Any:
    from llmhost import aws
    from llmhost.batches.transform_runner import TransformRunner

    return TransformRunner(
        sagemaker=sagemaker,
        s3=aws.client("s3"),
        bucket=BUCKET,
        stack=STACK,
        registry=registry,
        service=service,
    )


def _run_job(world: Any) -> None:
    world.clock.advance(600)  # the instances start
    world.standin.tick()  # the job runs every record and ends


def test_a_transform_job_answers_every_line_of_a_sleeping_deployment_once(world: Any) -> None:
    # Given a batch of 150 lines (two input parts) for a sleeping deployment
    batch, lines = _batch("batch_abc"), [_line(n) for n in range(1, 151)]
    # When the batch starts on Batch Transform
    world.runner.start(batch, lines)
    # Then one job runs the deployment's kept model, one record per line, on its instance type
    name = transform_job_name("batch_abc", 1)
    job = world.sagemaker.describe_transform_job(TransformJobName=name)
    assert job["TransformJobStatus"] == "InProgress"
    assert job["ModelName"] == SAGEMAKER_MODEL
    assert job["TransformResources"]["InstanceType"] == "ml.g5.2xlarge"
    assert (job["BatchStrategy"], job["TransformInput"]["SplitType"]) == ("SingleRecord", "Line")
    assert job["TransformOutput"]["AssembleWith"] == "Line"
    assert job["MaxPayloadInMB"] * job["MaxConcurrentTransforms"] <= 100
    # and each record is what the real-time route would send for that line
    key = "batches/batch_abc/transform/1/input/part-00000.jsonl"
    records = world.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().splitlines()
    assert len(records) == PART_LINES
    first = json.loads(records[0])
    assert first["messages"] == [{"role": "user", "content": "question 1"}]
    assert first["max_tokens"] == 16 and first["stream"] is False
    # and no line has an outcome while it runs
    assert world.runner.outcomes(batch, lines) == {}
    # When the job ends (its state-change event says so)
    _run_job(world)
    assert world.events[-1]["detail-type"] == "SageMaker Transform Job State Change"
    assert world.events[-1]["detail"]["TransformJobStatus"] == "Completed"
    outcomes = world.runner.outcomes(batch, lines)
    # Then every line has its answer, a chat.completion
    assert set(outcomes) == set(range(1, 151))
    assert all(o.succeeded for o in outcomes.values())
    result = outcomes[7].body
    assert result["object"] == "chat.completion" and result["model"] == MODEL
    assert result["choices"][0]["message"]["content"]
    assert result["usage"]["completion_tokens"] > 0
    # and the poll after the event (or a duplicate event), even a while later, reads the
    # same answers, so a batch finalised twice writes the same files
    ended = world.sagemaker.describe_transform_job(TransformJobName=name)["TransformEndTime"]
    assert result["created"] == int(ended.timestamp())
    world.clock.advance(5)
    assert world.runner.outcomes(batch, lines) == outcomes


def test_a_job_that_fails_half_way_loses_no_line_and_runs_none_twice(world: Any) -> None:
    # Given a batch of 250 lines (three parts) whose container refuses record 130 (part 2)
    batch, lines = _batch("batch_half"), [_line(n) for n in range(1, 251)]
    name = transform_job_name("batch_half", 1)
    world.standin.fail_transform_records(name, {130})
    world.runner.start(batch, lines)
    # When the job runs: SageMaker writes the parts that passed and fails the job
    _run_job(world)
    job = world.sagemaker.describe_transform_job(TransformJobName=name)
    assert job["TransformJobStatus"] == "Failed" and job["FailureReason"]
    prefix = "batches/batch_half/transform/1/output/"
    outputs = world.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in outputs["Contents"]) == [
        "part-00000.jsonl.out",
        "part-00002.jsonl.out",
    ]
    outcomes = world.runner.outcomes(batch, lines)
    # Then every line has one outcome: the parts written answered, the failed part's lines
    # carry the job's reason (for the error file); each record was sent once
    assert set(outcomes) == set(range(1, 251))
    failed = {n for n, o in outcomes.items() if not o.succeeded}
    assert failed == set(range(101, 201))
    error = outcomes[150].error
    assert error["code"] == "transform_failed" and job["FailureReason"] in error["message"]
    # and no record reached the engine twice (the injected failure never reached it)
    assert world.engine_calls == world.distinct_records <= 249


def test_a_start_that_crashed_after_creating_the_job_adopts_it(world: Any) -> None:
    # Given a start that created its job and crashed before the batch recorded it
    batch, lines = _batch("batch_crash"), [_line(n) for n in range(1, 6)]
    first = world.runner.start_group(batch.id, 1, MODEL, lines)
    # When the batch is resumed and starts again
    again = world.runner.start_group(batch.id, 1, MODEL, lines)
    world.runner.start(batch, lines)
    # Then it finds that job instead of starting a second one
    assert again.adopted and again.name == first.name and again.lines == 5
    listed = world.sagemaker.list_transform_jobs()["TransformJobSummaries"]
    assert [j["TransformJobName"] for j in listed] == [first.name]


def test_a_create_racing_a_crashed_start_adopts_on_resource_in_use(world: Any) -> None:
    # Given the job exists but the describe before the create did not see it (a race)
    batch, lines = _batch("batch_race"), [_line(n) for n in range(1, 4)]
    world.runner.start(batch, lines)
    real = world.runner._describe
    seen: list[str] = []

    def blind_once(name: str) -> Any:
        if not seen:
            seen.append(name)
            return None
        return real(name)

    world.runner._describe = blind_once
    # When the start runs again: CreateTransformJob answers ResourceInUse
    again = world.runner.start_group(batch.id, 1, MODEL, lines)
    # Then the existing job is adopted, and there is still one
    assert again.adopted and seen
    assert len(world.sagemaker.list_transform_jobs()["TransformJobSummaries"]) == 1


def test_lines_the_route_refuses_end_at_once_and_the_rest_run(world: Any) -> None:
    # Given a batch whose line 2 asks for more tokens than the deployment allows
    batch = _batch("batch_mixed")
    roles = ["user", "assistant"] * 4 + ["user"]
    long_turns = [{"role": role, "content": "word " * 6_000} for role in roles]
    too_long = BatchLine(2, "long", {**_line(2).body, "messages": long_turns})
    lines = [_line(1), too_long, _line(3)]
    # When it runs
    started = world.runner.start_group(batch.id, 1, MODEL, lines)
    assert (started.lines, started.rejected) == (2, 1)
    assert set(world.runner.outcomes(batch, lines)) == {2}  # known before the job ends
    _run_job(world)
    outcomes = world.runner.outcomes(batch, lines)
    # Then the refused line has the route's error (for the error file), the others answers
    assert outcomes[2].status_code == 422 and not outcomes[2].succeeded
    assert outcomes[2].body["error"]["code"] == "prompt_too_long"
    assert outcomes[1].succeeded and outcomes[3].succeeded


def test_a_deployment_without_a_model_ends_its_lines_with_why(world: Any) -> None:
    from llmhost.lifecycle.record import Resources

    # Given a deployment still being created (no SageMaker model yet)
    record = world.registry.get(MODEL)
    world.registry.save(record.model_copy(update={"resources": Resources(), "status": "CREATING"}))
    batch, lines = _batch("batch_early"), [_line(1), _line(2)]
    # When a batch starts on Batch Transform
    world.runner.start(batch, lines)
    # Then no job starts and each line ends with what to do
    assert world.sagemaker.list_transform_jobs()["TransformJobSummaries"] == []
    outcomes = world.runner.outcomes(batch, lines)
    assert {o.status_code for o in outcomes.values()} == {409}
    assert "fanout" in outcomes[1].body["error"]["message"]


def test_a_cancelled_batch_stops_its_job_and_its_lines_end_cancelled(world: Any) -> None:
    # Given a running job
    batch, lines = _batch("batch_stop"), [_line(n) for n in range(1, 5)]
    world.runner.start(batch, lines)
    # When the batch is cancelled before the instances start
    world.runner.cancel(batch, lines)
    world.standin.tick()
    outcomes = world.runner.outcomes(batch, lines)
    # Then each line ends once, cancelled, and the container never ran
    assert {o.error["code"] for o in outcomes.values()} == {"batch_cancelled"}
    assert set(outcomes) == {1, 2, 3, 4} and world.engine_calls == 0


def test_transform_job_names_are_valid_deterministic_and_distinct() -> None:
    import re

    long_id = "batch_" + "x" * 80
    names = {transform_job_name(b, g) for b in ("batch_a", "batch-a", long_id) for g in (1, 2)}
    assert len(names) == 6
    assert transform_job_name("batch_a", 1) == transform_job_name("batch_a", 1)
    for name in names:
        assert len(name) <= 63 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name), name


def test_the_state_change_of_an_ended_job_names_its_batch(world: Any) -> None:
    from llmhost.batches.transform import batch_of_state_change

    # Given a batch's job, through to its end
    batch, lines = _batch("batch_event"), [_line(1)]
    world.runner.start(batch, lines)
    _run_job(world)
    started, ended = world.events[0], world.events[-1]
    # Then only the event of its end names the batch, and only for this stack
    assert batch_of_state_change(started, STACK) is None  # InProgress
    assert batch_of_state_change(ended, STACK) == "batch_event"
    assert batch_of_state_change(ended, "another-stack") is None
    endpoint_event = {**ended, "detail-type": "SageMaker Endpoint State Change"}
    assert batch_of_state_change(endpoint_event, STACK) is None


def test_concurrency_and_payload_stay_within_aws_limits() -> None:
    from llmhost.batches.transform import payload_limit_mb, transform_concurrency

    # An engine without continuous batching takes one record at a time
    assert transform_concurrency(16, continuous_batching=False) == 1
    # and the product of payload and concurrency never passes AWS's 100 MB
    for copy in (1, 16, 17, 100, 128):
        concurrency = transform_concurrency(copy, continuous_batching=True)
        assert 1 <= concurrency <= copy
        assert payload_limit_mb(concurrency) * concurrency <= 100, copy


def test_a_rag_line_sends_the_retrieved_context_and_answers_with_its_sources(
    world: Any, embedder: Any, tmp_path: Any
) -> None:
    from qdrant_client import QdrantClient

    from llmhost.rag.ingest import ingest_documents
    from llmhost.rag.store import VectorStore
    from llmhost.serving.service import ServingService

    # Given a collection, and a batch line asking about it with the RAG extension
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    store = VectorStore(client)
    store.create_collection("kb", embedder.dimension)
    docs = [{"id": "bikes", "text": "To fix a flat tyre, patch the inner tube and pump it."}]
    assert not ingest_documents("kb", docs, embedder, store).rejected
    service = ServingService(None, None, lambda: embedder, lambda: store)  # type: ignore[arg-type]
    runner = _runner(world.sagemaker, world.registry, service)
    batch = _batch("batch_rag")
    body = {**_line(1, "how do I fix a flat tyre?").body, "rag": {"collection": "kb", "k": 1}}
    lines = [BatchLine(1, "rag-1", body)]
    # When it runs on Batch Transform
    runner.start(batch, lines)
    key = "batches/batch_rag/transform/1/input/part-00000.jsonl"
    record = json.loads(world.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    _run_job(world)
    outcome = runner.outcomes(batch, lines)[1]
    client.close()
    # Then the record carries the retrieved passage, and the answer names its source
    assert "inner tube" in json.dumps(record)
    assert outcome.succeeded
    assert [s["id"] for s in outcome.body["llmhost"]["sources"]] == ["bikes"]


def test_a_job_stopped_while_its_records_run_ends_once(moto_aws: None) -> None:
    import threading

    import boto3

    from llmhost import aws
    from llmhost_local.standin import SageMakerStandIn

    # Given a job whose records run in the background, held inside the container
    inside, release = threading.Event(), threading.Event()
    ended: list[str] = []
    done = threading.Event()

    def container(model: str, body: bytes) -> tuple[int, bytes]:
        inside.set()
        release.wait(30)
        return 200, b"{}"

    def on_event(event: dict[str, Any]) -> None:
        status = event["detail"].get("TransformJobStatus")
        if status in ("Completed", "Failed", "Stopped"):
            ended.append(status)
            done.set()

    now = [0.0]
    standin = SageMakerStandIn(
        clock=lambda: now[0],
        on_event=on_event,
        s3=lambda: aws.client("s3"),
        invoke_model=container,
        transform_in_background=True,
    )
    sagemaker = standin.attach(boto3.client("sagemaker", region_name="us-east-1"))
    sagemaker.create_model(
        ModelName="m",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
        PrimaryContainer={"Image": "tgi"},
    )
    aws.client("s3").create_bucket(Bucket=BUCKET)
    aws.client("s3").put_object(Bucket=BUCKET, Key="in/a.jsonl", Body=b'{"inputs": "x"}\n')
    sagemaker.create_transform_job(
        TransformJobName="llmhost-stop",
        ModelName="m",
        TransformInput={
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/in/"}
            },
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/out/", "AssembleWith": "Line"},
        TransformResources={"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1},
    )
    now[0] += 600
    standin.tick()
    assert inside.wait(30)
    # When it is stopped while a record runs, and the clock ticks meanwhile
    sagemaker.stop_transform_job(TransformJobName="llmhost-stop")
    standin.tick()
    assert ended == []  # still running: not ended under the records' feet
    release.set()
    # Then it ends once, Stopped
    assert done.wait(30)
    standin.tick()
    described = sagemaker.describe_transform_job(TransformJobName="llmhost-stop")
    assert described["TransformJobStatus"] == "Stopped" and ended == ["Stopped"]
