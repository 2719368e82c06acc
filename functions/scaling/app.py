"""Scaling hook: llmhost's alarms, target tracking's AlarmHigh, sleep/wake schedules, request
wakes and budget ticks -> sleep, wake, GPU-cap grants and refusals, budget limits, history."""

import os

from aws_lambda_powertools import Logger, single_metric
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from llmhost import runtime
from llmhost.scaling.hook_events import parse_event

logger = Logger()
# This function's own metrics: Powertools' Metrics share one set with every Metrics of the
# process, and the local runner runs several functions and environments in one process.
metrics = EphemeralMetrics()


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict, context: object) -> dict:
    parsed = parse_event(event)
    if parsed is None:
        return {"handled": False}
    outcomes = runtime.scaling_hook().handle_event(parsed)
    recorder = runtime.capacity_recorder()
    if recorder is not None:  # copies over time and the decisions, for usage and the console
        recorder.after_scaling(outcomes, runtime.clock().now())
    if not outcomes:
        logger.info("event not acted on", extra={"event": type(parsed).__name__})
        return {"handled": False}
    for outcome in outcomes:
        decision = outcome.decision
        logger.info(
            "scaling decision",
            extra={
                "deployment": outcome.deployment,
                "decision": decision.event,
                "reason": decision.reason,
            },
        )
        if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() == "true":
            continue  # single_metric does not honour the switch the Metrics class does
        # One metric per decision: a budget tick may take several, each its own dimension.
        with single_metric(
            name="ScalingDecisions", unit=MetricUnit.Count, value=1, namespace=metrics.namespace
        ) as metric:
            metric.add_dimension(name="decision", value=decision.event)
    first = outcomes[0]
    result: dict = {
        "handled": True,
        "deployment": first.deployment,
        "decision": first.decision.event,
    }
    if len(outcomes) > 1:
        result["decisions"] = [
            {"deployment": o.deployment, "decision": o.decision.event} for o in outcomes
        ]
    return result
