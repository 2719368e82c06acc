"""What the jobs worker calls when a batch line's job ends.

``line_finished`` counts the line (an atomic ``ADD``) and, when the count reaches the batch's
total, kicks the batch (the batch function advances it, which finalises it). The worker
calls it only on the job's real move to a terminal status, never for a duplicate
completion, so no line is counted twice; a count lost in a crash between the two is
harmless, since finalisation reads every line's job and the schedule advances every open
batch.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

logger = Logger(child=True)


def line_finished(batch_id: str, status: str) -> None:
    """Count a batch line whose job ended ``status`` (SUCCEEDED, FAILED or CANCELLED), and
    finalise the batch on its last line. Raises the store's typed errors; a batch whose last
    line's call failed is finished by the schedule's ``advance``."""
    from llmhost import runtime
    from llmhost.batches.store import BatchNotFound

    try:
        batch = runtime.batches().store.count_line(batch_id, status == "SUCCEEDED")
    except BatchNotFound:
        # No batch to count on (deleted, or a job given a batch id by hand): nothing waits
        # for this count, and retrying the message would not make one appear.
        logger.warning("a batch line's job names no batch", extra={"batch_id": batch_id})
        return
    counts = batch.request_counts
    # A batch still starting checks its lines itself once they are all submitted.
    if batch.status in {"in_progress", "cancelling"} and (
        counts.completed + counts.failed >= counts.total
    ):
        runtime.batch_kick()(batch_id)
