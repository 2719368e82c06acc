"""The OpenAPI document of the OpenAI-compatible API (``GET /v1/openapi.json`` on that server).

Request bodies come from the same pydantic models that validate them
(``llmhost.serving.requests``); responses from the models below, which describe what
``ServingService`` and ``ServingHttpApp`` return. Every status the server answers is listed
with its body (OpenAI's error object) and headers (``Retry-After`` on 429 and 503).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from llmhost.batches.record import Batch, FileObject
from llmhost.serving.batch_routes import CreateBatch
from llmhost.serving.requests import ChatCompletionRequest, RagRequest

REF = "#/components/schemas/{model}"


class ErrorField(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str = Field(description="What went wrong and what to do about it.")
    type: str = Field(examples=["invalid_request_error", "authentication_error"])
    code: str = Field(description="Stable and machine-readable.", examples=["invalid_request"])
    param: str | None = Field(default=None, description="The field at fault, if one is.")
    fields: list[ErrorField] | None = Field(
        default=None, description="422: every field at fault, with what to change."
    )


class ErrorBody(BaseModel):
    """OpenAI's error shape, which its clients raise as typed exceptions."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class ModelStatus(BaseModel):
    status: str
    hosting: str
    engine: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    llmhost: ModelStatus


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    id: str
    chunk: str
    score: float
    trimmed: bool
    start: int | None = None
    end: int | None = None
    metadata: dict[str, Any]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatExtras(BaseModel):
    latency_ms: dict[str, float]
    sources: list[Source]


class ChatCompletion(BaseModel):
    """A non-streamed answer. With ``"stream": true`` the answer is ``text/event-stream``:
    ``data: <chat.completion.chunk>`` events, ``data: {"error": ...}`` if it fails midway,
    then ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    llmhost: ChatExtras


class RagAnswer(BaseModel):
    answer: str
    model: str
    finish_reason: str
    sources: list[Source]
    usage: Usage
    latency_ms: dict[str, float]


class BatchExtras(BaseModel):
    runner: str | None = Field(description="How the lines run: fanout or transform.")


class BatchObject(Batch):
    """OpenAI's batch object, plus ``llmhost``."""

    runner: str | None = Field(default=None, exclude=True)
    llmhost: BatchExtras


class BatchList(BaseModel):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"]
    deleted: Literal[True]


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}

_ERRORS: dict[int, str] = {
    400: "The body is not UTF-8 JSON, or is nested too deeply; or the Prefer header's "
    "wait is not a whole number of seconds.",
    401: "The API key is missing or wrong.",
    404: "No such route, or no such model (deployment), collection, file or batch.",
    405: "The route does not take this method.",
    409: "The batch has ended: it cannot be cancelled.",
    413: "The body is larger than 1 MiB (an uploaded file: 5 MiB).",
    415: "The body is not declared as JSON (send Content-Type: application/json), or an "
    "upload as multipart/form-data.",
    422: "The request is not valid: `param` and `fields` name what to change. Also a prompt "
    "the model refuses (too long for it).",
    429: "This API key is over its request rate, or the model is throttled.",
    500: "llmhost failed; the operator's logs have the cause.",
    502: "The model failed to answer.",
    503: "The model is asleep or starting (a request wakes it), or llmhost cannot read its "
    "API keys right now.",
    504: "The model took too long to answer.",
}


# One server-sent event of a streamed answer (Open API 3.1 has a text/event-stream media
# type's ``schema`` describe each event): ``data`` is a ``chat.completion.chunk`` as JSON, an
# error object once streaming has begun, or OpenAI's closing ``[DONE]``.
STREAM_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "id": {"type": "string"},
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            {
                                "type": "object",
                                "required": ["id", "object", "created", "model", "choices"],
                                "properties": {
                                    "object": {"const": "chat.completion.chunk"},
                                    "choices": {"type": "array"},
                                },
                            },
                            {
                                "type": "object",
                                "required": ["error"],
                                "properties": {
                                    "error": {"type": "object", "required": ["message", "type"]}
                                },
                            },
                        ]
                    },
                },
            ]
        },
    },
}


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }
    if status in {429, 503}:
        response["headers"] = _RETRY_AFTER
    return response


PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "RFC 7240. `wait=<seconds>` (0 to 900; more counts as 900): a request for "
    "a model that is asleep or scaled to zero is held while it wakes, within this function's "
    "timeout, instead of answered 503 with Retry-After. A streaming chat is held without "
    "asking (`wait=0` opts out): its 200 comes at once, with an SSE comment "
    "(`: waiting for <model> (<state>)`) every few seconds until the answer's events. Other "
    "preferences are ignored; a `wait` that is not a whole number of seconds is a 400.",
    "schema": {"type": "string", "examples": ["wait=60"]},
}
_PREFERENCE_APPLIED = {
    "Preference-Applied": {
        "description": "`wait=<seconds>`: the wait applied, when the request sent one.",
        "schema": {"type": "string"},
    }
}


def _json(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
    }


