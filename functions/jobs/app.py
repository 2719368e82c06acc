"""Jobs worker: the jobs queue (SQS event source, ReportBatchItemFailures) -> run or complete
each job."""

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.metrics import EphemeralMetrics

from llmhost import runtime
from llmhost.jobs.worker import handle_records

logger = Logger()
tracer = Tracer(patch_modules=["botocore"])
metrics = EphemeralMetrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict, context: object) -> dict:
    return handle_records(event.get("Records", []), runtime.jobs())
