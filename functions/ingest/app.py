"""Ingest: documents dropped into the bucket under collections/<name>/ are indexed."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from llmhost import aws, runtime
from llmhost.rag.ingest import delete_document, ingest_documents, parse_s3_object
from llmhost.rag.s3_events import Ignored, changes_from_event

logger = Logger()
metrics = Metrics()


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict, context: object) -> dict:
    results = []
    for change in changes_from_event(event):
        if isinstance(change, Ignored):
            logger.warning("ignored object", extra={"key": change.key, "reason": change.reason})
            continue
        store, embedder = runtime.store(), runtime.embedder()
        if change.action == "delete":
            # .txt/.md documents are named by their key; .jsonl lines carry their own ids.
            removed = delete_document(change.collection, change.key, store)
            results.append({"key": change.key, "deleted_chunks": removed})
            continue
        body = aws.client("s3").get_object(Bucket=change.bucket, Key=change.key)["Body"].read()
        parsed = parse_s3_object(change.key, body)
        if not store.exists(change.collection):
            store.create_collection(change.collection, embedder.dimension)
        report = ingest_documents(
            change.collection, parsed.documents, embedder, store, locations=parsed.locations
        )
        rejected = [r.as_dict() for r in parsed.rejected + report.rejected]
        for item in rejected:
            logger.warning("document rejected", extra=item)
        metrics.add_metric(
            name="DocumentsIndexed", unit=MetricUnit.Count, value=len(report.indexed)
        )
        metrics.add_metric(name="DocumentsRejected", unit=MetricUnit.Count, value=len(rejected))
        results.append({"key": change.key, "indexed": len(report.indexed), "rejected": rejected})
    return {"results": results}
