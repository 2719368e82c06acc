"""What every API Gateway app of llmhost shares: JSON responses and the one place where
errors become HTTP (typed errors keep their status; nothing else leaks internals)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, cast

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.middlewares.openapi_validation import (
    OpenAPIRequestValidationMiddleware,
)
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent
from pydantic import ValidationError

from llmhost.api.body import decode_event_body, parse_json_body
from llmhost.errors import FieldIssue, LlmhostError, SpecInvalid
from llmhost.specs import issues_from_validation_error


class _JsonBodyValidation(OpenAPIRequestValidationMiddleware):
    """Powertools' request validation, reading every body with ``parse_json_body``."""

    def _get_body(self, app: Any) -> Any:
        event = app.current_event
        raw = decode_event_body(event.body, bool(event.get("isBase64Encoded")))
        return parse_json_body(raw, event.headers.get("content-type"))


class OwnEventResolver(APIGatewayRestResolver):
    """Powertools' REST resolver, whose current event and Lambda context belong to the
    invocation being resolved, not to the process.

    Powertools keeps them on its ``BaseRouter`` class: ``resolve`` sets
    ``BaseRouter.current_event``, which every resolver of the process then reads, so
    invocations running at the same time in one process (the local gateway's execution
    environments are threads of one process; tests call handlers from threads) would route,
    validate and answer whichever event was set last: another client's answer, with its
    status. Lambda runs one invocation per process at a time, where both ways agree. Here
    each thread that resolves reads the event it was given.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._invocation = threading.local()
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def current_event(self) -> APIGatewayProxyEvent:
        event: APIGatewayProxyEvent = self._invocation.event
        return event

    @current_event.setter
    def current_event(self, event: APIGatewayProxyEvent) -> None:
        self._invocation.event = event

    @property  # type: ignore[override]
    def lambda_context(self) -> Any:
        return self._invocation.context

    @lambda_context.setter
    def lambda_context(self, context: Any) -> None:
        self._invocation.context = context

    def _receive(self, event: Mapping[str, Any] | BaseProxyEvent, context: Any) -> None:
        raw = event.raw_event if isinstance(event, BaseProxyEvent) else event
        self.current_event = cast(APIGatewayProxyEvent, self._to_proxy_event(cast(dict, raw)))
        self.lambda_context = context

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        self._receive(event, context)
        return super().resolve(event, context)

    async def resolve_async(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        self._receive(event, context)
        return await super().resolve_async(event, context)


def json_api(resolver: type[OwnEventResolver] = OwnEventResolver) -> OwnEventResolver:
    """A resolver that validates requests against the routes' models (and documents them)
    and reads bodies only as JSON, turning every decoding failure into a 400 or 415; each
    invocation resolves its own event, even while others run in the same process."""
    app = resolver(enable_validation=True)
    # Powertools builds its validation middleware here; ours differs only in body parsing.
    app._request_validation_middleware = _JsonBodyValidation()
    return app


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=int(status), content_type="application/json", body=body, headers=headers
    )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    retry_after: float | None = None,
    answer: dict[str, Any] | None = None,
    **extra: Any,
) -> Response:
    """llmhost's error body, ``{"error": {code, message, **extra}}``, after ``answer``'s keys
    when the failure still reports on each item it was given; ``retry_after`` seconds become
    the Retry-After header."""
    headers = {"Retry-After": str(int(retry_after))} if retry_after else None
    body = {**(answer or {}), "error": {"code": code, "message": message, **extra}}
    return json_response(status, body, headers)


def invalid_response(issues: list[FieldIssue]) -> Response:
    summary = "; ".join(f"{i.field}: {i.message}" for i in issues[:3])
    return error_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "invalid_request",
        f"the request is invalid: {summary}",
        fields=[i.as_dict() for i in issues],
    )


def install_error_handlers(app: APIGatewayRestResolver, logger: Any = None) -> None:
    """404 for unknown routes, 422 with field paths, typed errors, and a bare 500."""

    @app.not_found
    def not_found(_: Exception) -> Response:
        event = app.current_event
        return error_response(
            HTTPStatus.NOT_FOUND,
            "route_not_found",
            f"no route for {event.http_method} {event.path}; GET /v1/openapi.json lists them",
        )

    @app.exception_handler(RequestValidationError)
    def invalid_request(error: RequestValidationError) -> Response:
        return invalid_response(issues_from_validation_error(error))

    @app.exception_handler(SpecInvalid)
    def invalid_spec(error: SpecInvalid) -> Response:
        return invalid_response(error.issues)

    @app.exception_handler(LlmhostError)
    def domain_error(error: LlmhostError) -> Response:
        if error.status >= 500 and error.log_detail and logger is not None:
            # The client's message names no internals; the operator's log says what failed.
            logger.warning(error.message, extra={"code": error.code, "detail": error.log_detail})
        # An operation that failed as a whole may still report on each item it was given (a
        # batch of documents none of which landed): its ``answer`` comes with the error, and
        # its ``issues`` are the error's fields.
        issues: list[FieldIssue] | None = getattr(error, "issues", None)
        extra = {"fields": [i.as_dict() for i in issues]} if issues is not None else {}
        return error_response(
            error.status,
            error.code,
            error.message,
            retry_after=getattr(error, "retry_after", None),
            answer=getattr(error, "answer", None),
            **extra,
        )

    @app.exception_handler(ValidationError)
    def invalid_model(error: ValidationError) -> Response:
        # A model validated inside a route (not by the resolver): still the client's input.
        return invalid_response(issues_from_validation_error(error))

    @app.exception_handler(Exception)
    def unexpected(error: Exception) -> Response:
        from llmhost.aws_faults import fault_error

        # An AWS call that failed in a way retrying can pass (throttled, timed out, 5xx):
        # 429/503/504 with Retry-After, whichever adapter let it through untyped.
        fault = fault_error(error, "an AWS service llmhost uses")
        if fault is not None:
            if logger is not None:
                logger.warning("AWS fault", extra={"detail": fault.log_detail})
            return error_response(
                fault.status, fault.code, fault.message, retry_after=fault.retry_after
            )
        # The final guard. The client gets no internals; the log has the stack trace and
        # the request id. Errors only client input can cause still answer 4xx.
        if logger is not None:
            logger.exception("unhandled error")
        status, code, message = status_for_unexpected(error)
        return error_response(status, code, message)


def status_for_unexpected(error: Exception) -> tuple[int, str, str]:
    """Status, code and message for an exception no route handled."""
    if isinstance(error, RecursionError):
        return (
            HTTPStatus.BAD_REQUEST,
            "too_deep",
            "the request is nested too deeply to process; flatten it",
        )
    if isinstance(error, UnicodeError):
        return (
            HTTPStatus.BAD_REQUEST,
            "invalid_text",
            "the request contains text that is not valid Unicode (a lone UTF-16 surrogate?); "
            "send UTF-8 text",
        )
    return (
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "internal_error",
        "llmhost hit an internal error; the request id in the logs identifies it",
    )
