"""The deployment rules that need no I/O: pool instance types, the endpoint namespace,
what a spec may not change, and what may sleep."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost.deployments import (
    DeploymentDeleting,
    NameInUse,
    NothingToSleep,
    check_can_sleep,
    check_immutable,
    check_names_free,
    live,
    pin_pool_instance,
)
from llmhost.errors import DeploymentDeleted, SpecInvalid
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.specs import parse_spec

MODEL = {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"}


def spec(name: str = "llama", **hosting: Any) -> Any:
    return parse_spec(
        {
            "name": name,
            "model": MODEL,
            "hosting": hosting or {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
        }
    )


def shared(name: str, pool: str, instance_type: str | None = None) -> Any:
    hosting = {"kind": "shared", "pool": pool}
    if instance_type:
        hosting["instance_type"] = instance_type
    return spec(name, **hosting)


def record(s: Any, **changes: Any) -> DeploymentRecord:
    return DeploymentRecord(name=s.name, spec=s).model_copy(update=changes)


def test_a_shared_spec_without_an_instance_type_joins_its_pools() -> None:
    # Given a pool on ml.g5.12xlarge
    records = [record(shared("a", "pool", "ml.g5.12xlarge"))]
    # When a second model joins it without naming an instance type
    pinned = pin_pool_instance(records, shared("b", "pool"))
    # Then it runs on the pool's, stored in its spec
    assert pinned.hosting.instance_type == "ml.g5.12xlarge"
    # And a first model in a new pool gets the planner's choice
    alone = pin_pool_instance(records, shared("c", "other"))
    assert alone.hosting.instance_type and alone.hosting.instance_type.startswith("ml.")
    # And a spec that names one, or is not shared, is left as it is
    named = shared("d", "pool", "ml.g5.48xlarge")
    assert pin_pool_instance(records, named) is named
    dedicated = spec()
    assert pin_pool_instance(records, dedicated) is dedicated


@pytest.mark.parametrize(
    ("existing", "new", "words"),
    [
        # a deployment named like a pool in use
        (shared("a", "llama", "ml.g5.12xlarge"), spec("llama"), "shared pool used by 'a'"),
        # a pool named like a dedicated deployment
        (spec("llama"), shared("b", "llama", "ml.g5.12xlarge"), "hosting.pool 'llama'"),
        # a pool on another instance type
        (
            shared("a", "pool", "ml.g5.12xlarge"),
            shared("b", "pool", "ml.g5.48xlarge"),
            "runs on ml.g5.12xlarge",
        ),
    ],
    ids=["deployment-named-like-a-pool", "pool-named-like-a-deployment", "pool-type"],
)
def test_names_share_one_endpoint_namespace(existing: Any, new: Any, words: str) -> None:
    with pytest.raises(NameInUse) as refused:
        check_names_free([record(existing)], new)
    assert words in refused.value.message
    assert refused.value.status == 409 and refused.value.code == "conflict"


def test_free_names_and_the_same_name_pass() -> None:
    records = [record(shared("a", "pool", "ml.g5.12xlarge")), record(spec("llama"))]
    # Joining a pool on its type, a new name, and the deployment's own name (a live
    # duplicate is the registry's already_exists) are all fine
    check_names_free(records, shared("b", "pool", "ml.g5.12xlarge"))
    check_names_free(records, spec("new"))
    check_names_free(records, spec("llama"))


def test_hosting_kind_pool_and_pool_type_never_change() -> None:
    with pytest.raises(SpecInvalid) as kind:
        check_immutable(spec(), shared("llama", "pool", "ml.g5.12xlarge"))
    assert [i.field for i in kind.value.issues] == ["hosting.kind"]
    with pytest.raises(SpecInvalid) as pool:
        check_immutable(
            shared("llama", "pool", "ml.g5.12xlarge"), shared("llama", "other", "ml.g5.48xlarge")
        )
    assert [i.field for i in pool.value.issues] == ["hosting.pool", "hosting.instance_type"]
    check_immutable(spec(), spec(instance_type="ml.g5.12xlarge", kind="dedicated"))


def test_only_a_live_deployment_with_capacity_of_its_own_sleeps() -> None:
    check_can_sleep(record(spec()))
    with pytest.raises(DeploymentDeleting):
        check_can_sleep(record(spec(), desired_state="deleted"))
    serverless = parse_spec(
        {
            "name": "embed",
            "model": {"model_id": "sentence-transformers/all-MiniLM-L6-v2"},
            "engine": {"name": "hf-inference"},
            "hosting": {"kind": "serverless"},
        }
    )
    with pytest.raises(NothingToSleep) as refused:
        check_can_sleep(record(serverless))
    assert "nothing to sleep or wake" in refused.value.message
    with pytest.raises(DeploymentDeleted):
        live(record(spec(), status="DELETED"))
