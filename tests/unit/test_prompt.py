"""Prompt building: exact chat templates, cited sources, and context that fits the budget."""

from __future__ import annotations

import random
import string

import pytest

from llmhost import catalog
from llmhost.engines.chat_templates import (
    TEMPLATES,
    ChatMessagesInvalid,
    UnknownChatTemplate,
    render_prompt,
)
from llmhost.engines.codecs import ChatMessage
from llmhost.rag.prompt import (
    ContextChunk,
    PromptBudgetExceeded,
    budget_after_rejection,
    build_rag_messages,
    build_rag_prompt,
    format_sources,
    pack_context,
)
from llmhost.serving.errors import TokenLimits
from llmhost.token_counting import (
    CONSERVATIVE_COUNTER,
    LLAMA3_COUNTER,
    HeuristicTokenCounter,
    token_counter_for,
)

SYS = ChatMessage("system", "You are helpful.")
U1 = ChatMessage("user", "What is RAG?")
A1 = ChatMessage("assistant", "Retrieval-augmented generation.")
U2 = ChatMessage("user", "Cite it.")

# Chat templates as the models publish them in tokenizer_config.json (verbatim), rendered
# the way transformers does (trim_blocks, lstrip_blocks, add_generation_prompt=True).
HF_TEMPLATES = {
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
        "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content "
        "%}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>"
        "\n\n' }}",
        "<|begin_of_text|>",
        "<|end_of_text|>",
    ),
    # meta-llama/Llama-2-7b-chat-hf
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
        "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if "
        "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles') }}"
        "{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
        "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}"
        "{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == "
        "'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
        "<s>",
        "</s>",
    ),
    # codellama/CodeLlama-70b-Instruct-hf
    "codellama-70b": (
        "{% if messages[0]['role'] == 'system' %}{% set user_index = 1 %}{% else %}{% set "
        "user_index = 0 %}{% endif %}{% for message in messages %}{% if (message['role'] == "
        "'user') != ((loop.index0 + user_index) % 2 == 0) %}{{ raise_exception('roles') }}{% "
        "endif %}{% if loop.index0 == 0 %}{{ '<s>' }}{% endif %}{% set content = 'Source: ' + "
        "message['role'] + '\\n\\n ' + message['content'].strip() %}{{ content + ' <step> ' }}"
        "{% endfor %}{{'Source: assistant\\nDestination: user\\n\\n '}}",
        "<s>",
        "</s>",
    ),
    # HuggingFaceH4/zephyr-7b-beta
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
        "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ "
        "'<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == "
        "'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif "
        "%}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}",
        "<s>",
        "</s>",
    ),
    # upstage/SOLAR-10.7B-Instruct-v1.0
    "solar": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{% if message['content']"
        "%}{{'### System:\\n' + message['content']+'\\n\\n'}}{% endif %}{% elif message['role'] "
        "== 'user' %}{{'### User:\\n' + message['content']+'\\n\\n'}}{% elif message['role'] == "
        "'assistant' %}{{'### Assistant:\\n'  + message['content']}}{% endif %}{% if loop.last "
        "and add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}{% endfor %}",
        "<s>",
        "</s>",
    ),
    # The ChatML convention (OpenHermes, Qwen and others)
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "<s>",
        "</s>",
    ),
    # mistralai/Mistral-7B-Instruct-v0.2 (no system role)
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
        "(loop.index0 % 2 == 0) %}{{ raise_exception('roles') }}{% endif %}{% if "
        "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif "
        "message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}"
        "{% endfor %}",
        "<s>",
        "</s>",
    ),
}


def hf_render(template: str, messages: list[ChatMessage]) -> str:
    import jinja2  # a test dependency (moto[server] brings it)

    source, bos, eos = HF_TEMPLATES[template]

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(
        messages=[{"role": m.role, "content": m.content} for m in messages],
        bos_token=bos,
        eos_token=eos,
        add_generation_prompt=True,
    )


CONVERSATIONS = {
    "system+user": [SYS, U1],
    "user": [U1],
    "multi-turn": [SYS, U1, A1, U2],
    "multi-turn-no-system": [U1, A1, U2],
}
# Mistral's template has no system role (folding a system turn is tested below).
TEMPLATE_CASES = [
    (template, name)
    for template in sorted(HF_TEMPLATES)
    for name, conversation in CONVERSATIONS.items()
    if not (template == "mistral" and conversation[0].role == "system")
]


