"""The DynamoDB registry: create, optimistic locking, listing (moto)."""

from __future__ import annotations

import threading

import pytest

from llmhost import runtime
from llmhost.errors import ConcurrentModification, DeploymentExists, DeploymentNotFound
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.specs import parse_spec

SPEC = {"name": "llama", "model": {"model_id": "meta-llama/Meta-Llama-3-8B-Instruct"}}


def new_record(name: str = "llama") -> DeploymentRecord:
    return DeploymentRecord(name=name, spec=parse_spec({**SPEC, "name": name}))


def test_create_then_get_round_trips_the_whole_record(moto_aws: None) -> None:
    registry = runtime.registry()
    saved = registry.create(new_record().with_event("Created", status="PENDING"))
    # Then reading it back gives the same spec, status and history
    loaded = registry.get("llama")
    assert loaded == saved
    assert loaded.version == 1 and loaded.history[0].event == "Created"


def test_second_create_of_a_live_name_is_refused(moto_aws: None) -> None:
    registry = runtime.registry()
    registry.create(new_record())
    with pytest.raises(DeploymentExists):
        registry.create(new_record())


def test_a_deleted_name_can_be_reused(moto_aws: None) -> None:
    registry = runtime.registry()
    saved = registry.create(new_record())
    registry.save(saved.model_copy(update={"status": "DELETED", "desired_state": "deleted"}))
    assert registry.deployments() == []
    assert [r.name for r in registry.deployments(include_deleted=True)] == ["llama"]
    again = registry.create(new_record())
    assert again.status == "PENDING"


def test_stale_writer_loses_and_nothing_is_overwritten(moto_aws: None) -> None:
    registry = runtime.registry()
    first = registry.create(new_record())
    # Given two writers that read the same version
    a = first.model_copy(update={"status_reason": "writer a"})
    b = first.model_copy(update={"status_reason": "writer b"})
    registry.save(a)
    # When the second one saves, it is refused
    with pytest.raises(ConcurrentModification):
        registry.save(b)
    # Then the first write survives
    assert registry.get("llama").status_reason == "writer a"


def test_concurrent_writers_never_lose_an_update(moto_aws: None) -> None:
    registry = runtime.registry()
    registry.create(new_record())
    errors: list[Exception] = []

    def add_tag(i: int) -> None:
        # Each writer retries on conflict, as the API and the reconciler do
        for _ in range(50):
            record = registry.get("llama")
            spec = record.spec.model_copy(update={"tags": {**record.spec.tags, f"t{i}": "x"}})
            try:
                registry.save(record.model_copy(update={"spec": spec}))
                return
            except ConcurrentModification:
                continue
        errors.append(RuntimeError(f"writer {i} gave up"))

    threads = [threading.Thread(target=add_tag, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(registry.get("llama").spec.tags) == {f"t{i}" for i in range(6)}


def test_unknown_name_is_not_found(moto_aws: None) -> None:
    with pytest.raises(DeploymentNotFound):
        runtime.registry().get("missing")
