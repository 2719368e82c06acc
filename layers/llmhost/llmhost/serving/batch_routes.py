"""OpenAI's Files and Batches routes on the OpenAI-compatible server.

``POST /v1/files`` (multipart/form-data, as the ``openai`` package sends it: a ``purpose``
field and a ``file`` part), ``GET``/``DELETE /v1/files/{id}``, ``GET /v1/files/{id}/content``,
``POST``/``GET /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.
Each parses, calls one ``llmhost.batches.service.Batches`` operation and shapes the answer;
``ServingHttpApp`` authenticates first and turns typed errors into OpenAI's error bodies.
The multipart body is parsed by Starlette's parser (python-multipart underneath), fed from
a stream this module bounds, so an upload over the size limit is refused while it arrives.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from llmhost.api.body import InvalidBody, UnsupportedMediaType
from llmhost.batches.service import MAX_FILE_BYTES, MAX_LIST, Batches, BatchRequestInvalid
from llmhost.batches.store import BatchNotFound, FileNotFound

# A multipart body carries the file and a little more: its part headers and the purpose.
MAX_UPLOAD_BYTES = MAX_FILE_BYTES + 64 * 1024
_FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]{1,64}$")
_BATCH_ID = re.compile(r"^batch_[A-Za-z0-9_-]{1,64}$")

Handler = Callable[[Request, Batches, str], Awaitable[Any]]


class CreateBatch(BaseModel):
    """``POST /v1/batches``: OpenAI's body. ``metadata.llmhost_runner`` (``auto``,
    ``fanout`` or ``transform``) picks how the lines run; left out, llmhost chooses."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=128)
    endpoint: str = Field(min_length=1, max_length=128, examples=["/v1/chat/completions"])
    completion_window: str = Field(min_length=1, max_length=16, examples=["24h"])
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


