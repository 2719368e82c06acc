"""The local stack answering with the real model (``LocalCloud(engine_kind="llama")``):
the ``demo`` deployment served by SmolLM2-135M-Instruct, the README ingested into a
collection, RAG and chat through the signed API, streaming with the ``openai`` package
through the OpenAI-compatible server, a prompt over the model's limit, and usage.

What the engine was sent and answered is recorded at the engine's door (``EngineSpy``), so
llmhost's answers and usage are compared with the engine's own, and the engine's token
counts with the model's tokenizer rebuilt from the GGUF file (``llm_reference``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from llm_reference import MODEL_ID, Reference, over_the_input_limit, reference

from conftest import ROOT, RunningStack, local_stack
from llmhost_local.cloud import ACCESS_KEY, LOCAL_API_KEY, REGION, SECRET_KEY

pytestmark = pytest.mark.e2e

SERVER_LOG: list[str] = []
COLLECTION = "readme"
README = (ROOT / "README.md").read_text()


@dataclasses.dataclass
class EngineCall:
    """One request the engine served: its payload and what it answered."""

    path: str
    payload: Any
    status: int
    body: Any = None  # the reply, when not streamed
    events: list[Any] = dataclasses.field(default_factory=list)  # SSE payloads, when streamed

    @property
    def chat(self) -> bool:
        return isinstance(self.payload, dict) and "messages" in self.payload

    def prompt(self, ref: Reference) -> str:
        """The prompt as the model read it."""
        if self.chat:
            return ref.chat(self.payload["messages"])
        return str(self.payload["inputs"])

    @property
    def refused(self) -> bool:
        if self.status >= 400:
            return True
        return bool(self.events) and isinstance(self.events[0], dict) and "error" in self.events[0]

    def usage(self) -> tuple[int, int]:
        """The engine's (prompt, generated) token counts for this call."""
        if self.body is not None:
            reply = self.body[0] if isinstance(self.body, list) else self.body
            if "usage" in reply:
                return reply["usage"]["prompt_tokens"], reply["usage"]["completion_tokens"]
            raise AssertionError(f"a generate reply llmhost reads no usage from: {reply}")
        for event in reversed(self.events):
            if isinstance(event, dict) and event.get("usage"):
                return event["usage"]["prompt_tokens"], event["usage"]["completion_tokens"]
            if isinstance(event, dict) and event.get("details"):
                details = event["details"]
                return details["input_length"], details["generated_tokens"]
        raise AssertionError(f"a stream without usage: {self.events[-3:]}")


