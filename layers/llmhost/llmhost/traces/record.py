"""A trace: the JSON view of one request, built from its ``RequestObservation``.

Attribute names follow the OpenTelemetry semantic conventions for generative AI
(``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``...; https://opentelemetry.io/docs/specs/semconv/gen-ai/), so a
trace means the same in any tool it is exported to; llmhost's own facts are under
``llmhost.*``. Pure: values in, values out.

The trace id (32 lowercase hex, an OpenTelemetry trace id) is a hash of the request id, so
a client holding ``chatcmpl-...`` or ``job-...`` finds its trace without another id, and its
low 64 bits are uniformly spread: head sampling (``sampled``) keeps a trace when they fall
under the rate, as OpenTelemetry's TraceIdRatioBased sampler does.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import replace
from typing import Any

from llmhost.observe import RequestObservation
from llmhost.traces.redact import TraceContent, keep_text, redact_text

PROVIDER = "aws.sagemaker"
SUMMARY_QUERY_CHARS = 200
TRACE_ID_PATTERN = r"^[0-9a-f]{32}$"
# What a request id may be to be looked up as a trace (chatcmpl-..., rag-..., job-...).
REQUEST_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9]{0,15}-[A-Za-z0-9_-]{1,128}$"
_SAMPLE_SPACE = 1 << 64
# observation.parameters' names → the GenAI request attributes.
_REQUEST_ATTRIBUTES = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "stop": "gen_ai.request.stop_sequences",
}


def trace_id_for(request_id: str) -> str:
    """The trace id of the request ``request_id`` (32 lowercase hex)."""
    return hashlib.sha256(request_id.encode()).hexdigest()[:32]


def sampled(trace_id: str, rate: float) -> bool:
    """Head sampling: whether the trace ``trace_id`` is kept at ``rate`` (0..1), decided
    from its low 64 bits alone, so every component deciding on the same id agrees."""
    if rate >= 1:
        return True
    if rate <= 0:
        return False
    return int(trace_id[16:32], 16) < int(rate * _SAMPLE_SPACE)


def keep(observation: RequestObservation, trace_id: str, rate: float) -> bool:
    """Whether a trace is recorded: every failed or refused request, else the sample."""
    return observation.status >= 400 or sampled(trace_id, rate)


def iso_time(epoch_s: float) -> str:
    """``2026-12-03T02:10:00.123Z`` (UTC, milliseconds: sorts as text)."""
    millis = round(epoch_s * 1000)
    seconds, ms = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def operation_name(observation: RequestObservation) -> str:
    """``chat`` for the engine's chat API (a message list), ``text_completion`` for a
    prompt llmhost rendered itself."""
    return "text_completion" if isinstance(observation.prompt, str) else "chat"


def build_trace(
    observation: RequestObservation,
    *,
    content: TraceContent,
    retention_days: int,
    cost_usd: float | None = None,
) -> dict[str, Any]:
    """The trace of ``observation`` (the shape of ``GET /v1/traces/{id}``), its text kept
    as ``content`` says, expiring ``retention_days`` after the request began. The model
    that answered (its Hugging Face id) is ``observation.parameters["model_id"]``, when
    the recording point knew it."""
    obs = observation
    if content != "full":
        # A name a client sent (a refused model or collection) is kept only when it holds
        # nothing redaction would mask: a card number is a valid deployment name.
        obs = replace(
            obs,
            model=_plain_name(obs.model),
            collection=_plain_name(obs.collection),
        )
    model_id = obs.parameters.get("model_id")
    trace_id = trace_id_for(obs.request_id)
    cost = _finite(cost_usd)
    operation = operation_name(obs)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": obs.model,
        "gen_ai.response.model": model_id,
        "gen_ai.response.id": obs.request_id,
        "gen_ai.usage.input_tokens": obs.input_tokens,
        "gen_ai.usage.output_tokens": obs.output_tokens,
        "gen_ai.response.finish_reasons": [obs.finish_reason] if obs.finish_reason else None,
        "gen_ai.data_source.id": obs.collection,
        "error.type": (obs.error_code or str(obs.status)) if obs.status >= 400 else None,
        "http.response.status_code": obs.status,
        "llmhost.kind": obs.kind,
        "llmhost.deployment": obs.model,
        "llmhost.generation": obs.generation,
        "llmhost.cold": obs.cold,
        "llmhost.stream": obs.stream,
        "llmhost.cost_usd": cost,
        "llmhost.ttft_ms": _finite(obs.ttft_ms),
        "llmhost.hosting": obs.hosting,
        "llmhost.instance_type": obs.instance_type,
        "llmhost.engine": obs.engine,
        "llmhost.error_class": obs.error_class,
        "llmhost.sources": len(obs.sources),
        "llmhost.content": content,
    }
    for name, attribute in _REQUEST_ATTRIBUTES.items():
        value = obs.parameters.get(name)
        if name == "stop" and value is not None:
            # Stop sequences are the client's text: kept as the prompt is.
            texts = [value] if isinstance(value, str) else list(value)
            value = [keep_text(str(t), content) for t in texts] if content != "none" else None
        if value is not None:
            attributes[attribute] = list(value) if isinstance(value, tuple | list) else value
    return {
        "id": trace_id,
        "request_id": obs.request_id,
        "kind": obs.kind,
        "status": "error" if obs.status >= 400 else "ok",
        "http_status": obs.status,
        "error_code": obs.error_code,
        "started_at": iso_time(obs.started_at),
        "duration_ms": round(_finite(obs.duration_ms) or 0.0, 3),
        "ttft_ms": _finite(obs.ttft_ms),
        "model": obs.model,
        "generation": obs.generation,
        "collection": obs.collection,
        "caller": obs.caller,
        "stream": obs.stream,
        "cold": obs.cold,
        "cost_usd": cost,
        "content": content,
        "attributes": {k: v for k, v in attributes.items() if v is not None},
        "query": keep_text(obs.query, content),
        "prompt": _prompt(obs.prompt, content),
        "answer": keep_text(obs.answer, content),
        "sources": [_source(s, content) for s in obs.sources],
        "spans": _spans(obs, trace_id, operation),
        "feedback": [],
        "expires_at": iso_time(obs.started_at + retention_days * 86400),
    }


def summary(trace: dict[str, Any]) -> dict[str, Any]:
    """A trace as listings show it: no prompt, answer, spans or source texts, and the query
    cut to SUMMARY_QUERY_CHARS."""
    shown = {k: v for k, v in trace.items() if k not in ("prompt", "answer", "spans")}
    query = trace.get("query")
    if isinstance(query, str) and len(query) > SUMMARY_QUERY_CHARS:
        shown["query"] = query[:SUMMARY_QUERY_CHARS]
    shown["sources"] = [
        {k: v for k, v in s.items() if k != "text"} for s in trace.get("sources") or []
    ]
    return shown


def _plain_name(name: str | None) -> str | None:
    return name if name is None or redact_text(name) == name else None


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _prompt(prompt: Any, content: TraceContent) -> Any:
    if prompt is None or content == "none":
        return None
    if isinstance(prompt, str):
        return keep_text(prompt, content)
    return [
        {
            "role": str(message.get("role", "")),
            "content": keep_text(_message_text(message.get("content")), content),
        }
        for message in prompt
    ]


def _message_text(content: Any) -> str:
    """A chat message's text (OpenAI's content parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


