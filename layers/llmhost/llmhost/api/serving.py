"""The serving API behind API Gateway (IAM auth): RAG, chat, models, collections, documents.

Each route parses a request, calls one operation (chat and RAG: ``llmhost.serving.service``;
collections and documents: ``llmhost.rag.collections``) and shapes its answer; typed errors
become HTTP in ``llmhost.api.http``. Streaming chat lives on the stream function's URL (API
Gateway's REST integration buffers responses); a ``stream: true`` request here gets a 400
that says where to go instead.

Chat and RAG take ``Prefer: wait=<seconds>`` (``llmhost.serving.hold``): a request for a cold
model is then held while it wakes, within API Gateway's 29 s, and a wait longer than that
becomes a job (202, ``Location: /v1/jobs/{id}``) when the function has jobs.

Every chat and RAG request, answered or refused (a bad body included), ends with one
``RequestObservation`` for the runtime's observers (``llmhost.serving.watch``), and its
response names its trace (``x-llmhost-trace-id``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import BaseModel, ConfigDict, Field

from llmhost.api.body import decode_event_body
from llmhost.api.http import (
    OwnEventResolver,
    install_error_handlers,
    json_api,
    json_response,
)
from llmhost.api.jobs import mount_job_routes
from llmhost.errors import LlmhostError
from llmhost.serving.hold import Hold, HoldOutlastsRequest, HoldPolicy, wait_preference
from llmhost.serving.requests import ChatCompletionRequest, RagRequest
from llmhost.serving.routing import AsyncOnlyModel
from llmhost.serving.watch import RequestWatch, observe, start_watch, watching

if TYPE_CHECKING:
    from llmhost.jobs.service import Jobs
    from llmhost.rag.collections import Collections
    from llmhost.serving.service import ServingService

MAX_DOCUMENTS_PER_REQUEST = 100
# API Gateway's integration timeout: no answer comes later than this, whatever Lambda allows.
GATEWAY_TIMEOUT_S = 29.0

CollectionPath = Annotated[
    str, Path(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$", description="A collection name.")
]
# Ids may hold '/' (every S3 key does): the path carries them percent-encoded, up to three
# characters for each of the id's 256.
DocumentPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=768,
        description="A document id, percent-encoded by the client ('/' as %2F): "
        "guides%2Fsleep.md. Everything after /documents/ is the id, so a '/' a proxy decodes "
        "on the way still names the same document.",
    ),
]


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$", examples=["docs"])


class DocumentsBody(BaseModel):
    """Documents are checked one by one: a bad one is reported, the others still land."""

    model_config = ConfigDict(extra="forbid")

    documents: list[Any] = Field(
        min_length=1,
        max_length=MAX_DOCUMENTS_PER_REQUEST,
        description='Each {"id": str, "text": str, "metadata": {...}}; larger sets: drop '
        "files into the documents bucket.",
    )


class StreamNotSupportedHere(LlmhostError):
    """A ``stream: true`` request reached API Gateway, which buffers responses."""

    code = "stream_not_supported_here"
    status = 400

    def __init__(self, where: str) -> None:
        super().__init__(
            f"API Gateway buffers responses; send stream: true requests to {where} "
            "(an OpenAI client with base_url set to it streams for real)"
        )


def build_serving_app(
    service: Callable[[], ServingService],
    collections: Callable[[], Collections],
    *,
    logger: Any = None,
    stream_url: Callable[[], str | None] = lambda: None,
    holds: Callable[[], HoldPolicy] | None = None,
    jobs: Callable[[], Jobs] | None = None,
) -> APIGatewayRestResolver:
    """Create the resolver with every serving route; ``service`` (chat and RAG,
    ``llmhost.serving.service``) and ``collections`` (``llmhost.rag.collections``) are
    called lazily per request. ``holds``: how requests with ``Prefer: wait`` are held
    (without it the preference is ignored, as RFC 7240 lets a server do); ``jobs``: the
    job operations a wait longer than API Gateway's becomes."""
    app = json_api(ServingResolver)
    assert isinstance(app, ServingResolver)

    def watch() -> RequestWatch | None:
        return app.watch

    def requested_hold() -> tuple[Hold, int] | None:
        """The hold the request asks for (``Prefer: wait``) and the wait applied, if any."""
        if holds is None:
            return None
        wait = wait_preference(_header_values(app.current_event, "prefer"))
        if wait is None:
            return None
        left = GATEWAY_TIMEOUT_S
        remaining = getattr(app.lambda_context, "get_remaining_time_in_millis", None)
        if callable(remaining):
            left = min(left, remaining() / 1000)
        return holds().hold(wait, left, as_job=jobs is not None), wait

    def answer(
        kind: str, request: Any, plain: Callable[[], Any], ask: Callable[[Hold], Any]
    ) -> Any:
        held = requested_hold()
        if held is None:
            return json_response(HTTPStatus.OK, plain())
        hold, wait = held
        applied = {"Preference-Applied": f"wait={wait}"}
        try:
            return json_response(HTTPStatus.OK, ask(hold), applied)
        except HoldOutlastsRequest as outlasting:
            if jobs is None:
                raise outlasting.refusal from None
            return _job_response(jobs(), kind, request, applied)
        except AsyncOnlyModel:
            # An async deployment answers only jobs: a caller who waits is given one.
            if jobs is None:
                raise
            return _job_response(jobs(), kind, request, applied)

    @app.post("/v1/rag", summary="Answer a question from a collection, with sources")
    def rag(request: RagRequest):
        return answer(
            "rag",
            request,
            lambda: service().rag(request, **watching(watch())),
            lambda hold: service().rag(request, hold=hold, **watching(watch())),
        )

    @app.post("/v1/chat/completions", summary="OpenAI-compatible chat (not streamed here)")
    def chat(request: ChatCompletionRequest):
        if request.stream:
            raise StreamNotSupportedHere(stream_url() or "the StreamUrl stack output")
        return answer(
            "chat",
            request,
            lambda: service().chat(request, **watching(watch())),
            lambda hold: service().chat(request, hold=hold, **watching(watch())),
        )

    @app.get("/v1/models", summary="Deployments, as OpenAI models")
    def models():
        return json_response(HTTPStatus.OK, service().models())

    @app.get("/v1/collections", summary="List collections")
    def list_collections():
        names = collections().list()
        return json_response(HTTPStatus.OK, {"collections": names, "count": len(names)})

    @app.post("/v1/collections", summary="Create a collection")
    def create_collection(body: CreateCollection):
        return json_response(HTTPStatus.CREATED, _collection(collections().create(body.name)))

    @app.get("/v1/collections/<name>", summary="A collection's size")
    def get_collection(name: CollectionPath):
        return json_response(HTTPStatus.OK, _collection(collections().get(name)))

    @app.delete("/v1/collections/<name>", summary="Delete a collection and its documents")
    def delete_collection(name: CollectionPath):
        collections().delete(name)
        return json_response(HTTPStatus.OK, {"deleted": name})

    @app.post(
        "/v1/collections/<name>/documents",
        summary="Add or replace documents (the collection is created on first use)",
    )
    def add_documents(name: CollectionPath, body: DocumentsBody):
        added = collections().add_documents(name, body.documents)
        return json_response(HTTPStatus.OK, added.as_dict())

    @app.delete("/v1/collections/<name>/documents/<doc_id>", summary="Delete a document")
    def delete_document(name: CollectionPath, doc_id: DocumentPath):
        doc_id = unquote(doc_id)
        removed = collections().delete_document(name, doc_id)
        return json_response(HTTPStatus.OK, {"deleted": doc_id, "chunks": removed})

    mount_job_routes(app, jobs or _no_jobs)
    install_error_handlers(app, logger)
    return app


