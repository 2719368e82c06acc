"""Ingest: documents dropped into the bucket under collections/<name>/ are indexed."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from llmhost import aws, runtime, snapstart
from llmhost.rag.bucket import ObjectNotIndexed, apply_change
from llmhost.rag.s3_events import Ignored, changes_from_event

logger = Logger()
# This function's own metrics: Powertools' Metrics share one set with every Metrics of the
# process, and the local runner runs several functions and environments in one process.
metrics = EphemeralMetrics()
# SnapStart: the RAG stack is built before the snapshot, clients are rebuilt after a restore.
snapstart.register(snapstart.warm_ingest)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict, context: object) -> dict:
    results = []
    incomplete: list[ObjectNotIndexed] = []
    for change in changes_from_event(event):
        if isinstance(change, Ignored):
            logger.warning("ignored object", extra={"key": change.key, "reason": change.reason})
            continue
        try:
            result = apply_change(change, aws.client("s3"), runtime.store(), runtime.embedder())
        except ObjectNotIndexed as error:
            # The other records still get their turn; the event is retried at the end.
            logger.warning(error.message, extra=error.result)
            incomplete.append(error)
            result = error.result
        for item in result.get("rejected", []):
            logger.warning("document rejected", extra=item)
        if "indexed" in result:
            metrics.add_metric(
                name="DocumentsIndexed", unit=MetricUnit.Count, value=result["indexed"]
            )
            metrics.add_metric(
                name="DocumentsRejected", unit=MetricUnit.Count, value=len(result["rejected"])
            )
        results.append(result)
    if incomplete:
        # Lambda retries the whole event (twice, then the dead-letter queue): re-ingesting
        # the objects that did land is harmless, their point ids being deterministic.
        raise incomplete[0]
    return {"results": results}
