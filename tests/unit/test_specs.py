"""Deployment spec validation: good specs for every hosting kind, and each bad input named."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llmhost.specs
from llmhost.errors import FieldIssue, SpecInvalid
from llmhost.sizing.issues import check_capacity
from llmhost.specs import (
    DedicatedHosting,
    DeploymentPatch,
    HubSource,
    ServerlessHosting,
    SharedHosting,
    parse_spec,
)

HUB = {"kind": "hub", "model_id": "meta-llama/Llama-3.1-8B-Instruct"}


def spec(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "llama3-8b", "model": HUB}
    data.update(sections)
    return data


def issues(data: Any) -> list[FieldIssue]:
    """The issues of a spec being written: its own rules, then whether it can run."""
    with pytest.raises(SpecInvalid) as caught:
        check_capacity(parse_spec(data))
    return caught.value.issues


def fields(data: Any) -> set[str]:
    return {issue.field for issue in issues(data)}


# ---------------------------------------------------------------------------- valid specs


def test_minimal_spec_defaults_to_dedicated_tgi() -> None:
    # Given only a name and a Hub model
    parsed = parse_spec(spec())
    # Then it is a dedicated TGI deployment with one instance
    assert isinstance(parsed.model, HubSource)
    assert isinstance(parsed.hosting, DedicatedHosting)
    assert parsed.engine.name == "tgi"
    assert (parsed.scaling.min_capacity, parsed.scaling.max_capacity) == (1, 1)
    assert parsed.catalog_id == HUB["model_id"]


def test_valid_dedicated_spec_with_everything_set() -> None:
    parsed = parse_spec(
        spec(
            model={
                **HUB,
                "revision": "0e9e39f",
                "token_secret_arn": (
                    "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf"
                ),
            },
            engine={
                "name": "vllm",
                "version": "0.30",
                "options": {"max_input_tokens": 3000, "max_total_tokens": 4096},
            },
            hosting={"kind": "dedicated", "instance_type": "ml.g5.2xlarge", "num_gpus": 1},
            scaling={
                "min_capacity": 0,
                "max_capacity": 2,
                "scale_to_zero": True,
                "schedules": [
                    {"cron": "0 8 ? * MON-FRI *", "timezone": "Europe/Berlin", "min_capacity": 1}
                ],
            },
            tags={"team": "search"},
        )
    )
    assert parsed.hosting.instance_type == "ml.g5.2xlarge"  # type: ignore[union-attr]
    assert parsed.scaling.schedules[0].timezone == "Europe/Berlin"


def test_valid_shared_spec() -> None:
    parsed = parse_spec(
        spec(
            hosting={
                "kind": "shared",
                "pool": "gpu-pool",
                "instance_type": "ml.g5.12xlarge",
                "copies": 2,
            },
            scaling={"min_capacity": 0, "max_capacity": 4, "scale_to_zero": True},
        )
    )
    assert isinstance(parsed.hosting, SharedHosting)
    assert parsed.hosting.accelerators == 1


def test_valid_serverless_spec() -> None:
    parsed = parse_spec(
        spec(
            model={"kind": "hub", "model_id": "google/flan-t5-base"},
            engine={"name": "hf-inference"},
            hosting={
                "kind": "serverless",
                "memory_mb": 4096,
                "max_concurrency": 10,
                "provisioned_concurrency": 2,
            },
        )
    )
    assert isinstance(parsed.hosting, ServerlessHosting)


def test_valid_s3_and_model_package_sources() -> None:
    s3 = parse_spec(
        spec(
            model={
                "kind": "s3",
                "uri": "s3://my-models/llama3-8b/",
                "model_id": "llama-3-8b-instruct",
            }
        )
    )
    package = parse_spec(
        spec(
            model={
                "kind": "model-package",
                "arn": "arn:aws:sagemaker:us-east-1:865070037744:model-package/cohere-command-r-v1",
            }
        )
    )
    assert s3.catalog_id == "llama-3-8b-instruct"
    assert package.catalog_id is None


def test_spec_round_trips_through_json() -> None:
    # Given a parsed spec dumped to JSON-able data (as the registry stores it)
    parsed = parse_spec(
        spec(hosting={"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"})
    )
    # When it is parsed again
    # Then it is the same spec
    assert parse_spec(parsed.model_dump(mode="json")) == parsed


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        (spec(name="-starts-with-hyphen"), "name", "letters, digits and hyphens, at most 54"),
        (spec(name="a" * 55), "name", "54"),
        ({"name": "no-model"}, "model", "required"),
        (spec(model={**HUB, "model_id": "not a hub id"}), "model.model_id", "organization/model"),
        (
            spec(model={**HUB, "token_secret_arn": "my-token"}),
            "model.token_secret_arn",
            "Secrets Manager",
        ),
        (spec(model={"kind": "s3", "uri": "https://bucket/x"}), "model.uri", "s3://"),
        (
            spec(model={"kind": "model-package", "arn": "arn:aws:s3:::x"}),
            "model.arn",
            "model package",
        ),
        (spec(model={**HUB, "modle_id": "x"}), "model.modle_id", "not a known field"),
        (spec(engine={"name": "tgi", "version": "latest"}), "engine.version", "version number"),
        (spec(engine={"name": "triton"}), "engine.name", ""),
        (
            spec(hosting={"kind": "dedicated", "instance_type": "g5.2xlarge"}),
            "hosting.instance_type",
            "such as 'ml.g5.2xlarge'",
        ),
        (spec(hosting={"kind": "shared"}), "hosting.pool", "required"),
        (spec(hosting={"kind": "serverless", "memory_mb": 1000}), "hosting.memory_mb", "6144"),
        (
            spec(scaling={"schedules": [{"cron": "0 8 * * *", "min_capacity": 1}]}),
            "scaling.schedules.0.cron",
            "six fields",
        ),
        (
            spec(
                scaling={
                    "schedules": [
                        {"cron": "0 8 ? * * *", "timezone": "Mars/Olympus", "min_capacity": 1}
                    ]
                }
            ),
            "scaling.schedules.0.timezone",
            "IANA",
        ),
        (
            spec(scaling={"schedules": [{"cron": "0 8 ? * * *"}]}),
            "scaling.schedules.0",
            "min_capacity",
        ),
    ],
)
def test_field_level_errors_name_the_field(data: dict[str, Any], field: str, fragment: str) -> None:
    # Given a spec with one bad field
    # When it is parsed
    found = {issue.field: issue.message for issue in issues(data)}
    # Then the issue names that field, with a message that says what is expected
    assert field in found, found
    assert fragment in found[field]


def test_min_capacity_above_max_is_rejected() -> None:
    found = issues(spec(scaling={"min_capacity": 3, "max_capacity": 2}))
    assert found[0].field == "scaling.min_capacity"
    assert "max_capacity (2)" in found[0].message


def test_zero_capacity_needs_scale_to_zero() -> None:
    assert "scaling.min_capacity" in fields(spec(scaling={"min_capacity": 0, "max_capacity": 1}))


def test_gpu_instance_type_on_serverless_is_rejected() -> None:
    data = spec(
        model={"kind": "hub", "model_id": "google/flan-t5-small"},
        engine={"name": "hf-inference"},
        hosting={"kind": "serverless", "instance_type": "ml.g5.xlarge"},
    )
    message = {i.field: i.message for i in issues(data)}["hosting.instance_type"]
    assert "ml.g5.xlarge" in message and "dedicated" in message


def test_gpu_engine_on_serverless_is_rejected() -> None:
    data = spec(hosting={"kind": "serverless"})
    assert "engine.name" in fields(data)


def test_token_limit_relations_are_checked() -> None:
    # Given token limits that contradict each other
    data = spec(
        engine={
            "options": {
                "max_input_tokens": 4096,
                "max_total_tokens": 4096,
                "max_batch_prefill_tokens": 2048,
                "max_batch_total_tokens": 1024,
            }
        }
    )
    # Then each relation is reported on its own field
    assert fields(data) >= {
        "engine.options.max_input_tokens",
        "engine.options.max_batch_prefill_tokens",
        "engine.options.max_batch_total_tokens",
    }


def test_serverless_and_pool_bounds_are_checked() -> None:
    serverless = spec(
        model={"kind": "hub", "model_id": "google/flan-t5-small"},
        engine={"name": "hf-inference"},
        hosting={"kind": "serverless", "max_concurrency": 2, "provisioned_concurrency": 5},
    )
    shared = spec(
        hosting={
            "kind": "shared",
            "pool": "gpu-pool",
            "pool_min_instances": 3,
            "pool_max_instances": 2,
        }
    )
    assert "hosting.provisioned_concurrency" in fields(serverless)
    assert "hosting.pool_min_instances" in fields(shared)


def test_model_package_takes_no_engine_options() -> None:
    data = spec(
        model={
            "kind": "model-package",
            "arn": "arn:aws:sagemaker:us-east-1:865070037744:model-package/cohere-command-r-v1",
        },
        engine={"options": {"max_total_tokens": 4096}},
    )
    assert "engine.options" in fields(data)


def test_70b_model_on_a_24gib_instance_is_rejected() -> None:
    data = spec(
        model={"kind": "hub", "model_id": "meta-llama/Llama-2-70b-chat-hf"},
        hosting={"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    )
    found = issues(data)
    assert [i.field for i in found] == ["hosting.instance_type"]
    assert "ml.g5.2xlarge" in found[0].message


def test_spec_invalid_is_a_422_with_serialisable_issues() -> None:
    with pytest.raises(SpecInvalid) as caught:
        parse_spec(spec(scaling={"min_capacity": 3, "max_capacity": 2}))
    error = caught.value
    assert error.status == 422 and error.code == "invalid_spec"
    assert error.issues[0].as_dict()["field"] == "scaling.min_capacity"
    assert "scaling.min_capacity" in error.message


def test_patch_is_revalidated_against_the_whole_spec() -> None:
    # Given a valid 70B deployment on an instance it fits
    current = parse_spec(
        spec(
            model={"kind": "hub", "model_id": "meta-llama/Llama-2-70b-chat-hf"},
            hosting={"kind": "dedicated", "instance_type": "ml.p4d.24xlarge"},
        )
    )
    # When a patch moves it to a single 24 GiB GPU
    patch = DeploymentPatch.model_validate(
        {"hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"}}
    )
    # Then the patched spec, checked as a written one is, is rejected for the memory it lacks
    with pytest.raises(SpecInvalid) as caught:
        check_capacity(patch.apply_to(current))
    assert caught.value.issues[0].field == "hosting.instance_type"


def test_kind_may_be_omitted_where_it_has_a_default() -> None:
    # Given a Hub model and dedicated hosting without their (defaulted) 'kind'
    parsed = parse_spec(
        {
            "name": "a",
            "model": {"model_id": "google/flan-t5-base"},
            "hosting": {"instance_type": "ml.g5.xlarge"},
        }
    )
    # Then the defaults apply
    assert isinstance(parsed.model, HubSource) and isinstance(parsed.hosting, DedicatedHosting)


# ---------------------------------------------- serverless provisioned concurrency, schedules

SERVERLESS_PC = {
    "model": {"kind": "hub", "model_id": "google/flan-t5-small"},
    "engine": {"name": "hf-inference"},
    "hosting": {"kind": "serverless", "max_concurrency": 10, "provisioned_concurrency": 2},
}


def test_serverless_provisioned_concurrency_autoscales_on_utilization() -> None:
    parsed = parse_spec(
        spec(
            **SERVERLESS_PC,
            scaling={
                "min_capacity": 1,
                "max_capacity": 10,
                "target_metric": "provisioned-concurrency-utilization",
                "target_value": 0.6,
            },
        )
    )
    assert parsed.scaling.target_metric == "provisioned-concurrency-utilization"


@pytest.mark.parametrize(
    ("scaling", "field", "hint"),
    [
        # above the endpoint's own concurrency limit
        ({"min_capacity": 1, "max_capacity": 20}, "scaling.max_capacity", "max_concurrency (10)"),
        # provisioned concurrency has no zero
        (
            {"min_capacity": 0, "max_capacity": 5, "scale_to_zero": True},
            "scaling.min_capacity",
            "use 1 or more",
        ),
        # a utilization is a fraction
        (
            {
                "min_capacity": 1,
                "max_capacity": 5,
                "target_metric": "provisioned-concurrency-utilization",
                "target_value": 70,
            },
            "scaling.target_value",
            "at most 1",
        ),
        # an explicit GPU metric cannot be tracked on serverless
        (
            {"min_capacity": 1, "max_capacity": 5, "target_metric": "invocations-per-instance"},
            "scaling.target_metric",
            "provisioned-concurrency-utilization",
        ),
    ],
)
def test_serverless_provisioned_concurrency_bounds_and_metric_are_checked(
    scaling: dict[str, Any], field: str, hint: str
) -> None:
    # When a serverless spec autoscales provisioned concurrency wrongly
    found = issues(spec(**SERVERLESS_PC, scaling=scaling))
    # Then the issue names the field and the fix
    (issue,) = [i for i in found if i.field == field]
    assert hint in issue.message


def test_utilization_metric_needs_provisioned_concurrency() -> None:
    data = spec(
        hosting={"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
        scaling={
            "min_capacity": 1,
            "max_capacity": 2,
            "target_metric": "provisioned-concurrency-utilization",
            "target_value": 0.5,
        },
    )
    (issue,) = issues(data)
    assert issue.field == "scaling.target_metric"
    assert "hosting.provisioned_concurrency" in issue.message


def test_scale_schedule_on_fixed_capacity_is_rejected_sleep_wake_are_not() -> None:
    # Given a fixed-capacity endpoint (min == max, no scale to zero)
    hosting = {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"}
    rules = [
        {"cron": "0 20 ? * * *", "action": "sleep"},
        {"cron": "0 8 ? * * *", "min_capacity": 2, "max_capacity": 2},
    ]
    # Then a 'scale' rule (which only changes autoscaling bounds) is refused by index ...
    (issue,) = issues(spec(hosting=hosting, scaling={"schedules": rules}))
    assert issue.field == "scaling.schedules.1.action"
    assert "raise scaling.max_capacity" in issue.message
    # ... while sleep and wake windows are the classic use of a fixed endpoint
    parsed = parse_spec(spec(hosting=hosting, scaling={"schedules": rules[:1]}))
    assert parsed.scaling.schedules[0].action == "sleep"


# ------------------------------------------------------------------ what specs depend on


def test_specs_import_nothing_from_sizing_or_the_price_list() -> None:
    # Given every import statement of llmhost.specs, at module level or inside a function
    tree = ast.parse(Path(llmhost.specs.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    # Then none of them names sizing (which imports specs: a cycle), the catalog or the
    # price list (tables a later release changes, which a stored spec must not depend on)
    tables = ("llmhost.sizing", "llmhost.instances", "llmhost.catalog")
    assert not {m for m in imported if m.startswith(tables)}, imported


def test_a_spec_validates_in_a_process_where_sizing_cannot_be_imported() -> None:
    # Given a fresh interpreter in which importing llmhost.sizing fails
    code = """
