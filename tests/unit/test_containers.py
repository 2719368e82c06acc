"""Container definitions: the CreateModel PrimaryContainer each engine gets from a spec."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost.engines.containers import MODEL_DIR, container_definition, redacted
from llmhost.images import ImageNotAvailable
from llmhost.sizing.plan import Plan
from llmhost.sizing.plan import plan as plan_for
from llmhost.specs import parse_spec

TOKEN = "hf_secret_value"


def build(
    model: dict[str, Any] | None = None,
    *,
    engine: dict[str, Any] | None = None,
    hosting: dict[str, Any] | None = None,
    region: str = "us-east-1",
    token: str | None = None,
) -> tuple[dict[str, Any], Plan]:
    spec = parse_spec(
        {
            "name": "containers",
            "model": model or {"kind": "hub", "model_id": "meta-llama/Llama-3.1-8B-Instruct"},
            "engine": engine or {},
            "hosting": hosting or {"kind": "dedicated"},
        }
    )
    plan = plan_for(spec)
    return container_definition(spec, plan, region, token), plan


def test_tgi_environment_matches_the_plan() -> None:
    # Given a 70B model the planner shards over several GPUs
    container, plan = build({"kind": "hub", "model_id": "meta-llama/Llama-2-70b-chat-hf"})
    env = container["Environment"]
    # Then TGI is told the planned GPU count and token limits, as strings
    assert plan.num_gpus > 1
    assert env["SM_NUM_GPUS"] == str(plan.num_gpus)
    assert env["MAX_INPUT_TOKENS"] == str(plan.tokens.max_input_tokens)
    assert env["MAX_TOTAL_TOKENS"] == str(plan.tokens.max_total_tokens)
    assert env["MAX_BATCH_PREFILL_TOKENS"] == str(plan.tokens.max_batch_prefill_tokens)
    assert env["MAX_BATCH_TOTAL_TOKENS"] == str(plan.tokens.max_batch_total_tokens)
    assert env["HF_MODEL_ID"] == "meta-llama/Llama-2-70b-chat-hf"
    assert all(isinstance(value, str) for value in env.values())
    assert "huggingface-pytorch-tgi-inference" in container["Image"]


def test_tgi_options_map_to_their_variables() -> None:
    container, _ = build(
        {"kind": "hub", "model_id": "mistralai/Mistral-7B-Instruct-v0.2", "revision": "abc123"},
        engine={"options": {"quantization": "bitsandbytes-nf4", "trust_remote_code": True}},
    )
    env = container["Environment"]
    assert env["HF_MODEL_QUANTIZE"] == "bitsandbytes-nf4"
    assert env["HF_MODEL_TRUST_REMOTE_CODE"] == "true"
    assert env["HF_MODEL_REVISION"] == "abc123"
    assert "DTYPE" not in env


def test_token_is_added_only_when_given_and_redacted_for_logs() -> None:
    # Given the same spec built with and without a Hugging Face token
    with_token, _ = build(token=TOKEN)
    without, _ = build()
    # Then only the first carries it
    assert with_token["Environment"]["HF_TOKEN"] == TOKEN
    assert "HF_TOKEN" not in without["Environment"]
    # And the redacted copy hides it without changing the original
    safe = redacted(with_token)
    assert safe["Environment"]["HF_TOKEN"] == "***"
    assert TOKEN not in repr(safe)
    assert with_token["Environment"]["HF_TOKEN"] == TOKEN
    # Everything else is identical
    safe["Environment"].pop("HF_TOKEN")
    assert safe == without


def test_s3_prefix_becomes_uncompressed_model_data_source() -> None:
    container, _ = build(
        {"kind": "s3", "uri": "s3://models/llama3-8b", "model_id": "llama-3-8b-instruct"}
    )
    # Then SageMaker copies the prefix (with a trailing slash) into the model directory
    assert container["ModelDataSource"] == {
        "S3DataSource": {
            "S3Uri": "s3://models/llama3-8b/",
            "S3DataType": "S3Prefix",
            "CompressionType": "None",
        }
    }
    assert container["Environment"]["HF_MODEL_ID"] == MODEL_DIR
    assert "ModelDataUrl" not in container


def test_s3_archive_becomes_model_data_url() -> None:
    container, _ = build({"kind": "s3", "uri": "s3://models/llama3-8b/model.tar.gz"})
    assert container["ModelDataUrl"] == "s3://models/llama3-8b/model.tar.gz"
    assert "ModelDataSource" not in container
    assert container["Environment"]["HF_MODEL_ID"] == MODEL_DIR


def test_model_package_is_referenced_without_environment() -> None:
    arn = "arn:aws:sagemaker:us-east-1:865070037744:model-package/cohere-command-r-v1"
    container, _ = build({"kind": "model-package", "arn": arn}, token=TOKEN)
    assert container == {"ModelPackageName": arn}


def test_vllm_uses_sm_vllm_flags() -> None:
    # Given a 70B model on vLLM with 4-bit NF4 quantization
    container, plan = build(
        {"kind": "hub", "model_id": "meta-llama/Llama-3.1-70B-Instruct"},
        engine={
            "name": "vllm",
            "options": {"quantization": "bitsandbytes-nf4", "dtype": "bfloat16"},
        },
    )
    env = container["Environment"]
    # Then each setting is an SM_VLLM_* variable in vLLM's own vocabulary
    assert env["SM_VLLM_MODEL"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert env["SM_VLLM_TENSOR_PARALLEL_SIZE"] == str(plan.num_gpus)
    assert env["SM_VLLM_MAX_MODEL_LEN"] == str(plan.tokens.max_total_tokens)
    assert env["SM_VLLM_QUANTIZATION"] == "bitsandbytes"
    assert env["SM_VLLM_DTYPE"] == "bfloat16"
    assert "/vllm:" in container["Image"]
    assert not any(key.startswith(("MAX_", "SM_NUM_GPUS")) for key in env)


def test_lmi_uses_option_variables_with_the_vllm_backend() -> None:
    container, plan = build(engine={"name": "lmi", "options": {"dtype": "bfloat16"}})
    env = container["Environment"]
    assert env["OPTION_ROLLING_BATCH"] == "vllm"
    assert env["OPTION_TENSOR_PARALLEL_DEGREE"] == str(plan.num_gpus)
    assert env["OPTION_MAX_MODEL_LEN"] == str(plan.tokens.max_total_tokens)
    assert env["OPTION_DTYPE"] == "bf16"
    assert "djl-inference" in container["Image"]


def test_hf_inference_serverless_gets_the_cpu_image_and_the_seq2seq_task() -> None:
    container, plan = build(
        {"kind": "hub", "model_id": "google/flan-t5-base"},
        engine={"name": "hf-inference"},
        hosting={"kind": "serverless", "memory_mb": 4096},
    )
    env = container["Environment"]
    assert plan.num_gpus == 0
    assert "-cpu-" in container["Image"]
    assert env["HF_TASK"] == "text2text-generation"
    assert env["HF_MODEL_ID"] == "google/flan-t5-base"
    # One worker: each extra worker would load another copy of the model
    assert env["SAGEMAKER_MODEL_SERVER_WORKERS"] == "1"


def test_hf_inference_on_a_gpu_instance_gets_the_gpu_image() -> None:
    container, plan = build(
        {"kind": "hub", "model_id": "google/flan-t5-xl"},
        engine={"name": "hf-inference"},
        hosting={"kind": "dedicated", "instance_type": "ml.g5.xlarge"},
    )
    assert plan.num_gpus == 1
    assert "-gpu-" in container["Image"]


def test_image_follows_the_region() -> None:
    container, _ = build(region="eu-west-1")
    assert ".eu-west-1." in container["Image"]


def test_unknown_region_raises_a_typed_error_naming_known_regions() -> None:
    with pytest.raises(ImageNotAvailable) as caught:
        build(region="xx-nowhere-1")
    assert caught.value.status == 422
    assert "us-east-1" in caught.value.message


def test_tgi_queue_limit_comes_from_the_copy_the_scaling_policy_assumes() -> None:
    from llmhost.lifecycle.desired import wanted_scaling
    from llmhost.scaling.policy import TARGET_UTILIZATION
    from llmhost.specs import parse_spec

    # Given zephyr on ml.g6.xlarge: 43,008 batch tokens, 8,192 per request (a typical
    # request a quarter of that), so a copy runs 21 requests at once
    model = {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"}
    hosting = {"kind": "dedicated", "instance_type": "ml.g6.xlarge"}
    container, plan = build(model, hosting=hosting)
    assert plan.tokens.max_batch_total_tokens == 43_008
    # Then TGI holds a batch and a half (32 for 21 at once) before answering 429, as the
    # overload alarm assumes
    assert container["Environment"]["MAX_CONCURRENT_REQUESTS"] == "32"
    spec = parse_spec(
        {"name": "containers", "model": model, "hosting": hosting, "scaling": {"max_capacity": 4}}
    )
    policy = wanted_scaling(spec, plan)
    assert policy is not None and policy.overload is not None
    assert policy.target_tracking.target_value == round(TARGET_UTILIZATION * 21, 2)


@pytest.mark.parametrize("engine", ["vllm", "lmi"])
def test_engines_that_queue_without_bound_get_no_queue_limit(engine: str) -> None:
    model = {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"}
    container, _ = build(
        model,
        engine={"name": engine},
        hosting={"kind": "dedicated", "instance_type": "ml.g6.xlarge"},
    )
    assert not any("CONCURRENT" in key for key in container["Environment"])
