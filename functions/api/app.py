"""Deployment API: API Gateway (REST, IAM auth) -> the deployment routes."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import EphemeralMetrics

from llmhost import runtime
from llmhost.api.deployments import build_app
from llmhost.api.envelope import malformed_event_response

logger = Logger()
# Patch only what this function uses: patching every supported library imports requests &c.
tracer = Tracer(patch_modules=["botocore"])
# This function's own metrics: Powertools' Metrics share one set with every Metrics of the
# process, and the local runner runs several functions and environments in one process.
metrics = EphemeralMetrics()
app = build_app(runtime.deployments, logger=logger, metrics=metrics)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict, context: object) -> dict:
    refused = malformed_event_response(event)  # not a request API Gateway would send
    if refused is not None:
        return refused
    return app.resolve(event, context)
