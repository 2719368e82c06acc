"""Scaling hook: CloudWatch alarm state changes of llmhost's alarms -> sleep, wake, history."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from llmhost import runtime
from llmhost.scaling.hook import ScalingHook, parse_alarm_event

logger = Logger()
metrics = Metrics()


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict, context: object) -> dict:
    change = parse_alarm_event(event)
    if change is None:
        return {"handled": False}
    decision = ScalingHook(runtime.registry()).handle(change)
    if decision is None:
        logger.warning("alarm for an unknown deployment", extra={"deployment": change.deployment})
        return {"handled": False}
    logger.info(
        "alarm handled",
        extra={"deployment": change.deployment, "alarm": change.kind, "decision": decision.event},
    )
    metrics.add_dimension(name="decision", value=decision.event)
    metrics.add_metric(name="ScalingDecisions", unit=MetricUnit.Count, value=1)
    return {"handled": True, "deployment": change.deployment, "decision": decision.event}
