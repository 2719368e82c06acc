"""Verifies AWS Signature Version 4 on local requests, as API Gateway's IAM auth does.

The local runner has one key pair (the emulator's); a request must be signed with it for
service ``execute-api`` — ``curl --aws-sigv4`` and botocore's SigV4Auth both produce such
signatures. Rejections carry API Gateway's own messages.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote, urlsplit

MAX_SKEW = timedelta(minutes=15)


class AuthError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def verify(
    method: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    now: datetime | None = None,
) -> str:
    """Return the caller's access key id if the request is signed correctly; else AuthError."""
    lower = {k.lower(): v for k, v in headers.items()}
    auth = lower.get("authorization", "")
    if not auth:
        raise AuthError("Missing Authentication Token")
    algorithm, _, rest = auth.partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        raise AuthError("Authorization header requires 'AWS4-HMAC-SHA256' signing")
    fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
    try:
        credential, signed, signature = (
            fields["Credential"],
            fields["SignedHeaders"],
            fields["Signature"],
        )
        key_id, date, region, service, terminal = credential.split("/")
    except (KeyError, ValueError):
        raise AuthError(
            "Authorization header requires Credential, SignedHeaders and Signature"
        ) from None
    if key_id != access_key:
        raise AuthError("The security token included in the request is invalid.")
    if service != "execute-api" or terminal != "aws4_request":
        raise AuthError(
            f"Credential should be scoped to correct service: 'execute-api' (got '{service}')"
        )
    amz_date = lower.get("x-amz-date", "")
    try:
        stamp = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthError("Authorization requires an X-Amz-Date header") from None
    if abs((now or datetime.now(UTC)) - stamp) > MAX_SKEW:
        raise AuthError("Signature expired: the request time is more than 15 minutes away")

    parts = urlsplit(raw_path)
    signed_names = signed.split(";")
    canonical_headers = "".join(
        f"{name}:{' '.join(lower.get(name, '').split())}\n" for name in signed_names
    )
    query = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    payload_hash = lower.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical_request = "\n".join(
        [
            method,
            quote(parts.path or "/", safe="/-_.~"),
            "&".join(f"{k}={v}" for k, v in query),
            canonical_headers,
            signed,
            payload_hash,
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise AuthError(
            "The request signature we calculated does not match the signature you provided."
        )
    return key_id
