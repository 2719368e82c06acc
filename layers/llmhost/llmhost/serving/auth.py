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
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from llmhost.errors import LlmhostError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters.base import BaseProvider

KEY_PREFIX = "llmh-"
# How old the key hashes may get (Powertools Parameters' max_age): a revoked key works at most
# this long.
CACHE_SECONDS = 300
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
    """Checks bearer keys against the hashes ``load_hashes`` returns, asked on every request.

    ``load_hashes`` keeps the hashes for a bounded time itself (``SecretKeys``: Powertools
    Parameters' cache, CACHE_SECONDS, so a revoked key stops working within that time). A
    read that fails is not tried again for FAILED_LOAD_RETRY_SECONDS: a failing Secrets
    Manager must not see one call per request, and its callers get 503 with Retry-After, not
    a 500. A failed refresh keeps the keys read before.
    """

    def __init__(
        self,
        load_hashes: Callable[[], Mapping[str, str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load_hashes
        self._clock = clock
        self._loaded: Mapping[str, str] | None = None  # as read, to skip re-normalising it
        self._hashes: dict[str, str] | None = None  # None: never read successfully
        self._retry_at = float("-inf")  # after a failed read, not before this
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Principal:
        """The key's owner. Raises Unauthorized with OpenAI's wording for a missing/bad key,
        KeysUnavailable while the key secret cannot be read."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>' (OpenAI clients: api_key=...)"
            )
        return self._check(authorization, self._current(self._load))

    def authenticate_cached(self, authorization: str | None) -> Principal | None:
        """``authenticate`` without I/O: None when the key hashes are not at hand without a
        read (call ``authenticate`` then, off the event loop), else its result or its error.
        Hashes are at hand while a failed read is not retried yet, or when the loader has a
        ``cached()`` that returns them (``SecretKeys``: Parameters' cache, not expired)."""
        with self._lock:
            backing_off = self._clock() < self._retry_at
        if backing_off:
            return self.authenticate(authorization)
        cached = getattr(self._load, "cached", None)
        hashes = cached() if cached is not None else None
        if hashes is None:
            return None
        if not authorization or not authorization.lower().startswith("bearer "):
            return self.authenticate(authorization)  # refused before any read
        return self._check(authorization, self._current(lambda: hashes))

    def _check(self, authorization: str, hashes: dict[str, str]) -> Principal:
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

    def _current(self, load: Callable[[], Mapping[str, str]]) -> dict[str, str]:
        with self._lock:
            now = self._clock()
            if now >= self._retry_at:
                try:
                    loaded = load()
                    if not isinstance(loaded, Mapping):
                        raise TypeError(
                            "the API key secret must be a JSON object of name -> sha256"
                        )
                    if loaded is not self._loaded:
                        self._hashes = {str(k): str(v).lower() for k, v in loaded.items()}
                        self._loaded = loaded
                except Exception as error:  # any failure: keep what we had, retry later
                    logger.warning(
                        "reading the API key secret failed: %s: %s", type(error).__name__, error
                    )
                    self._retry_at = now + FAILED_LOAD_RETRY_SECONDS
            if self._hashes is None:
                raise KeysUnavailable(retry_after=FAILED_LOAD_RETRY_SECONDS)
            return self._hashes


class SecretKeys:
    """The ``{"name": "sha256"}`` hashes in a Secrets Manager secret, read through Powertools
    Parameters (``llmhost.aws.secret``) and kept CACHE_SECONDS. A secret without keys yet (as
    the stack creates it) is read again after FAILED_LOAD_RETRY_SECONDS, so a key added to it
    works within that time. Raises on any failure, including a value that is not a JSON
    object. ``provider`` replaces the process's Parameters provider, for tests."""

    def __init__(
        self,
        secret_id: str,
        *,
        provider: BaseProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._id = secret_id
        self._provider = provider
        self._clock = clock
        self._empty_since: float | None = None

    def cached(self) -> Mapping[str, str] | None:
        """The hashes if Parameters holds them unexpired and no re-read of an empty secret is
        due, else None; never reads the secret."""
        from llmhost import aws

        provider = self._provider if self._provider is not None else aws.secrets_provider()
        # A peek at Parameters' cache through its private key builder: a Powertools whose
        # cache API differs in any way makes this None, and the caller reads as usual.
        try:
            key = provider._build_cache_key(name=self._id, transform="json")
            if not provider.has_not_expired_in_cache(key):
                return None
            data = provider.fetch_from_cache(key)
        except Exception:
            return None
        if not isinstance(data, dict):
            return None
        due = self._empty_since is not None and (
            self._clock() - self._empty_since >= FAILED_LOAD_RETRY_SECONDS
        )
        return None if not data and due else data

    def __call__(self) -> Mapping[str, str]:
        from llmhost import aws

        now = self._clock()
        empty_for = None if self._empty_since is None else now - self._empty_since
        refresh = empty_for is not None and empty_for >= FAILED_LOAD_RETRY_SECONDS
        data = aws.secret(
            self._id,
            max_age=CACHE_SECONDS,
            transform="json",
            force_fetch=refresh,
            provider=self._provider,
        )
        if not isinstance(data, dict):
            raise TypeError("the API key secret must be a JSON object of name -> sha256")
        if data and self._empty_since is not None:
            self._empty_since = None
        elif not data and (self._empty_since is None or refresh):
            self._empty_since = now
        return data


def hashes_from_secret(secret_arn: str) -> SecretKeys:
    """The key hashes of the secret ``secret_arn`` (see ``SecretKeys``)."""
    return SecretKeys(secret_arn)


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "default"
    key = new_key()
    print(f"API key for {name!r} (shown once; store it safely):\n  {key}")
    print("Add this entry to the API keys secret (a JSON object):")
    print(f"  {json.dumps({name: hash_key(key)})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