def _source(source: Any, content: TraceContent) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": source.id,
        "score": _finite(source.score),
        "collection": source.collection,
    }
    text = keep_text(source.text, content)
    if text is not None:
        shown["text"] = text
    return shown


def _spans(obs: RequestObservation, trace_id: str, operation: str) -> list[dict[str, Any]]:
    spans = []
    for index, stage in enumerate(obs.stages):
        attributes: dict[str, Any] = dict(stage.attributes)
        if stage.name == "embed":
            attributes.setdefault("gen_ai.operation.name", "embeddings")
        elif stage.name == "retrieve":
            attributes.setdefault("gen_ai.data_source.id", obs.collection)
        elif stage.name == "generate":
            attributes.setdefault("gen_ai.operation.name", operation)
            attributes.setdefault("gen_ai.request.model", obs.model)
        span_id = hashlib.sha256(f"{trace_id}/{index}/{stage.name}".encode()).hexdigest()[:16]
        spans.append(
            {
                "span_id": span_id,
                "name": stage.name,
                "start_ms": round(_finite(stage.start_ms) or 0.0, 3),
                "duration_ms": round(_finite(stage.duration_ms) or 0.0, 3),
                "attributes": {k: v for k, v in attributes.items() if v is not None},
            }
        )
    return spans