@pytest.mark.parametrize(("template", "case"), TEMPLATE_CASES)
def test_templates_match_the_models_own_chat_templates(template: str, case: str) -> None:
    conversation = CONVERSATIONS[case]
    # Given the model's published template, When both render the conversation
    # Then llmhost's text (with BOS) is character for character the model's
    assert render_prompt(template, conversation, bos=True) == hf_render(template, conversation)


def test_llama3_exact_text_and_bos_left_to_the_engine() -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is RAG?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # The generate routes add BOS themselves; by default it is not in the text.
    assert render_prompt("llama3", [SYS, U1]) == expected
    assert render_prompt("llama3", [SYS, U1], bos=True) == "<|begin_of_text|>" + expected


def test_llama2_system_block_and_mistral_folding() -> None:
    assert render_prompt("llama2", [SYS, U1]) == (
        "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nWhat is RAG? [/INST]"
    )
    # Mistral has no system role: the system text leads the first user turn.
    assert render_prompt("mistral", [SYS, U1, A1, U2]) == (
        "[INST] You are helpful.\n\nWhat is RAG? [/INST]Retrieval-augmented generation.</s>"
        "[INST] Cite it. [/INST]"
    )


def test_plain_formats_for_models_without_chat_tokens() -> None:
    assert render_prompt("falcon", [SYS, U1]) == "You are helpful.\nUser: What is RAG?\nAssistant:"
    assert render_prompt("flan-t5", [SYS, U1]) == "You are helpful.\n\nWhat is RAG?"


def test_every_catalog_template_can_be_rendered() -> None:
    names = {model.chat_template for model in catalog.all_models()}
    for name in names:
        assert name in TEMPLATES
        assert render_prompt(name, [SYS, U1]).strip()


def test_bad_conversations_and_templates_are_refused_with_the_reason() -> None:
    with pytest.raises(ChatMessagesInvalid, match="last message must come from the user"):
        render_prompt("llama3", [U1, A1])
    with pytest.raises(ChatMessagesInvalid, match="'assistant' was expected"):
        render_prompt("llama3", [U1, U2])
    with pytest.raises(ChatMessagesInvalid, match="at least one user message"):
        render_prompt("llama3", [SYS])
    with pytest.raises(UnknownChatTemplate, match="known templates: llama3"):
        render_prompt("gemma", [U1])
    # Several leading system messages are joined rather than refused.
    two = [SYS, ChatMessage("system", "Answer in French."), U1]
    assert "You are helpful.\n\nAnswer in French." in render_prompt("chatml", two)


# --------------------------------------------------------------------- token counting

# Token counts of these texts by the real Llama 2 and Llama 3 tokenizers (recorded while
# calibrating the estimator; the tokenizers are not available offline).
RECORDED = {
    "Threonine can be used aerobically as the sole source of carbon and energy by mutants of "
    "Escherichia coli K-12. The pathway involves threonine dehydrogenase.": (48, 40),
    "def pack(chunks: list[str], budget: int) -> list[str]:\n    kept = []\n    for chunk in "
    "sorted(chunks, key=len):\n        if len(chunk) <= budget:\n            kept.append(chunk)\n"
    "    return kept\n": (61, 48),
    '{"id": "doc-17", "scores": [0.9132, 0.4471, 12], "tags": ["alpha", "beta"], "ok": true}': (
        47,
        40,
    ),
    "2009; 11:753-60. Table 3: 1024 2048 4096 65536 3.14159 2.71828": (58, 36),
    "Die Bundesregierung hat am Mittwoch beschlossen, die Förderung für erneuerbare Energien "
    "deutlich auszuweiten.": (36, 30),
    "北京市政府周三宣布，将在未来五年内新建一百个公园，以改善居民的生活环境和空气质量。": (  # noqa: RUF001
        42,
        32,
    ),
    "## Setup\n\n1. Run `make run`.\n2. Ingest a folder: `curl -X POST "
    "localhost:8080/v1/collections/docs/documents`.\n\n> Note: **auth** is required.": (56, 42),
}