def _no_jobs() -> Jobs:
    raise RuntimeError("this serving app was built without the Jobs API's operations")


class DocumentIdResolver(OwnEventResolver):
    """The REST resolver, with ``<doc_id>`` greedy: it takes the rest of the path.

    Clients send a document id percent-encoded (``guides%2Fsleep.md``) and the route
    decodes it once. Whether API Gateway decodes ``%2F`` before matching resources is not
    settled (template.yaml's ``{doc_id+}`` is greedy for that reason); if it does, the path
    reaches the function as ``.../documents/guides/sleep.md``, which Powertools' one-segment
    parameter would not match. Here the id is every character after ``/documents/``, so both
    shapes name the same document. (Only an id holding a literal ``%XX`` is ambiguous once a
    front has decoded the path; it is read as encoded.)
    """

    GREEDY_PARAMETERS = ("doc_id",)

    @staticmethod
    def _compile_regex(rule: str, base_regex: str = "^{}/*$") -> re.Pattern[str]:
        marks = {
            name: f"GREEDY{name}GREEDY"
            for name in DocumentIdResolver.GREEDY_PARAMETERS
            if rule.endswith(f"/<{name}>")
        }
        for name, mark in marks.items():
            rule = rule.replace(f"<{name}>", mark)
        pattern = APIGatewayRestResolver._compile_regex(rule, base_regex).pattern
        for name, mark in marks.items():
            pattern = pattern.replace(mark, f"(?P<{name}>[^/].*)")
        return re.compile(pattern)


