"""Records written by one release stay readable by the next, whatever its catalog and prices.

A spec is checked against the catalog and the price list when it is written (POST, PATCH);
what the registry stored is read back as it was, so a release that drops an instance type
or a model from its tables neither hides nor breaks the deployments that use them.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_lifecycle import Harness

from conftest import api_function

SPECS: dict[str, dict[str, Any]] = {
    "dedicated": {
        "name": "llama",
        "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
        "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    },
    "shared": {
        "name": "zephyr",
        "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
        "hosting": {"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"},
    },
}


@pytest.fixture
def api(standin: Any) -> Any:
    return api_function()


def next_release_drops(monkeypatch: pytest.MonkeyPatch, instance_type: str, model_id: str) -> None:
    """The price list no longer has ``instance_type`` and the catalog no longer ``model_id``."""
    from llmhost import catalog, instances

    types = tuple(t for t in instances.all_instances() if t.name != instance_type)
    monkeypatch.setattr(instances, "_TYPES", types)
    monkeypatch.setattr(instances, "_by_name", lambda: {t.name: t for t in types})
    assert instances.get(instance_type) is None
    models = tuple(m for m in catalog.all_models() if model_id not in (m.id, m.hf_id))
    index = {k.lower(): m for m in models for k in (m.id, m.hf_id, *m.aliases)}
    monkeypatch.setattr(catalog, "_MODELS", models)
    monkeypatch.setattr(catalog, "_index", lambda: index)
    assert catalog.lookup(model_id) is None


@pytest.mark.parametrize("kind", ["dedicated", "shared"])
def test_records_of_an_older_release_stay_readable_and_deletable(
    api: Any, standin: Any, clock: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    spec = SPECS[kind]
    name = spec["name"]
    harness = Harness(standin, clock)
    # Given a deployment created and brought into service by today's release
    assert api("POST", "/v1/deployments", spec)[0] == 201
    assert harness.settle(name).status == "IN_SERVICE"
    running = {k: set(v) for k, v in standin.resources().items()}
    # When the next release's price list and catalog no longer know its instance type or model
    next_release_drops(monkeypatch, spec["hosting"]["instance_type"], spec["model"]["model_id"])
    # Then the API still reads it, alone and in the list
    status, body = api("GET", f"/v1/deployments/{name}")
    assert status == 200 and body["status"] == "IN_SERVICE"
    assert body["spec"]["hosting"]["instance_type"] == spec["hosting"]["instance_type"]
    status, body = api("GET", "/v1/deployments")
    assert status == 200 and [d["name"] for d in body["deployments"]] == [name]
    # And the reconciler leaves the running deployment exactly as it is
    result = harness.reconciler.reconcile(name)
    assert result.status == "IN_SERVICE" and result.steps == []
    assert {k: set(v) for k, v in standin.resources().items()} == running
    # And a delete is accepted and converges, leaving nothing behind
    status, body = api("DELETE", f"/v1/deployments/{name}")
    assert status == 202 and body["desired_state"] == "deleted"
    assert harness.settle(name).status == "DELETED"
    assert not any(standin.resources().values())