@functools.cache
def openai_api_document() -> dict[str, Any]:
    """The document (built once per process; the models do not change at run time)."""
    _, schemas = models_json_schema(
        [
            (ChatCompletionRequest, "validation"),
            (RagRequest, "validation"),
            (ErrorBody, "serialization"),
            (Health, "serialization"),
            (ModelList, "serialization"),
            (ChatCompletion, "serialization"),
            (RagAnswer, "serialization"),
            (CreateBatch, "validation"),
            (FileObject, "serialization"),
            (FileDeleted, "serialization"),
            (BatchObject, "serialization"),
            (BatchList, "serialization"),
        ],
        ref_template=REF,
    )
    with_keys = [401, 429, 503]
    served = [*with_keys, 500]
    body = [400, 404, 405, 413, 415, 422, 502, 504]
    secured: list[dict[str, list[str]]] = [{"apiKey": []}]

    def statuses(*codes: int) -> dict[str, Any]:
        return {str(code): _error(code) for code in sorted(codes)}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llmhost OpenAI-compatible API",
            "version": "1",
            "description": "OpenAI's chat completions and models, plus llmhost's RAG "
            "(`rag` in a chat request, and POST /v1/rag). Authenticate with "
            "`Authorization: Bearer <API key>`. Each key has a request rate; over it: 429 "
            "with Retry-After.",
        },
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Readiness (no key needed).",
                    "responses": {"200": _json("Health", "Serving.")},
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "Every deployment as an OpenAI model, with llmhost's status.",
                    "security": secured,
                    "responses": {
                        "200": _json("ModelList", "The models."),
                        **statuses(*served, 405),
                    },
                }
            },
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "summary": "Chat; streams with `stream: true`; `rag` answers from a "
                    "collection's passages.",
                    "security": secured,
                    "parameters": [PREFER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": REF.format(model="ChatCompletionRequest")}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The answer; a stream of chunks with stream: true "
                            "(after SSE comments while a cold model wakes).",
                            "headers": _PREFERENCE_APPLIED,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": REF.format(model="ChatCompletion")}
                                },
                                "text/event-stream": {"schema": STREAM_EVENT},
                            },
                        },
                        **statuses(*served, *body),
                    },
                }
            },
            "/v1/rag": {
                "post": {
                    "operationId": "rag",
                    "summary": "Retrieve from a collection, then answer with the sources.",
                    "security": secured,
                    "parameters": [PREFER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": REF.format(model="RagRequest")}}
                        },
                    },
                    "responses": {
                        "200": {
                            **_json("RagAnswer", "The answer, its sources and usage."),
                            "headers": _PREFERENCE_APPLIED,
                        },
                        **statuses(*served, *body),
                    },
                }
            },
            **_batch_paths(secured, statuses, served),
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document (no key needed).",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
    }


def _batch_paths(
    secured: list[dict[str, list[str]]], statuses: Any, served: list[int]
) -> dict[str, Any]:
    """OpenAI's Files and Batches routes (``llmhost.serving.batch_routes``)."""

    def path_id(name: str, prefix: str) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": f"^{prefix}[A-Za-z0-9_-]{{1,64}}$"},
            }
        ]

    def json_body(model: str) -> dict[str, Any]:
        return {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
        }

    file_id, batch_id = path_id("file_id", "file-"), path_id("batch_id", "batch_")
    return {
        "/v1/files": {
            "post": {
                "operationId": "createFile",
                "summary": "Upload a batch input file (JSONL, purpose=batch).",
                "security": secured,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["purpose", "file"],
                                "properties": {
                                    "purpose": {"type": "string", "enum": ["batch"]},
                                    "file": {"type": "string", "format": "binary"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json("FileObject", "The stored file."),
                    **statuses(*served, 400, 405, 413, 415),
                },
            }
        },
        "/v1/files/{file_id}": {
            "get": {
                "operationId": "retrieveFile",
                "summary": "A file's record.",
                "security": secured,
                "parameters": file_id,
                "responses": {
                    "200": _json("FileObject", "The file."),
                    **statuses(*served, 404, 405),
                },
            },
            "delete": {
                "operationId": "deleteFile",
                "summary": "Delete a file (a batch keeps its own copy of its input).",
                "security": secured,
                "parameters": file_id,
                "responses": {
                    "200": _json("FileDeleted", "Deleted."),
                    **statuses(*served, 404, 405),
                },
            },
        },
        "/v1/files/{file_id}/content": {
            "get": {
                "operationId": "retrieveFileContent",
                "summary": "A file's bytes (an output or error file: JSONL).",
                "security": secured,
                "parameters": file_id,
                "responses": {
                    "200": {
                        "description": "The content.",
                        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                    },
                    **statuses(*served, 404, 405),
                },
            }
        },
        "/v1/batches": {
            "post": {
                "operationId": "createBatch",
                "summary": "Create a batch over an uploaded file; metadata.llmhost_runner "
                "(auto, fanout, transform) picks how it runs.",
                "security": secured,
                "requestBody": json_body("CreateBatch"),
                "responses": {
                    "200": _json(
                        "BatchObject", "The batch (failed, with errors, if a line cannot run)."
                    ),
                    **statuses(*served, 400, 404, 405, 413, 415, 422),
                },
            },
            "get": {
                "operationId": "listBatches",
                "summary": "Batches, newest first.",
                "security": secured,
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                ],
                "responses": {
                    "200": _json("BatchList", "A page of batches."),
                    **statuses(*served, 400, 404, 405),
                },
            },
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "operationId": "retrieveBatch",
                "summary": "A batch: status, request counts, output and error files.",
                "security": secured,
                "parameters": batch_id,
                "responses": {
                    "200": _json("BatchObject", "The batch."),
                    **statuses(*served, 404, 405),
                },
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "operationId": "cancelBatch",
                "summary": "Cancel the lines not started; finished ones are kept.",
                "security": secured,
                "parameters": batch_id,
                "responses": {
                    "200": _json("BatchObject", "The batch, cancelling or cancelled."),
                    **statuses(*served, 404, 405, 409),
                },
            }
        },
    }