class BatchRoutes:
    """Matches a path to its handler; ``respond`` runs it."""

    # path pattern -> {method: handler name}
    TABLE: tuple[tuple[re.Pattern[str], dict[str, str]], ...] = (
        (re.compile(r"^/v1/files$"), {"POST": "upload"}),
        (re.compile(r"^/v1/files/(?P<id>[^/]+)$"), {"GET": "get_file", "DELETE": "delete_file"}),
        (re.compile(r"^/v1/files/(?P<id>[^/]+)/content$"), {"GET": "file_content"}),
        (re.compile(r"^/v1/batches$"), {"POST": "create", "GET": "list"}),
        (re.compile(r"^/v1/batches/(?P<id>[^/]+)$"), {"GET": "retrieve"}),
        (re.compile(r"^/v1/batches/(?P<id>[^/]+)/cancel$"), {"POST": "cancel"}),
    )
    PATHS = (
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/cancel",
    )

    def __init__(self, batches: Callable[[], Batches]) -> None:
        self._batches = batches

    @classmethod
    def allowed(cls, path: str) -> tuple[str, ...] | None:
        """The methods ``path`` takes, or None when it is not one of these routes."""
        for pattern, methods in cls.TABLE:
            if pattern.match(path):
                return tuple(methods)
        return None

    async def respond(self, request: Request, path: str) -> tuple[int, Any]:
        """The status and body (a dict, or bytes for a file's content) for ``request``;
        the caller has checked the method against ``allowed``."""
        for pattern, methods in self.TABLE:
            found = pattern.match(path)
            if found is not None:
                handler = getattr(self, "_" + methods[request.method])
                result: tuple[int, Any] = await handler(request, found.groupdict().get("id", ""))
                return result
        raise AssertionError(f"no batch route for {path}")  # allowed() said there was one

    # ------------------------------------------------------------------------- files

    async def _upload(self, request: Request, _: str) -> tuple[int, Any]:
        purpose, filename, content = await _read_upload(request)
        record = await run_in_threadpool(lambda: self._batches().upload(filename, purpose, content))
        return 200, record.public()

    async def _get_file(self, _: Request, file_id: str) -> tuple[int, Any]:
        _check_file_id(file_id)
        record = await run_in_threadpool(lambda: self._batches().store.get_file(file_id))
        return 200, record.public()

    async def _file_content(self, _: Request, file_id: str) -> tuple[int, Any]:
        _check_file_id(file_id)
        return 200, await run_in_threadpool(lambda: self._batches().store.file_content(file_id))

    async def _delete_file(self, _: Request, file_id: str) -> tuple[int, Any]:
        _check_file_id(file_id)
        await run_in_threadpool(lambda: self._batches().store.delete_file(file_id))
        return 200, {"id": file_id, "object": "file", "deleted": True}

    # ----------------------------------------------------------------------- batches

    async def _create(self, request: Request, _: str) -> tuple[int, Any]:
        from llmhost.serving.http_app import read_body

        body = await read_body(request, CreateBatch)
        batch = await run_in_threadpool(
            lambda: self._batches().create(
                body.input_file_id, body.endpoint, body.completion_window, body.metadata
            )
        )
        return 200, batch.public()

    async def _list(self, request: Request, _: str) -> tuple[int, Any]:
        after = request.query_params.get("after") or None
        raw_limit = request.query_params.get("limit", "20")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST:
            raise BatchRequestInvalid(f"limit must be an integer from 1 to {MAX_LIST}", "limit")
        try:
            if after is not None and not _BATCH_ID.match(after):
                raise BatchNotFound(after)
            batches, more = await run_in_threadpool(
                lambda: self._batches().page(after, int(raw_limit))
            )
        except BatchNotFound as missing:
            missing.param = "after"  # the query parameter the client sent
            raise
        data = [batch.public() for batch in batches]
        return 200, {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    async def _retrieve(self, _: Request, batch_id: str) -> tuple[int, Any]:
        _check_batch_id(batch_id)
        batch = await run_in_threadpool(lambda: self._batches().retrieve(batch_id))
        return 200, batch.public()

    async def _cancel(self, _: Request, batch_id: str) -> tuple[int, Any]:
        _check_batch_id(batch_id)
        batch = await run_in_threadpool(lambda: self._batches().cancel(batch_id))
        return 200, batch.public()


def _check_file_id(file_id: str) -> None:
    if not _FILE_ID.match(file_id):
        raise FileNotFound(file_id)


def _check_batch_id(batch_id: str) -> None:
    if not _BATCH_ID.match(batch_id):
        raise BatchNotFound(batch_id)


async def _read_upload(request: Request) -> tuple[str, str, bytes]:
    """The ``purpose``, the file's name and its bytes from a multipart/form-data body."""
    from llmhost.serving.http_app import BodyTooLarge

    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "POST /v1/files takes multipart/form-data with a 'purpose' field and a 'file' "
            f"part, not {content_type[:80] or 'no Content-Type'}"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise BodyTooLarge(f"the upload is {declared} bytes; a file may be {MAX_FILE_BYTES:,}")

    async def bounded() -> AsyncGenerator[bytes, None]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise BodyTooLarge(f"the upload is over {MAX_FILE_BYTES:,} bytes, the limit")
            yield chunk

    parser = MultiPartParser(
        request.headers, bounded(), max_files=1, max_fields=8, max_part_size=64 * 1024
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise InvalidBody(f"the multipart body cannot be read: {error.message}") from None
    try:
        purpose = form.get("purpose")
        upload = form.get("file")
        if not isinstance(purpose, str):
            raise BatchRequestInvalid("the form needs a 'purpose' field (purpose=batch)", "purpose")
        if not isinstance(upload, UploadFile):
            raise BatchRequestInvalid(
                "the form needs a 'file' part holding the JSONL file (with a filename)", "file"
            )
        content = await upload.read()
        return purpose, upload.filename or "", content
    finally:
        await form.close()
