"""Open models llmhost knows the shape of, so it can size, price and prompt them (pure data).

Every number is the published value from the model's ``config.json`` on the Hugging Face
Hub (layers, attention and key/value heads, head size, context) and its model card
(parameter count, licence). Sizing multiplies these, so a wrong value here becomes a wrong
instance type: check the config when adding a model.

A model that is not in the catalog can still be deployed; llmhost then assumes nothing
about its size (see ``llmhost.sizing``).

Chat templates. Every model here whose tokenizer (``tokenizer_config.json`` on the Hub)
ships a ``chat_template`` is called through its engine's chat API, which renders the
conversation with that template: Llama 2 chat, Code Llama instruct (the 70B's "Source:"
format included), Llama 3, 3.1 and 3.2 instruct, Mistral 7B instruct v0.2 and v0.3,
Mixtral 8x7B instruct, Zephyr 7B beta, SOLAR 10.7B instruct and SmolLM2 135M instruct. Two
families ship none (``ships_chat_template=False``), so llmhost renders their prompt itself
and calls the engine's generate API: Flan-T5 (a seq2seq instruction follower without chat
tokens) and Falcon 7B/40B instruct (TII published only a "User:/Assistant:" convention in the model
page's discussion; a template was proposed on the Hub, refs/pr/91 of falcon-40b-instruct,
not in the released tokenizer). ``chat_template`` names llmhost's own rendering of each
format (``llmhost.engines.chat_templates``): the prompt itself for those two, and for every
model the text whose tokens llmhost counts to fit a RAG context into the model's input budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

ChatTemplate = Literal[
    "llama2",
    "llama3",
    "codellama-70b",
    "mistral",
    "zephyr",
    "chatml",
    "falcon",
    "solar",
    "flan-t5",
]


@dataclass(frozen=True)
class CatalogModel:
    """One model's identity, licence and the shape needed for memory math.

    ``params_b`` is the total parameter count in billions (every expert of a mixture of
    experts is resident in GPU memory); ``active_params_b`` is what one token runs through,
    which sets speed, not memory. ``num_kv_heads`` below ``num_attention_heads`` means
    grouped-query (or multi-query, when 1) attention, which shrinks the KV cache.
    For encoder-decoder models (``seq2seq``) the layer and head counts are the decoder's.
    ``ships_chat_template``: the tokenizer carries a chat template the engine applies (see
    the module docstring); ``chat_template`` is llmhost's rendering of the same format.
    """

    id: str
    hf_id: str
    family: str
    params_b: float
    context_length: int
    license: str
    gated: bool
    architecture: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    chat_template: ChatTemplate
    ships_chat_template: bool = True
    active_params_b: float | None = None
    seq2seq: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def task(self) -> str:
        """The Hugging Face pipeline task that serves this model."""
        return "text2text-generation" if self.seq2seq else "text-generation"

    @property
    def is_moe(self) -> bool:
        return self.active_params_b is not None and self.active_params_b < self.params_b


def _llama2(
    size: str, params: float, layers: int, heads: int, kv: int, hidden: int
) -> CatalogModel:
    return CatalogModel(
        id=f"llama-2-{size}-chat",
        hf_id=f"meta-llama/Llama-2-{size}-chat-hf",
        family="llama2",
        params_b=params,
        context_length=4096,
        license="llama2",
        gated=True,
        architecture="LlamaForCausalLM; RoPE; "
        + ("grouped-query attention (8 KV heads)" if kv < heads else "multi-head attention"),
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv,
        head_dim=128,
        hidden_size=hidden,
        chat_template="llama2",
    )


def _codellama(
    size: str, params: float, layers: int, heads: int, kv: int, hidden: int
) -> CatalogModel:
    is_70b = size == "70b"
    return CatalogModel(
        id=f"codellama-{size}-instruct",
        hf_id=f"codellama/CodeLlama-{size}-Instruct-hf",
        family="codellama",
        params_b=params,
        # 7B-34B were fine-tuned on 16k sequences; the 70B config keeps Llama 2's 4096.
        context_length=4096 if is_70b else 16384,
        license="llama2",
        gated=False,
        architecture="LlamaForCausalLM; RoPE theta 1e6 for long code context; "
        + ("grouped-query attention (8 KV heads)" if kv < heads else "multi-head attention"),
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv,
        head_dim=128,
        hidden_size=hidden,
        # The 70B instruct model has its own "Source: ... <step>" format, not [INST].
        chat_template="codellama-70b" if is_70b else "llama2",
        aliases=(f"meta-llama/CodeLlama-{size}-Instruct-hf",),
    )


def _llama3(
    version: str,
    size: str,
    params: float,
    context: int,
    layers: int,
    heads: int,
    hidden: int,
    head_dim: int = 128,
) -> CatalogModel:
    upper = size.upper()
    aliases: tuple[str, ...]
    if version == "3":
        hf_id, aliases = f"meta-llama/Meta-Llama-3-{upper}-Instruct", ()
    else:
        # Meta renamed the 3.1 repositories; the old names still resolve on the Hub.
        hf_id = f"meta-llama/Llama-{version}-{upper}-Instruct"
        aliases = (f"meta-llama/Meta-Llama-{version}-{upper}-Instruct",)
    return CatalogModel(
        id=f"llama-{version}-{size}-instruct",
        hf_id=hf_id,
        family="llama3",
        params_b=params,
        context_length=context,
        license=f"llama{version}",
        gated=True,
        architecture="LlamaForCausalLM; 128k-token vocabulary; grouped-query attention "
        "(8 KV heads)" + ("; RoPE scaling for 128k context" if context > 8192 else ""),
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=8,
        head_dim=head_dim,
        hidden_size=hidden,
        chat_template="llama3",
        aliases=aliases,
    )


def _flan_t5(size: str, params: float, layers: int, heads: int, d_model: int) -> CatalogModel:
    return CatalogModel(
        id=f"flan-t5-{size}",
        hf_id=f"google/flan-t5-{size}",
        family="flan-t5",
        params_b=params,
        # Relative position buckets accept longer inputs, but it was trained on 512 tokens.
        context_length=512,
        license="apache-2.0",
        gated=False,
        architecture=f"T5ForConditionalGeneration (T5 v1.1 encoder-decoder, {layers}+{layers} "
        "layers, gated-GELU); runs on CPU for the small sizes",
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=64,
        hidden_size=d_model,
        chat_template="flan-t5",
        ships_chat_template=False,
        seq2seq=True,
    )


_MODELS: tuple[CatalogModel, ...] = (
    # ------------------------------------------------------------------------- Flan-T5
    _flan_t5("small", 0.077, layers=8, heads=6, d_model=512),
    _flan_t5("base", 0.248, layers=12, heads=12, d_model=768),
    _flan_t5("large", 0.783, layers=24, heads=16, d_model=1024),
    _flan_t5("xl", 2.85, layers=24, heads=32, d_model=2048),
    _flan_t5("xxl", 11.3, layers=24, heads=64, d_model=4096),
    # -------------------------------------------------------------------------- Falcon
    CatalogModel(
        id="falcon-7b-instruct",
        hf_id="tiiuae/falcon-7b-instruct",
        family="falcon",
        params_b=7.22,
        context_length=2048,
        license="apache-2.0",
        gated=False,
        architecture="FalconForCausalLM; multi-query attention (1 KV head); 71 heads, so "
        "it cannot be sharded over 2, 4 or 8 GPUs",
        num_layers=32,
        num_attention_heads=71,
        num_kv_heads=1,
        head_dim=64,
        hidden_size=4544,
        chat_template="falcon",
        ships_chat_template=False,
    ),
    CatalogModel(
        id="falcon-40b-instruct",
        hf_id="tiiuae/falcon-40b-instruct",
        family="falcon",
        params_b=41.8,
        context_length=2048,
        license="apache-2.0",
        gated=False,
        architecture="FalconForCausalLM (new decoder architecture); grouped-query attention "
        "(8 KV heads)",
        num_layers=60,
        num_attention_heads=128,
        num_kv_heads=8,
        head_dim=64,
        hidden_size=8192,
        chat_template="falcon",
        ships_chat_template=False,
    ),
    # ------------------------------------------------------------------------- Llama 2
    _llama2("7b", 6.74, layers=32, heads=32, kv=32, hidden=4096),
    _llama2("13b", 13.0, layers=40, heads=40, kv=40, hidden=5120),
    _llama2("70b", 69.0, layers=80, heads=64, kv=8, hidden=8192),
    # ---------------------------------------------------------------------- Code Llama
    _codellama("7b", 6.74, layers=32, heads=32, kv=32, hidden=4096),
    _codellama("13b", 13.0, layers=40, heads=40, kv=40, hidden=5120),
    _codellama("34b", 33.7, layers=48, heads=64, kv=8, hidden=8192),
    _codellama("70b", 69.0, layers=80, heads=64, kv=8, hidden=8192),
    # ------------------------------------------------------------------------- Mistral
    CatalogModel(
        id="mistral-7b-instruct-v0.2",
        hf_id="mistralai/Mistral-7B-Instruct-v0.2",
        family="mistral",
        params_b=7.24,
        context_length=32768,
        license="apache-2.0",
        gated=True,
        architecture="MistralForCausalLM; grouped-query attention (8 KV heads); RoPE theta "
        "1e6, no sliding window",
        num_layers=32,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=4096,
        chat_template="mistral",
    ),
    CatalogModel(
        id="mistral-7b-instruct-v0.3",
        hf_id="mistralai/Mistral-7B-Instruct-v0.3",
        family="mistral",
        params_b=7.25,
        context_length=32768,
        license="apache-2.0",
        gated=True,
        architecture="MistralForCausalLM; grouped-query attention (8 KV heads); 32768-token "
        "vocabulary with function-calling tokens",
        num_layers=32,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=4096,
        chat_template="mistral",
    ),
    CatalogModel(
        id="mixtral-8x7b-instruct",
        hf_id="mistralai/Mixtral-8x7B-Instruct-v0.1",
        family="mixtral",
        params_b=46.7,
        active_params_b=12.9,
        context_length=32768,
        license="apache-2.0",
        gated=True,
        architecture="MixtralForCausalLM; sparse mixture of experts (8 experts, 2 per token); "
        "grouped-query attention (8 KV heads)",
        num_layers=32,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=4096,
        chat_template="mistral",
    ),
    CatalogModel(
        id="zephyr-7b-beta",
        hf_id="HuggingFaceH4/zephyr-7b-beta",
        family="mistral",
        params_b=7.24,
        # The config allows 32768 positions, but Mistral 7B v0.1 uses a 4096-token sliding
        # window and was trained on 8k sequences: quality drops beyond that.
        context_length=32768,
        license="mit",
        gated=False,
        architecture="MistralForCausalLM (Mistral 7B v0.1 fine-tune, DPO); grouped-query "
        "attention (8 KV heads); 4096-token sliding window",
        num_layers=32,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=4096,
        chat_template="zephyr",
    ),
    CatalogModel(
        id="solar-10.7b-instruct",
        hf_id="upstage/SOLAR-10.7B-Instruct-v1.0",
        family="solar",
        params_b=10.7,
        context_length=4096,
        license="cc-by-nc-4.0",
        gated=False,
        architecture="LlamaForCausalLM; depth up-scaled Mistral 7B (48 layers); grouped-query "
        "attention (8 KV heads); non-commercial licence",
        num_layers=48,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=4096,
        chat_template="solar",
    ),
    # ------------------------------------------------------------------------- Llama 3
    _llama3("3", "8b", 8.03, 8192, layers=32, heads=32, hidden=4096),
    _llama3("3", "70b", 70.6, 8192, layers=80, heads=64, hidden=8192),
    _llama3("3.1", "8b", 8.03, 131072, layers=32, heads=32, hidden=4096),
    _llama3("3.1", "70b", 70.6, 131072, layers=80, heads=64, hidden=8192),
    _llama3("3.2", "1b", 1.24, 131072, layers=16, heads=32, hidden=2048, head_dim=64),
    _llama3("3.2", "3b", 3.21, 131072, layers=28, heads=24, hidden=3072),
    # ------------------------------------------------------------------------- SmolLM2
    # The model `make run` answers with on the CPU (llama.cpp, a 4-bit GGUF file). The
    # numbers are its GGUF metadata's, which llama.cpp converted from config.json.
    CatalogModel(
        id="smollm2-135m-instruct",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        family="smollm2",
        params_b=0.135,
        context_length=8192,
        license="apache-2.0",
        gated=False,
        architecture="LlamaForCausalLM; grouped-query attention (3 KV heads); a tiny model "
        "for development, not for judging answer quality",
        num_layers=30,
        num_attention_heads=9,
        num_kv_heads=3,
        head_dim=64,
        hidden_size=576,
        chat_template="chatml",
    ),
)


@cache
def _index() -> dict[str, CatalogModel]:
    index: dict[str, CatalogModel] = {}
    for model in _MODELS:
        for key in (model.id, model.hf_id, *model.aliases):
            index[key.lower()] = model
    return index


def lookup(id_or_hf_id: str | None) -> CatalogModel | None:
    """The catalog entry for a short id ('llama-3.1-8b-instruct') or a Hub id, any case.

    Returns None for models the catalog does not know (and for None), never raises.
    """
    if not id_or_hf_id:
        return None
    return _index().get(id_or_hf_id.strip().lower())


def all_models() -> tuple[CatalogModel, ...]:
    """Every catalog entry, in a stable order (family by family, smallest first)."""
    return _MODELS
