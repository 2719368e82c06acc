"""API keys for the OpenAI-compatible endpoint (the streaming function URL).

OpenAI clients send ``Authorization: Bearer <key>``; they cannot sign requests with SigV4, so
this endpoint checks keys itself. Keys live in a Secrets Manager secret as a JSON object
``{"<key name>": "<sha256 hex of the key>"}``: the secret holds hashes, never the keys, and
a leaked secret value does not leak a usable key. ``python -m llmhost.serving.auth NAME``
prints a new key and the line to add to the secret.
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

from llmhost.errors import LlmhostError

KEY_PREFIX = "llmh-"
CACHE_SECONDS = 300


class Unauthorized(LlmhostError):
    code = "invalid_api_key"
    status = 401


@dataclass(frozen=True)
class Principal:
    key_name: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKeyAuth:
    """Checks bearer keys against hashed keys loaded lazily (and refreshed every 5 minutes)."""

    def __init__(self, load_hashes: Callable[[], Mapping[str, str]]) -> None:
        self._load = load_hashes
        self._hashes: dict[str, str] = {}
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Principal:
        """The key's owner. Raises Unauthorized with OpenAI's wording for a missing/bad key."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>' (OpenAI clients: api_key=...)"
            )
        digest = hash_key(authorization[7:].strip())
        for name, stored in self._current().items():
            if hmac.compare_digest(digest, stored):
                return Principal(key_name=name)
        raise Unauthorized("incorrect API key provided")

    def _current(self) -> dict[str, str]:
        with self._lock:
            if time.monotonic() - self._loaded_at > CACHE_SECONDS or not self._hashes:
                self._hashes = {str(k): str(v).lower() for k, v in self._load().items()}
                self._loaded_at = time.monotonic()
            return self._hashes


def hashes_from_secret(secret_arn: str) -> Callable[[], Mapping[str, str]]:
    """A loader reading ``{"name": "sha256"}`` from Secrets Manager."""

    def load() -> Mapping[str, str]:
        from llmhost import aws

        value = aws.client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"]
        data = json.loads(value)
        if not isinstance(data, dict):
            raise Unauthorized("the API key secret must be a JSON object of name -> sha256")
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
