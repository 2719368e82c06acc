"""What can go wrong for a CLI user, each with its exit code.

0: done. 1 (``CliFailure``): the command ran and failed: the API refused it (its message and
field are printed), a deployment ended FAILED, a document was rejected, a wait ran out.
2: a usage error, found by click before anything is sent. 3 (``StackUnreachable``): no stack
answered at the URL (or no such stack): nothing was done.
"""

from __future__ import annotations

from typing import Any

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CliFailure(Exception):
    """A failure to report in one line (``message``), with the field or option it is about."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def lines(self) -> list[str]:
        return [f"error: {self.message}"] + ([f"  field: {self.field}"] if self.field else [])


class ApiRefused(CliFailure):
    """The API answered with an error status: its code, message and the fields it names."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        fields: list[dict[str, Any]] | None = None,
        retry_after: str | None = None,
        body: Any = None,
    ) -> None:
        self.fields = fields or []
        super().__init__(message, field=self.fields[0]["field"] if self.fields else None)
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.body = body
        self.trace: str | None = None  # the trace that recorded the refusal, if one did

    def lines(self) -> list[str]:
        head = f"error: {self.status}" + (f" {self.code}" if self.code else "")
        lines = [f"{head}: {self.message}"]
        for field in self.fields:
            said = field.get("message")
            lines.append(f"  field {field['field']}" + (f": {said}" if said else ""))
        if self.retry_after:
            lines.append(f"  retry after {self.retry_after} s")
        if self.trace:
            lines.append(f"  trace {self.trace}: llmhost traces {self.trace}")
        return lines


class RequestTimedOut(CliFailure):
    """The stack took the request but gave no answer in time (it may still finish it)."""


class StackUnreachable(CliFailure):
    """Nothing answered at the stack's address (or the stack does not exist)."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.hint = hint

    def lines(self) -> list[str]:
        return [f"error: {self.message}", f"  {self.hint}"]


def refusal_from_body(status: int, body: Any, headers: dict[str, str]) -> ApiRefused:
    """The API's error, whichever shape it came in: llmhost's ``{"error": {code, message,
    fields | field}}``, OpenAI's ``{"error": {message, type, code, param}}``, or API
    Gateway's own ``{"message"}`` (an IAM or signature refusal)."""
    retry_after = headers.get("Retry-After") or headers.get("retry-after")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        fields = [f for f in error.get("fields") or [] if isinstance(f, dict) and "field" in f]
        single = error.get("field") or error.get("param")
        if not fields and isinstance(single, str):
            fields = [{"field": single, "message": ""}]
        return ApiRefused(
            status,
            str(error.get("message") or error.get("code") or "request failed"),
            code=error.get("code") if isinstance(error.get("code"), str) else None,
            fields=fields,
            retry_after=retry_after,
            body=body,
        )
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return ApiRefused(status, body["message"], retry_after=retry_after, body=body)
    text = body if isinstance(body, str) else ""
    return ApiRefused(status, text[:300] or "request failed", retry_after=retry_after, body=body)