@pytest.mark.parametrize("text", list(RECORDED), ids=lambda t: t[:12])
def test_the_estimate_never_undercounts_the_real_tokenizers(text: str) -> None:
    llama2, llama3 = RECORDED[text]
    assert CONSERVATIVE_COUNTER(text) >= max(llama2, llama3)
    assert LLAMA3_COUNTER(text) >= llama3


def test_counter_pieces() -> None:
    count = HeuristicTokenCounter()
    assert count("") == 0
    assert count("the cat") == 2  # the space before a word is part of its token
    assert count("12345") == 5  # Llama 2 splits every digit
    assert LLAMA3_COUNTER("12345") == 2  # Llama 3 groups up to three
    assert count("é") == 2 and count("日") == 3  # byte fallback, the worst case
    assert count("a\n\nb") == 4
    assert token_counter_for("llama3") is LLAMA3_COUNTER
    assert token_counter_for(None) is CONSERVATIVE_COUNTER


# ------------------------------------------------------------------------ RAG messages


def test_rag_messages_number_the_sources_and_ask_for_citations() -> None:
    chunks = [
        ContextChunk("a", "Paris is in France.", 0.9),
        ContextChunk("b", "Text.", 0.5, {"title": "Atlas"}),
    ]
    system, user = build_rag_messages("Where is Paris?", chunks)
    assert system.role == "system" and "[1]" in system.content and "cite" in system.content.lower()
    assert user.content == (
        "Sources:\n\n[1] Paris is in France.\n\n[2] Atlas\nText.\n\nQuestion: Where is Paris?"
    )
    assert "none were found" in build_rag_messages("q", [])[1].content


# ----------------------------------------------------------------------- packing


def words(rng: random.Random, n: int) -> str:
    out = []
    for i in range(n):
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 10)))
        out.append(word + ("." if i % 9 == 8 else ""))
    return " ".join(out)


def test_packing_never_exceeds_the_budget_and_keeps_the_most_relevant() -> None:
    rng = random.Random(1234)
    for trial in range(300):
        chunks = [
            ContextChunk(f"c{i}", words(rng, rng.randint(5, 120)), rng.random())
            for i in range(rng.randint(0, 12))
        ]
        budget = rng.randint(0, 900)
        counter = CONSERVATIVE_COUNTER if trial % 2 else LLAMA3_COUNTER
        packed = pack_context(chunks, budget, counter)
        # Never over budget, measured on the block as it will be written
        assert counter(format_sources(packed.included)) <= budget
        assert packed.tokens <= budget
        # Every chunk is accounted for exactly once
        assert sorted(c.id for c in packed.included + packed.dropped) == sorted(
            c.id for c in chunks
        )
        # The kept ones are the most relevant, in relevance order
        ranked = sorted(chunks, key=lambda c: -c.score)
        assert [c.id for c in packed.included] == [c.id for c in ranked[: len(packed.included)]]
        # Only the last kept one may be trimmed
        assert (
            set(packed.trimmed) <= {packed.included[-1].id}
            if packed.included
            else not packed.trimmed
        )


def test_the_last_chunk_is_trimmed_at_a_sentence_end() -> None:
    best = ContextChunk("best", "Short and relevant.", 0.9)
    long = ContextChunk(
        "long",
        " ".join(f"Sentence number {i} talks about the topic at hand." for i in range(40)),
        0.8,
    )
    low = ContextChunk("low", "Least relevant text.", 0.1)
    budget = CONSERVATIVE_COUNTER(format_sources([best])) + 80
    packed = pack_context([low, long, best], budget, CONSERVATIVE_COUNTER)
    assert [c.id for c in packed.included] == ["best", "long"]
    assert packed.trimmed == ("long",)
    assert packed.included[1].text.endswith("at hand. …")
    assert [c.id for c in packed.dropped] == ["low"]
    assert packed.sources()[1] == {
        "index": 2,
        "id": "long",
        "score": 0.8,
        "trimmed": True,
        "metadata": {},
    }