class EngineSpy:
    """Records every request the stack's engine serves (the runtime front looks
    ``engine.handle`` up on each call)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.calls: list[EngineCall] = []
        self._handle = engine.handle
        engine.handle = self.handle

    def handle(self, method: str, path: str, body: bytes = b"") -> Any:
        reply = self._handle(method, path, body)
        if method != "POST":
            return reply
        call = EngineCall(path, json.loads(body or b"null"), reply.status)
        self.calls.append(call)
        if reply.stream is None:
            call.body = json.loads(reply.body) if reply.body else None
            return reply
        return dataclasses.replace(reply, stream=self._recorded(call, reply.stream))

    @staticmethod
    def _recorded(call: EngineCall, events: Iterator[bytes]) -> Iterator[bytes]:
        for event in events:
            data = event.decode().strip().removeprefix("data:").strip()
            call.events.append(data if data == "[DONE]" else json.loads(data))
            yield event

    def served(self) -> list[EngineCall]:
        return [c for c in self.calls if not c.refused]

    def close(self) -> None:
        del self.engine.handle


@dataclasses.dataclass
class Stack:
    running: RunningStack
    spy: EngineSpy
    ref: Reference

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        url = self.running.api + path
        request = AWSRequest(
            method=method, url=url, data=data, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION).add_auth(request)
        http = urllib.request.Request(
            url, data=data or None, headers=dict(request.headers), method=method
        )
        try:
            with urllib.request.urlopen(http, timeout=120) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def openai(self) -> Any:
        from openai import OpenAI

        return OpenAI(
            base_url=self.running.openai + "/v1",
            api_key=LOCAL_API_KEY,
            max_retries=0,
            timeout=120,
        )

    def new_calls(self, since: int) -> list[EngineCall]:
        return self.spy.calls[since:]


def _eventually(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    # A deadline for something stuck, not slow: a loaded machine is slow.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"never: {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from llmhost_local import ingest_folder

    # The model runs on the CPU, shared with everything else: give a slow machine time
    # (the stack's own default is 60 s; API Gateway's 29 s is not emulated here)
    timeout = os.environ.get("SERVING_TIMEOUT_S")
    os.environ["SERVING_TIMEOUT_S"] = "300"
    with local_stack(
        tmp_path_factory.mktemp("qdrant"),
        log=SERVER_LOG.append,
        speed=600,
        drift_seconds=0.5,
        engine_kind="llama",
    ) as running:
        spy = EngineSpy(running.cloud.engine)
        local = Stack(running, spy, reference())
        try:
            running.cloud.create_demo(scale_to_zero=False)
            _eventually(
                lambda: local.call("GET", "/v1/deployments/demo")[1].get("status") == "IN_SERVICE",
                "the demo deployment in service",
            )
            docs = tmp_path_factory.mktemp("docs")
            shutil.copy(ROOT / "README.md", docs / "README.md")
            assert (
                ingest_folder.main([str(docs), "--collection", COLLECTION, "--api", running.api])
                == 0
            )
            yield local
        finally:
            spy.close()
            if timeout is None:
                os.environ.pop("SERVING_TIMEOUT_S", None)
            else:
                os.environ["SERVING_TIMEOUT_S"] = timeout


# ----------------------------------------------------------------------------- the model


def test_the_demo_deployment_is_the_real_model(stack: Stack) -> None:
    engine = stack.running.cloud.engine
    info = engine.info()
    assert info["model_id"] == MODEL_ID
    code, demo = stack.call("GET", "/v1/deployments/demo")
    assert code == 200, demo
    spec = demo.get("spec", demo)
    assert spec["model"]["model_id"] == MODEL_ID
    # The deployment's token limits are the engine's, as /info reports them
    options = spec["engine"]["options"]
    assert options["max_input_tokens"] == info["max_input_tokens"]
    assert options["max_total_tokens"] == info["max_total_tokens"]
    # And the OpenAI server lists it
    assert "demo" in [m.id for m in stack.openai().models.list()]


# -------------------------------------------------------------------------------- RAG


def test_rag_over_the_readme_answers_with_the_real_model(stack: Stack) -> None:
    since = len(stack.spy.calls)
    code, answer = stack.call(
        "POST",
        "/v1/rag",
        {
            "model": "demo",
            "collection": COLLECTION,
            "query": "Which make target runs the end-to-end tests against the real model?",
            "k": 3,
            "max_new_tokens": 48,
            "temperature": 0,
        },
    )
    assert code == 200, answer
    # The model generated it (the extractive engine's answers say they are not an LLM)
    assert answer["answer"].strip() and "not an LLM" not in answer["answer"]
    assert answer["sources"] and all(s["id"] == "README.md" for s in answer["sources"])
    # What llmhost reports is what the engine generated, counted by the model's tokenizer
    (call,) = stack.new_calls(since)
    prompt_tokens, generated = call.usage()
    assert (
        answer["usage"]["prompt_tokens"] == prompt_tokens == stack.ref.count(call.prompt(stack.ref))
    )
    assert answer["usage"]["completion_tokens"] == generated <= 48
    # The retrieved passages are in the prompt the model read, numbered as the sources
    prompt = call.prompt(stack.ref)
    for source in answer["sources"]:
        passage = README[source["start"] : source["end"]]
        assert passage[:60] in prompt and f"[{source['index']}]" in prompt, source


def test_a_chat_through_the_signed_api_is_the_engines_answer(stack: Stack) -> None:
    since = len(stack.spy.calls)
    code, reply = stack.call(
        "POST",
        "/v1/chat/completions",
        {
            "model": "demo",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 24,
            "temperature": 0,
        },
    )
    assert code == 200, reply
    (call,) = stack.new_calls(since)
    # Sent through TGI's Messages API: the model's own template renders it
    assert call.chat and call.payload["messages"][-1]["content"] == "What is the capital of France?"
    engine_reply = call.body[0] if isinstance(call.body, list) else call.body
    engine_text = engine_reply["choices"][0]["message"]["content"]
    assert reply["choices"][0]["message"]["content"] == engine_text
    assert engine_text.strip()
    prompt_tokens, generated = call.usage()
    assert reply["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": generated,
        "total_tokens": prompt_tokens + generated,
    }
    assert prompt_tokens == stack.ref.count(call.prompt(stack.ref))
    # And its trace records the engine's counts under the GenAI conventions' names
    trace = _eventually(
        lambda: (found := stack.call("GET", f"/v1/traces/{reply['id']}"))[0] == 200 and found[1],
        "the chat's trace",
    )
    assert _attribute(trace, "gen_ai.usage.input_tokens") == prompt_tokens, trace
    assert _attribute(trace, "gen_ai.usage.output_tokens") == generated, trace
    assert _attribute(trace, "gen_ai.response.model") == MODEL_ID, trace


def _attribute(found: Any, name: str) -> Any:
    """The value of attribute ``name`` anywhere in a trace (None when it has none)."""
    if isinstance(found, dict):
        if name in found:
            return found[name]
        values = list(found.values())
    elif isinstance(found, list):
        values = found
    else:
        return None
    for value in values:
        if (inner := _attribute(value, name)) is not None:
            return inner
    return None


# -------------------------------------------------------------------------- streaming


def test_a_rag_stream_through_the_openai_package(stack: Stack) -> None:
    client = stack.openai()
    since = len(stack.spy.calls)
    chunks = list(
        client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "How do I start llmhost locally?"}],
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"rag": {"collection": COLLECTION, "k": 2}},
        )
    )
    # The first chunk announces the role and carries the sources
    first = chunks[0]
    assert first.choices[0].delta.role == "assistant"
    sources = (first.model_extra or {}).get("llmhost", {}).get("sources")
    assert sources and all(s["id"] == "README.md" for s in sources)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    # The streamed text and usage are the engine's
    (call,) = stack.new_calls(since)
    engine_text = "".join(
        e["choices"][0]["delta"].get("content") or ""
        if e.get("choices")
        else e.get("token", {}).get("text", "")
        if not e.get("token", {}).get("special")
        else ""
        for e in call.events
        if isinstance(e, dict)
    )
    assert text == engine_text
    usage = next(c.usage for c in reversed(chunks) if c.usage is not None)
    prompt_tokens, generated = call.usage()
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, generated)
    assert usage.prompt_tokens == stack.ref.count(call.prompt(stack.ref))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in {"stop", "length"}


# ------------------------------------------------------------------ over the model's limit


def test_a_chat_over_the_models_input_limit_is_a_clear_422(stack: Stack) -> None:
    from openai import APIStatusError

    client = stack.openai()
    engine = stack.running.cloud.engine
    limit = engine.max_input_tokens
    text, _ = over_the_input_limit(stack.ref, limit - 40, engine.max_total_tokens - 40)
    messages = [{"role": "user", "content": text}]
    # Plain chat has no context to drop: the engine's refusal reaches the client, as a 422
    # naming the limit, plain or streamed
    with pytest.raises(APIStatusError) as plain:
        client.chat.completions.create(model="demo", messages=messages, max_tokens=8)
    with pytest.raises(APIStatusError) as streamed:
        client.chat.completions.create(model="demo", messages=messages, max_tokens=8, stream=True)
    assert plain.value.status_code == 422
    assert streamed.value.status_code == 422
    error: Any = plain.value.body
    assert error["code"] == "prompt_too_long", error
    # The engine's words, with its count of the prompt as the model's tokenizer counts it
    given = stack.ref.count(stack.ref.chat(messages))
    assert f"must have less than {limit} tokens. Given: {given}" in error["message"], error
    assert streamed.value.body == plain.value.body
    # Through the signed API too
    code, body = stack.call(
        "POST", "/v1/chat/completions", {"model": "demo", "messages": messages, "max_tokens": 8}
    )
    assert code == 422 and body["error"]["code"] == "prompt_too_long", body


def test_rag_packs_the_readme_into_the_models_budget(stack: Stack) -> None:
    since = len(stack.spy.calls)
    limit = stack.running.cloud.engine.max_input_tokens
    # More passages than fit the model's input tokens
    code, answer = stack.call(
        "POST",
        "/v1/rag",
        {
            "model": "demo",
            "collection": COLLECTION,
            "query": "Describe every way to run inference, jobs and batches.",
            "k": 50,
            "max_new_tokens": 16,
            "temperature": 0,
        },
    )
    assert code == 200, answer
    calls = stack.new_calls(since)
    answered = calls[-1]
    assert not answered.refused
    # What the engine answered fits its limit, counted by the model's tokenizer; at most one
    # refusal came first (llmhost's estimate too low: rebuilt smaller and retried once)
    assert stack.ref.count(answered.prompt(stack.ref)) <= limit
    assert len(calls) <= 2 and all(c.refused for c in calls[:-1])
    assert 0 < len(answer["sources"]) < 50
    assert answer["usage"]["prompt_tokens"] == answered.usage()[0]


# ------------------------------------------------------------------------------ usage


def test_usage_counts_the_engines_tokens(stack: Stack) -> None:
    # Given a deployment of the same model, asked only here
    code, demo = stack.call("GET", "/v1/deployments/demo")
    spec = dict(demo.get("spec", demo))
    spec = {key: spec[key] for key in ("model", "engine", "hosting") if key in spec}
    spec["name"] = "usage-llm"
    code, created = stack.call("POST", "/v1/deployments", spec)
    assert code == 201, created
    _eventually(
        lambda: stack.call("GET", "/v1/deployments/usage-llm")[1].get("status") == "IN_SERVICE",
        "usage-llm in service",
    )
    since = len(stack.spy.calls)
    # When it answers a chat and a stream
    code, reply = stack.call(
        "POST",
        "/v1/chat/completions",
        {"model": "usage-llm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
    )
    assert code == 200, reply
    list(
        stack.openai().chat.completions.create(
            model="usage-llm",
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8,
            stream=True,
        )
    )
    calls = stack.new_calls(since)
    assert len(calls) == 2
    prompt = sum(c.usage()[0] for c in calls)
    generated = sum(c.usage()[1] for c in calls)

    # Then its usage row holds the engine's token counts
    def row() -> dict[str, Any] | None:
        code, body = stack.call("GET", "/v1/usage?by=deployment")
        assert code == 200, body
        found = next((r for r in body["rows"] if r["deployment"] == "usage-llm"), None)
        return found if found and found["requests"] >= 2 else None

    counted = _eventually(row, "usage-llm's two requests counted")
    assert counted["requests"] == 2
    assert (counted["input_tokens"], counted["output_tokens"]) == (prompt, generated)


def _big_plan(stack: Stack, name: str, max_input: int, max_total: int) -> None:
    """A deployment of the model planned for more input tokens than the engine takes (a
    spec written for a bigger model), so llmhost packs more than the engine accepts."""
    spec = {
        "name": name,
        "model": {"kind": "hub", "model_id": MODEL_ID},
        "engine": {
            "name": "tgi",
            "options": {"max_input_tokens": max_input, "max_total_tokens": max_total},
        },
        "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    }
    code, created = stack.call("POST", "/v1/deployments", spec)
    assert code == 201, created
    _eventually(
        lambda: stack.call("GET", f"/v1/deployments/{name}")[1].get("status") == "IN_SERVICE",
        f"{name} in service",
    )


def _rag_over_the_budget(stack: Stack, model: str) -> tuple[int, Any, list[EngineCall]]:
    since = len(stack.spy.calls)
    code, answer = stack.call(
        "POST",
        "/v1/rag",
        {
            "model": model,
            "collection": COLLECTION,
            "query": "Describe every way to run inference, jobs and batches.",
            "k": 50,
            "max_new_tokens": 16,
            "temperature": 0,
        },
    )
    return code, answer, stack.new_calls(since)


def _counts(stack: Stack, calls: list[EngineCall]) -> list[tuple[int, int]]:
    return [(c.status, stack.ref.count(c.prompt(stack.ref))) for c in calls]


@pytest.mark.parametrize(
    ("max_input", "max_total", "expected_refusals"),
    # The engine's input check refuses first: one cut. Its total check first (the total
    # planned is over the engine's too), then its input check: two cuts.
    [(1900, 2048, 1), (6144, 8192, 2)],
    ids=["planned-input-over-the-engines", "planned-for-a-bigger-model"],
)
def test_a_rag_prompt_the_engine_refuses_is_cut_and_sent_again(
    stack: Stack, max_input: int, max_total: int, expected_refusals: int
) -> None:
    engine = stack.running.cloud.engine
    name = f"plan-{max_input}"
    _big_plan(stack, name, max_input, max_total)
    # When a RAG question retrieves more than the engine takes
    code, answer, calls = _rag_over_the_budget(stack, name)
    # Then each refusal naming a tighter limit than the last (TGI checks the total before the
    # input, so a first refusal may name only the total) had llmhost cut the prompt and send
    # it again, at most twice, and the answer comes from what fitted
    assert code == 200, (answer, _counts(stack, calls))
    *refusals, served = calls
    assert 1 <= len(refusals) <= expected_refusals, _counts(stack, calls)
    assert all(r.refused for r in refusals) and not served.refused
    assert stack.ref.count(refusals[0].prompt(stack.ref)) > engine.max_input_tokens
    fitted = stack.ref.count(served.prompt(stack.ref))
    assert fitted <= engine.max_input_tokens
    assert fitted + 16 <= engine.max_total_tokens
    assert answer["usage"]["prompt_tokens"] == served.usage()[0] == fitted
    assert 0 < len(answer["sources"]) < 50
