"""Traces from observations: GenAI attribute names, head sampling by trace id (errors always
kept), and what TraceContent keeps (property tests: redacted text never holds the planted
personal data; ``none`` keeps counts and no text)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llmhost.observe import RequestObservation, RetrievedSource, StageTiming
from llmhost.traces.record import build_trace, keep, sampled, summary, trace_id_for
from llmhost.traces.redact import redact_text


def observation(**fields: Any) -> RequestObservation:
    values: dict[str, Any] = {
        "request_id": "chatcmpl-0123",
        "kind": "rag",
        "started_at": 1_796_263_800.123,
        "duration_ms": 812.5,
        "status": 200,
        "model": "demo",
        "generation": 3,
        "caller": "alice",
        "collection": "docs",
        "ttft_ms": 120.0,
        "input_tokens": 812,
        "output_tokens": 64,
        "finish_reason": "stop",
        "query": "What is the refund policy?",
        "prompt": [
            {"role": "system", "content": "Answer from the context."},
            {"role": "user", "content": "What is the refund policy?"},
        ],
        "answer": "Thirty days.",
        "sources": (RetrievedSource("policy.md#0", 0.61, "docs", "Refunds within 30 days."),),
        "stages": (
            StageTiming("embed", 0.0, 5.1),
            StageTiming("retrieve", 5.1, 9.0, {"llmhost.retrieve.hits": 1}),
            StageTiming("generate", 14.1, 790.0),
        ),
        "parameters": {"max_tokens": 256, "temperature": 0.2, "model_id": "Qwen/Qwen2.5-0.5B"},
    }
    values.update(fields)
    return RequestObservation(**values)


def test_a_trace_carries_the_genai_attributes_and_the_stages_as_spans() -> None:
    # Given an answered RAG request
    trace = build_trace(observation(), content="full", retention_days=30, cost_usd=0.00012)

    # Then its attributes use the OpenTelemetry GenAI names
    attributes = trace["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "aws.sagemaker"
    assert attributes["gen_ai.request.model"] == "demo"
    assert attributes["gen_ai.response.model"] == "Qwen/Qwen2.5-0.5B"
    assert attributes["gen_ai.usage.input_tokens"] == 812
    assert attributes["gen_ai.usage.output_tokens"] == 64
    assert attributes["gen_ai.request.max_tokens"] == 256
    assert attributes["gen_ai.request.temperature"] == 0.2
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["gen_ai.response.id"] == "chatcmpl-0123"
    assert attributes["llmhost.cost_usd"] == 0.00012
    # And the stages are its spans, with 16-hex ids
    assert [s["name"] for s in trace["spans"]] == ["embed", "retrieve", "generate"]
    assert all(len(s["span_id"]) == 16 for s in trace["spans"])
    assert trace["id"] == trace_id_for("chatcmpl-0123") and len(trace["id"]) == 32
    assert trace["started_at"] == "2026-12-03T02:10:00.123Z"
    assert trace["expires_at"] == "2027-01-02T02:10:00.123Z"
    assert trace["sources"] == [
        {
            "id": "policy.md#0",
            "score": 0.61,
            "collection": "docs",
            "text": "Refunds within 30 days.",
        }
    ]
    # And the whole trace is JSON
    json.dumps(trace, allow_nan=False)


def test_a_rendered_prompt_is_a_text_completion() -> None:
    trace = build_trace(
        observation(prompt="<|user|>hi"), content="full", retention_days=1, cost_usd=None
    )
    assert trace["attributes"]["gen_ai.operation.name"] == "text_completion"
    assert trace["prompt"] == "<|user|>hi"


def test_a_refusal_is_an_error_with_its_type() -> None:
    trace = build_trace(
        observation(status=503, error_code="model_sleeping", cold=True, answer=None),
        content="full",
        retention_days=1,
    )
    assert trace["status"] == "error" and trace["http_status"] == 503
    assert trace["attributes"]["error.type"] == "model_sleeping"
    assert trace["attributes"]["llmhost.error_class"] == "503"


def test_summary_drops_the_texts_and_cuts_the_query() -> None:
    trace = build_trace(observation(query="q" * 500), content="full", retention_days=1)
    shown = summary(trace)
    assert "prompt" not in shown and "answer" not in shown and "spans" not in shown
    assert len(shown["query"]) == 200
    assert "text" not in shown["sources"][0]


ids = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=40).map(lambda s: "req-" + s)


@given(st.lists(ids, min_size=400, max_size=400, unique=True))
@settings(max_examples=5, deadline=None)
def test_head_sampling_keeps_about_the_rate(request_ids: list[str]) -> None:
    # Given 400 distinct request ids sampled at 25 %
    kept = sum(sampled(trace_id_for(r), 0.25) for r in request_ids)
    # Then about a quarter is kept (binomial: 6 standard deviations either side)
    assert 40 <= kept <= 160


@given(ids, st.floats(min_value=0, max_value=1))
@settings(deadline=None)
def test_sampling_is_monotonic_in_the_rate_and_errors_are_always_kept(
    request_id: str, rate: float
) -> None:
    trace_id = trace_id_for(request_id)
    # A trace kept at a rate is kept at every higher one (one decision per trace id)
    if sampled(trace_id, rate):
        assert sampled(trace_id, min(1.0, rate + 0.1))
    assert sampled(trace_id, 1.0) and not sampled(trace_id, 0.0)
    # And a failed request is kept whatever the rate
    assert keep(observation(request_id=request_id, status=500), trace_id, 0.0)
    assert keep(observation(request_id=request_id, status=429), trace_id, 0.0)
    assert not keep(observation(request_id=request_id, status=200), trace_id, 0.0)


# ------------------------------------------------------------------------- redaction

_local = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=12).filter(
    lambda s: s[0].isalnum() and s[-1].isalnum()
)
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
emails = st.builds(
    lambda a, b, tld: f"{a}@{b}.{tld}", _local, _label, st.sampled_from(["com", "org", "de", "io"])
)
digits = lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n)  # noqa: E731
phones = st.one_of(
    st.builds(lambda a, b, c: f"({a}) {b}-{c}", digits(3), digits(3), digits(4)),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", digits(3), digits(3), digits(4)),
    st.builds(
        lambda cc, a, b, c: f"+{cc} {a} {b} {c}",
        st.integers(1, 999),
        digits(2),
        digits(4),
        digits(4),
    ),
)
cards = st.one_of(
    digits(16),
    st.builds(lambda a, b, c, d: f"{a} {b} {c} {d}", digits(4), digits(4), digits(4), digits(4)),
    st.builds(lambda a, b, c, d: f"{a}-{b}-{c}-{d}", digits(4), digits(4), digits(4), digits(4)),
)
ibans = st.builds(
    lambda cc, check, rest: f"{cc}{check}{rest}",
    st.sampled_from(["DE", "GB", "FR", "NL"]),
    digits(2),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=14, max_size=26),
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str).filter(lambda s: "." not in s)
aws_keys = st.builds(
    lambda p, rest: p + rest,
    st.sampled_from(["AKIA", "ASIA"]),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16),
)
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
aws_secrets = st.text(alphabet=ALNUM + "/+", min_size=40, max_size=40).filter(
    lambda s: any(c.isdigit() for c in s) and any(c.isalpha() for c in s)
)
api_keys = st.builds(
    lambda p, rest: f"{p}-{rest}",
    st.sampled_from(["sk", "hf", "ghp"]),
    st.text(alphabet=ALNUM, min_size=20, max_size=48),
)
pii = st.one_of(emails, phones, cards, ibans, ipv4, ipv6, aws_keys, aws_secrets, api_keys)
words = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz,.?!'()", min_size=1, max_size=10), max_size=8
).map(" ".join)


def planted(before: str, secret: str, after: str) -> str:
    return f"{before} {secret} {after}".strip()


@given(words, pii, words)
@settings(max_examples=400, deadline=None)
def test_redacted_text_never_holds_the_planted_value(before: str, secret: str, after: str) -> None:
    assert secret not in redact_text(planted(before, secret, after))


@given(
    words,
    pii,
    words,
    st.sampled_from(["query", "prompt", "answer", "source", "model", "collection", "stop"]),
)
@settings(max_examples=200, deadline=None)
def test_a_redacted_trace_never_holds_the_planted_value(
    before: str, secret: str, after: str, where: str
) -> None:
    # Given personal data planted in one text of a request
    text = planted(before, secret, after)
    fields: dict[str, Any] = {
        "query": {"query": text},
        "prompt": {"prompt": [{"role": "user", "content": text}]},
        "answer": {"answer": text},
        "source": {"sources": (RetrievedSource("d#0", 0.5, "docs", text),)},
        # a model or collection no deployment has (a refusal's), a stop sequence
        "model": {"model": text, "status": 404, "error_code": "model_not_found"},
        "collection": {"collection": text, "status": 400},
        "stop": {"parameters": {"stop": [text]}},
    }[where]
    # When its trace is recorded redacted, or without text
    redacted = build_trace(observation(**fields), content="redacted", retention_days=1)
    none = build_trace(observation(**fields), content="none", retention_days=1)
    # Then the value appears nowhere in it
    assert secret not in json.dumps(redacted)
    assert secret not in json.dumps(none)


@given(words, words, words)
@settings(max_examples=50, deadline=None)
def test_content_none_keeps_the_counts_and_no_text(query: str, answer: str, passage: str) -> None:
    obs = observation(
        query=query or "q",
        answer=answer or "a",
        prompt=[{"role": "user", "content": query or "q"}],
        sources=(RetrievedSource("d#0", 0.5, "docs", passage or "p"),),
    )
    trace = build_trace(obs, content="none", retention_days=1)
    assert trace["query"] is None and trace["prompt"] is None and trace["answer"] is None
    assert trace["sources"] == [{"id": "d#0", "score": 0.5, "collection": "docs"}]
    assert trace["attributes"]["gen_ai.usage.input_tokens"] == 812
    assert trace["attributes"]["gen_ai.usage.output_tokens"] == 64
    assert trace["content"] == "none"


def test_redaction_keeps_ordinary_text() -> None:
    text = "On 2026-12-03 at 12:30:45 version 1.2.3 cost 30 dollars (ticket 4411)."
    assert redact_text(text) == text
    assert redact_text("mail bob@example.com from 10.0.0.1.") == "mail [email] from [ip]."
