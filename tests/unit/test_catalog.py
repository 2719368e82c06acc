"""The model catalog: lookups, and shapes that agree with the published model configs."""

from __future__ import annotations

import pytest

from llmhost import catalog

REQUIRED_IDS = [
    "flan-t5-small",
    "flan-t5-base",
    "flan-t5-large",
    "flan-t5-xl",
    "flan-t5-xxl",
    "falcon-7b-instruct",
    "falcon-40b-instruct",
    "llama-2-7b-chat",
    "llama-2-13b-chat",
    "llama-2-70b-chat",
    "codellama-7b-instruct",
    "codellama-13b-instruct",
    "codellama-34b-instruct",
    "codellama-70b-instruct",
    "mixtral-8x7b-instruct",
    "zephyr-7b-beta",
    "solar-10.7b-instruct",
    "mistral-7b-instruct-v0.2",
    "mistral-7b-instruct-v0.3",
    "llama-3-8b-instruct",
    "llama-3-70b-instruct",
    "llama-3.1-8b-instruct",
    "llama-3.1-70b-instruct",
    "llama-3.2-1b-instruct",
    "llama-3.2-3b-instruct",
]


@pytest.mark.parametrize("model_id", REQUIRED_IDS)
def test_every_required_model_is_in_the_catalog(model_id: str) -> None:
    # Given a short id the catalog promises
    # When it is looked up
    model = catalog.lookup(model_id)
    # Then it is there, under that id, with a Hub id that finds the same entry
    assert model is not None
    assert model.id == model_id
    assert catalog.lookup(model.hf_id) is model


def test_lookup_ignores_case_and_accepts_renamed_hub_ids() -> None:
    # Given the Hub id in odd case, and Meta's older name for the Llama 3.1 repository
    odd_case = "META-LLAMA/llama-3.1-8b-INSTRUCT"
    old_name = "meta-llama/Meta-Llama-3.1-8B-Instruct"
    # When both are looked up
    # Then both find the Llama 3.1 8B entry
    assert catalog.lookup(odd_case) is catalog.lookup("llama-3.1-8b-instruct")
    assert catalog.lookup(old_name) is catalog.lookup("llama-3.1-8b-instruct")


def test_unknown_and_empty_ids_are_none_not_errors() -> None:
    # Given ids the catalog does not know
    # When they are looked up
    # Then the answer is None (deploying unknown models is allowed)
    assert catalog.lookup("Qwen/Qwen2.5-7B-Instruct") is None
    assert catalog.lookup("") is None
    assert catalog.lookup(None) is None


def test_ids_and_hub_ids_are_unique() -> None:
    # Given every catalog entry
    models = catalog.all_models()
    # Then no two share a short id or a Hub id (a lookup would be ambiguous)
    keys = [m.id.lower() for m in models] + [m.hf_id.lower() for m in models]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("model", catalog.all_models(), ids=lambda m: m.id)
def test_shapes_are_internally_consistent(model: catalog.CatalogModel) -> None:
    # Given a catalog entry
    # Then its attention shape is one a transformer can have
    assert model.num_attention_heads % model.num_kv_heads == 0
    assert model.num_layers > 0 and model.head_dim in (64, 128)
    if not model.seq2seq:
        # Decoder-only models project hidden -> heads * head_dim without an inner size
        # (T5 v1.1 small is the one config where d_kv * heads != d_model).
        assert model.num_attention_heads * model.head_dim == model.hidden_size
    assert model.context_length >= 512
    assert model.license and model.chat_template
    if model.active_params_b is not None:
        assert model.active_params_b < model.params_b


def test_published_values_for_the_models_sizing_depends_on_most() -> None:
    # Given the large models whose KV-cache math decides multi-GPU instance choices
    llama2_70b = catalog.lookup("meta-llama/Llama-2-70b-chat-hf")
    mixtral = catalog.lookup("mistralai/Mixtral-8x7B-Instruct-v0.1")
    llama31_8b = catalog.lookup("llama-3.1-8b-instruct")
    falcon_7b = catalog.lookup("tiiuae/falcon-7b-instruct")
    assert llama2_70b and mixtral and llama31_8b and falcon_7b
    # Then they carry the config.json values: GQA with 8 KV heads, 128-dim heads ...
    assert (llama2_70b.num_layers, llama2_70b.num_kv_heads, llama2_70b.head_dim) == (80, 8, 128)
    assert 68 <= llama2_70b.params_b <= 70 and llama2_70b.context_length == 4096
    assert (mixtral.params_b, mixtral.active_params_b) == (46.7, 12.9)
    assert (mixtral.num_layers, mixtral.num_kv_heads) == (32, 8) and mixtral.is_moe
    assert llama31_8b.context_length == 131072 and llama31_8b.license == "llama3.1"
    # ... and Falcon 7B's multi-query attention over 71 heads
    assert (falcon_7b.num_attention_heads, falcon_7b.num_kv_heads) == (71, 1)


def test_licences_gating_and_tasks() -> None:
    # Given models with different terms and architectures
    # Then Meta's Llama repositories are gated, Apache models are not, and seq2seq
    # models are served with the text2text task
    assert catalog.lookup("llama-3-8b-instruct").gated  # type: ignore[union-attr]
    assert not catalog.lookup("falcon-40b-instruct").gated  # type: ignore[union-attr]
    assert catalog.lookup("solar-10.7b-instruct").license == "cc-by-nc-4.0"  # type: ignore[union-attr]
    assert catalog.lookup("flan-t5-xl").task == "text2text-generation"  # type: ignore[union-attr]
    assert catalog.lookup("zephyr-7b-beta").task == "text-generation"  # type: ignore[union-attr]
    assert catalog.lookup("codellama-70b-instruct").chat_template == "codellama-70b"  # type: ignore[union-attr]