def _header_values(event: Any, name: str) -> list[str]:
    """Every value of the request header ``name`` (case-insensitive), repeats included."""
    multi = event.multi_value_headers or {}
    values = [v for key, vs in multi.items() if key.lower() == name for v in vs or []]
    if values:
        return values
    return [v for key, v in (event.headers or {}).items() if key.lower() == name and v]


def _job_response(jobs: Any, kind: str, request: Any, headers: dict[str, str]) -> Any:
    """202 for a held request that became a job, with where to poll it."""
    job = jobs.submit(kind, request)
    location = f"/v1/jobs/{job.id}"
    return json_response(HTTPStatus.ACCEPTED, jobs.view(job), {**headers, "Location": location})


def _collection(info: Any) -> dict[str, Any]:
    return {"name": info.name, "points": info.points, "dimension": info.dimension}


class ServingResolver(DocumentIdResolver):
    """The serving routes' resolver: a chat or RAG request is watched from the event it
    came in to the response it got, which is then observed (``llmhost.serving.watch``)."""

    WATCHED = {"/v1/rag": "rag", "/v1/chat/completions": "chat"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._watching = threading.local()
        super().__init__(*args, **kwargs)

    @property
    def watch(self) -> RequestWatch | None:
        """The request being resolved on this thread, when it is watched."""
        return getattr(self._watching, "watch", None)

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        path = str(event.get("path") or "").rstrip("/")
        kind = self.WATCHED.get(path) if event.get("httpMethod") == "POST" else None
        if kind is None:
            return super().resolve(event, context)
        watch = start_watch("rag" if kind == "rag" else "chat", caller=_principal(event))
        if watch is None:
            return super().resolve(event, context)
        self._watching.watch = watch
        try:
            response = super().resolve(event, context)
        except BaseException:
            observe(watch, 500, "internal_error")
            raise
        finally:
            self._watching.watch = None
        status = int(response.get("statusCode", 500))
        if watch.model is None:  # refused before the route read it: what the body named
            watch.asked_raw(_json_of(event.get("body"), bool(event.get("isBase64Encoded"))))
        observe(watch, status, _error_code(response) if status >= 400 else None)
        _add_header(response, "x-llmhost-trace-id", _trace_id(watch.request_id))
        return response


def _trace_id(request_id: str) -> str:
    from llmhost.traces.record import trace_id_for

    return trace_id_for(request_id)


def _principal(event: Mapping[str, Any]) -> str | None:
    """Who signed the request: the IAM user or role ARN API Gateway verified."""
    identity = (event.get("requestContext") or {}).get("identity") or {}
    caller = (
        identity.get("userArn") or identity.get("caller") if isinstance(identity, dict) else None
    )
    return str(caller) if caller else None


def _json_of(body: Any, encoded: bool) -> Any:
    try:
        return json.loads(decode_event_body(body, encoded) or "")
    except Exception:  # not JSON: nothing to read a model from
        return None


def _error_code(response: Mapping[str, Any]) -> str | None:
    try:
        code = json.loads(response.get("body") or "")["error"]["code"]
    except Exception:  # not llmhost's error body
        return None
    return str(code) if code else None


def _add_header(response: dict[str, Any], name: str, value: str) -> None:
    multi = response.get("multiValueHeaders")
    if isinstance(multi, dict):
        multi[name] = [value]
    else:
        headers = response.setdefault("headers", {})
        if isinstance(headers, dict):
            headers[name] = value