def test_a_trim_that_would_keep_almost_nothing_drops_the_chunk() -> None:
    first = ContextChunk("first", "One.", 0.9)
    second = ContextChunk("second", "word " * 500, 0.5)
    budget = CONSERVATIVE_COUNTER(format_sources([first])) + 10
    packed = pack_context([first, second], budget, CONSERVATIVE_COUNTER)
    assert [c.id for c in packed.included] == ["first"] and packed.trimmed == ()
    assert [c.id for c in packed.dropped] == ["second"]


def test_a_non_additive_counter_still_gets_a_block_within_budget() -> None:
    # Given a counter that charges extra for every source separator in a joined text
    def lumpy(text: str) -> int:
        return CONSERVATIVE_COUNTER(text) + 15 * text.count("\n\n[")

    chunks = [ContextChunk(str(i), f"Fact {i} is here.", 1 - i / 10) for i in range(8)]
    packed = pack_context(chunks, 60, lumpy)
    assert lumpy(format_sources(packed.included)) <= 60
    assert packed.included and len(packed.included) < 8


def test_whole_rag_prompt_fits_the_model_input_limit() -> None:
    rng = random.Random(5)
    chunks = [ContextChunk(f"d{i}", words(rng, 200), rng.random()) for i in range(20)]
    rag = build_rag_prompt(
        "What do the documents say?",
        chunks,
        template="llama3",
        count_tokens=LLAMA3_COUNTER,
        max_input_tokens=2048,
        max_total_tokens=4096,
        max_new_tokens=2500,
    )
    # The input limit is min(MAX_INPUT_TOKENS, MAX_TOTAL_TOKENS - max_new_tokens)
    assert rag.input_limit == 1596
    assert rag.estimated_tokens <= rag.input_limit
    assert LLAMA3_COUNTER("<|begin_of_text|>" + rag.prompt) == rag.estimated_tokens
    assert rag.packed.included and rag.packed.dropped
    assert rag.prompt.startswith("<|start_header_id|>system")
    assert "[1] " in rag.prompt and "Question: What do the documents say?" in rag.prompt


def test_a_question_too_long_for_the_model_is_a_422() -> None:
    with pytest.raises(PromptBudgetExceeded) as caught:
        build_rag_prompt(
            "why " * 400,
            [],
            template="mistral",
            count_tokens=CONSERVATIVE_COUNTER,
            max_input_tokens=256,
        )
    assert caught.value.status == 422 and caught.value.limit == 256


def test_budget_after_an_engine_rejection_removes_at_least_the_excess() -> None:
    # Given TGI's count: 4000 prompt tokens where 3896 were allowed, and an estimator that
    # said 3500 (it under-counted this prompt)
    limits = TokenLimits(input_tokens=4000, max_total_tokens=4096, max_new_tokens=200)
    new = budget_after_rejection(3000, limits, estimated_prompt_tokens=3500)
    # Then the context budget shrinks by the excess (104) plus 5% of the prompt
    assert new == 3000 - 104 - 200
    # An estimator that over-counted scales the cut to its own units
    assert budget_after_rejection(3000, limits, estimated_prompt_tokens=8000) == 3000 - 208 - 200
    assert budget_after_rejection(10, limits, estimated_prompt_tokens=4000) == 0


def test_budget_after_a_rejection_shrinks_what_was_sent_not_an_unused_budget() -> None:
    # Given a deployment whose spec allows 3584 input tokens, a RAG prompt of 5 passages that
    # used only 1400 of them (estimated), and an engine whose real limit is 1024: it counted
    # 1253 (found with the real SmolLM2 engine behind a deployment named for a bigger model)
    limits = TokenLimits(input_tokens=1253, max_input_tokens=1024)
    new = budget_after_rejection(3584, limits, estimated_prompt_tokens=1400)
    # Then the retry's budget is below what was sent, by the excess in estimate units
    excess = 1253 - limits.allowed_input_tokens
    assert new <= 1400 - excess
    # and, in the engine's units, it fits what the engine allows
    assert new * 1253 / 1400 <= limits.allowed_input_tokens
    # An engine that states no limit: half of what was sent, not half of the budget
    assert (
        budget_after_rejection(3584, TokenLimits(input_tokens=1253), estimated_prompt_tokens=1400)
        == 700
    )
