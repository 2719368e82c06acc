"""The real-model engine alone, over HTTP: TGI's protocol spoken by SmolLM2-135M-Instruct
under llama.cpp (``llama_engine()`` served by ``serve_engine``).

Token counts and token ids are checked against the model's tokenizer rebuilt from the GGUF
file with Hugging Face ``tokenizers``, and chat prompts against the model's own template
rendered as ``transformers`` renders it (``llm_reference``): nothing here trusts the engine's
own tokenizer. Contents are asserted on greedy generations only (TGI is greedy when the
request sets no sampling parameter, and for chat at ``temperature`` 0).
"""

from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from llm_reference import (
    MODEL_ID,
    Reference,
    over_the_input_limit,
    readme_text,
    reference,
    sse_events,
)

CHAT_SAY_HI = [{"role": "user", "content": "Say hello in one short sentence."}]


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from llmhost_local.llama import llama_engine

    yield llama_engine()


@pytest.fixture(scope="module")
def url(engine: Any) -> Iterator[str]:
    from llmhost_local.engine_server import serve_engine

    server, base = serve_engine(engine)
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def ref() -> Reference:
    return reference()


@pytest.fixture(scope="module")
def openai_client(url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(url: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def stream(url: str, path: str, body: Any) -> tuple[int, str, list[Any]]:
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        return reply.status, reply.headers["Content-Type"], list(sse_events(reply))


# ------------------------------------------------------------------------------- /info


def test_info_names_the_model_and_limits_inside_its_context(url: str, ref: Reference) -> None:
    from llmhost_local import llama

    with urllib.request.urlopen(url + "/health", timeout=30) as health:
        assert health.status == 200
    with urllib.request.urlopen(url + "/info", timeout=30) as reply:
        info = json.loads(reply.read())
    # The fields llmhost reads from a TGI router's /info
    assert info["model_id"] == MODEL_ID
    assert info["model_pipeline_tag"] == "text-generation"
    assert info["max_input_tokens"] == llama.MAX_INPUT_TOKENS
    assert info["max_total_tokens"] == llama.MAX_TOTAL_TOKENS
    assert info["max_stop_sequences"] == 4
    assert info["max_best_of"] == 1
    assert isinstance(info["version"], str) and info["version"]
    assert info["max_input_tokens"] < info["max_total_tokens"] <= ref.context_length


# ---------------------------------------------------------------------------- /generate


def test_generate_answers_greedily_with_the_models_own_tokens(url: str, ref: Reference) -> None:
    inputs = "The capital of France is"
    body = {
        "inputs": inputs,
        "parameters": {"max_new_tokens": 6, "details": True, "decoder_input_details": True},
    }
    code, reply, headers = post(url, "/generate", body)
    assert code == 200, reply
    details = reply["details"]
    # The model knows this one: greedy decoding names Paris first
    assert reply["generated_text"].startswith(" Paris"), reply["generated_text"]
    # The prompt is the model's tokenization of `inputs` (SmolLM2 adds no BOS)
    assert [t["id"] for t in details["prefill"]] == ref.ids(inputs)
    assert details["prefill"][0]["logprob"] is None
    # Max new tokens reached: length, and every generated token accounted for
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == len(details["tokens"]) == 6
    ids = [t["id"] for t in details["tokens"]]
    assert ref.decode(ids) == reply["generated_text"]
    assert "".join(t["text"] for t in details["tokens"]) == reply["generated_text"]
    for token in details["tokens"]:
        assert set(token) == {"id", "text", "logprob", "special"}
        assert token["special"] is False
        assert math.isfinite(token["logprob"]) and token["logprob"] <= 0
    # The usage headers the runtime front reads: the model's counts
    assert headers["x-prompt-tokens"] == str(ref.count(inputs))
    assert headers["x-generated-tokens"] == "6"


def test_generate_stops_on_the_models_end_of_turn(url: str, ref: Reference) -> None:
    # A chatml prompt: the instruct model closes its turn with <|im_end|>
    inputs = ref.chat(CHAT_SAY_HI)
    body = {"inputs": inputs, "parameters": {"max_new_tokens": 80, "details": True}}
    code, reply, headers = post(url, "/generate", body)
    assert code == 200, reply
    details = reply["details"]
    assert details["finish_reason"] == "eos_token", reply
    last = details["tokens"][-1]
    assert last["special"] is True
    assert last["id"] == ref.metadata["tokenizer.ggml.eos_token_id"]
    assert last["text"] == ref.token(last["id"]) == "<|im_end|>"
    # The end-of-turn token is counted but left out of the text
    assert details["generated_tokens"] == len(details["tokens"])
    assert "<|im_end|>" not in reply["generated_text"]
    assert ref.decode([t["id"] for t in details["tokens"]]) == reply["generated_text"]
    assert reply["generated_text"].strip()
    assert headers["x-prompt-tokens"] == str(ref.count(inputs))


def test_generate_stops_at_a_stop_sequence_and_keeps_it_as_tgi_does(url: str) -> None:
    body = {
        "inputs": "Count: 1, 2, 3,",
        "parameters": {"max_new_tokens": 20, "details": True, "stop": [" 5"]},
    }
    code, reply, _ = post(url, "/generate", body)
    assert code == 200, reply
    assert reply["details"]["finish_reason"] == "stop_sequence"
    assert reply["generated_text"].endswith(" 5"), reply["generated_text"]
    assert " 4," in reply["generated_text"]
    assert reply["details"]["generated_tokens"] < 20


def test_the_invocations_route_wraps_generate_in_a_list(url: str) -> None:
    body = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 3}}
    code, reply, _ = post(url, "/invocations", body)
    assert code == 200, reply
    _, direct, _ = post(url, "/generate", body)
    assert reply == [direct]


