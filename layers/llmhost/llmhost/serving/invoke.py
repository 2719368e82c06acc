"""Invoke a model on SageMaker (``sagemaker-runtime``), plain or streamed, with typed errors.

``ModelInvoker`` sends an engine payload (built by a codec) to an endpoint, naming the
inference component for shared hosting, and returns the reply bytes or an iterator over
the streamed ``PayloadPart`` bytes. Every botocore failure becomes one of the errors in
``llmhost.serving.errors`` (status, client-safe message, Retry-After):

======================================================  =====  ===========================
SageMaker says                                           HTTP   error
======================================================  =====  ===========================
ModelError, container 4xx (validation)                   422    ModelInputRejected /
                                                                 PromptTooLong
ModelError, container 429 (engine overloaded)            429    ModelThrottled
ModelError, "timed out" / container 408, 504             504    ModelTimeout
ModelError, container 5xx                                502    ModelFailed
ThrottlingException                                      429    ModelThrottled
ValidationError "Inference Component has no capacity"    503    ModelUnavailable(sleeping)
ModelNotReadyException                                   503    ModelUnavailable(starting)
ValidationError "... not in service" / "... state"       503    ModelUnavailable(starting)
ValidationError "Endpoint ... not found"                 503    ModelUnavailable(not_deployed)
ServiceUnavailable, InternalFailure, InternalDependency-  503    ModelUnavailable(service_...)
Exception, any other 5xx, connection failures
read timeout; ModelStreamError ModelInvocationTimeExc.   504    ModelTimeout
any other error                                          502    ModelFailed
ModelStreamError (StreamBroken), InternalStreamFailure,  502    StreamInterrupted
connection lost mid-stream
======================================================  =====  ===========================

Timeouts and retries are explicit (``build_runtime_client``): botocore's standard retry
mode retries throttling, 5xx and connection errors, and also read timeouts, so the worst
case for one call is ``max_attempts * (connect_timeout_s + timeout_s)`` plus backoff
(``ModelInvoker.worst_case_s``). Keep it under the caller's own deadline (API Gateway: 29 s).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llmhost.serving.errors import (
    ModelFailed,
    ModelInvocationError,
    ModelThrottled,
    ModelTimeout,
    ModelUnavailable,
    StreamInterrupted,
    engine_error,
)

CONTENT_TYPE = "application/json"
DEFAULT_CONNECT_TIMEOUT_S = 3.0
# A serverless variant provisioning or a multi-model endpoint loading: seconds, not minutes.
RETRY_AFTER_NOT_READY_S = 10

_THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "ThrottledException", "TooManyRequestsException"}
)
_UNAVAILABLE_CODES = frozenset(
    {"ServiceUnavailable", "InternalFailure", "InternalDependencyException", "InternalError"}
)
_ORIGINAL_STATUS = re.compile(r"Received (?:client|server) error \((\d+)\)")
_ORIGINAL_MESSAGE = re.compile(r'with message "(.*)"', re.DOTALL)


@dataclass(frozen=True)
class InvocationTarget:
    """Where a model answers: its endpoint and, for shared hosting, its inference component."""

    endpoint_name: str
    inference_component: str | None = None

    def describe(self) -> str:
        if self.inference_component:
            return f"component '{self.inference_component}' on '{self.endpoint_name}'"
        return f"endpoint '{self.endpoint_name}'"


def build_runtime_client(
    *,
    read_timeout_s: float,
    max_attempts: int,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> Any:
    """The process's ``sagemaker-runtime`` client with these timeouts and retry budget.

    ``max_attempts`` counts the first try (botocore's ``total_max_attempts``, standard mode).
    Built by ``llmhost.aws`` (cached per limits; its endpoint overrides and the local
    runner's customizers apply). Pass it to ``ModelInvoker``.
    """
    from llmhost import aws

    if read_timeout_s <= 0 or connect_timeout_s <= 0:
        raise ValueError("read_timeout_s and connect_timeout_s must be positive seconds")
    if max_attempts < 1:
        raise ValueError("max_attempts counts the first try and must be at least 1")
    return aws.client(
        "sagemaker-runtime",
        read_timeout=read_timeout_s,
        connect_timeout=connect_timeout_s,
        max_attempts=max_attempts,
    )


class ModelInvoker:
    """Invokes an endpoint (or one of its inference components) with explicit time and retry
    limits; every SageMaker failure becomes a typed, client-safe error from
    ``llmhost.serving.errors``."""

    def __init__(
        self,
        runtime_client: Any,
        *,
        timeout_s: float,
        max_attempts: int,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        config = getattr(getattr(runtime_client, "meta", None), "config", None)
        if config is not None:
            actual_read = getattr(config, "read_timeout", None)
            retries = getattr(config, "retries", None) or {}
            actual_attempts = retries.get("total_max_attempts")
            if actual_read != timeout_s or actual_attempts not in (None, max_attempts):
                raise ValueError(
                    f"the client reads with a {actual_read} s timeout and {actual_attempts} "
                    f"attempts but the invoker was told {timeout_s} s and {max_attempts}; "
                    "build the client with build_runtime_client(read_timeout_s=..., "
                    "max_attempts=...)"
                )
        self._client = runtime_client
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s

    @classmethod
    def create(
        cls,
        *,
        timeout_s: float,
        max_attempts: int,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> ModelInvoker:
        """An invoker with its own client built by ``build_runtime_client``."""
        client = build_runtime_client(
            read_timeout_s=timeout_s,
            max_attempts=max_attempts,
            connect_timeout_s=connect_timeout_s,
        )
        return cls(
            client,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            connect_timeout_s=connect_timeout_s,
        )

    @property
    def worst_case_s(self) -> float:
        """Longest one call can take before failing, without retry backoff (seconds)."""
        return self.max_attempts * (self.connect_timeout_s + self.timeout_s)

    def invoke(self, target: InvocationTarget, payload: dict[str, Any]) -> bytes:
        """The model's whole reply body for ``payload`` (sent as JSON).

        Raises a ``ModelInvocationError`` subclass for every failure.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        request = self._request(target, payload)
        request["Accept"] = CONTENT_TYPE
        try:
            response = self._client.invoke_endpoint(**request)
            body = response["Body"]
            return body.read() if hasattr(body, "read") else bytes(body)
        except ClientError as error:
            raise map_client_error(error, target) from error
        except BotoCoreError as error:
            raise map_transport_error(error, target) from error
        except Exception as error:
            unexpected = _map_stream_transport(error)
            if unexpected is None:
                raise
            raise unexpected from error

    def stream(self, target: InvocationTarget, payload: dict[str, Any]) -> Iterator[bytes]:
        """Start a streamed invocation and return an iterator over its raw byte chunks.

        The call is made before this returns, so refusals (sleeping model, validation,
        throttling) raise here, before a caller has started its own response. Errors in
        the middle of the stream raise from the iterator. Chunks split the engine's
        output anywhere: decode them with the codec's stream decoder. Closing the iterator
        early closes the connection.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        request = self._request(target, payload)
        try:
            response = self._client.invoke_endpoint_with_response_stream(**request)
        except ClientError as error:
            raise map_client_error(error, target) from error
        except BotoCoreError as error:
            raise map_transport_error(error, target) from error
        return self._parts(response["Body"], target)

    def _parts(self, body: Any, target: InvocationTarget) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for event in body:
                if "PayloadPart" in event:
                    data = event["PayloadPart"].get("Bytes") or b""
                    if data:
                        yield data
                elif "ModelStreamError" in event:
                    raise map_stream_event_error("ModelStreamError", event["ModelStreamError"])
                elif "InternalStreamFailure" in event:
                    raise map_stream_event_error(
                        "InternalStreamFailure", event["InternalStreamFailure"]
                    )
        except ModelInvocationError:
            raise
        except ClientError as error:
            # botocore raises EventStreamError (a ClientError) for modeled stream errors.
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("ModelStreamError", "InternalStreamFailure"):
                raise map_stream_event_error(code, error.response.get("Error", {})) from error
            raise map_client_error(error, target) from error
        except BotoCoreError as error:
            mapped = map_transport_error(error, target)
            if isinstance(mapped, ModelUnavailable):
                # The stream had started: the connection broke off, it was not refused.
                mapped = StreamInterrupted(log_detail=mapped.log_detail)
            raise mapped from error
        except Exception as error:
            unexpected = _map_stream_transport(error)
            if unexpected is None:
                raise
            raise unexpected from error
        finally:
            close = getattr(body, "close", None)
            if callable(close):
                close()

    def _request(self, target: InvocationTarget, payload: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "EndpointName": target.endpoint_name,
            "ContentType": CONTENT_TYPE,
            "Body": json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(),
        }
        if target.inference_component:
            request["InferenceComponentName"] = target.inference_component
        return request


# ----------------------------------------------------------------------------- mapping


def map_client_error(error: Any, target: InvocationTarget) -> ModelInvocationError:
    """The typed error for a botocore ``ClientError`` from InvokeEndpoint(WithResponseStream)."""
    response = getattr(error, "response", {}) or {}
    info = response.get("Error", {}) or {}
    code = str(info.get("Code", ""))
    message = str(info.get("Message", ""))
    detail = f"{code} from {target.describe()}: {message}"
    lowered = message.lower()

    if code == "ModelError":
        return _map_model_error(response, message, detail)
    if code in _THROTTLING_CODES:
        return ModelThrottled(log_detail=detail)
    if code == "ModelNotReadyException":
        return ModelUnavailable("starting", log_detail=detail, retry_after=RETRY_AFTER_NOT_READY_S)
    if code in ("ValidationError", "ValidationException"):
        if "no capacity" in lowered:
            return ModelUnavailable("sleeping", log_detail=detail)
        if "not found" in lowered or "does not exist" in lowered:
            return ModelUnavailable("not_deployed", log_detail=detail)
        if "not in service" in lowered or re.search(r"\bstate\b", lowered):
            return ModelUnavailable("starting", log_detail=detail)
        # Anything else is a request llmhost built wrongly: not the client's fault.
        return ModelFailed("SageMaker refused the invocation request", log_detail=detail)
    if code in ("ModelStreamError", "InternalStreamFailure"):
        return map_stream_event_error(code, info)
    http_status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _UNAVAILABLE_CODES or (isinstance(http_status, int) and http_status >= 500):
        # SageMaker's own failure (not the model's, which is a ModelError): it passes.
        return ModelUnavailable("service_unavailable", log_detail=detail)
    return ModelFailed("SageMaker could not run the model", log_detail=detail)


def _map_model_error(response: dict[str, Any], message: str, detail: str) -> ModelInvocationError:
    # botocore puts the modeled fields of ModelError next to 'Error' in the response.
    status = response.get("OriginalStatusCode")
    original = response.get("OriginalMessage")
    if not isinstance(status, int):
        match = _ORIGINAL_STATUS.search(message)
        status = int(match.group(1)) if match else None
    if not isinstance(original, str):
        match = _ORIGINAL_MESSAGE.search(message)
        original = match.group(1) if match else message
    if "timed out" in message.lower() or status in (408, 504):
        return ModelTimeout(log_detail=detail)
    if status is None or status == 0:
        return ModelFailed("the model failed to answer", log_detail=detail)
    return engine_error(status, original, log_detail=detail)


def map_stream_event_error(code: str, info: Any) -> ModelInvocationError:
    """The typed error for a ``ModelStreamError`` / ``InternalStreamFailure`` stream event."""
    info = info if isinstance(info, dict) else {}
    error_code = str(info.get("ErrorCode", ""))
    message = str(info.get("Message", ""))
    detail = f"{code} {error_code}: {message}".strip()
    lowered = message.lower()
    # botocore's EventStreamError keeps only the message, not the ErrorCode.
    if (
        error_code == "ModelInvocationTimeExceeded"
        or "timed out" in lowered
        or ("time" in lowered and "exceed" in lowered)
    ):
        return ModelTimeout(log_detail=detail)
    return StreamInterrupted(log_detail=detail)


def map_transport_error(error: Exception, target: InvocationTarget) -> ModelInvocationError:
    """The typed error for a botocore transport failure (timeouts, connection errors)."""
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    detail = f"{type(error).__name__} calling {target.describe()}: {error}"
    if isinstance(error, ReadTimeoutError):
        return ModelTimeout(log_detail=detail)
    if isinstance(error, ConnectTimeoutError | EndpointConnectionError | ConnectionClosedError):
        # Before any answer: SageMaker could not be reached (a break mid-stream is mapped
        # by the stream reader).
        return ModelUnavailable("service_unavailable", log_detail=detail)
    mapped = _map_stream_transport(error)
    return mapped or ModelFailed("SageMaker could not be reached", log_detail=detail)


def _map_stream_transport(error: Exception) -> ModelInvocationError | None:
    """urllib3 errors raised while reading a body (botocore does not wrap event streams)."""
    try:
        from urllib3.exceptions import ProtocolError, ReadTimeoutError
    except ImportError:  # pragma: no cover - urllib3 ships with botocore
        return None
    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, ReadTimeoutError):
        return ModelTimeout(log_detail=detail)
    if isinstance(error, ProtocolError):
        return StreamInterrupted(log_detail=detail)
    from botocore.exceptions import ResponseStreamingError

    if isinstance(error, ResponseStreamingError):
        return StreamInterrupted(log_detail=detail)
    return None
