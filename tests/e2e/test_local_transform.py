"""End to end in the local stack: a batch runs on Batch Transform for a sleeping deployment.

The product's own path: the reconciler creates the deployment and puts it to sleep (endpoint
deleted, model kept), the transform runner starts a job on the kept model, the SageMaker
stand-in runs it (time-compressed) against the local engine through moto's S3, and the
runner reads every line's answer back, while the endpoint stays asleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
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


def test_a_batch_on_a_sleeping_deployment_runs_on_batch_transform(tmp_path: Path) -> None:
    from llmhost import runtime
    from llmhost.batches.lines import BatchLine
    from llmhost.batches.record import Batch
    from llmhost.batches.transform_runner import TransformRunner
    from llmhost.specs import parse_spec

    with local_stack(tmp_path / "qdrant", openai=False, speed=SPEED) as stack:
        # Given a deployment brought into service and put to sleep by the reconciler
        runtime.deployments().create(parse_spec(SPEC))
        _until("IN_SERVICE", lambda: runtime.registry().get(NAME).status == "IN_SERVICE")
        runtime.deployments().sleep(NAME)
        _until("SLEEPING", lambda: runtime.registry().get(NAME).status == "SLEEPING")
        _until(
            "the endpoint deleted", lambda: stack.cloud.standin.describe("endpoint", NAME) is None
        )
        # When a batch of 120 lines runs on Batch Transform
        batch = Batch(
            id="batch_nightly", endpoint="/v1/chat/completions", input_file_id="f", created_at=0
        )
        lines = [
            BatchLine(
                n,
                f"doc-{n}",
                {
                    "model": NAME,
                    "messages": [{"role": "user", "content": f"summarise document {n}"}],
                },
            )
            for n in range(1, 121)
        ]
        runner = TransformRunner.from_runtime()
        runner.start(batch, lines)
        outcomes = _until("every line's outcome", lambda: runner.outcomes(batch, lines) or None)
        # Then every line is answered from the job's output, and the deployment slept through
        assert sorted(outcomes) == list(range(1, 121))
        assert all(o.succeeded for o in outcomes.values()), [
            o for o in outcomes.values() if not o.succeeded
        ][:1]
        assert outcomes[1].body["choices"][0]["message"]["content"]
        assert runner.status(batch.id) == "Completed"
        assert runtime.registry().get(NAME).status == "SLEEPING"
        assert stack.cloud.standin.describe("endpoint", NAME) is None
