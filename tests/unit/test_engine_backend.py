"""The local engine's TGI protocol over any backend (``EngineBackend``), with a scripted one:
what a real model does that the extractive stand-in never does (an end-of-generation token
that is special and left out of the text, a failure after the stream began, a client that
hangs up), and TGI's choice between greedy and sampling. The real model's own suite is
``make test-llm`` (tests/llm)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from llmhost_local.engine import (
    EngineTemplateError,
    EngineToken,
    LocalEngine,
    Prompt,
    Sampling,
    Step,
)
from llmhost_local.extractive import Turn

EOS = EngineToken(2, "<|im_end|>", -0.1, special=True)


class Scripted:
    """A backend that answers with fixed tokens, then the end-of-generation token; it counts
    one token per character of the prompt and records what it was asked."""

    model_id = "acme/scripted-1"
    compute_type = "scripted"
    tokenizer_note = ""

    def __init__(self, words: list[str], fail_after: int | None = None) -> None:
        self.words = words
        self.fail_after = fail_after
        self.sampling: list[Sampling] = []
        self.closed = 0
        self.started = 0

    def prompt(self, inputs: str) -> Prompt:
        return Prompt(inputs, len(inputs), empty=not inputs, token_ids=tuple(map(ord, inputs)))

    def chat_prompt(self, turns: list[Turn]) -> Prompt:
        if any(t.role == "tool" for t in turns):
            raise EngineTemplateError("Conversation roles must alternate user/assistant")
        text = "".join(f"<{t.role}>{t.text}" for t in turns)
        return Prompt(text, len(text), empty=not turns)

    def prefill(self, prompt: Prompt) -> list[dict[str, Any]]:
        return [{"id": i, "text": chr(i), "logprob": None} for i in prompt.token_ids]

    def complete(
        self, prompt: Prompt, max_new_tokens: int, stop: list[str], sampling: Sampling
    ) -> Iterator[Step]:
        self.started += 1
        self.sampling.append(sampling)
        try:
            text = ""
            for count, word in enumerate(self.words, start=1):
                if self.fail_after is not None and count > self.fail_after:
                    raise RuntimeError("CUDA error: device lost")
                text += word
                done = (
                    "stop_sequence"
                    if any(s in text for s in stop)
                    else "length"
                    if count >= max_new_tokens
                    else None
                )
                yield Step(EngineToken(100 + count, word, -0.5), done)
                if done:
                    return
            yield Step(EOS, "eos_token")
        finally:
            self.closed += 1


def _post(engine: LocalEngine, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    reply = engine.handle("POST", path, json.dumps(body).encode())
    if reply.stream is not None:
        return reply.status, [_event(e) for e in reply.stream]
    return reply.status, json.loads(reply.body)


def _event(raw: bytes) -> Any:
    data = raw.decode().removeprefix("data:").strip()
    return data if data == "[DONE]" else json.loads(data)


def test_the_end_of_generation_token_is_reported_special_and_left_out_of_the_text() -> None:
    engine = LocalEngine(backend=Scripted(["Paris", " is", " nice."]))
    status, reply = _post(
        engine,
        "/generate",
        {"inputs": "Where?", "parameters": {"details": True, "max_new_tokens": 10}},
    )
    assert status == 200
    assert reply["generated_text"] == "Paris is nice."
    details = reply["details"]
    assert details["finish_reason"] == "eos_token"
    assert details["generated_tokens"] == 4  # TGI counts the EOS token
    assert details["tokens"][-1] == {
        "id": 2,
        "text": "<|im_end|>",
        "logprob": -0.1,
        "special": True,
    }
    assert [t["special"] for t in details["tokens"][:-1]] == [False, False, False]


def test_generate_stream_events_carry_the_last_token_the_text_and_the_details() -> None:
    engine = LocalEngine(backend=Scripted(["a", "b"]))
    status, events = _post(
        engine, "/generate_stream", {"inputs": "xyz", "parameters": {"details": True}}
    )
    assert status == 200
    assert [e["index"] for e in events] == [1, 2, 3]
    assert [e["generated_text"] for e in events] == [None, None, "ab"]
    assert events[-1]["token"]["special"] is True
    assert events[-1]["details"] == {
        "finish_reason": "eos_token",
        "generated_tokens": 3,
        "seed": None,
        "input_length": 3,
    }
    assert all(e["details"] is None for e in events[:-1])


def test_chat_stream_leaves_special_tokens_out_and_counts_them_in_usage() -> None:
    engine = LocalEngine(backend=Scripted(["Hi", "!"]))
    status, events = _post(
        engine,
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hello"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert status == 200
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    contents = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]]
    assert "".join(contents) == "Hi!"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": len("<user>hello"),
        "completion_tokens": 3,
        "total_tokens": len("<user>hello") + 3,
    }
    assert all(c["model"] == "acme/scripted-1" for c in chunks)


def test_a_failure_after_the_stream_began_ends_it_with_an_error_event() -> None:
    backend = Scripted(["one", " two", " three"], fail_after=1)
    engine = LocalEngine(backend=backend)
    _, events = _post(engine, "/generate_stream", {"inputs": "go"})
    assert events[0]["token"]["text"] == "one"
    assert events[-1]["error_type"] == "generation"
    assert "device lost" in events[-1]["error"]
    _, chat = _post(
        engine,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "go"}], "stream": True},
    )
    assert chat[-1]["error_type"] == "generation"
    assert "[DONE]" not in chat
    assert backend.closed == backend.started == 2


def test_a_client_that_hangs_up_stops_the_generation() -> None:
    backend = Scripted(["w"] * 50)
    reply = LocalEngine(backend=backend).handle(
        "POST", "/generate_stream", json.dumps({"inputs": "go"}).encode()
    )
    assert reply.stream is not None
    assert backend.started == 0  # nothing runs before the first event is asked for
    next(reply.stream)
    reply.stream.close()  # what the HTTP server does when the socket breaks
    assert backend.closed == 1


def test_a_template_error_is_tgis_422_and_inside_a_stream_an_error_event() -> None:
    engine = LocalEngine(backend=Scripted(["x"]))
    messages = [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]
    status, reply = _post(engine, "/v1/chat/completions", {"messages": messages})
    assert status == 422
    assert reply == {
        "error": "Template error: Conversation roles must alternate user/assistant",
        "error_type": "template_error",
    }
    status, events = _post(engine, "/v1/chat/completions", {"messages": messages, "stream": True})
    assert status == 200
    assert events == [reply]


def test_limits_use_the_backends_counts_without_the_stand_ins_note() -> None:
    engine = LocalEngine(max_input_tokens=10, max_total_tokens=20, backend=Scripted(["x"]))
    status, reply = _post(
        engine, "/generate", {"inputs": "x" * 11, "parameters": {"max_new_tokens": 5}}
    )
    assert status == 422
    assert reply["error"] == (
        "Input validation error: `inputs` must have less than 10 tokens. Given: 11"
    )
    status, reply = _post(
        engine, "/generate", {"inputs": "x" * 10, "parameters": {"max_new_tokens": 11}}
    )
    assert status == 422
    assert "Given: 10 `inputs` tokens and 11 `max_new_tokens`" in reply["error"]
    assert reply["error"].endswith("`max_new_tokens`")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"top_k": 1.5}, "`top_k` must be strictly positive"),
        ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
        ({"repetition_penalty": "1"}, "`repetition_penalty` must be strictly positive"),
        # TGI's ranges are open: temperature 0 and top_p 1.0 are refused on /generate
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"typical_p": 1}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ],
)
def test_bad_sampling_parameters_are_tgis_validation_errors(
    params: dict[str, Any], message: str
) -> None:
    backend = Scripted(["x"])
    status, reply = _post(
        LocalEngine(backend=backend), "/generate", {"inputs": "hi", "parameters": params}
    )
    assert status == 422
    assert reply == {"error": f"Input validation error: {message}", "error_type": "validation"}
    assert backend.started == 0


def test_the_chat_route_takes_temperature_0_as_greedy_but_refuses_top_p_1() -> None:
    engine = LocalEngine(backend=Scripted(["x"]))
    chat = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert _post(engine, "/v1/chat/completions", chat)[0] == 200
    status, reply = _post(engine, "/v1/chat/completions", {**chat, "top_p": 1.0})
    assert status == 422
    assert reply["error"] == "Input validation error: `top_p` must be > 0.0 and < 1.0"


@pytest.mark.parametrize("seed", [-1, True, 1.5, "7"])
def test_a_seed_that_is_not_a_non_negative_integer_is_refused(seed: Any) -> None:
    status, reply = _post(
        LocalEngine(backend=Scripted(["x"])),
        "/generate",
        {"inputs": "hi", "parameters": {"seed": seed}},
    )
    assert status == 422
    assert "`seed`" in reply["error"]


@pytest.mark.parametrize(
    ("params", "chat", "expected"),
    [
        # /generate is greedy unless a sampling parameter or do_sample is given (TGI).
        ({}, False, Sampling()),
        ({"do_sample": True}, False, Sampling(temperature=1.0)),
        ({"temperature": 0.7, "top_p": 0.9}, False, Sampling(temperature=0.7, top_p=0.9)),
        ({"top_k": 5}, False, Sampling(temperature=1.0, top_k=5)),
        ({"repetition_penalty": 1.2, "seed": 3}, False, Sampling(repetition_penalty=1.2, seed=3)),
        # the chat route samples unless temperature is 0 (TGI's chat_completions).
        ({}, True, Sampling(temperature=1.0)),
        ({"temperature": 0}, True, Sampling()),
        ({"temperature": 0, "top_p": 0.5}, True, Sampling()),
        ({"temperature": 0.2, "top_p": 0.9}, True, Sampling(temperature=0.2, top_p=0.9)),
    ],
)
def test_sampling_is_chosen_as_tgi_chooses_it(
    params: dict[str, Any], chat: bool, expected: Sampling
) -> None:
    assert Sampling.of(params, chat=chat) == expected


def test_the_backends_sampling_is_what_the_request_asked_for() -> None:
    backend = Scripted(["x"])
    engine = LocalEngine(backend=backend)
    _post(engine, "/generate", {"inputs": "hi", "parameters": {"temperature": 0.5, "seed": 9}})
    _post(
        engine,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 0},
    )
    assert backend.sampling == [Sampling(temperature=0.5, seed=9), Sampling()]


def test_info_and_models_name_the_backends_model() -> None:
    engine = LocalEngine(max_input_tokens=100, max_total_tokens=200, backend=Scripted(["x"]))
    info = json.loads(engine.handle("GET", "/info").body)
    assert (info["model_id"], info["max_input_tokens"], info["max_total_tokens"]) == (
        "acme/scripted-1",
        100,
        200,
    )
    assert info["tokenizer"] == "the model's own"
    models = json.loads(engine.handle("GET", "/v1/models").body)
    assert [m["id"] for m in models["data"]] == ["acme/scripted-1"]
    reply = engine.handle("POST", "/generate", b'{"inputs": "hi"}')
    assert reply.headers["x-compute-type"] == "scripted"
    assert reply.headers["x-prompt-tokens"] == "2"
    assert reply.headers["x-generated-tokens"] == "2"


@pytest.mark.parametrize("message", [{"content": "hi"}, {"role": None, "content": "hi"}])
def test_a_chat_message_without_a_role_is_refused_as_tgi_refuses_it(message: Any) -> None:
    backend = Scripted(["x"])
    status, reply = _post(
        LocalEngine(backend=backend), "/v1/chat/completions", {"messages": [message]}
    )
    assert status == 422
    assert reply["error_type"] == "validation"
    assert "messages[0]: missing field `role`" in reply["error"]
    assert backend.started == 0
