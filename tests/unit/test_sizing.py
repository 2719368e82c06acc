"""Sizing: memory math, instance choice, token limits, cost, and the capacity rules."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from llmhost import catalog, instances
from llmhost.errors import SpecInvalid
from llmhost.sizing import fit
from llmhost.sizing.issues import check_capacity
from llmhost.sizing.plan import Plan
from llmhost.sizing.plan import plan as plan_for
from llmhost.specs import DeploymentSpec, parse_spec

GIB = 1024**3
LLAMA2_70B = "meta-llama/Llama-2-70b-chat-hf"
LLAMA31_8B = "meta-llama/Llama-3.1-8B-Instruct"


def make_spec(
    model_id: str = LLAMA31_8B,
    *,
    hosting: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    scaling: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": "test-deployment",
        "model": model or {"kind": "hub", "model_id": model_id},
        "engine": engine or {},
        "hosting": {"kind": "dedicated", **(hosting or {})},
        "scaling": scaling or {},
    }


def issues_of(data: dict[str, Any]) -> dict[str, str]:
    """field -> message of every issue; {} when the spec is valid."""
    try:
        check_capacity(parse_spec(data))
    except SpecInvalid as error:
        return {issue.field: issue.message for issue in error.issues}
    return {}


def planned(data: dict[str, Any]) -> Plan:
    spec = parse_spec(data)
    assert isinstance(spec, DeploymentSpec)
    return plan_for(spec)


# --------------------------------------------------------------------------- memory math


def test_llama2_70b_fp16_weights_outgrow_any_single_24gib_gpu() -> None:
    # Given Llama 2 70B's parameter count and 2 bytes per float16 parameter
    model = catalog.lookup(LLAMA2_70B)
    assert model is not None
    from_first_principles = model.params_b * 1e9 * 2 / GIB
    # When the sizing module computes its weights
    weights = fit.weights_gib(model, fit.weight_bytes_per_param("tgi", None))
    # Then it is ~128 GiB (138 GB): more than five 24 GiB GPUs hold
    assert weights == pytest.approx(from_first_principles)
    assert weights > 128
    for instance in instances.gpu_instances():
        if instance.gpu_count == 1 and instance.gpu_memory_gib <= 24:
            assert fit.weights_gib(model, 2.0) > instance.gpu_memory_gib * 5


def test_kv_cache_per_token_follows_layers_kv_heads_and_head_size() -> None:
    # Given a GQA model (Llama 2 70B: 80 layers, 8 KV heads of 128) and an MHA one
    # (Llama 2 7B: 32 layers, 32 KV heads of 128)
    big = catalog.lookup(LLAMA2_70B)
    small = catalog.lookup("llama-2-7b-chat")
    assert big and small
    # When the KV cache per token is computed (K and V, 2 bytes each)
    # Then it is 2 * layers * kv_heads * head_dim * 2 bytes
    assert fit.kv_gib_per_token(big) * GIB == pytest.approx(2 * 80 * 8 * 128 * 2)
    assert fit.kv_gib_per_token(small) * GIB == pytest.approx(2 * 32 * 32 * 128 * 2)
    # and grouped-query attention makes the 70B model's cache smaller per token
    assert fit.kv_gib_per_token(big) < fit.kv_gib_per_token(small)


def test_quantization_shrinks_weights_by_its_bit_width() -> None:
    # Given one model at 16, 8 and 4 bits
    model = catalog.lookup("mixtral-8x7b-instruct")
    assert model is not None

    def weights(quantization: str | None) -> float:
        return fit.weights_gib(model, fit.weight_bytes_per_param("tgi", quantization))

    # Then 8-bit halves the weights and 4-bit (AWQ/GPTQ/NF4) roughly quarters them,
    # with a little overhead for scales but well under a third
    assert weights("eetq") == pytest.approx(weights(None) / 2)
    for four_bit in ("awq", "gptq", "bitsandbytes-nf4"):
        assert weights(None) / 4 < weights(four_bit) < weights(None) / 3


def test_awq_plan_needs_less_memory_and_a_cheaper_instance() -> None:
    # Given Llama 3.1 70B planned at float16 and with AWQ
    fp16 = planned(make_spec("meta-llama/Llama-3.1-70B-Instruct"))
    awq = planned(
        make_spec("meta-llama/Llama-3.1-70B-Instruct", engine={"options": {"quantization": "awq"}})
    )
    # Then the AWQ plan's weights are under a third and its instance is cheaper
    assert fp16.memory and awq.memory
    assert awq.memory.weights_gib < fp16.memory.weights_gib / 3
    assert awq.cost.hourly_max < fp16.cost.hourly_max
    assert awq.memory.precision.startswith("awq")


def test_hf_inference_loads_float32_so_needs_twice_the_memory_of_tgi() -> None:
    # Given the same model under the HF inference toolkit (float32) and TGI (float16)
    model = catalog.lookup("flan-t5-large")
    assert model is not None
    # Then the toolkit's weights take 4 bytes per parameter
    assert fit.weight_bytes_per_param("hf-inference", None) == 4.0
    assert fit.weight_bytes_per_param("tgi", None) == 2.0


@pytest.mark.parametrize(
    ("model_id", "gpus", "expected"),
    [
        ("tiiuae/falcon-7b-instruct", 4, 1),  # 71 heads: no even split
        ("meta-llama/Llama-2-13b-chat-hf", 8, 8),  # 40 heads, 40 KV heads
        ("meta-llama/Llama-2-70b-chat-hf", 8, 8),  # 64 heads, 8 KV heads
        ("meta-llama/Llama-3.2-3B-Instruct", 8, 8),  # 24 heads
        ("meta-llama/Llama-3.2-3B-Instruct", 4, 4),
    ],
)
def test_default_parallel_degree_is_the_largest_even_split(
    model_id: str, gpus: int, expected: int
) -> None:
    # Given a model and an instance's GPU count
    model = catalog.lookup(model_id)
    # When the default tensor-parallel degree is chosen
    degree = fit.default_parallel_degree(model, gpus)
    # Then it is a power of two that divides the heads, as large as the GPUs allow
    assert degree == expected
    assert model is not None and model.num_attention_heads % degree == 0
    assert degree & (degree - 1) == 0


# ---------------------------------------------------------------------- instance choice


def test_planner_picks_the_cheapest_instance_type_the_model_fits_on() -> None:
    # Given Llama 2 70B in float16 with no instance type named
    plan = planned(make_spec(LLAMA2_70B))
    chosen = instances.get(plan.instance_type or "")
    assert chosen is not None and plan.memory is not None
    # Then the estimate fits the chosen instance's usable GPU memory
    assert plan.memory.total_gib <= plan.memory.available_gib + 0.01
    assert plan.memory.available_gib <= chosen.total_gpu_memory_gib
    # And every strictly cheaper GPU instance type is rejected for this model
    for cheaper in instances.gpu_instances():
        if cheaper.price_per_hour < chosen.price_per_hour:
            found = issues_of(make_spec(LLAMA2_70B, hosting={"instance_type": cheaper.name}))
            assert found, f"{cheaper.name} is cheaper and was accepted"


def test_small_model_goes_to_a_single_gpu_and_uses_every_sharded_gpu_when_bigger() -> None:
    # Given an 8B model (fits one 24 GiB GPU) and a 70B one (needs several)
    small = planned(make_spec(LLAMA31_8B))
    large = planned(make_spec(LLAMA2_70B))
    small_instance = instances.get(small.instance_type or "")
    large_instance = instances.get(large.instance_type or "")
    assert small_instance and large_instance
    # Then the 8B model runs on one GPU and the 70B model on all GPUs of a multi-GPU type
    assert small.num_gpus == small_instance.gpu_count == 1
    assert large.num_gpus == large_instance.gpu_count > 1


def test_falcon_7b_on_a_four_gpu_instance_uses_one_gpu_and_says_why() -> None:
    # Given Falcon 7B (71 attention heads) pinned to a 4-GPU instance
    plan = planned(
        make_spec("tiiuae/falcon-7b-instruct", hosting={"instance_type": "ml.g5.12xlarge"})
    )
    # Then it is planned on 1 GPU, with a note naming the heads
    assert plan.num_gpus == 1
    assert any("71 attention heads" in note for note in plan.notes)


def test_hf_inference_small_model_is_planned_on_cpu() -> None:
    # Given flan-t5-base on the HF inference toolkit, no instance type named
    plan = planned(make_spec("google/flan-t5-base", engine={"name": "hf-inference"}))
    # Then a CPU instance is cheapest, and no GPUs are planned
    chosen = instances.get(plan.instance_type or "")
    assert chosen is not None and not chosen.is_gpu
    assert plan.num_gpus == 0


# ---------------------------------------------------------------------------- tokens


def test_token_limits_default_from_context_and_stay_within_it() -> None:
    # Given models with 4k, 8k, 128k and 2k context windows
    for model_id, context in [
        ("llama-2-7b-chat", 4096),
        ("llama-3-8b-instruct", 8192),
        ("llama-3.1-8b-instruct", 131072),
        ("falcon-7b-instruct", 2048),
    ]:
        tokens = planned(make_spec(model_id)).tokens
        assert tokens.max_total_tokens and tokens.max_input_tokens
        assert tokens.max_batch_prefill_tokens and tokens.max_batch_total_tokens
        # Then the window is the context, capped at 8192 for long-context models
        assert tokens.max_total_tokens == min(context, fit.DEFAULT_MAX_TOTAL_TOKENS)
        # and the engine's own invariants hold
        assert tokens.max_input_tokens < tokens.max_total_tokens
        assert tokens.max_batch_prefill_tokens >= tokens.max_input_tokens
        assert tokens.max_batch_total_tokens >= tokens.max_total_tokens
        assert tokens.max_batch_prefill_tokens <= tokens.max_batch_total_tokens


def test_batch_tokens_fill_what_memory_is_left_and_no_more() -> None:
    # Given Llama 3.1 8B pinned to a single A10G
    plan = planned(make_spec(LLAMA31_8B, hosting={"instance_type": "ml.g5.2xlarge"}))
    model = catalog.lookup(LLAMA31_8B)
    assert plan.memory is not None and model is not None
    batch = plan.tokens.max_batch_total_tokens
    assert batch is not None
    # Then its KV cache estimate is exactly batch tokens of KV cache
    assert plan.memory.kv_cache_gib == pytest.approx(batch * fit.kv_gib_per_token(model), abs=0.01)
    # and weights + runtime + KV stay within the usable memory of the GPU
    assert plan.memory.total_gib <= 24 * fit.USABLE_GPU_FRACTION + 0.01
    # while a batch budget twice as large is rejected
    too_many = issues_of(
        make_spec(
            LLAMA31_8B,
            hosting={"instance_type": "ml.g5.2xlarge"},
            engine={"options": {"max_batch_total_tokens": batch * 2}},
        )
    )
    assert "engine.options.max_batch_total_tokens" in too_many


def test_user_token_limits_are_kept() -> None:
    # Given explicit limits
    opts = {"max_input_tokens": 1000, "max_total_tokens": 2000, "max_batch_total_tokens": 8000}
    tokens = planned(make_spec(LLAMA31_8B, engine={"options": opts})).tokens
    # Then the plan uses them as given
    assert (tokens.max_input_tokens, tokens.max_total_tokens) == (1000, 2000)
    assert tokens.max_batch_total_tokens == 8000


# -------------------------------------------------------------------------- capacity rules


def test_70b_on_a_single_a10g_is_rejected_with_working_alternatives() -> None:
    # Given Llama 2 70B in float16 pinned to ml.g5.2xlarge (one 24 GiB GPU)
    found = issues_of(make_spec(LLAMA2_70B, hosting={"instance_type": "ml.g5.2xlarge"}))
    # Then hosting.instance_type is named, with the need, the size and both fixes
    message = found["hosting.instance_type"]
    assert "float16" in message and "ml.g5.2xlarge has 24 GiB" in message
    needed = int(re.search(r"needs ~(\d+) GiB", message).group(1))  # type: ignore[union-attr]
    assert 130 <= needed <= 200
    assert "'awq'" in message
    # And the instance type it suggests really is accepted for this model
    suggested = re.search(r"use (ml\.[a-z0-9]+\.[a-z0-9]+)", message).group(1)  # type: ignore[union-attr]
    assert issues_of(make_spec(LLAMA2_70B, hosting={"instance_type": suggested})) == {}


def test_num_gpus_above_the_instance_is_rejected() -> None:
    found = issues_of(make_spec(hosting={"instance_type": "ml.g5.2xlarge", "num_gpus": 4}))
    assert "has 1 GPU(s), not 4" in found["hosting.num_gpus"]


def test_num_gpus_that_cannot_split_the_heads_is_rejected() -> None:
    # Given Falcon 7B (71 heads) on 2 of a 4-GPU instance's GPUs
    spec = make_spec(
        "tiiuae/falcon-7b-instruct", hosting={"instance_type": "ml.g5.12xlarge", "num_gpus": 2}
    )
    # Then hosting.num_gpus is named with the usable value
    message = issues_of(spec)["hosting.num_gpus"]
    assert "71 attention heads" in message and "use 1" in message


def test_max_total_tokens_above_the_context_length_is_rejected() -> None:
    spec = make_spec("llama-2-7b-chat", engine={"options": {"max_total_tokens": 8192}})
    message = issues_of(spec)["engine.options.max_total_tokens"]
    assert "4096" in message


def test_unknown_instance_type_names_known_alternatives() -> None:
    found = issues_of(make_spec(hosting={"instance_type": "ml.g5.3xlarge"}))
    message = found["hosting.instance_type"]
    assert "ml.g5.2xlarge" in message and "ml.g5.4xlarge" in message


def test_gpu_engine_on_a_cpu_instance_is_rejected() -> None:
    found = issues_of(make_spec(hosting={"instance_type": "ml.m5.xlarge"}))
    assert "needs a GPU" in found["hosting.instance_type"]


def test_serverless_model_too_big_for_its_memory_is_rejected() -> None:
    # Given flan-t5-xl (2.85B parameters) on serverless: 11 GB at float32, 5.7 GB even at
    # float16, so any rule based on params * bytes must refuse it at 6144 MB
    spec = make_spec(
        "google/flan-t5-xl", engine={"name": "hf-inference"}, hosting={"kind": "serverless"}
    )
    # Then hosting.memory_mb is named and the fix leaves serverless
    message = issues_of(spec)["hosting.memory_mb"]
    assert "6144 MB" in message and "dedicated" in message


def test_serverless_memory_too_small_suggests_a_size_that_works() -> None:
    # Given flan-t5-large in the smallest serverless memory size
    spec = make_spec(
        "google/flan-t5-large",
        engine={"name": "hf-inference"},
        hosting={"kind": "serverless", "memory_mb": 1024},
    )
    message = issues_of(spec)["hosting.memory_mb"]
    suggested = int(re.search(r"raise hosting.memory_mb to (\d+)", message).group(1))  # type: ignore[union-attr]
    # Then the suggested size is accepted
    spec["hosting"]["memory_mb"] = suggested
    assert issues_of(spec) == {}


def test_shared_copy_asking_for_more_gpus_than_the_pool_instance_has_is_rejected() -> None:
    spec = make_spec(
        hosting={
            "kind": "shared",
            "pool": "gpu-pool",
            "instance_type": "ml.g5.12xlarge",
            "accelerators": 8,
        }
    )
    assert "has 4" in issues_of(spec)["hosting.accelerators"]


def test_shared_copy_too_big_for_its_accelerators_suggests_more() -> None:
    # Given Llama 2 70B as one-GPU copies on a 4-GPU L40S pool
    spec = make_spec(
        LLAMA2_70B,
        hosting={"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g6e.12xlarge"},
    )
    message = issues_of(spec)["hosting.accelerators"]
    # Then the fix names an accelerator count that is then accepted
    count = int(re.search(r"set hosting.accelerators to (\d+)", message).group(1))  # type: ignore[union-attr]
    spec["hosting"]["accelerators"] = count
    assert issues_of(spec) == {}


def test_unknown_model_gets_no_size_issues_and_a_note() -> None:
    # Given a model the catalog does not know, on a small GPU
    spec = make_spec("Qwen/Qwen2.5-72B-Instruct", hosting={"instance_type": "ml.g4dn.xlarge"})
    # Then nothing about its size is assumed: valid, no memory estimate, a note says so
    assert issues_of(spec) == {}
    plan = planned(spec)
    assert plan.memory is None and plan.model is None
    assert any("assumed nothing" in note for note in plan.notes)


@pytest.mark.parametrize(
    ("engine", "field", "fragment"),
    [
        (
            {"name": "vllm", "options": {"quantization": "eetq"}},
            "engine.options.quantization",
            "eetq",
        ),
        (
            {"name": "tgi", "options": {"quantization": "awq", "dtype": "float16"}},
            "engine.options.dtype",
            "quantized",
        ),
    ],
)
def test_engine_options_the_engine_cannot_run_are_rejected(
    engine: dict[str, Any], field: str, fragment: str
) -> None:
    assert fragment in issues_of(make_spec(engine=engine))[field]


def test_seq2seq_model_on_vllm_is_rejected() -> None:
    found = issues_of(make_spec("google/flan-t5-xl", engine={"name": "vllm"}))
    assert "encoder-decoder" in found["engine.name"]


def test_bfloat16_on_t4_is_rejected() -> None:
    spec = make_spec(
        "llama-2-7b-chat",
        hosting={"instance_type": "ml.g4dn.xlarge"},
        engine={"options": {"dtype": "bfloat16", "quantization": None}},
    )
    assert "bfloat16" in issues_of(spec)["engine.options.dtype"]


def test_nothing_fits_names_the_largest_instance() -> None:
    # Given a KV-cache budget no instance can hold
    spec = make_spec(
        "meta-llama/Llama-3.1-70B-Instruct",
        engine={"options": {"max_total_tokens": 131072, "max_batch_total_tokens": 4_000_000}},
    )
    message = issues_of(spec)["engine.options.max_batch_total_tokens"]
    most_memory = max(t.total_gpu_memory_gib for t in instances.gpu_instances())
    largest = [t.name for t in instances.gpu_instances() if t.total_gpu_memory_gib == most_memory]
    assert "no instance type" in message
    assert any(name in message for name in largest)


# ---------------------------------------------------------------------------------- cost


def test_dedicated_cost_is_price_times_capacity_and_730_hours() -> None:
    # Given an instance pinned, scaling between 1 and 3 instances
    spec = make_spec(
        hosting={"instance_type": "ml.g5.2xlarge"}, scaling={"min_capacity": 1, "max_capacity": 3}
    )
    cost = planned(spec).cost
    price = instances.get("ml.g5.2xlarge").price_per_hour  # type: ignore[union-attr]
    # Then the range is 1 to 3 instances of that price, and a month is 730 hours
    assert cost.hourly_min == pytest.approx(price)
    assert cost.hourly_max == pytest.approx(3 * price)
    assert cost.monthly_max == pytest.approx(3 * price * 730, abs=0.01)


def test_scaled_to_zero_dedicated_costs_nothing_at_minimum() -> None:
    spec = make_spec(scaling={"min_capacity": 0, "max_capacity": 1, "scale_to_zero": True})
    plan = planned(spec)
    assert plan.cost.hourly_min == 0 and plan.cost.hourly_max > 0


def test_shared_cost_counts_the_pool_instances_its_copies_need() -> None:
    # Given one-GPU copies of an 8B model on 4-GPU instances, scaling 0 to 6 copies
    spec = make_spec(
        hosting={
            "kind": "shared",
            "pool": "gpu-pool",
            "instance_type": "ml.g5.12xlarge",
            "pool_max_instances": 2,
        },
        scaling={"min_capacity": 0, "max_capacity": 6, "scale_to_zero": True},
    )
    cost = planned(spec).cost
    price = instances.get("ml.g5.12xlarge").price_per_hour  # type: ignore[union-attr]
    # Then 0 copies cost nothing and 6 copies need two instances (4 copies each)
    assert cost.hourly_min == 0
    assert cost.hourly_max == pytest.approx(2 * price)


def test_serverless_is_free_when_idle_unless_provisioned() -> None:
    on_demand = make_spec(
        "google/flan-t5-base", engine={"name": "hf-inference"}, hosting={"kind": "serverless"}
    )
    provisioned = make_spec(
        "google/flan-t5-base",
        engine={"name": "hf-inference"},
        hosting={"kind": "serverless", "provisioned_concurrency": 2},
    )
    idle = planned(on_demand).cost
    warm = planned(provisioned).cost
    assert idle.hourly_min == 0 and idle.hourly_max > 0
    assert warm.hourly_min > 0
    assert "per GB-second" in idle.basis


def test_plan_is_json_serialisable() -> None:
    # Given any plan
    data = planned(make_spec()).as_dict()
    # Then it survives a JSON round trip with its sections intact
    again = json.loads(json.dumps(data))
    assert set(again) >= {"instance_type", "num_gpus", "memory", "tokens", "cost", "notes"}
    assert again["tokens"]["max_total_tokens"] == 8192


def test_shared_pool_instance_is_chosen_with_room_for_a_copy_on_the_host() -> None:
    # Given one-GPU copies that each need 48 GiB of host memory and 12 CPU cores
    spec = make_spec(
        hosting={"kind": "shared", "pool": "gpu-pool", "memory_mb": 48 * 1024, "cpus": 12}
    )
    # When no pool instance type is named
    chosen = instances.get(planned(spec).instance_type or "")
    # Then the chosen type can hold a copy's memory and cores, not just its GPU
    assert chosen is not None
    assert chosen.memory_gib >= 48 and chosen.vcpus >= 12
