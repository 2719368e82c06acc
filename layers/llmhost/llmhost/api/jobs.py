"""The Jobs API on the serving API (API Gateway, IAM auth): a chat or RAG request answered
later, for generations longer than API Gateway's 29 s or work that can wait.

``POST /v1/jobs`` takes ``{"type": "chat" | "rag", "body": <the synchronous route's body>}``
and answers 202 with the job and ``Location: /v1/jobs/{id}``; the body is checked by the
same models as ``/v1/chat/completions`` and ``/v1/rag`` (a 422 names ``body.<field>``).
The operations are ``llmhost.jobs.service.Jobs``.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any, Literal

from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from llmhost.api.http import json_response
from llmhost.jobs.record import ID_PATTERN, STATUSES
from llmhost.jobs.store import MAX_PAGE
from llmhost.specs import NAME_PATTERN

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver

    from llmhost.jobs.service import Jobs

JobIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A job id (job-...).")]
JobStatus = Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
assert set(STATUSES) == set(JobStatus.__args__)  # type: ignore[attr-defined]


class JobSubmission(BaseModel):
    """A job: the request a synchronous route would take, answered later."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["chat", "rag"] = Field(
        description="chat: the body of POST /v1/chat/completions (not streamed); rag: the "
        "body of POST /v1/rag."
    )
    body: dict[str, Any] = Field(
        description="The synchronous route's request body, checked as that route checks it.",
        examples=[{"model": "demo", "messages": [{"role": "user", "content": "Hello"}]}],
    )
    custom_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Your reference for the job, returned with it and in its Job Completed event.",
    )


def mount_job_routes(app: APIGatewayRestResolver, jobs: Callable[[], Jobs]) -> None:
    """Add the Jobs API's routes to the serving app (``jobs`` is called per request)."""

    @app.post("/v1/jobs", summary="Submit a chat or RAG request as a job (202)")
    def submit_job(submission: JobSubmission):
        operations = jobs()
        job = operations.submit(submission.type, submission.body, custom_id=submission.custom_id)
        return json_response(
            HTTPStatus.ACCEPTED, operations.view(job), headers={"Location": f"/v1/jobs/{job.id}"}
        )

    @app.get("/v1/jobs", summary="List jobs, newest first for a model or a status")
    def list_jobs(
        model: Annotated[
            str | None,
            Query(pattern=NAME_PATTERN, max_length=63, description="A deployment name."),
        ] = None,
        status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Jobs per page.")] = 20,
        next_token: Annotated[
            str | None,
            Query(
                pattern=r"^[A-Za-z0-9_-]{1,4096}$",
                description="The previous page's next_token, with the same filters.",
            ),
        ] = None,
    ):
        operations = jobs()
        page = operations.list(model=model, status=status, limit=limit, next_token=next_token)
        shown = [operations.view(job) for job in page.jobs]
        return json_response(
            HTTPStatus.OK, {"jobs": shown, "count": len(shown), "next_token": page.next_token}
        )

    @app.get("/v1/jobs/<job_id>", summary="A job: status, timings, result or its URL")
    def get_job(job_id: JobIdPath):
        operations = jobs()
        return json_response(HTTPStatus.OK, operations.view(operations.get(job_id)))

    @app.delete("/v1/jobs/<job_id>", summary="Cancel a job that has not started (409 if it has)")
    def cancel_job(job_id: JobIdPath):
        operations = jobs()
        return json_response(HTTPStatus.OK, operations.view(operations.cancel(job_id)))