def test_the_same_greedy_request_gives_the_same_answer(url: str, ref: Reference) -> None:
    # A prompt whose first tokens are a close call for greedy decoding; asked twice in a row,
    # the second finds the whole prompt in the model's cache (TGI: same tokens every time)
    body = {
        "inputs": ref.chat(CHAT_SAY_HI),
        "parameters": {"max_new_tokens": 6, "details": True},
    }
    post(url, "/generate", {"inputs": "Unrelated", "parameters": {"max_new_tokens": 1}})
    first = post(url, "/generate", body)[1]
    again = post(url, "/generate", body)[1]
    assert [t["id"] for t in again["details"]["tokens"]] == [
        t["id"] for t in first["details"]["tokens"]
    ]


def test_a_shared_prefix_does_not_change_greedy_answers(url: str) -> None:
    # The backend reuses the KV cache of the previous prompt's common prefix
    first = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 8}}
    other = {"inputs": "The capital of Italy is", "parameters": {"max_new_tokens": 8}}
    before = post(url, "/generate", first)[1]
    post(url, "/generate", other)
    assert post(url, "/generate", first)[1] == before


def test_concurrent_requests_get_the_answers_they_get_alone(url: str) -> None:
    bodies = [
        {"inputs": f"The capital of {country} is", "parameters": {"max_new_tokens": 6}}
        for country in ("France", "Germany", "Spain", "Japan")
    ]
    alone = [post(url, "/generate", body)[1] for body in bodies]
    together: list[Any] = [None] * len(bodies)

    def ask(index: int) -> None:
        together[index] = post(url, "/generate", bodies[index])[1]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert together == alone


# --------------------------------------------------------------------- /generate_stream


def test_generate_stream_sends_tgi_token_events(url: str, ref: Reference) -> None:
    inputs = ref.chat(CHAT_SAY_HI)
    params = {"max_new_tokens": 12, "details": True}
    code, kind, events = stream(url, "/generate_stream", {"inputs": inputs, "parameters": params})
    assert code == 200
    assert kind.startswith("text/event-stream")
    # One event per token, indexed from 1, with TGI's token object
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    for event in events:
        assert set(event["token"]) == {"id", "text", "logprob", "special"}
    # generated_text and details only on the last event
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["details"]["generated_tokens"] == len(events)
    assert last["details"]["input_length"] == ref.count(inputs)
    assert last["details"]["finish_reason"] in {"length", "eos_token"}
    ids = [e["token"]["id"] for e in events]
    assert last["generated_text"] == ref.decode(ids)
    # The same tokens as the complete reply (both greedy)
    code, whole, _ = post(url, "/generate", {"inputs": inputs, "parameters": params})
    assert code == 200
    assert [t["id"] for t in whole["details"]["tokens"]] == ids
    assert whole["generated_text"] == last["generated_text"]
    assert whole["details"]["finish_reason"] == last["details"]["finish_reason"]


