"""``make run``'s trace export: the traces table's stream, delivered to the trace export
function's handler, when ``LLMHOST_OTLP_ENDPOINT`` names an OTLP/HTTP traces URL.

The stream is read as template.yaml's ``TraceExportFunction`` event source reads it (its
filter, batch size, retries and partial batch failures: ``llmhost_local.streams``), and the
handler sends each batch to the endpoint as it does in AWS. ``LLMHOST_OTLP_HEADERS`` (a JSON
object of headers, e.g. ``{"Authorization": "Basic ..."}``) becomes the headers secret in the
local Secrets Manager, which the handler reads as it reads ``OtlpHeadersSecretArn``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmhost_local import events

ENDPOINT = "LLMHOST_OTLP_ENDPOINT"
HEADERS = "LLMHOST_OTLP_HEADERS"
TABLE_RESOURCE = "TracesTable"
FUNCTION_RESOURCE = "TraceExportFunction"
HEADERS_SECRET = "llmhost/otlp-headers"


def endpoint_of(environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL to export to, or None (export off). Exits with a message
    naming the variable when it is not an http(s) URL or the headers are not a JSON object."""
    endpoint = environ.get(ENDPOINT, "").strip()
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise SystemExit(
            f"{ENDPOINT} must be an http(s) URL such as http://127.0.0.1:4318/v1/traces"
        )
    _headers(environ)
    return endpoint


def banner_line(environ: Mapping[str, str]) -> str:
    """Where ``make run`` sends traces, for its banner (header values never shown)."""
    endpoint = environ.get(ENDPOINT, "").strip()
    if not endpoint:
        return (
            f"Traces export: off (set {ENDPOINT}, e.g. http://127.0.0.1:4318/v1/traces, "
            "to send them over OTLP/HTTP)"
        )
    parts = urlsplit(endpoint)
    shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    names = sorted(_headers(environ))
    with_headers = f" with header(s) {', '.join(names)} from {HEADERS}" if names else ""
    return f"Traces export: OTLP/HTTP to {shown}{parts.path}{with_headers}"


def _headers(environ: Mapping[str, str]) -> dict[str, str]:
    raw = environ.get(HEADERS, "").strip()
    if not raw:
        return {}
    try:
        headers = json.loads(raw)
    except ValueError:
        headers = None
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise SystemExit(
            f"{HEADERS} must be a JSON object of header names to values, "
            'e.g. {"Authorization": "Basic ..."}'
        )
    return headers


def start_trace_export(
    *,
    template: Path,
    stream_arn: str,
    streams: Any,
    secrets: Any,
    load_handler: Callable[[str, str], Any],
    environ: Mapping[str, str],
    log: Callable[[str], None],
    forget: Callable[[list[str]], None] | None = None,
) -> Any:
    """A StreamPoller delivering the traces stream to the trace export handler, positioned
    at the stream's end, or None when ``LLMHOST_OTLP_ENDPOINT`` is unset. Sets the
    handler's environment (OTLP_ENDPOINT, OTLP_HEADERS_SECRET_ARN) as template.yaml does."""
    from llmhost_local.streams import StreamPoller, stream_source

    endpoint = endpoint_of(environ)
    if endpoint is None:
        return None
    os.environ["OTLP_ENDPOINT"] = endpoint
    headers = _headers(environ)
    if headers:
        arn = secrets.create_secret(Name=HEADERS_SECRET, SecretString=json.dumps(headers))["ARN"]
        os.environ["OTLP_HEADERS_SECRET_ARN"] = arn
    module = load_handler("trace_export", "llmhost-trace-export")
    lock = threading.Lock()  # one invocation at a time, as one shard's batches are

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        with lock:
            answer: dict[str, Any] = module.handler(
                event, events.LambdaContext("llmhost-trace-export")
            )
        return answer

    poller = StreamPoller(
        streams,
        stream_arn,
        stream_source(template, TABLE_RESOURCE, FUNCTION_RESOURCE),
        invoke,
        log=log,
        forget=forget,
    )
    poller.start_at_latest()
    return poller
