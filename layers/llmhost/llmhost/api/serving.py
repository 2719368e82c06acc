"""The serving API behind API Gateway (IAM auth): RAG, chat, models, collections, documents.

Streaming chat lives on the stream function's URL (API Gateway's REST integration buffers
responses); a ``stream: true`` request here gets a 400 that says where to go instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import BaseModel, ConfigDict, Field

from llmhost.api.http import (
    OwnEventResolver,
    error_response,
    install_error_handlers,
    json_api,
    json_response,
)
from llmhost.serving.requests import ChatCompletionRequest, RagRequest

if TYPE_CHECKING:
    from llmhost.rag.embeddings import Embedder
    from llmhost.rag.store import VectorStore
    from llmhost.serving.service import ServingService

MAX_DOCUMENTS_PER_REQUEST = 100

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


def build_serving_app(
    service: Callable[[], ServingService],
    store: Callable[[], VectorStore],
    embedder: Callable[[], Embedder],
    *,
    logger: Any = None,
    stream_url: Callable[[], str | None] = lambda: None,
) -> APIGatewayRestResolver:
    app = json_api(DocumentIdResolver)

    @app.post("/v1/rag", summary="Answer a question from a collection, with sources")
    def rag(request: RagRequest):
        return json_response(HTTPStatus.OK, service().rag(request))

    @app.post("/v1/chat/completions", summary="OpenAI-compatible chat (not streamed here)")
    def chat(request: ChatCompletionRequest):
        if request.stream:
            where = stream_url() or "the StreamUrl stack output"
            return error_response(
                HTTPStatus.BAD_REQUEST,
                "stream_not_supported_here",
                f"API Gateway buffers responses; send stream: true requests to {where} "
                "(an OpenAI client with base_url set to it streams for real)",
            )
        return json_response(HTTPStatus.OK, service().chat(request))

    @app.get("/v1/models", summary="Deployments, as OpenAI models")
    def models():
        return json_response(HTTPStatus.OK, service().models())

    @app.get("/v1/collections", summary="List collections")
    def list_collections():
        names = store().collections()
        return json_response(HTTPStatus.OK, {"collections": names, "count": len(names)})

    @app.post("/v1/collections", summary="Create a collection")
    def create_collection(body: CreateCollection):
        info = store().create_collection(body.name, embedder().dimension)
        return json_response(HTTPStatus.CREATED, _collection(info))

    @app.get("/v1/collections/<name>", summary="A collection's size")
    def get_collection(name: CollectionPath):
        return json_response(HTTPStatus.OK, _collection(store().collection(name)))

    @app.delete("/v1/collections/<name>", summary="Delete a collection and its documents")
    def delete_collection(name: CollectionPath):
        store().delete_collection(name)
        return json_response(HTTPStatus.OK, {"deleted": name})

    @app.post(
        "/v1/collections/<name>/documents",
        summary="Add or replace documents (the collection is created on first use)",
    )
    def add_documents(name: CollectionPath, body: DocumentsBody):
        from llmhost.rag.ingest import ingest_documents

        # The collection is made only once a document is about to land: a batch that is
        # all rejected leaves nothing behind.
        report = ingest_documents(name, body.documents, embedder(), store(), create=True)
        answer = report.as_dict()
        answer["collection"] = name
        answer["created_collection"] = report.created_collection
        if report.indexed or not report.rejected:
            return json_response(HTTPStatus.OK, answer)
        if report.failed:
            # Nothing landed and a service failed: the documents marked retryable may be
            # sent again after Retry-After (the body lists each one).
            retry = report.retry_after or 5
            answer["error"] = _no_document_indexed(answer["rejected"], retryable=True)
            return json_response(
                HTTPStatus.SERVICE_UNAVAILABLE, answer, headers={"Retry-After": str(retry)}
            )
        # Nothing indexed: an error like any other, still carrying the whole report.
        answer["error"] = _no_document_indexed(answer["rejected"])
        return json_response(HTTPStatus.UNPROCESSABLE_ENTITY, answer)

    @app.delete("/v1/collections/<name>/documents/<doc_id>", summary="Delete a document")
    def delete_document(name: CollectionPath, doc_id: DocumentPath):
        from llmhost.rag.ingest import IngestLimits
        from llmhost.rag.ingest import delete_document as remove

        doc_id = unquote(doc_id)
        limit = IngestLimits().max_id_chars
        if len(doc_id) > limit:
            return error_response(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "invalid_request",
                f"doc_id: is {len(doc_id)} characters; ids have at most {limit}",
            )
        removed = remove(name, doc_id, store())
        if removed == 0:
            return error_response(
                HTTPStatus.NOT_FOUND,
                "document_not_found",
                f"collection '{name}' has no document '{doc_id}'",
            )
        return json_response(HTTPStatus.OK, {"deleted": doc_id, "chunks": removed})

    install_error_handlers(app, logger)
    return app


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


def _no_document_indexed(
    rejected: list[dict[str, Any]], *, retryable: bool = False
) -> dict[str, Any]:
    return {
        "code": "ingest_unavailable" if retryable else "no_document_indexed",
        "message": f"none of the {len(rejected)} documents could be indexed; each is listed "
        "with the reason in fields (and in rejected)"
        + ("; send the retryable ones again after Retry-After" if retryable else ""),
        "fields": [{"field": r["field"], "message": r["reason"]} for r in rejected],
    }


def _collection(info: Any) -> dict[str, Any]:
    return {"name": info.name, "points": info.points, "dimension": info.dimension}
