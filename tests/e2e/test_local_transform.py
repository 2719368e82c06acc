"""End to end in the local stack: a batch runs on Batch Transform for a sleeping deployment.

The product's own path: the reconciler creates the deployment and puts it to sleep (endpoint
deleted, model kept); the openai package uploads a batch file and creates the batch on the
OpenAI-compatible server; the batch function chooses Batch Transform (the model is asleep)
and starts a job on the kept model; the SageMaker stand-in runs it (time-compressed) against
the local engine through moto's S3; the job's state-change event has the batch function
finalise the batch; the output file has every line's answer. The endpoint stays asleep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import local_stack

pytestmark = pytest.mark.e2e

SPEED = 600
NAME = "nightly"
SPEC = {
    "name": NAME,
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}


def _until(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    """Poll until ``check`` is true; the deadline is for a stuck stack, not a slow one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The local stack with a deployment the reconciler brought up and put to sleep."""
    from llmhost import runtime
    from llmhost.specs import parse_spec

    with local_stack(tmp_path_factory.mktemp("qdrant"), speed=SPEED) as running:
        runtime.deployments().create(parse_spec(SPEC))
        _until("IN_SERVICE", lambda: runtime.registry().get(NAME).status == "IN_SERVICE")
        runtime.deployments().sleep(NAME)
        _until("SLEEPING", lambda: runtime.registry().get(NAME).status == "SLEEPING")
        _until("no endpoint", lambda: running.cloud.standin.describe("endpoint", NAME) is None)
        yield running


def _client(stack: Any) -> Any:
    from openai import OpenAI

    from llmhost_local.cloud import LOCAL_API_KEY

    return OpenAI(base_url=stack.openai + "/v1", api_key=LOCAL_API_KEY, max_retries=0)


def _jsonl(first: int, last: int) -> bytes:
    lines = [
        {
            "custom_id": f"doc-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": NAME,
                "messages": [{"role": "user", "content": f"summarise document {n}"}],
            },
        }
        for n in range(first, last + 1)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _ended(client: Any, batch_id: str) -> Any:
    return _until(
        f"batch {batch_id} to end",
        lambda: (
            (b := client.batches.retrieve(batch_id)).status
            in {"completed", "failed", "expired", "cancelled"}
            and b
        ),
    )


def test_a_batch_on_a_sleeping_deployment_runs_on_batch_transform(stack: Any) -> None:
    from llmhost import runtime

    # Given the deployment asleep (the fixture): when a batch of 120 lines is created for it
    # with the openai package
    client = _client(stack)
    uploaded = client.files.create(file=("night.jsonl", _jsonl(1, 120)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = _ended(client, batch.id)
    # Then it ran on Batch Transform and completed, every line answered, in order
    assert done.status == "completed", done
    assert (done.model_extra or {}).get("llmhost", {}).get("runner") == "transform"
    assert done.request_counts.completed == 120 and done.request_counts.failed == 0
    output = [
        json.loads(row) for row in client.files.content(done.output_file_id).text.splitlines()
    ]
    assert [row["custom_id"] for row in output] == [f"doc-{n}" for n in range(1, 121)]
    answer = output[0]["response"]["body"]
    assert output[0]["response"]["status_code"] == 200
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]
    jobs = stack.cloud.standin.transforms.list_transform_jobs({})["TransformJobSummaries"]
    assert [j["TransformJobStatus"] for j in jobs] == ["Completed"]
    # and the deployment slept throughout
    assert runtime.registry().get(NAME).status == "SLEEPING"
    assert stack.cloud.standin.describe("endpoint", NAME) is None


def test_the_batch_schedule_starts_one_batch_per_file_once(stack: Any) -> None:
    from llmhost import aws, runtime

    # Given two input files dropped under scheduled/ in the jobs bucket
    bucket = runtime.jobs_settings().jobs_bucket
    s3 = aws.client("s3")
    s3.put_object(Bucket=bucket, Key="scheduled/a.jsonl", Body=_jsonl(1, 3))
    s3.put_object(Bucket=bucket, Key="scheduled/team/b.jsonl", Body=_jsonl(4, 5))
    client = _client(stack)

    def scheduled() -> dict[str, Any]:
        listed = client.batches.list(limit=100).data
        return {
            (b.metadata or {}).get("llmhost_source"): b
            for b in listed
            if (b.metadata or {}).get("llmhost_source")
        }

    # When the batch schedule runs (every 15 compressed minutes under make run)
    found = _until("both scheduled batches", lambda: len(scheduled()) == 2 and scheduled())
    # Then each file became one batch, which completes with its lines answered
    assert set(found) == {"scheduled/a.jsonl", "scheduled/team/b.jsonl"}
    counts = {key: _ended(client, b.id).request_counts.completed for key, b in found.items()}
    assert counts == {"scheduled/a.jsonl": 3, "scheduled/team/b.jsonl": 2}
    # and the next runs start no second batch for the same files
    runs = stack.cloud.batch_schedule_runs
    _until("two more schedule runs", lambda: stack.cloud.batch_schedule_runs >= runs + 2)
    assert len(scheduled()) == 2
