"""The jobs queue's messages, as Lambda's SQS event source hands them to the jobs function.

A message is ``{"job_id": ...}`` (a job to run) or an SNS envelope from an asynchronous
endpoint's success or error topic (a job to complete). The answer names the messages to
deliver again (``batchItemFailures``, the function's ReportBatchItemFailures); every other
message of the batch is deleted.
"""

from __future__ import annotations

import importlib.util
import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from llmhost.jobs.record import JobError

if TYPE_CHECKING:
    from llmhost.jobs.service import Jobs, Outcome

logger = Logger(child=True)


def handle_records(records: list[dict[str, Any]], jobs: Jobs) -> dict[str, Any]:
    """Run each record; the partial batch response for those to deliver again."""
    failures = []
    for record in records:
        try:
            outcome = handle_record(record, jobs)
        except Exception:
            logger.exception("job message failed", extra={"message_id": record.get("messageId")})
            outcome = "retry"
        if outcome == "retry":
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def handle_record(record: dict[str, Any], jobs: Jobs) -> Outcome:
    body = json.loads(record["body"])
    if isinstance(body, dict) and isinstance(body.get("job_id"), str):
        count = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        return jobs.run(body["job_id"], receive_count=count, receipt=record.get("receiptHandle"))
    if isinstance(body, dict) and body.get("Type") == "Notification":
        return _notification(body, jobs)
    # Not a message llmhost sends: the queue's redrive keeps it in the dead-letter queue.
    logger.error("not a job message", extra={"message_id": record.get("messageId")})
    return "retry"


def _notification(envelope: dict[str, Any], jobs: Jobs) -> Outcome:
    """An asynchronous endpoint's notification completes its job (a duplicate is a no-op)."""
    if importlib.util.find_spec("llmhost.jobs.async_endpoint") is None:
        logger.error("an asynchronous endpoint notification, and no async support to read it")
        return "retry"
    from llmhost.jobs import async_endpoint  # type: ignore[attr-defined,unused-ignore]

    job_id, outcome = async_endpoint.notification_outcome(envelope)
    if isinstance(outcome, JobError):
        jobs.complete(job_id, error=outcome)
    else:
        jobs.complete(job_id, result=outcome)
    return "done"
