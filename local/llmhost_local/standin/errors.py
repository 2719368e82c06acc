"""What every stand-in shares: the error for what the AWS service itself would refuse, and
the pagination token format."""

from __future__ import annotations

import base64


class AwsServiceError(Exception):
    """An error the service returns: AWS error code, message, HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def page_token(offset: int) -> str:
    """The opaque NextToken every stand-in hands out: where the next page starts."""
    return base64.urlsafe_b64encode(f"standin:{offset}".encode()).decode()


def page_offset(token: str | None) -> int:
    """Where a NextToken says to start. Raises ValueError for a token no stand-in made."""
    if token is None:
        return 0
    prefix, _, number = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
    if prefix != "standin":
        raise ValueError(prefix)
    return int(number)