def test_a_client_leaving_a_stream_stops_its_generation(
    url: str, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Count the tokens the model generates for each request
    produced: list[int] = []
    complete = engine.backend.complete

    def counted(*args: Any, **kwargs: Any) -> Iterator[Any]:
        index = len(produced)
        produced.append(0)
        for step in complete(*args, **kwargs):
            produced[index] += 1
            yield step

    monkeypatch.setattr(engine.backend, "complete", counted)
    # Given a stream that would run for 400 tokens (the model counts on and on, greedily)
    body = {"inputs": "1, 2, 3, 4, 5,", "parameters": {"max_new_tokens": 400}}
    request = urllib.request.Request(
        url + "/generate_stream", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    reply = urllib.request.urlopen(request, timeout=60)
    assert reply.readline().startswith(b"data:")
    reply.close()  # When the client hangs up after the first token
    # Then the next request is served, and the abandoned one stopped generating (its
    # unsent events fail to write once the connection is gone)
    code, answer, _ = post(url, "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
    assert code == 200, answer
    assert len(produced) == 2 and produced[1] == 2
    assert produced[0] < 200, f"the abandoned stream generated {produced[0]} of 400 tokens"


# ------------------------------------------------------------------------ Messages API


def test_chat_completion_through_the_openai_package(
    url: str, openai_client: Any, ref: Reference
) -> None:
    reply = openai_client.chat.completions.create(
        model=MODEL_ID, messages=CHAT_SAY_HI, max_tokens=80, temperature=0
    )
    choice = reply.choices[0]
    assert reply.object == "chat.completion"
    assert reply.model == MODEL_ID
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"  # the model ended its turn (TGI's eos_token)
    # The prompt is the conversation in the model's own template, counted by its tokenizer
    prompt = ref.chat(CHAT_SAY_HI)
    assert reply.usage.prompt_tokens == ref.count(prompt)
    # The answer is what the raw model generates greedily from that prompt
    code, raw, _ = post(
        url, "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 80, "details": True}}
    )
    assert code == 200
    assert choice.message.content == raw["generated_text"]
    assert reply.usage.completion_tokens == raw["details"]["generated_tokens"]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_through_the_openai_package(openai_client: Any, ref: Reference) -> None:
    request: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "What colour is the sky on a clear day?"},
        ],
        "max_tokens": 10,
        "temperature": 0,
    }
    whole = openai_client.chat.completions.create(**request)
    chunks = list(
        openai_client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    # A chunk per token, then OpenAI's usage chunk with no choices
    deltas = [c for c in chunks if c.choices]
    assert len(deltas) >= 2 and chunks[-1].choices == []
    assert deltas[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None for c in deltas[:-1])
    assert deltas[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content or "" for c in deltas)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    # A system message replaces the template's default one
    prompt = ref.chat(request["messages"])
    assert "You are a helpful AI assistant" not in prompt
    assert whole.usage.prompt_tokens == ref.count(prompt)
    assert whole.usage.completion_tokens == len(deltas)


# ------------------------------------------------------------------ TGI's error replies


def test_input_over_max_input_tokens_is_tgis_422(url: str, engine: Any, ref: Reference) -> None:
    limit = engine.max_input_tokens
    text, count = over_the_input_limit(ref, limit, engine.max_total_tokens)
    code, body, _ = post(url, "/generate", {"inputs": text, "parameters": {"max_new_tokens": 8}})
    assert code == 422
    assert body == {
        "error": f"Input validation error: `inputs` must have less than {limit} tokens. "
        f"Given: {count}",
        "error_type": "validation",
    }
    # Streamed, TGI reports it as the stream's only event, with HTTP 200
    _, _, events = stream(
        url, "/generate_stream", {"inputs": text, "parameters": {"max_new_tokens": 8}}
    )
    assert events == [body]


def test_input_plus_new_tokens_over_max_total_tokens_is_tgis_422(
    url: str, engine: Any, ref: Reference
) -> None:
    total = engine.max_total_tokens
    text = readme_text(ref, engine.max_input_tokens - 24)
    count = ref.count(text)
    assert count <= engine.max_input_tokens
    new = total - count + 1
    code, body, _ = post(url, "/generate", {"inputs": text, "parameters": {"max_new_tokens": new}})
    assert code == 422
    assert body == {
        "error": f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {total}. "
        f"Given: {count} `inputs` tokens and {new} `max_new_tokens`",
        "error_type": "validation",
    }


def test_a_chat_over_the_input_limit_is_refused_through_the_openai_package(
    openai_client: Any, engine: Any, ref: Reference
) -> None:
    from openai import APIError, UnprocessableEntityError

    limit = engine.max_input_tokens
    text, _ = over_the_input_limit(ref, limit - 40, engine.max_total_tokens - 40)
    messages = [{"role": "user", "content": text}]
    count = ref.count(ref.chat(messages))
    assert limit < count <= engine.max_total_tokens - 8
    expected = (
        f"Input validation error: `inputs` must have less than {limit} tokens. Given: {count}"
    )
    with pytest.raises(UnprocessableEntityError) as refused:
        openai_client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=8)
    assert refused.value.response.json() == {"error": expected, "error_type": "validation"}
    # Streamed: TGI's error event, which the openai package raises as an APIError
    with pytest.raises(APIError) as failed:
        list(
            openai_client.chat.completions.create(
                model=MODEL_ID, messages=messages, max_tokens=8, stream=True
            )
        )
    assert failed.value.body == expected


