"""Reconciler: spec changes (DynamoDB stream), SageMaker state changes and a schedule.

No Powertools Tracer here: the X-Ray SDK costs this function a third of its cold start, and
Lambda's active tracing already records each invocation; the API function keeps Tracer.
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from llmhost import runtime
from llmhost.lifecycle.triggers import trigger_from_event

logger = Logger()
metrics = Metrics()


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict, context: object) -> dict:
    trigger = trigger_from_event(event)
    names = list(trigger.names)
    if trigger.endpoint:
        names = [r.name for r in runtime.registry().using_endpoint(trigger.endpoint)]
    elif trigger.everything:
        names = [r.name for r in runtime.registry().deployments()]
    reconciler = runtime.reconciler()
    results, failed = [], []
    for name in names:
        try:
            result = reconciler.reconcile(name)
        except Exception:
            # One deployment's trouble must not starve the others; the batch is retried.
            logger.exception("reconcile failed", extra={"deployment": name})
            failed.append(name)
            continue
        logger.info(
            "reconciled", extra={"deployment": name, "status": result.status, "steps": result.steps}
        )
        metrics.add_metric(name="ReconcileSteps", unit=MetricUnit.Count, value=len(result.steps))
        results.append({"name": name, "status": result.status, "steps": result.steps})
    if failed:
        raise RuntimeError(f"reconcile failed for {', '.join(failed)}; will retry")
    return {"source": trigger.source, "reconciled": results}
