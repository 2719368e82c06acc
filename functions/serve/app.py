"""Serving API: API Gateway (REST, IAM auth) -> RAG, chat, models, collections, documents."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import EphemeralMetrics

from llmhost import runtime, snapstart
from llmhost.api.envelope import malformed_event_response
from llmhost.api.serving import build_serving_app

logger = Logger()
tracer = Tracer(patch_modules=["botocore"])
# This function's own metrics: Powertools' Metrics share one set with every Metrics of the
# process, and the local runner runs several functions and environments in one process.
metrics = EphemeralMetrics()
app = build_serving_app(
    runtime.serving_service,
    runtime.collections,
    logger=logger,
    stream_url=lambda: runtime.serving_settings().stream_url,
    holds=runtime.hold_policy,
    jobs=runtime.jobs,
)
# SnapStart: the RAG stack is built before the snapshot, clients are rebuilt after a restore.
snapstart.register(snapstart.warm_serving)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict, context: object) -> dict:
    refused = malformed_event_response(event)  # not a request API Gateway would send
    if refused is not None:
        return refused
    return app.resolve(event, context)
