"""The error every stand-in raises for what the AWS service itself would refuse."""

from __future__ import annotations


class AwsServiceError(Exception):
    """An error the service returns: AWS error code, message, HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
