"""SageMaker Asynchronous Inference for the local runtime: ``InvokeEndpointAsync``'s queue,
the instances that step it, where results go and how they are announced. The wire format
is ``runtime_front``'s; the rules and the queue are here.

What it models, and from where:

- ``InvokeEndpointAsync`` (docs.aws.amazon.com/sagemaker/latest/APIReference/
  API_runtime_InvokeEndpointAsync.html): only an endpoint created with an
  ``AsyncInferenceConfig`` takes it; the input is ``Body`` (at most 128,000 bytes, botocore's
  model) or an S3 ``InputLocation``, never both; the request is queued and answered at once
  with ``InferenceId`` (the caller's, or a new one) and the ``OutputLocation`` /
  ``FailureLocation`` the result will be written to (``<S3OutputPath>/<id>.out``,
  ``<S3FailurePath>/<id>-error.out``).
- Requests queue while the endpoint has no instance: "Requests that are received when
  there are zero instances are queued for processing once the endpoint scales up"
  (docs.aws.amazon.com/sagemaker/latest/dg/async-inference-autoscale.html). ``step``
  hands queued requests, oldest first, to the container while the endpoint is in service
  with at least one current instance.
- The container's answer goes to S3 (moto's) and a notification to the success or error
  topic (moto's SNS, which delivers it to its SQS subscriptions), in SageMaker's
  documented format (docs.aws.amazon.com/sagemaker/latest/dg/
  async-inference-check-predictions.html); with ``IncludeInferenceResponseIn`` the
  response is in the notification when it is at most 128 KB (API_AsyncInferenceNotificationConfig).
- The backlog metrics, per endpoint (``EndpointName`` only, as SageMaker publishes them):
  ``ApproximateBacklogSize``, ``ApproximateBacklogSizePerInstance`` and
  ``HasBacklogWithoutCapacity`` (1 while requests wait and no instance runs), sampled on
  every ``step`` and averaged per period for the local CloudWatch (``llmhost_local.alarms``).

Not modelled: RequestTTLSeconds and InvocationTimeoutSeconds expiry, KMS, concurrency within
an instance (one request at a time), S3OutputPathExtension and Filename.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

INLINE_RESPONSE_MAX = 128 * 1024
BACKLOG_METRICS = frozenset(
    {"ApproximateBacklogSize", "ApproximateBacklogSizePerInstance", "HasBacklogWithoutCapacity"}
)
# The container's answer: (HTTP status, content type, body).
Container = Callable[[str, bytes, str, str], tuple[int, str, bytes]]


class AsyncRequestInvalid(Exception):
    """A request SageMaker refuses with ValidationError (HTTP 400)."""


@dataclass(frozen=True)
class _Queued:
    inference_id: str
    endpoint: str
    body: bytes | None
    input_location: str | None
    content_type: str
    accept: str
    output_location: str
    failure_location: str | None
    received_at: datetime


class AsyncInference:
    """The queues of every async endpoint of one account (thread-safe).

    ``describe(endpoint)``: DescribeEndpoint's result or None (the SageMaker stand-in's);
    ``s3()`` and ``sns()``: clients (moto's); ``container(endpoint, body, content_type,
    accept)``: the model's answer; ``clock``: seconds for the metric samples (the alarm
    evaluator's clock).
    """

    def __init__(
        self,
        describe: Callable[[str], dict[str, Any] | None],
        s3: Callable[[], Any],
        sns: Callable[[], Any],
        container: Container,
        *,
        clock: Callable[[], float] = time.monotonic,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        keep_s: float = 3600.0,
    ) -> None:
        self._describe = describe
        self._s3 = s3
        self._sns = sns
        self._container = container
        self._clock = clock
        self._region = region
        self._account = account_id
        self._keep_s = keep_s
        self._queue: deque[_Queued] = deque()
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}
        self._lock = threading.Lock()
        self._working = threading.Lock()  # one step at a time

    # ------------------------------------------------------------------------- submit

    def submit(
        self,
        endpoint: str,
        *,
        body: bytes | None,
        input_location: str | None,
        inference_id: str | None,
        content_type: str | None,
        accept: str | None,
    ) -> dict[str, str]:
        """Queue one request; the InvokeEndpointAsync result (InferenceId, OutputLocation,
        FailureLocation). Raises AsyncRequestInvalid with SageMaker's reason."""
        described = self._describe(endpoint)
        if described is None:
            raise AsyncRequestInvalid(f"Endpoint {endpoint} of account {self._account} not found.")
        config = described.get("AsyncInferenceConfig")
        if not config:
            raise AsyncRequestInvalid(
                f"Endpoint {endpoint} is not an asynchronous inference endpoint: it was created "
                "without an AsyncInferenceConfig; use InvokeEndpoint."
            )
        if body and input_location:
            raise AsyncRequestInvalid("Body and InputLocation are mutually exclusive.")
        if not body and not input_location:
            raise AsyncRequestInvalid("Either Body or InputLocation must be provided.")
        output = config.get("OutputConfig", {})
        inference_id = inference_id or str(uuid.uuid4())
        name = uuid.uuid4().hex
        failure_path = output.get("S3FailurePath")
        queued = _Queued(
            inference_id=inference_id,
            endpoint=endpoint,
            body=body or None,
            input_location=input_location,
            content_type=content_type or "application/octet-stream",
            accept=accept or "*/*",
            output_location=f"{output['S3OutputPath'].rstrip('/')}/{name}.out",
            failure_location=f"{failure_path.rstrip('/')}/{name}-error.out"
            if failure_path
            else None,
            received_at=datetime.now(UTC),
        )
        with self._lock:
            self._queue.append(queued)
        self.sample(endpoint)
        result = {"InferenceId": inference_id, "OutputLocation": queued.output_location}
        if queued.failure_location:
            result["FailureLocation"] = queued.failure_location
        return result

    # --------------------------------------------------------------------------- step

    def step(self) -> int:
        """Hand every queued request of an endpoint with a running instance to its container,
        oldest first; returns how many were answered. Samples the backlog metrics."""
        done = 0
        with self._working:
            capacity: dict[str, int] = {}
            while True:
                item = self._next(capacity)
                if item is None:
                    break
                self._answer(item)
                done += 1
            for endpoint in self._endpoints():
                self.sample(endpoint)
        return done

    def backlog(self, endpoint: str) -> int:
        with self._lock:
            return sum(1 for q in self._queue if q.endpoint == endpoint)

    def gauge(
        self, dimensions: Mapping[str, str], metric: str, start: float, end: float
    ) -> float | None:
        """The period's Average of one backlog metric. SageMaker publishes it every period
        while the endpoint exists, so a period between two samples holds the last one; None
        (a missing datapoint) before the first sample."""
        endpoint = dimensions.get("EndpointName")
        if metric not in BACKLOG_METRICS or endpoint is None:
            return None
        with self._lock:
            known = list(self._samples.get(endpoint, ()))
        samples = [s for s in known if start <= s[0] < end]
        if not samples:
            before = [s for s in known if s[0] < start]
            if not before:
                return None
            samples = before[-1:]
        values = [_metric(metric, backlog, instances) for _, backlog, instances in samples]
        return sum(values) / len(values)

    def _next(self, capacity: dict[str, int]) -> _Queued | None:
        with self._lock:
            pending = list(self._queue)
        for item in pending:
            if item.endpoint not in capacity:
                capacity[item.endpoint] = self._instances(item.endpoint)
            if capacity[item.endpoint] > 0:
                with self._lock:
                    self._queue.remove(item)
                return item
        return None

    def _instances(self, endpoint: str) -> int:
        described = self._describe(endpoint)
        if described is None or described["EndpointStatus"] not in {"InService", "Updating"}:
            return 0
        return sum(int(v.get("CurrentInstanceCount") or 0) for v in described["ProductionVariants"])

    def _endpoints(self) -> set[str]:
        with self._lock:
            return {q.endpoint for q in self._queue} | set(self._samples)

    def sample(self, endpoint: str) -> None:
        """Record the endpoint's backlog and instances now (one sample of each metric)."""
        now = self._clock()
        backlog, instances = self.backlog(endpoint), self._instances(endpoint)
        with self._lock:
            samples = self._samples.setdefault(endpoint, deque())
            samples.append((now, backlog, instances))
            while samples and samples[0][0] < now - self._keep_s:
                samples.popleft()

    # ------------------------------------------------------------------------- answer

    def _answer(self, item: _Queued) -> None:
        described = self._describe(item.endpoint) or {}
        config = described.get("AsyncInferenceConfig", {}).get("OutputConfig", {})
        notification = config.get("NotificationConfig", {})
        body = item.body
        if body is None:
            try:
                body = _read(self._s3(), str(item.input_location))
            except Exception as error:  # any S3 refusal is the request's failure
                self._fail(item, notification, f"ClientError: could not read the input: {error}")
                return
        status, content_type, reply = self._container(
            item.endpoint, body, item.content_type, item.accept
        )
        if status != 200:
            side = "client" if 400 <= status < 500 else "server"
            reason = (
                f'ClientError: Received {side} error ({status}) from primary with message "'
                f"{reply.decode('utf-8', 'replace')[:500]}\". See the endpoint's CloudWatch "
                "logs for more information."
            )
            self._fail(item, notification, reason, reply, content_type)
            return
        _write(self._s3(), item.output_location, reply, content_type)
        message = self._message(item, "Completed", content_type)
        message["responseParameters"]["outputLocation"] = item.output_location
        if "SUCCESS_NOTIFICATION_TOPIC" in notification.get("IncludeInferenceResponseIn", []):
            _include(message, reply)
        self._publish(notification.get("SuccessTopic"), message)

    def _fail(
        self,
        item: _Queued,
        notification: Mapping[str, Any],
        reason: str,
        reply: bytes = b"",
        content_type: str = "text/plain",
    ) -> None:
        message = self._message(item, "Failed", content_type)
        message["failureReason"] = reason
        if item.failure_location:
            _write(self._s3(), item.failure_location, reply or reason.encode(), content_type)
            message["responseParameters"]["failureLocation"] = item.failure_location
        if reply and "ERROR_NOTIFICATION_TOPIC" in notification.get(
            "IncludeInferenceResponseIn", []
        ):
            _include(message, reply)
        self._publish(notification.get("ErrorTopic"), message)

    def _message(self, item: _Queued, status: str, content_type: str) -> dict[str, Any]:
        request: dict[str, Any] = {
            "contentType": item.content_type,
            "endpointName": item.endpoint,
        }
        if item.input_location:
            request["inputLocation"] = item.input_location
        return {
            "awsRegion": self._region,
            "eventTime": _iso(datetime.now(UTC)),
            "receivedTime": _iso(item.received_at),
            "invocationStatus": status,
            "requestParameters": request,
            "responseParameters": {"contentType": content_type},
            "inferenceId": item.inference_id,
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }

    def _publish(self, topic: str | None, message: dict[str, Any]) -> None:
        if topic:  # no topic configured: no notification, as in SageMaker
            self._sns().publish(TopicArn=topic, Message=json.dumps(message))


def _metric(metric: str, backlog: int, instances: int) -> float:
    if metric == "HasBacklogWithoutCapacity":
        return 1.0 if backlog and not instances else 0.0
    if metric == "ApproximateBacklogSizePerInstance":
        return backlog / instances if instances else float(backlog)
    return float(backlog)


def _include(message: dict[str, Any], reply: bytes) -> None:
    if len(reply) > INLINE_RESPONSE_MAX:
        return
    try:
        message["responseBody"] = {"content": reply.decode("utf-8"), "encoding": "TEXT"}
    except UnicodeDecodeError:
        message["responseBody"] = {
            "content": base64.b64encode(reply).decode(),
            "encoding": "BASE64",
        }


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _read(s3: Any, uri: str) -> bytes:
    bucket, key = _split(uri)
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def _write(s3: Any, uri: str, body: bytes, content_type: str) -> None:
    bucket, key = _split(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
