"""Async endpoint jobs: the InvokeEndpointAsync request and SageMaker's notification (pure)."""

from __future__ import annotations

import base64
import json

import botocore.session
import pytest

from llmhost.jobs.async_endpoint import (
    INLINE_BODY_MAX,
    AsyncContext,
    NotAnAsyncNotification,
    input_key,
    invocation,
    outcome_of,
    parse_notification,
)
from llmhost.jobs.record import JobError

JOB = "job-01jd5x7k9m0000000000000000"
# SageMaker's success notification, as its documentation shows one (values ours).
COMPLETED = {
    "awsRegion": "us-east-1",
    "eventTime": "2026-12-02T16:00:01.608Z",
    "receivedTime": "2026-12-02T16:00:00.455Z",
    "invocationStatus": "Completed",
    "requestParameters": {"contentType": "application/json", "endpointName": "llama-jobs"},
    "responseParameters": {
        "contentType": "application/json",
        "outputLocation": "s3://llmhost-jobs/async/output/0f2c.out",
    },
    "inferenceId": JOB,
    "eventVersion": "1.0",
    "eventSource": "aws:sagemaker",
    "eventName": "InferenceResult",
}
FAILED = {
    **COMPLETED,
    "invocationStatus": "Failed",
    "failureReason": "ClientError: Received server error (500) from primary",
    "responseParameters": {
        "contentType": "text/plain",
        "failureLocation": "s3://llmhost-jobs/async/failure/0f2c-error.out",
    },
}
TGI_REPLY = json.dumps(
    [{"generated_text": "Paris.", "details": {"finish_reason": "eos_token", "generated_tokens": 2}}]
).encode()
CONTEXT = AsyncContext(
    kind="chat",
    model="llama-jobs",
    engine="tgi",
    seq2seq=False,
    estimated_prompt_tokens=12,
    engine_counts_prompt=False,
)


def test_the_inline_limit_is_botocores_and_a_larger_body_goes_to_s3() -> None:
    # Given botocore's model of InvokeEndpointAsync
    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    body_shape = model.operation_model("InvokeEndpointAsync").input_shape.members["Body"]
    assert body_shape.metadata["max"] == INLINE_BODY_MAX
    # When the payload fits, it goes inline, with the job id as InferenceId
    request, staged = invocation("llama-jobs", JOB, b"x" * INLINE_BODY_MAX, "llmhost-jobs")
    assert not staged and request["Body"] == b"x" * INLINE_BODY_MAX
    assert request["InferenceId"] == JOB and "InputLocation" not in request
    # When it is one byte over, it is written to async/input/ and named by InputLocation
    request, staged = invocation("llama-jobs", JOB, b"x" * (INLINE_BODY_MAX + 1), "llmhost-jobs")
    assert staged and "Body" not in request
    assert request["InputLocation"] == f"s3://llmhost-jobs/async/input/{JOB}.json"
    assert input_key(JOB) == f"async/input/{JOB}.json"


def test_a_completed_notification_with_the_response_included_becomes_the_chat_answer() -> None:
    # Given SageMaker's notification with the response included as text
    message = {**COMPLETED, "responseBody": {"content": TGI_REPLY.decode(), "encoding": "TEXT"}}
    notice = parse_notification(message)
    assert notice.completed and notice.inference_id == JOB
    assert notice.output_location == "s3://llmhost-jobs/async/output/0f2c.out"
    # When it is read as the job's outcome
    outcome = outcome_of(notice, CONTEXT, notice.response)
    # Then it is the synchronous route's chat.completion
    assert isinstance(outcome, dict)
    assert outcome["object"] == "chat.completion" and outcome["model"] == "llama-jobs"
    assert outcome["choices"][0]["message"]["content"] == "Paris."
    assert outcome["usage"]["prompt_tokens"] == 12


def test_a_base64_response_and_one_left_in_s3_are_both_read() -> None:
    encoded = {"content": base64.b64encode(TGI_REPLY).decode(), "encoding": "BASE64"}
    assert parse_notification({**COMPLETED, "responseBody": encoded}).response == TGI_REPLY
    # Without responseBody (over 128 KB, or not included) the output is in S3
    assert parse_notification(COMPLETED).response is None


def test_a_failed_notification_becomes_the_jobs_error_with_the_containers_text() -> None:
    notice = parse_notification(FAILED)
    assert not notice.completed
    assert notice.failure_location == "s3://llmhost-jobs/async/failure/0f2c-error.out"
    outcome = outcome_of(notice, CONTEXT, b"CUDA out of memory")
    assert isinstance(outcome, JobError) and outcome.code == "model_error"
    assert "Received server error (500)" in outcome.message
    assert "CUDA out of memory" in outcome.message


def test_an_engine_error_in_a_completed_reply_is_the_jobs_error() -> None:
    reply = json.dumps({"error": "Input validation error: too long", "error_type": "validation"})
    outcome = outcome_of(parse_notification(COMPLETED), CONTEXT, reply.encode())
    assert isinstance(outcome, JobError)
    assert "too long" in outcome.message


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("not an object", "not a JSON object"),
        ({**COMPLETED, "inferenceId": ""}, "no inferenceId"),
        ({**COMPLETED, "invocationStatus": "InProgress"}, "invocationStatus"),
    ],
)
def test_anything_else_is_refused_naming_what_is_wrong(message: object, fragment: str) -> None:
    with pytest.raises(NotAnAsyncNotification, match=fragment):
        parse_notification(message)
