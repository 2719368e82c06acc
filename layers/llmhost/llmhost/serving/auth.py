"""API keys for the OpenAI-compatible endpoint (the streaming function URL).

OpenAI clients send ``Authorization: Bearer <key>``; they cannot sign requests with SigV4, so
this endpoint checks keys itself. Keys live in a Secrets Manager secret as a JSON object
``{"<key name>": "<sha256 hex of the key>"}``: the secret holds hashes, never the keys, and
a leaked secret value does not leak a usable key. ``python -m llmhost.serving.auth NAME``
prints a new key and the line to add to the secret (to its user's terminal, on stdout: a
command's output, not a log line).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from llmhost.errors import LlmhostError

KEY_PREFIX = "llmh-"
CACHE_SECONDS = 300  # how old the key hashes may get: a revoked key works at most this long
FAILED_LOAD_RETRY_SECONDS = 30  # after a failed read, and while the secret holds no keys

logger = Logger(child=True)


class Unauthorized(LlmhostError):
    code = "invalid_api_key"
    status = 401


class KeysUnavailable(LlmhostError):
    """The key secret could not be read: the caller may be fine, so 503, not 401 or 500."""

    code = "api_keys_unavailable"
    status = 503

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"llmhost could not read its API keys; retry in {retry_after} s "
            "(the operator's logs say why)"
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class Principal:
    key_name: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKeyAuth:
    """Checks bearer keys against hashed keys, loaded lazily and kept for a bounded time.

    The hashes are read at most once per CACHE_SECONDS (a revoked key stops working within
    that time). A secret without keys, or a read that fails, is tried again after
    FAILED_LOAD_RETRY_SECONDS, never on every request: a failing Secrets Manager must not
    see one call per request, and its callers get 503 with Retry-After, not a 500. A failed
    refresh keeps the keys read before.
    """

    def __init__(
        self,
        load_hashes: Callable[[], Mapping[str, str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load_hashes
        self._clock = clock
        self._hashes: dict[str, str] | None = None  # None: never read successfully
        self._next_load = float("-inf")
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Principal:
        """The key's owner. Raises Unauthorized with OpenAI's wording for a missing/bad key,
        KeysUnavailable while the key secret cannot be read."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>' (OpenAI clients: api_key=...)"
            )
        hashes = self._current()
        if not hashes:
            raise Unauthorized(
                "no API keys are configured yet: mint one with `python -m llmhost.serving.auth "
                "NAME` and add the printed entry to the API keys secret"
            )
        digest = hash_key(authorization[7:].strip())
        for name, stored in hashes.items():
            if hmac.compare_digest(digest, stored):
                return Principal(key_name=name)
        raise Unauthorized("incorrect API key provided")

    def authenticate_cached(self, authorization: str | None) -> Principal | None:
        """``authenticate`` without I/O: None when the key hashes are due to be read (call
        ``authenticate`` then, off the event loop), else its result or its error."""
        with self._lock:
            if self._clock() >= self._next_load:
                return None
        return self.authenticate(authorization)

    def _current(self) -> dict[str, str]:
        with self._lock:
            now = self._clock()
            if now >= self._next_load:
                try:
                    loaded = self._load()
                    if not isinstance(loaded, Mapping):
                        raise TypeError(
                            "the API key secret must be a JSON object of name -> sha256"
                        )
                    self._hashes = {str(k): str(v).lower() for k, v in loaded.items()}
                    wait = CACHE_SECONDS if self._hashes else FAILED_LOAD_RETRY_SECONDS
                except Exception as error:  # any failure: keep what we had, retry later
                    logger.warning(
                        "reading the API key secret failed: %s: %s", type(error).__name__, error
                    )
                    wait = FAILED_LOAD_RETRY_SECONDS
                self._next_load = now + wait
            if self._hashes is None:
                raise KeysUnavailable(retry_after=FAILED_LOAD_RETRY_SECONDS)
            return self._hashes


def hashes_from_secret(secret_arn: str) -> Callable[[], Mapping[str, str]]:
    """A loader reading ``{"name": "sha256"}`` from Secrets Manager (raises on any failure,
    including a value that is not a JSON object)."""

    def load() -> Mapping[str, str]:
        from llmhost import aws

        value = aws.client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"]
        data = json.loads(value)
        if not isinstance(data, dict):
            raise TypeError("the API key secret must be a JSON object of name -> sha256")
        return data

    return load


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "default"
    key = new_key()
    print(f"API key for {name!r} (shown once; store it safely):\n  {key}")
    print("Add this entry to the API keys secret (a JSON object):")
    print(f"  {json.dumps({name: hash_key(key)})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
