"""GPU-cap admission is atomic: requests racing for the last units never both get them.

Two API function instances (two Lambda containers) serve requests at the same moment against
moto's DynamoDB. conftest makes each of moto's conditional writes atomic, as DynamoDB's are,
and nothing more: whatever keeps the two admissions apart must come from llmhost's own
conditional writes. Each request's first write waits for the other's, so both have read the
registry before either writes, as they can in AWS.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest

from conftest import api_function
from llmhost import runtime

SPEC = {
    "name": "first",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}
Call = Callable[[str, str, Any], tuple[int, dict[str, Any]]]


def container() -> Call:
    """One API function instance (its own resolver, as in its own Lambda container)."""
    return api_function()


@pytest.fixture
def racing_reads(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's first write waits until the other request tries its first write: both
    have read the registry (whatever they read before writing) before either writes."""
    from moto.dynamodb.models import DynamoDBBackend

    barrier = threading.Barrier(2)
    wrote: set[int] = set()

    def first_write_together(write: Any) -> Any:
        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            me = threading.get_ident()
            if threading.current_thread() is not threading.main_thread() and me not in wrote:
                wrote.add(me)
                # Waits outside conftest's write lock; a timeout only guards against a hang.
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=30)
            return write(self, *args, **kwargs)

        return wrapped

    for name in ("put_item", "update_item", "transact_write_items"):
        monkeypatch.setattr(
            DynamoDBBackend, name, first_write_together(getattr(DynamoDBBackend, name))
        )


def race(*requests: tuple[Call, str, str, Any]) -> list[tuple[int, dict[str, Any]]]:
    results: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        call, method, path, body = requests[i]
        results[i] = call(method, path, body)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_creates_racing_for_the_last_unit_admit_exactly_one(
    racing_reads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cap of one GPU unit, and two creates that each need one
    monkeypatch.setenv("GPU_CAPACITY_CAP", "1")
    a, b = container(), container()
    # When both arrive at once
    results = race(
        (a, "POST", "/v1/deployments", SPEC),
        (b, "POST", "/v1/deployments", {**SPEC, "name": "second"}),
    )
    # Then exactly one is admitted and the other refused with the cap's 409
    assert sorted(status for status, _ in results) == [201, 409]
    (refused,) = [body for status, body in results if status == 409]
    assert refused["error"]["code"] == "gpu_capacity_cap"
    assert len(runtime.registry().deployments()) == 1


def test_a_wake_and_a_create_racing_for_the_last_unit_admit_exactly_one(
    racing_reads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cap of one unit, held by nothing: one deployment sleeps
    monkeypatch.setenv("GPU_CAPACITY_CAP", "1")
    a, b = container(), container()
    assert a("POST", "/v1/deployments", SPEC)[0] == 201
    assert a("POST", "/v1/deployments/first/sleep", None)[0] == 202
    # When it is woken while another deployment is created
    results = race(
        (a, "POST", "/v1/deployments/first/wake", None),
        (b, "POST", "/v1/deployments", {**SPEC, "name": "second"}),
    )
    # Then exactly one of them gets the unit
    assert sorted(status for status, _ in results) in ([201, 409], [202, 409])
    wanted = [r.name for r in runtime.registry().deployments() if r.desired_state == "in_service"]
    assert len(wanted) == 1
