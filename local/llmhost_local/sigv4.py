"""Verifies AWS Signature Version 4 on local requests, as API Gateway's IAM auth does.

The local runner has one key pair (the emulator's); a request must be signed with it for
service ``execute-api`` in ``us-east-1``. The signature is recomputed with botocore's own
signer (``SigV4Auth``) over the request as received, with exactly the headers the client
declared signed (as moto does in ``moto/iam/access_control.py``), and compared in constant
time. Checked besides the signature, as AWS checks them: the credential scope (key, date,
region, service), ``host`` among the signed headers, the request time within 5 minutes, and
an ``X-Amz-Content-SHA256`` header, if sent, equal to the SHA-256 of the body
(``UNSIGNED-PAYLOAD`` is S3's, not API Gateway's).

The canonical URI of a path with percent-encoded characters (``/documents/a%2Fb.txt``):
AWS's rule for services other than S3 is to encode each segment once more, which botocore
does (``a%252Fb.txt``); curl (7.88) signs the path as sent (``a%2Fb.txt``), and its query
as sent too (botocore sorts the parameters). Both sign the same resource, and both are
accepted.

Rejections carry API Gateway's own messages and ``x-amzn-ErrorType``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

SERVICE = "execute-api"
REGION = "us-east-1"
# API Gateway refuses a request signed more than 5 minutes before or after its own clock.
MAX_SKEW = timedelta(minutes=5)
_AMZ_DATE = "%Y%m%dT%H%M%SZ"

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


class AuthError(Exception):
    """A refused request: ``message`` and ``error_type`` as API Gateway words them (403)."""

    def __init__(self, message: str, error_type: str = "InvalidSignatureException") -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


class _DeclaredHeaders(SigV4Auth):
    """botocore's signer, signing exactly the headers the client declared (botocore would
    otherwise add or skip some by its own rules, e.g. never ``user-agent``)."""

    def __init__(
        self, credentials: Credentials, received: list[tuple[str, str]], signed: list[str]
    ) -> None:
        super().__init__(credentials, SERVICE, REGION)
        self._received = received
        self._signed = set(signed)

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name, value in self._received:
            if name.lower() in self._signed:
                headers[name.lower()] = value
        return headers


class _AsSent(_DeclaredHeaders):
    """The canonical URI and query as curl (7.88) computes them: exactly as sent."""

    def _normalize_url_path(self, path: str) -> str:
        return path

    def canonical_query_string(self, request: AWSRequest) -> str:
        return str(urlsplit(request.url).query)


def verify(
    method: str,
    raw_path: str,
    headers: Headers,
    body: bytes,
    access_key: str,
    secret_key: str,
    now: datetime | None = None,
) -> str:
    """Return the caller's access key id if the request is signed correctly; else AuthError.

    ``raw_path`` is the request target as sent (percent-encoding intact, with its query);
    ``headers`` every header received, repeated names included.
    """
    received = list(headers.items() if isinstance(headers, Mapping) else headers)
    lower: dict[str, str] = {}
    for name, value in received:
        lower[name.lower()] = value
    auth = lower.get("authorization", "")
    if not auth:
        raise AuthError("Missing Authentication Token", "MissingAuthenticationTokenException")
    algorithm, _, rest = auth.partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        raise AuthError(
            "Authorization header requires 'AWS4-HMAC-SHA256' signing",
            "IncompleteSignatureException",
        )
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
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' "
            "parameters.",
            "IncompleteSignatureException",
        ) from None
    if key_id != access_key:
        raise AuthError(
            "The security token included in the request is invalid.", "UnrecognizedClientException"
        )
    if service != SERVICE or terminal != "aws4_request":
        raise AuthError(f"Credential should be scoped to correct service: '{SERVICE}'. ")
    if region != REGION:
        raise AuthError(
            f"Credential should be scoped to a valid region, not '{region}'. "
            f"The local API is in '{REGION}'."
        )
    signed_names = [name.strip().lower() for name in signed.split(";")]
    if "host" not in signed_names:
        raise AuthError(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            "IncompleteSignatureException",
        )
    missing = [name for name in signed_names if name not in lower]
    if missing:
        raise AuthError(
            f"Signed header(s) {', '.join(missing)} are missing from the request.",
            "IncompleteSignatureException",
        )
    amz_date = lower.get("x-amz-date", "")
    try:
        stamp = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise AuthError(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
            "IncompleteSignatureException",
        ) from None
    _check_time(stamp, now or datetime.now(UTC))
    if date != amz_date[:8]:
        raise AuthError(
            f"Credential should be scoped to a valid date: '{amz_date[:8]}', not '{date}'."
        )
    declared = lower.get("x-amz-content-sha256")
    if declared is not None and not hmac.compare_digest(
        declared.encode(), hashlib.sha256(body).hexdigest().encode()
    ):
        if declared.startswith(("UNSIGNED-PAYLOAD", "STREAMING-")):
            raise AuthError(
                f"X-Amz-Content-SHA256 '{declared}' is not accepted by {SERVICE}: sign the "
                "SHA-256 of the body."
            )
        raise AuthError(
            "The provided x-amz-content-sha256 header does not match what was computed."
        )

    credentials = Credentials(access_key, secret_key)
    request = AWSRequest(
        method=method, url=f"http://{lower['host']}{raw_path}", data=body, headers={}
    )
    request.context["timestamp"] = amz_date
    for signer in (
        _DeclaredHeaders(credentials, received, signed_names),
        _AsSent(credentials, received, signed_names),
    ):
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return key_id
    raise AuthError(
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. Consult the service "
        "documentation for details."
    )


def _check_time(stamp: datetime, now: datetime) -> None:
    if stamp < now - MAX_SKEW:
        limit = (now - MAX_SKEW).strftime(_AMZ_DATE)
        raise AuthError(
            f"Signature expired: {stamp.strftime(_AMZ_DATE)} is now earlier than {limit} "
            f"({now.strftime(_AMZ_DATE)} - 5 min.)"
        )
    if stamp > now + MAX_SKEW:
        limit = (now + MAX_SKEW).strftime(_AMZ_DATE)
        raise AuthError(
            f"Signature not yet current: {stamp.strftime(_AMZ_DATE)} is still later than "
            f"{limit} ({now.strftime(_AMZ_DATE)} + 5 min.)"
        )
