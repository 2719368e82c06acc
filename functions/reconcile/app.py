"""Reconciler: spec changes (DynamoDB stream), SageMaker state changes and a schedule.

Stream batches go through Powertools' batch processing and answer with
``batchItemFailures`` (the event source reports ``ReportBatchItemFailures``): a record whose
deployment could not be reconciled is retried alone, the others are not held up, and records
that are not deployment changes (the budget ledger, the capacity lock) are skipped. Each
deployment is reconciled once per invocation however many of its records the batch holds
(the reconciler reads the current record, so once covers them all).

Single events (EventBridge, the schedule, a direct call) raise when a deployment fails, so
Lambda's asynchronous retries and then the dead-letter queue take them.

No Powertools Tracer here: the X-Ray SDK costs this function a third of its cold start, and
Lambda's active tracing already records each invocation; the API function keeps Tracer.
"""

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from llmhost import runtime
from llmhost.lifecycle.triggers import deployment_of_record, is_stream_batch, trigger_from_event

logger = Logger()
# This function's own metrics: Powertools' Metrics share one set with every Metrics of the
# process, and the local runner runs several functions and environments in one process.
metrics = EphemeralMetrics()


class _Once:
    """Reconciles each deployment at most once per invocation, remembering the outcome."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self._outcomes: dict[str, Exception | None] = {}
        self._reconciler: Any = None

    def __call__(self, name: str) -> None:
        if name in self._outcomes:
            failure = self._outcomes[name]
            if failure is not None:
                raise failure
            return
        try:
            if self._reconciler is None:
                self._reconciler = runtime.reconciler()
            result = self._reconciler.reconcile(name)
        except Exception as error:
            logger.exception("reconcile failed", extra={"deployment": name})
            self._outcomes[name] = error
            raise
        self._outcomes[name] = None
        logger.info(
            "reconciled", extra={"deployment": name, "status": result.status, "steps": result.steps}
        )
        metrics.add_metric(name="ReconcileSteps", unit=MetricUnit.Count, value=len(result.steps))
        self.results.append({"name": name, "status": result.status, "steps": result.steps})


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: Any, context: object) -> dict[str, Any]:
    if is_stream_batch(event):
        return _stream_batch(event, context)
    trigger = trigger_from_event(event)
    if trigger.source == "ignored":
        logger.warning("event ignored: nothing llmhost reconciles", extra={"event": _brief(event)})
    names = list(trigger.names)
    if trigger.endpoint:
        names = [r.name for r in runtime.registry().using_endpoint(trigger.endpoint)]
    elif trigger.everything:
        names = [r.name for r in runtime.registry().deployments()]
    once, failed = _Once(), []
    for name in names:
        try:
            once(name)
        except Exception:
            # One deployment's trouble must not starve the others; the event is retried.
            failed.append(name)
    if failed:
        raise RuntimeError(f"reconcile failed for {', '.join(failed)}; will retry")
    return {"source": trigger.source, "reconciled": once.results}


def _stream_batch(event: dict[str, Any], context: object) -> dict[str, Any]:
    """One stream batch: deployment records are reconciled, every other record is skipped;
    the answer names the sequence numbers of the records to retry."""
    records, skipped = [], 0
    for record in event["Records"]:
        if deployment_of_record(record) is None:
            skipped += 1
        else:
            records.append(record)
    if skipped:
        logger.info("stream records skipped: not deployment changes", extra={"skipped": skipped})
    once = _Once()
    if not records:  # nothing to reconcile (Powertools refuses an empty batch)
        return {"batchItemFailures": [], "source": "ignored", "reconciled": []}
    # Imported here: Powertools' batch utilities bring asyncio, which a cold start on the
    # schedule or an EventBridge event would load for nothing.
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
        DynamoDBRecord,
    )

    def reconcile_record(record: DynamoDBRecord) -> None:
        name = deployment_of_record(record.raw_event)
        assert name is not None  # only deployment records reach here
        once(name)

    # A fresh processor per invocation; with every record failed it still answers (and so
    # reports each one) rather than raising.
    processor = BatchProcessor(EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)
    response = process_partial_response(
        event={"Records": records},
        record_handler=reconcile_record,
        processor=processor,
        context=context,  # type: ignore[arg-type]
    )
    return {**response, "source": "spec-change", "reconciled": once.results}


def _brief(event: Any) -> str:
    return repr(event)[:300]
