"""Trace export: each trace the traces table stores, sent to an OTLP/HTTP endpoint.

The table's stream (new images, inserts only) delivers batches; ``llmhost.traces.export``
turns each record into spans and sends the batch in one OTLP request, answering with
``batchItemFailures`` (the event source reports ``ReportBatchItemFailures``) for what could
not be sent, so Lambda retries it and then hands it to the on-failure destination.

The exporter (endpoint, headers read from the headers secret) is built on the first
invocation and kept for the environment's life; header values are never logged.
"""

from functools import cache
from typing import Any

from aws_lambda_powertools import Logger

from llmhost import runtime
from llmhost.traces.export import StreamTraceExporter

logger = Logger()


@cache
def _exporter() -> StreamTraceExporter:
    return runtime.trace_exporter()


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    outcome = _exporter().export_records(event.get("Records") or [])
    if outcome.failed:
        logger.warning(
            "trace export incomplete",
            extra={"exported": outcome.exported, "failed": len(outcome.failed)},
        )
    return outcome.response()
