"""AWS faults on the request path, by kind: throttled (429), timed out (504), unavailable (503).

Every botocore failure that retrying later can get past is one of these three, whichever
service raised it; ``classify`` says which, and ``ServiceFault`` is the typed error the API
layers turn into a status with ``Retry-After``. Failures retrying cannot fix (access denied,
a missing resource, a malformed request) classify as None: they are the caller's to map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from llmhost.errors import LlmhostError

FaultKind = Literal["throttled", "timed out", "unavailable"]

# Seconds to suggest in Retry-After: a throttled call usually passes a second or two later;
# a service answering 5xx or unreachable needs a little longer.
RETRY_AFTER_THROTTLED_S = 2
RETRY_AFTER_UNAVAILABLE_S = 5
RETRY_AFTER_TIMEOUT_S = 5

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "BandwidthLimitExceeded",
        "TransactionInProgressException",
    }
)
UNAVAILABLE_CODES = frozenset(
    {
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "InternalServiceError",
        "InternalServiceErrorException",
        "InternalDependencyException",
    }
)
_STATUS: dict[str, int] = {"throttled": 429, "timed out": 504, "unavailable": 503}
_RETRY_AFTER: dict[str, int] = {
    "throttled": RETRY_AFTER_THROTTLED_S,
    "timed out": RETRY_AFTER_TIMEOUT_S,
    "unavailable": RETRY_AFTER_UNAVAILABLE_S,
}


@dataclass(frozen=True)
class Fault:
    kind: FaultKind

    @property
    def status(self) -> int:
        return _STATUS[self.kind]

    @property
    def retry_after(self) -> int:
        return _RETRY_AFTER[self.kind]


def classify(error: BaseException) -> Fault | None:
    """The kind of a botocore error if retrying later may succeed, else None."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from botocore.exceptions import ConnectionError as BotocoreConnectionError

    if isinstance(error, ClientError):
        info = error.response.get("Error", {}) or {}
        code = str(info.get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in THROTTLING_CODES or status == 429:
            return Fault("throttled")
        if status == 504 or code in ("RequestTimeout", "RequestTimeoutException"):
            return Fault("timed out")
        if code in UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
            return Fault("unavailable")
        return None
    if isinstance(error, ReadTimeoutError | ConnectTimeoutError):
        return Fault("timed out")
    if isinstance(
        error,
        EndpointConnectionError
        | ConnectionClosedError
        | BotocoreConnectionError
        | ResponseStreamingError,
    ):
        return Fault("unavailable")
    return None


class ServiceFault(LlmhostError):
    """An AWS service llmhost depends on failed in a way retrying later can get past."""

    def __init__(self, what: str, fault: Fault, log_detail: str = "") -> None:
        verb = {
            "throttled": "is throttling llmhost's requests",
            "timed out": "did not answer in time",
            "unavailable": "is unavailable",
        }[fault.kind]
        super().__init__(f"{what} {verb}; retry after {fault.retry_after} s")
        self.code = {
            "throttled": "service_throttled",
            "timed out": "service_timeout",
            "unavailable": "service_unavailable",
        }[fault.kind]
        self.status = fault.status
        self.retry_after = fault.retry_after
        self.fault = fault
        self.log_detail = log_detail


def fault_error(error: BaseException, what: str) -> ServiceFault | None:
    """The ServiceFault for ``error`` (a botocore error) raised while using ``what`` (named
    for the client, e.g. "the model registry (DynamoDB)"), or None if it is not a fault."""
    fault = classify(error)
    if fault is None:
        return None
    return ServiceFault(what, fault, log_detail=f"{type(error).__name__}: {error}")


class TableError(LlmhostError):
    """DynamoDB refused a call on one of llmhost's tables: 503 with Retry-After when retrying
    can get past it (throttled, unavailable), else 500 (the stack's configuration). Each
    table's adapter has its own subclass, so its code names the table."""

    code = "table_error"
    status = 500
    retry_after: int | None = None

    def __init__(self, message: str, log_detail: str = "") -> None:
        super().__init__(message)
        self.log_detail = log_detail


@contextlib.contextmanager
def table_errors(error_type: type[TableError], table: str, busy_code: str) -> Iterator[None]:
    """Turn a botocore error of a call on ``table`` (named for people, e.g. "the jobs table
    (DynamoDB)") into ``error_type``: code ``busy_code`` and 503 when it is a fault retrying
    gets past, else its own code and 500, the detail kept for the operator's logs."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as error:
        detail = f"{type(error).__name__}: {error}"
        fault = classify(error)
        if fault is None:
            raise error_type(
                f"{table} refused llmhost's request; the operator's logs say why", detail
            ) from None
        failed = error_type(
            f"{table} is {'busy' if fault.kind == 'throttled' else 'unavailable'}; "
            f"retry after {fault.retry_after} s",
            detail,
        )
        failed.code, failed.status, failed.retry_after = busy_code, 503, fault.retry_after
        raise failed from None