BAD_PARAMETERS = [
    ({"temperature": -1}, "`temperature` must be strictly positive", True),
    ({"temperature": 0}, "`temperature` must be strictly positive", False),
    ({"top_p": 2}, "`top_p` must be > 0.0 and < 1.0", True),
    ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0", True),
    ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5", True),
    ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive", True),
]


@pytest.mark.parametrize(
    ("parameters", "message", "chat_too"),
    BAD_PARAMETERS,
    ids=[json.dumps(p)[1:-1].replace('"', "") for p, _, _ in BAD_PARAMETERS],
)
def test_bad_parameters_are_tgis_422(
    url: str, parameters: dict[str, Any], message: str, chat_too: bool
) -> None:
    expected = {"error": f"Input validation error: {message}", "error_type": "validation"}
    code, body, _ = post(url, "/generate", {"inputs": "Hello", "parameters": parameters})
    assert (code, body) == (422, expected)
    # The Messages API names max_new_tokens max_tokens
    chat = {"max_tokens" if k == "max_new_tokens" else k: v for k, v in parameters.items()}
    code, body, _ = post(
        url,
        "/v1/chat/completions",
        {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 2,
            **chat,
        },
    )
    if chat_too:
        assert (code, body) == (422, expected)
    else:
        assert code == 200, body


# A template that refuses what the model's cannot: roles that do not alternate (as Mistral's
# and Llama 2's do, with transformers' raise_exception).
STRICT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_a_chat_template_error_is_tgis_422_template_error(
    url: str, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost_local import llama

    # SmolLM2's own template renders any conversation; one with raise_exception stands in
    backend = engine.backend
    monkeypatch.setattr(backend, "_template", llama._chat_template(STRICT_TEMPLATE, backend._llm))
    messages = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi again"}]
    expected = {
        "error": "Template error: Conversation roles must alternate "
        "user/assistant/user/assistant/...",
        "error_type": "template_error",
    }
    code, body, _ = post(
        url, "/v1/chat/completions", {"model": MODEL_ID, "messages": messages, "max_tokens": 4}
    )
    assert (code, body) == (422, expected)
    _, _, events = stream(
        url,
        "/v1/chat/completions",
        {"model": MODEL_ID, "messages": messages, "max_tokens": 4, "stream": True},
    )
    assert events == [expected]
    # An alternating conversation still renders and is answered
    code, body, _ = post(
        url,
        "/v1/chat/completions",
        {"model": MODEL_ID, "messages": messages[:1], "max_tokens": 2, "temperature": 0},
    )
    assert code == 200, body


def test_a_chat_message_without_a_role_is_tgis_422(url: str) -> None:
    # TGI's Message has a required `role`: serde refuses the body before any template runs
    code, body, _ = post(
        url,
        "/v1/chat/completions",
        {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}, {"content": "x"}]},
    )
    assert code == 422
    assert body["error_type"] == "validation"
    assert body["error"].startswith("Failed to deserialize the JSON body into the target type")
    assert "messages[1]: missing field `role`" in body["error"]
