"""Engine codecs: the payloads each engine accepts; its replies, streams and errors read back."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from llmhost.engines.codecs import (
    ChatMessage,
    Completion,
    GenerationParams,
    StreamDelta,
    Usage,
    codec_for,
    iter_deltas,
)
from llmhost.engines.hf_inference import HfInferenceCodec
from llmhost.engines.lmi import LmiCodec
from llmhost.engines.tgi import TgiCodec
from llmhost.engines.vllm import VllmCodec
from llmhost.serving.errors import (
    GenerationParamsInvalid,
    ModelFailed,
    ModelInputRejected,
    ModelReplyInvalid,
    ModelThrottled,
    PromptTooLong,
    StreamInterrupted,
    engine_error,
    parse_token_limits,
)

GREEDY = GenerationParams(max_new_tokens=64, temperature=0, top_p=0.9, seed=3)
SAMPLED = GenerationParams(
    max_new_tokens=128, temperature=0.7, top_p=0.9, stop=("\nUser:",), seed=5
)
CHAT = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi?")]

TGI_VALIDATION = (
    "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
    "Given: 4000 `inputs` tokens and 200 `max_new_tokens`"
)


def split_randomly(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(25, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# ------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("max_new_tokens", {"max_new_tokens": 0}),
        ("temperature", {"temperature": -0.1}),
        ("top_p", {"top_p": 0}),
        ("top_p", {"top_p": 1.5}),
        ("repetition_penalty", {"repetition_penalty": 0}),
        ("stop", {"stop": ("",)}),
    ],
)
def test_out_of_range_parameters_name_the_field(field: str, values: dict[str, Any]) -> None:
    with pytest.raises(GenerationParamsInvalid) as caught:
        GenerationParams(**values)
    assert caught.value.field == field and caught.value.status == 422


def test_params_from_deployment_defaults_with_request_overrides() -> None:
    from llmhost.specs import GenerationDefaults

    # Given a deployment's defaults and a request that sets only max tokens
    params = GenerationParams.from_defaults(
        GenerationDefaults(max_new_tokens=256, stop=["</s>"]), max_new_tokens=32, top_p=None
    )
    # Then the override wins and the rest comes from the defaults
    assert params == GenerationParams(max_new_tokens=32, temperature=0.7, top_p=0.9, stop=("</s>",))


# ---------------------------------------------------------------------------------- TGI


def test_tgi_generate_payload_for_greedy_decoding_sends_no_sampling_knobs() -> None:
    # TGI refuses temperature 0, and any of temperature/top_p would switch sampling on.
    payload = TgiCodec().build_generate("Hello", GREEDY, stream=False)
    assert payload == {
        "inputs": "Hello",
        "parameters": {
            "max_new_tokens": 64,
            "do_sample": False,
            "details": True,
            "return_full_text": False,
        },
        "stream": False,
    }


def test_tgi_generate_payload_for_sampling() -> None:
    payload = TgiCodec().build_generate("Hello", SAMPLED, stream=True)
    assert payload["stream"] is True
    assert payload["parameters"] == {
        "max_new_tokens": 128,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 5,
        "stop": ["\nUser:"],
        "details": True,
        "return_full_text": False,
    }
    # top_p 1.0 means 'no filtering'; TGI rejects it ("must be > 0.0 and < 1.0").
    no_filter = GenerationParams(temperature=0.5, top_p=1.0)
    assert "top_p" not in TgiCodec().build_generate("x", no_filter, False)["parameters"]


def test_tgi_refuses_more_stop_sequences_than_it_accepts() -> None:
    params = GenerationParams(stop=("a", "b", "c", "d", "e"))
    with pytest.raises(GenerationParamsInvalid, match="at most 4 stop sequences"):
        TgiCodec().build_generate("x", params, False)
    with pytest.raises(GenerationParamsInvalid, match="at most 4"):
        TgiCodec().build_chat(CHAT, params, False)


def test_tgi_chat_payload_is_openai_shaped_with_usage_in_streams() -> None:
    payload = TgiCodec().build_chat(CHAT, SAMPLED, stream=True)
    assert payload == {
        "model": "tgi",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi?"},
        ],
        "max_tokens": 128,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\nUser:"],
        "seed": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # Greedy: temperature 0 is TGI's chat switch to greedy; top_p and seed stay out.
    greedy = TgiCodec().build_chat(CHAT, GREEDY, stream=False)
    assert greedy["temperature"] == 0 and "top_p" not in greedy and "seed" not in greedy
    assert "stream_options" not in greedy


def test_tgi_generate_reply_array_and_object() -> None:
    body = json.dumps(
        [
            {
                "generated_text": " Paris [1].",
                "details": {"finish_reason": "eos_token", "generated_tokens": 5, "seed": None},
            }
        ]
    ).encode()
    assert TgiCodec().parse_reply(body) == Completion(" Paris [1].", "stop", None, 5)
    as_object = {
        "generated_text": "a b",
        "details": {"finish_reason": "length", "generated_tokens": 2},
    }
    assert TgiCodec().parse_reply(as_object).finish_reason == "length"


def test_tgi_chat_reply() -> None:
    reply = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
    }
    assert TgiCodec().parse_reply(json.dumps(reply)) == Completion("Hi!", "stop", 20, 3)


TGI_SSE = (
    'data:{"index":1,"token":{"id":1,"text":"Bonjour","logprob":-0.1,"special":false},'
    '"generated_text":null,"details":null}\n\n'
    'data:{"index":2,"token":{"id":2,"text":", wörld","logprob":-0.1,"special":false},'
    '"generated_text":null,"details":null}\n\n'
    'data:{"index":3,"token":{"id":3,"text":" 日本","logprob":-0.1,"special":false},'
    '"generated_text":null,"details":null}\n\n'
    'data:{"index":4,"token":{"id":2,"text":"</s>","logprob":0.0,"special":true},'
    '"generated_text":"Bonjour, wörld 日本","details":{"finish_reason":"eos_token",'
    '"generated_tokens":4,"seed":null,"input_length":9}}\n\n'
).encode()


def test_tgi_generate_stream_end_to_end_with_fuzzed_chunk_boundaries() -> None:
    codec = TgiCodec()
    expected = [
        StreamDelta("Bonjour"),
        StreamDelta(", wörld"),
        StreamDelta(" 日本"),
        # The special EOS token's text is not part of the answer.
        StreamDelta("", "stop", Usage(prompt_tokens=9, completion_tokens=4)),
    ]
    assert list(iter_deltas(codec, [TGI_SSE])) == expected
    rng = random.Random(11)
    for _ in range(200):
        assert list(iter_deltas(codec, split_randomly(TGI_SSE, rng))) == expected


TGI_CHAT_SSE = (
    b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":"lo"},"logprobs":null,"finish_reason":"length"}],"usage":null}\n\n'
    b'data: {"object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}\n\n'
    b"data: [DONE]\n\n"
    b'data: {"this": "is never read"}\n\n'
)


def test_chat_stream_with_usage_chunk_and_done() -> None:
    deltas = list(iter_deltas(TgiCodec(), [TGI_CHAT_SSE]))
    assert deltas == [
        StreamDelta("Hel"),
        StreamDelta("lo", "length"),
        StreamDelta("", None, Usage(prompt_tokens=12, completion_tokens=2)),
    ]


def test_tgi_error_event_mid_stream_raises_the_typed_error() -> None:
    # Given a stream whose engine reports a validation error as a data event
    stream = (
        b'data:{"error":"'
        + TGI_VALIDATION.replace("`", "`").encode()
        + b'","error_type":"validation"}\n\n'
    )
    # When read, Then the caller gets a 422 with the engine's token counts
    with pytest.raises(PromptTooLong) as caught:
        list(iter_deltas(TgiCodec(), [stream]))
    assert caught.value.status == 422
    assert caught.value.limits.input_tokens == 4000
    assert caught.value.limits.allowed_input_tokens == 3896
    # And an overloaded engine is a 429
    with pytest.raises(ModelThrottled):
        TgiCodec().parse_stream_event('{"error":"Model is overloaded","error_type":"overloaded"}')


def test_a_named_error_event_raises_even_with_a_plain_text_body() -> None:
    stream = b'data:{"index":1,"token":{"id":1,"text":"Hi","special":false}}\n\n'
    stream += b"event: error\ndata: CUDA out of memory\n\n"
    deltas = iter_deltas(TgiCodec(), [stream])
    assert next(deltas) == StreamDelta("Hi")
    with pytest.raises(ModelFailed) as caught:
        next(deltas)
    assert caught.value.status == 502 and "CUDA" in caught.value.log_detail


def test_a_stream_that_breaks_off_mid_event_is_interrupted() -> None:
    with pytest.raises(StreamInterrupted):
        list(iter_deltas(TgiCodec(), [TGI_SSE[:-30]]))


@pytest.mark.parametrize(
    ("status", "body", "error", "http"),
    [
        (422, {"error": TGI_VALIDATION, "error_type": "validation"}, PromptTooLong, 422),
        (
            422,
            {
                "error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
                "error_type": "validation",
            },
            ModelInputRejected,
            422,
        ),
        (429, {"error": "Model is overloaded", "error_type": "overloaded"}, ModelThrottled, 429),
        (
            424,
            {"error": "Request failed during generation: CUDA OOM", "error_type": "generation"},
            ModelFailed,
            502,
        ),
        (
            500,
            {"error": "Incomplete generation", "error_type": "incomplete_generation"},
            ModelFailed,
            502,
        ),
    ],
)
def test_tgi_error_bodies_map_to_typed_errors(
    status: int, body: dict[str, str], error: type[Exception], http: int
) -> None:
    mapped = TgiCodec().parse_error(status, json.dumps(body).encode())
    assert type(mapped) is error and mapped.status == http


def test_validation_message_is_shown_to_the_client_without_arns() -> None:
    message = (
        "`top_p` must be > 0.0 and < 1.0 (see arn:aws:logs:us-east-1:123456789012:log-group:x)"
    )
    mapped = engine_error(422, {"error": message, "error_type": "validation"})
    assert "`top_p` must be > 0.0 and < 1.0" in mapped.message
    assert "arn:aws" not in mapped.message and "123456789012" not in mapped.message


def test_tgi_input_length_message_carries_the_limit() -> None:
    limits = parse_token_limits(
        "Input validation error: `inputs` must have less than 1024 tokens. Given: 1500"
    )
    assert limits is not None
    assert (limits.input_tokens, limits.allowed_input_tokens) == (1500, 1024)


# --------------------------------------------------------------------------------- vLLM


def test_vllm_completions_payload_keeps_what_vllm_accepts() -> None:
    params = GenerationParams(max_new_tokens=50, temperature=0.2, top_p=1.0, repetition_penalty=1.1)
    payload = VllmCodec().build_generate(
        "Q:", params, stream=True, model="meta-llama/Llama-3.1-8B-Instruct"
    )
    assert payload == {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "prompt": "Q:",
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 1.0,
        "repetition_penalty": 1.1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chat = VllmCodec().build_chat(CHAT, params, stream=False, model="m")
    assert chat["model"] == "m" and chat["repetition_penalty"] == 1.1 and chat["top_p"] == 1.0


def test_vllm_completion_reply_and_stream() -> None:
    reply = {
        "object": "text_completion",
        "choices": [{"index": 0, "text": " Paris", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1},
    }
    assert VllmCodec().parse_reply(json.dumps(reply).encode()) == Completion(" Paris", "stop", 4, 1)
    chunk = {
        "object": "text_completion",
        "choices": [{"index": 0, "text": "Pa", "finish_reason": None}],
    }
    assert VllmCodec().parse_stream_event(json.dumps(chunk)) == StreamDelta("Pa")
    assert VllmCodec().parse_stream_event("[DONE]") is None


@pytest.mark.parametrize(
    ("body", "limits"),
    [
        (
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens. However, you "
                "requested 4296 tokens (4096 in the messages, 200 in the completion). Please "
                "reduce the length of the messages or completion.",
                "type": "BadRequestError",
                "code": 400,
            },
            (4096, 3896),
        ),
        (
            {
                "error": {
                    "message": "This model's maximum context length is 16384 tokens. However, you "
                    "requested 8192 output tokens and your prompt contains at least 8193 input "
                    "tokens, for a total of at least 16385 tokens.",
                    "type": "BadRequestError",
                    "code": 400,
                }
            },
            (8193, 8192),
        ),
    ],
)
def test_vllm_context_length_errors_carry_the_counts(
    body: dict[str, Any], limits: tuple[int, int]
) -> None:
    mapped = VllmCodec().parse_error(400, json.dumps(body))
    assert isinstance(mapped, PromptTooLong)
    assert (mapped.limits.input_tokens, mapped.limits.allowed_input_tokens) == limits


# ---------------------------------------------------------------------------------- LMI


def test_lmi_generate_payload_uses_its_own_names() -> None:
    payload = LmiCodec().build_generate("Hi", SAMPLED, stream=True)
    assert payload == {
        "inputs": "Hi",
        "parameters": {
            "max_new_tokens": 128,
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 5,
            "stop_sequences": ["\nUser:"],
            "details": True,
            "return_full_text": False,
        },
        "stream": True,
    }
    assert LmiCodec().build_generate("Hi", GREEDY, False)["parameters"]["do_sample"] is False


LMI_JSONL = (
    '{"token": {"id": 304, "text": "Deep ", "log_prob": -0.05}}\n'
    '{"token": {"id": 11157, "text": "Lernen \u2013 ", "log_prob": -1.28}}\n'
    '{"token": {"id": 5972, "text": "日本.", "log_prob": -0.69}, "generated_text": '
    '"Deep Lernen \u2013 日本.", "details": {"finish_reason": "length", "generated_tokens": 3, '
    '"inputs": "What is Deep Learning?"}}\n'
).encode()


def test_lmi_json_lines_stream_with_fuzzed_boundaries() -> None:
    expected = [
        StreamDelta("Deep "),
        StreamDelta("Lernen \u2013 "),
        StreamDelta("日本.", "length", Usage(completion_tokens=3)),
    ]
    rng = random.Random(3)
    for _ in range(200):
        assert list(iter_deltas(LmiCodec(), split_randomly(LMI_JSONL, rng))) == expected


def test_lmi_reports_failures_as_finish_reason_error() -> None:
    # LMI sends HTTP 200 once streaming began; the failure is in the last line.
    line = (
        '{"token": {"id": -1, "text": "", "log_prob": -1, "special_token": true}, '
        '"generated_text": "", "details": {"finish_reason": "error", "generated_tokens": null}}'
    )
    with pytest.raises(ModelFailed):
        LmiCodec().parse_stream_event(line)
    reply = {"generated_text": "", "details": {"finish_reason": "error", "generated_tokens": None}}
    with pytest.raises(ModelFailed):
        LmiCodec().parse_reply(reply)
    assert LmiCodec().parse_reply({"generated_text": "ok"}) == Completion("ok", "stop")
    # Payload validation errors arrive as {"error", "code": 424}: the request was refused.
    refused = LmiCodec().parse_error(424, {"error": "max_new_tokens must be > 0", "code": 424})
    assert isinstance(refused, ModelInputRejected) and refused.status == 422


# ------------------------------------------------------------------- other engines, misc


def test_hf_inference_cannot_stream_or_chat() -> None:
    codec = HfInferenceCodec()
    with pytest.raises(GenerationParamsInvalid, match="cannot stream"):
        codec.build_generate("x", GREEDY, stream=True)
    with pytest.raises(GenerationParamsInvalid, match="no chat API"):
        codec.build_chat(CHAT, GREEDY, False, "m")
    assert codec.build_generate("x", GREEDY, False)["parameters"]["return_full_text"] is False
    # Text2text pipelines reject return_full_text.
    assert (
        "return_full_text"
        not in HfInferenceCodec(seq2seq=True).build_generate("x", GREEDY, False)["parameters"]
    )
    assert codec.parse_reply(b'[{"generated_text": "yes"}]') == Completion("yes", "stop")


def test_codec_for_knows_the_spec_engines() -> None:
    assert [codec_for(name).name for name in ("tgi", "vllm", "lmi", "hf-inference")] == [
        "tgi",
        "vllm",
        "lmi",
        "hf-inference",
    ]
    with pytest.raises(KeyError, match="known engines: hf-inference, lmi, tgi, vllm"):
        codec_for("sglang")


def test_unreadable_replies_are_typed_errors() -> None:
    with pytest.raises(ModelReplyInvalid):
        TgiCodec().parse_reply(b"<html>502 Bad Gateway</html>")
    with pytest.raises(ModelReplyInvalid):
        TgiCodec().parse_stream_event('{"unexpected": true}')
