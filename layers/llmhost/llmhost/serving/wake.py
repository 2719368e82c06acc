"""How serving asks the scaling function to wake a model that has no copy (contract event 4).

A shared deployment that Application Auto Scaling took to zero copies stays IN_SERVICE, and
SageMaker refuses its invocations ("Inference Component has no capacity"). AWS's own answer
is the ``NoCapacityInvocationFailures`` alarm and its step policy, a minute or more later.
Serving does better: the one request that wins the registry write (see
``ModelDirectory.refused_for_capacity``) hands this event to the scaling function, which asks
SageMaker for a copy at once.

``WakeDispatcher`` is the seam: in AWS an asynchronous Lambda invoke
(``LambdaWakeDispatcher``), in the local runner a function call (``CallbackWakeDispatcher``),
and without a scaling function nothing (``NoWakeDispatch``: the registry entry is the record,
AWS's alarm does the waking).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from llmhost.errors import LlmhostError

WAKE_SOURCE = "llmhost.serving"
# An async invoke only queues the event; a slow answer means Lambda's API is in trouble, and
# the refused request should not wait for it.
INVOKE_TIMEOUT_S = 3.0
INVOKE_ATTEMPTS = 2


class WakeDispatchFailed(LlmhostError):
    """The scaling function could not be asked to wake a model (the wake stays recorded)."""

    code = "wake_dispatch_failed"
    status = 502


def wake_event(deployment: str, requested_at: str) -> dict[str, str]:
    """Event 4 of the scaling contract: serving asks for a copy of ``deployment``.

    ``requested_at`` is the ISO-8601 UTC time of the WakeRequested history entry, so the
    hook can tell this wake from an older one.
    """
    return {
        "source": WAKE_SOURCE,
        "action": "wake",
        "deployment": deployment,
        "requested_at": requested_at,
    }


class WakeDispatcher(Protocol):
    def dispatch(self, event: dict[str, str]) -> None:
        """Hand ``event`` to the scaling function without waiting for it to act.

        Raises WakeDispatchFailed when the event could not be handed over.
        """


class NoWakeDispatch:
    """No scaling function configured: the registry's WakeRequested entry is all serving does."""

    def dispatch(self, event: dict[str, str]) -> None:
        return None


class LambdaWakeDispatcher:
    """An asynchronous (``InvocationType="Event"``) invoke of the scaling function.

    ``client`` returns a Lambda client (built on first use: most containers never wake
    anything). The caller needs ``lambda:InvokeFunction`` on ``function_name``.
    """

    def __init__(self, client: Callable[[], Any], function_name: str) -> None:
        if not function_name:
            raise ValueError("function_name must name the scaling function (name or ARN)")
        self._client = client
        self.function_name = function_name

    def dispatch(self, event: dict[str, str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self._client().invoke(
                FunctionName=self.function_name,
                InvocationType="Event",
                Payload=json.dumps(event).encode(),
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            raise WakeDispatchFailed(
                f"could not invoke the scaling function {self.function_name} ({code}); check "
                "SCALING_FUNCTION_NAME and the function's lambda:InvokeFunction permission"
            ) from error
        except BotoCoreError as error:
            raise WakeDispatchFailed(
                f"could not reach Lambda to invoke {self.function_name}: {error}"
            ) from error
        status = reply.get("StatusCode")
        if status != 202:  # what Lambda answers when it has queued an async event
            raise WakeDispatchFailed(
                f"Lambda answered {status} instead of 202 for the async invoke of "
                f"{self.function_name}"
            )


class CallbackWakeDispatcher:
    """Calls ``deliver(event)``: the local runner queues it for its scaling worker."""

    def __init__(self, deliver: Callable[[dict[str, str]], None]) -> None:
        self._deliver = deliver

    def dispatch(self, event: dict[str, str]) -> None:
        self._deliver(event)


def lambda_client() -> Any:
    """The Lambda client for wake dispatches: short timeouts, since the invoke only queues."""
    from llmhost import aws

    return aws.client(
        "lambda",
        read_timeout=INVOKE_TIMEOUT_S,
        connect_timeout=INVOKE_TIMEOUT_S,
        max_attempts=INVOKE_ATTEMPTS,
    )
