"""Handing a batch to the batch function: an asynchronous invoke with ``{"batch_id"}``.

A failed invoke is not the client's problem, and not lost: the batch is stored already and
stays in the open list, which the batch function's schedule sweeps, so the batch moves on
at the next sweep instead of now. It is logged, with what to check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

logger = Logger(child=True)


class LambdaBatchKick:
    """``kick(batch_id)``: ``lambda:Invoke`` of the batch function, ``InvocationType=Event``
    (the caller needs ``lambda:InvokeFunction`` on it)."""

    def __init__(self, client: Callable[[], Any], function_name: str) -> None:
        self._client = client
        self.function_name = function_name

    def __call__(self, batch_id: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self._client().invoke(
                FunctionName=self.function_name,
                InvocationType="Event",
                Payload=json.dumps({"batch_id": batch_id}).encode(),
            )
            status = reply.get("StatusCode")
        except (ClientError, BotoCoreError) as error:
            status = f"{type(error).__name__}: {error}"
        if status != 202:  # what Lambda answers when it has queued an async event
            logger.warning(
                "the batch function was not invoked; the schedule's sweep will advance the "
                "batch (check BATCH_FUNCTION_NAME and lambda:InvokeFunction)",
                extra={"batch_id": batch_id, "function": self.function_name, "answer": status},
            )
