"""Batch function: moves OpenAI-compatible batches on.

- ``{"batch_id": ...}`` (the OpenAI-compatible server after a create or a cancel, the jobs
  worker after a batch's last line): advances that batch (``llmhost.batches.service.
  Batches.advance``: validates and starts it, finalises it, ends a cancel). Raises when it
  cannot, so Lambda's asynchronous retries take it.
- A transform job's state change (EventBridge): advances the job's batch, when the job has
  ended and is this stack's (``llmhost.batches.transform.batch_of_state_change``).
- The batch schedule (``llmhost.batches.schedule``): starts a batch for each new input file
  under the jobs bucket's ``scheduled/`` prefix, then sweeps.
- Anything else (the sweep schedule): advances every open batch, so one a crash or a lost
  invoke left behind moves on, and one past its window expires.
"""

from typing import Any

from aws_lambda_powertools import Logger

from llmhost import aws, runtime
from llmhost.batches.schedule import ScheduledBatches, is_schedule_event
from llmhost.batches.transform import STATE_CHANGE, batch_of_state_change

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    batches = runtime.batches()
    batch_id = event.get("batch_id") if isinstance(event, dict) else None
    if isinstance(event, dict) and event.get("detail-type") == STATE_CHANGE:
        batch_id = batch_of_state_change(event, runtime.stack_name())
        if batch_id is None:
            return {"batches": {}}  # another stack's job, or one still running
    if isinstance(batch_id, str) and batch_id:
        return {"batches": {batch_id: batches.advance(batch_id).status}}
    answer: dict[str, Any] = {}
    if is_schedule_event(event):
        run = ScheduledBatches(
            aws.client("s3"), runtime.jobs_settings().jobs_bucket, batches.start_named
        ).run()
        answer["scheduled"] = {"started": run.started, "failed": run.failed}
    answer["batches"] = batches.sweep()
    logger.info("batches advanced", extra={"batches": len(answer["batches"])})
    return answer
