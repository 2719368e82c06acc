"""The local serving path: the extractive TGI engine behind the local SageMaker runtime front,
driven by a real boto3 ``sagemaker-runtime`` client (and the ``openai`` client) over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from conftest import StreamGate
from llmhost_local.engine import LocalEngine
from llmhost_local.engine_server import StreamingHandler, serve_engine
from llmhost_local.extractive import NOTE, compose_answer, parse_prompt, read_turns
from llmhost_local.runtime_front import RuntimeFront, serve_front
from llmhost_local.runtime_state import RouteTarget

PASSAGES = (
    "Answer with the context.\n\nContext:\n"
    "[1] The Eiffel Tower stands in Paris. It was completed in 1889.\n"
    "[2] Mount Fuji is the highest mountain in Japan. It last erupted in 1707.\n\n"
)
PROMPT = PASSAGES + "Question: When did Mount Fuji last erupt?\nAnswer:"


class Router:
    """Records what the front asked and answers from a table."""

    def __init__(self, table: dict[str, RouteTarget]) -> None:
        self.table = table
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, endpoint: str, component: str | None) -> RouteTarget | None:
        self.calls.append((endpoint, component))
        return self.table.get(endpoint)


class Stack:
    def __init__(self) -> None:
        self.servers: list[ThreadingHTTPServer] = []

    def add(self, pair: tuple[ThreadingHTTPServer, str]) -> str:
        self.servers.append(pair[0])
        return pair[1]

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def runtime(url: str) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=10),
    )


class _BreaksMidStream(StreamingHandler):
    """A container that sends one SSE event, then drops the connection."""

    def do_POST(self) -> None:
        self.read_body()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        event = b'data:{"token":{"text":" partial"}}\n\n'
        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    servers = Stack()
    engine = LocalEngine()
    paced = LocalEngine(token_interval_ms=20)
    short = LocalEngine(max_input_tokens=20, max_total_tokens=200)
    upstream_url = servers.add(serve_engine(LocalEngine()))
    slow_url = servers.add(serve_engine(LocalEngine(latency_ms=1000)))
    broken = ThreadingHTTPServer(("127.0.0.1", 0), _BreaksMidStream)
    broken.daemon_threads = True
    threading.Thread(target=broken.serve_forever, daemon=True).start()
    servers.servers.append(broken)
    router = Router(
        {
            "llm": RouteTarget.local(engine),
            "paced": RouteTarget.local(paced),
            "short": RouteTarget.local(short),
            "remote": RouteTarget.upstream(upstream_url),
            "slow": RouteTarget.upstream(slow_url, timeout_s=0.2),
            "gone": RouteTarget.upstream("http://127.0.0.1:9"),
            "broken": RouteTarget.upstream(f"http://127.0.0.1:{broken.server_port}"),
            "asleep": RouteTarget.no_capacity(),
            "loading": RouteTarget.not_ready(),
            "shared": RouteTarget.component_required(),
            "busy": RouteTarget.throttled(),
        }
    )
    front_url = servers.add(serve_front(RuntimeFront(router)))
    split_url = servers.add(serve_front(RuntimeFront(router, split_bytes=3)))
    yield {
        "client": runtime(front_url),
        "split_client": runtime(split_url),
        "router": router,
        "upstream_url": upstream_url,
        "paced": paced,
    }
    servers.close()


def body_of(reply: dict[str, Any]) -> Any:
    return json.loads(reply["Body"].read())


def stream_parts(client: Any, endpoint: str, payload: dict[str, Any]) -> list[bytes]:
    reply = client.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, Body=json.dumps(payload), ContentType="application/json"
    )
    assert reply["ContentType"] == "text/event-stream"
    return [event["PayloadPart"]["Bytes"] for event in reply["Body"]]


def sse_data(raw: bytes) -> list[str]:
    """Minimal SSE parsing: the ``data:`` field of each event."""
    found = []
    for block in raw.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data:"):
                found.append(line[5:].removeprefix(" "))
    return found


# ---- through boto3 -------------------------------------------------------------------------


def test_invoke_endpoint_answers_from_the_right_passage_and_says_it_is_not_an_llm(
    stack: dict[str, Any],
) -> None:
    # Given a TGI generate payload whose prompt holds two numbered passages
    payload = {"inputs": PROMPT, "parameters": {"max_new_tokens": 200}}

    # When boto3 invokes the endpoint
    reply = stack["client"].invoke_endpoint(
        EndpointName="llm", Body=json.dumps(payload), ContentType="application/json"
    )

    # Then the TGI reply quotes passage 2 with its citation, after the honest note
    assert reply["InvokedProductionVariant"] == "AllTraffic"
    [generation] = body_of(reply)
    text = generation["generated_text"]
    assert text.startswith(NOTE)
    assert "It last erupted in 1707 [2]." in text
    assert "[1]" not in text


def test_the_router_sees_the_inference_component(stack: dict[str, Any]) -> None:
    # When a shared-hosting call names its inference component
    stack["client"].invoke_endpoint(
        EndpointName="llm",
        InferenceComponentName="llama-8b-ic",
        CustomAttributes="trace=abc",
        Body=json.dumps({"inputs": PROMPT}),
    )

    # Then the router is asked about that component on that endpoint
    assert stack["router"].calls[-1] == ("llm", "llama-8b-ic")


@pytest.mark.parametrize("client_key", ["client", "split_client"])
def test_the_stream_reproduces_the_non_streamed_answer_exactly(
    stack: dict[str, Any], client_key: str
) -> None:
    # Given the non-streamed answer to a prompt
    client = stack[client_key]
    reply = client.invoke_endpoint(EndpointName="llm", Body=json.dumps({"inputs": PROMPT}))
    [expected] = body_of(reply)

    # When the same payload is streamed (with split_bytes=3, PayloadParts cut mid-character)
    parts = stream_parts(client, "llm", {"inputs": PROMPT, "stream": True})
    events = [json.loads(data) for data in sse_data(b"".join(parts))]

    # Then the tokens concatenate to the same text, and the last event carries it whole
    assert len(parts) > 1
    if client_key == "split_client":
        assert max(len(p) for p in parts) <= 3
    assert "".join(e["token"]["text"] for e in events) == expected["generated_text"]
    assert events[-1]["generated_text"] == expected["generated_text"]
    assert all(e["generated_text"] is None for e in events[:-1])


def test_a_streamed_chat_ends_with_usage_and_done(stack: dict[str, Any]) -> None:
    # Given an OpenAI chat payload asking for usage
    payload = {
        "messages": [
            {"role": "system", "content": PASSAGES},
            {"role": "user", "content": "Where does the Eiffel Tower stand?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    # When it is streamed through the front
    data = sse_data(b"".join(stream_parts(stack["client"], "llm", payload)))

    # Then the chunks spell a cited answer, a usage chunk follows, then [DONE]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(chunks)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    answer = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert "stands in Paris [1]." in answer
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_an_unknown_endpoint_is_aws_validation_error(stack: dict[str, Any]) -> None:
    client = stack["client"]
    with pytest.raises(client.exceptions.ValidationError) as raised:
        client.invoke_endpoint(EndpointName="no-such-model", Body=b"{}")
    assert raised.value.response["Error"]["Message"] == (
        "Endpoint no-such-model of account 123456789012 not found."
    )


def test_a_component_scaled_to_zero_gets_aws_no_capacity_error(stack: dict[str, Any]) -> None:
    client = stack["client"]
    with pytest.raises(client.exceptions.ValidationError) as raised:
        client.invoke_endpoint(EndpointName="asleep", InferenceComponentName="ic", Body=b"{}")
    assert raised.value.response["Error"]["Message"].startswith(
        "Inference Component has no capacity to process this request."
    )


def test_refusals_map_to_botocores_modeled_exceptions(stack: dict[str, Any]) -> None:
    client = stack["client"]
    with pytest.raises(client.exceptions.ModelNotReadyException):
        client.invoke_endpoint(EndpointName="loading", Body=b"{}")
    with pytest.raises(client.exceptions.ValidationError, match="Inference Component Name"):
        client.invoke_endpoint(EndpointName="shared", Body=b"{}")
    with pytest.raises(ClientError) as raised:
        client.invoke_endpoint(EndpointName="busy", Body=b"{}")
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"


def test_requests_are_checked_against_the_service_model(stack: dict[str, Any]) -> None:
    client = stack["client"]
    # An endpoint name SageMaker's pattern refuses (botocore itself does not check patterns)
    with pytest.raises(client.exceptions.ValidationError, match="regular expression pattern"):
        client.invoke_endpoint(EndpointName="bad_name", Body=b"{}")
    # A body over the 6 MB limit
    with pytest.raises(client.exceptions.ValidationError, match="has oversize body"):
        client.invoke_endpoint(EndpointName="llm", Body=b" " * (6 * 1024 * 1024 + 1))


def test_an_engine_validation_error_is_a_model_error_with_the_original(
    stack: dict[str, Any],
) -> None:
    # Given an engine whose input limit the prompt exceeds
    client = stack["client"]
    with pytest.raises(client.exceptions.ModelError) as raised:
        client.invoke_endpoint(EndpointName="short", Body=json.dumps({"inputs": PROMPT}))

    # Then AWS's ModelError carries TGI's 422 and message
    response = raised.value.response
    assert response["OriginalStatusCode"] == 422
    assert json.loads(response["OriginalMessage"])["error_type"] == "validation"
    assert response["Error"]["Message"].startswith("Received client error (422) from primary")


def test_an_upstream_engine_serves_through_the_front(stack: dict[str, Any]) -> None:
    # Given a second engine reached over HTTP, as LLMHOST_ENGINE_URL would point at TGI
    client = stack["client"]

    # When both a plain and a streamed call go to it
    [generation] = body_of(
        client.invoke_endpoint(EndpointName="remote", Body=json.dumps({"inputs": PROMPT}))
    )
    parts = stream_parts(client, "remote", {"inputs": PROMPT, "stream": True})

    # Then both answer like the in-process engine
    assert "It last erupted in 1707 [2]." in generation["generated_text"]
    events = [json.loads(d) for d in sse_data(b"".join(parts))]
    assert events[-1]["generated_text"] == generation["generated_text"]


def test_upstream_failures_are_model_errors(stack: dict[str, Any]) -> None:
    client = stack["client"]
    # A container slower than the front's timeout
    with pytest.raises(client.exceptions.ModelError, match="timed out") as raised:
        client.invoke_endpoint(EndpointName="slow", Body=json.dumps({"inputs": PROMPT}))
    assert raised.value.response["Error"]["Message"].startswith("Received server error (0)")
    # A container that is not running: the message names the URL to fix
    with pytest.raises(client.exceptions.ModelError, match=r"127\.0\.0\.1:9"):
        client.invoke_endpoint(EndpointName="gone", Body=json.dumps({"inputs": PROMPT}))


def test_a_stream_that_breaks_ends_with_model_stream_error(stack: dict[str, Any]) -> None:
    # Given a container that drops the connection after one event
    reply = stack["client"].invoke_endpoint_with_response_stream(
        EndpointName="broken", Body=json.dumps({"inputs": PROMPT, "stream": True})
    )
    events = iter(reply["Body"])

    # When the client reads on, then it gets the part, then SageMaker's stream error
    assert b"partial" in next(events)["PayloadPart"]["Bytes"]
    with pytest.raises(EventStreamError) as raised:
        next(events)
    assert raised.value.response["Error"]["Code"] == "ModelStreamError"


def test_each_part_leaves_as_its_token_is_produced(stack: dict[str, Any]) -> None:
    # Given an engine that produces token k only once the client has part k-2
    gate = StreamGate()
    stack["paced"]._sleep = gate.before_token
    payload = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6}, "stream": True}

    # When the stream is read part by part
    try:
        reply = stack["client"].invoke_endpoint_with_response_stream(
            EndpointName="paced", Body=json.dumps(payload)
        )
        produced_at_arrival = []
        for _ in reply["Body"]:
            produced_at_arrival.append(gate.produced)
            gate.received()
    finally:
        stack["paced"]._sleep = time.sleep

    # Then each part came after its token, and before the engine had gone two tokens further
    assert len(produced_at_arrival) == 6
    assert all(produced >= k + 1 for k, produced in enumerate(produced_at_arrival))
    assert not gate.stalled, f"tokens {gate.stalled} waited in vain for the client"


# ---- the engine itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{ctx}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<s>[INST] <<SYS>>\n{ctx}\n<</SYS>>\n\n{q} [/INST]",
        "<|system|>\n{ctx}</s>\n<|user|>\n{q}</s>\n<|assistant|>\n",
        "<|im_start|>system\n{ctx}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
        "<|im_start|>assistant\n",
    ],
    ids=["llama3", "inst", "zephyr", "chatml"],
)
def test_raw_chat_templates_yield_the_question_and_passages(prompt: str) -> None:
    # Given context in the system turn and the question in the user turn of a template
    rendered = prompt.format(ctx=PASSAGES.strip(), q="When was the Eiffel Tower completed?")

    # When the engine reads it
    answer = compose_answer(read_turns(parse_prompt(rendered)))

    # Then it quotes passage 1, not passage 2, the question or the template's tokens
    assert answer.startswith(NOTE)
    assert "It was completed in 1889 [1]." in answer
    assert "[2]" not in answer and "?" not in answer and "<" not in answer


def test_wrapped_passages_are_quoted_whole_and_an_unlabelled_last_line_is_the_question() -> None:
    # Given a passage hard-wrapped mid-sentence and a question with no "Question:" label
    prompt = (
        "[1] Honey bees collect nectar\nfrom flowers and turn it into honey.\n"
        "[2] Ants live in colonies.\n\nWhat do honey bees turn nectar into?"
    )

    # When the engine reads it
    answer = compose_answer(read_turns(parse_prompt(prompt)))

    # Then it quotes the whole sentence from passage 1, and never the question itself
    assert answer == (f"{NOTE} Honey bees collect nectar from flowers and turn it into honey [1].")


def test_without_context_the_engine_says_so() -> None:
    engine = LocalEngine()
    reply = engine.handle(
        "POST",
        "/v1/chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "What is a quark?"}]}).encode(),
    )
    content = json.loads(reply.body)["choices"][0]["message"]["content"]
    assert content.startswith(NOTE) and "no context to answer from" in content


def test_generate_follows_tgi_limits_and_shapes() -> None:
    # /generate returns an object; max_new_tokens cuts the answer with finish_reason length
    reply = LocalEngine().handle(
        "POST",
        "/generate",
        json.dumps(
            {"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "details": True}}
        ).encode(),
    )
    body = json.loads(reply.body)
    assert body["details"]["finish_reason"] == "length"
    assert body["details"]["generated_tokens"] == 4
    assert body["generated_text"] == "".join(t["text"] for t in body["details"]["tokens"])

    # Too long an input: TGI's 422, naming the limit and how tokens were counted
    reply = LocalEngine(max_input_tokens=50, max_total_tokens=200).handle(
        "POST", "/generate", json.dumps({"inputs": "word " * 60}).encode()
    )
    error = json.loads(reply.body)
    assert reply.status == 422 and error["error_type"] == "validation"
    assert "must have less than 50 tokens" in error["error"]
    assert "counts each word" in error["error"]


def test_the_openai_client_streams_from_the_engine() -> None:
    # Given the engine over HTTP and the real openai client pointed at it
    from openai import OpenAI

    server, url = serve_engine(LocalEngine())
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        # When it streams a chat completion
        stream = client.chat.completions.create(
            model="local",
            messages=[
                {"role": "system", "content": PASSAGES},
                {"role": "user", "content": "How high is Mount Fuji?"},
            ],
            stream=True,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

        # Then the pieces form the cited answer
        assert text == f"{NOTE} Mount Fuji is the highest mountain in Japan [2]."
    finally:
        server.shutdown()
        server.server_close()