import sys
sys.modules["llmhost.sizing"] = None
from llmhost.specs import parse_spec
spec = parse_spec({
    "name": "llama3-8b",
    "model": {"kind": "hub", "model_id": "meta-llama/Llama-3.1-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
})
loaded = sorted(m for m in sys.modules if m.startswith(("llmhost.instances", "llmhost.catalog")))
print(spec.name, loaded)
"""
    package_root = Path(llmhost.specs.__file__).parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(package_root), "PATH": ""},
        timeout=60,
        check=False,
    )
    # When a spec is validated there, Then it parses, and neither the catalog nor the price
    # list was loaded on the way
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "llama3-8b []"


# ------------------------------------------------------------------ asynchronous endpoints


def test_valid_async_spec_scales_to_zero_by_its_minimum_alone() -> None:
    # Given an async deployment with min 0 (no scale_to_zero flag: the queue decides)
    parsed = parse_spec(
        spec(
            hosting={"kind": "async", "instance_type": "ml.g5.2xlarge"},
            scaling={"min_capacity": 0, "max_capacity": 2},
        )
    )
    check_capacity(parsed)
    assert parsed.hosting.kind == "async"
    # And its plan costs nothing at zero instances, and says the first job waits
    from llmhost.sizing.plan import async_concurrency, plan

    sized = plan(parsed)
    assert sized.kind == "async" and sized.cost.hourly_min == 0 and sized.cost.hourly_max > 0
    assert any("first queued request" in note for note in sized.notes)
    # And MaxConcurrentInvocationsPerInstance comes from the engine's token budget
    assert 1 <= async_concurrency(parsed, sized) <= 1000


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        (
            {"scaling": {"min_capacity": 0, "max_capacity": 2, "scale_to_zero": True}},
            "scaling.scale_to_zero",
            "scaling.min_capacity to 0",
        ),
        (
            {"scaling": {"target_metric": "invocations-per-instance", "max_capacity": 2}},
            "scaling.target_metric",
            "ApproximateBacklogSizePerInstance",
        ),
        (
            {"hosting": {"kind": "async", "instance_count": 3}},
            "hosting.instance_count",
            "scaling.max_capacity",
        ),
        (
            {"hosting": {"kind": "async", "max_concurrent_invocations_per_instance": 1001}},
            "hosting.max_concurrent_invocations_per_instance",
            "1000",
        ),
        (
            {"hosting": {"kind": "async", "instance_type": "ml.g5.2xlarge", "num_gpus": 4}},
            "hosting.num_gpus",
            "ml.g5.2xlarge has 1 GPU",
        ),
    ],
)
def test_async_rules_name_the_field_and_the_fix(
    changes: dict[str, Any], field: str, fragment: str
) -> None:
    data = spec(**{"hosting": {"kind": "async"}, **changes})
    found = {i.field: i.message for i in issues(data)}
    assert field in found, found
    assert fragment in found[field]
