"""The local runner's IAM check accepts what botocore signs and rejects everything else."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from llmhost.local import sigv4

KEY, SECRET = "llmhost-local", "llmhost-local-secret"


def signed(
    method: str, url: str, body: bytes = b"", secret: str = SECRET, service: str = "execute-api"
):
    request = AWSRequest(
        method=method, url=url, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(KEY, secret), service, "us-east-1").add_auth(request)
    path = url.split("127.0.0.1:8080", 1)[1]
    # An HTTP client always sends Host; botocore signs it without adding it to the dict.
    return path, {"Host": "127.0.0.1:8080", **dict(request.headers.items())}


def test_botocore_signature_is_accepted() -> None:
    path, headers = signed("POST", "http://127.0.0.1:8080/v1/deployments?dry=1&a=b", b'{"x": 1}')
    assert sigv4.verify("POST", path, headers, b'{"x": 1}', KEY, SECRET) == KEY


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda p, h, b: (p, {k: v for k, v in h.items() if k != "Authorization"}, b),
            "Missing Authentication Token",
        ),
        (lambda p, h, b: (p, h, b + b" "), "does not match"),
        (lambda p, h, b: ("/v1/other", h, b), "does not match"),
    ],
    ids=["unsigned", "body-tampered", "path-tampered"],
)
def test_tampered_or_unsigned_requests_are_rejected(mutate, message) -> None:
    path, headers = signed("POST", "http://127.0.0.1:8080/v1/deployments", b"{}")
    path, headers, body = mutate(path, headers, b"{}")
    with pytest.raises(sigv4.AuthError, match=message):
        sigv4.verify("POST", path, headers, body, KEY, SECRET)


def test_wrong_secret_and_wrong_service_are_rejected() -> None:
    path, headers = signed("GET", "http://127.0.0.1:8080/v1/deployments", secret="nope")
    with pytest.raises(sigv4.AuthError, match="does not match"):
        sigv4.verify("GET", path, headers, b"", KEY, SECRET)
    path, headers = signed("GET", "http://127.0.0.1:8080/v1/deployments", service="s3")
    with pytest.raises(sigv4.AuthError, match="execute-api"):
        sigv4.verify("GET", path, headers, b"", KEY, SECRET)


def test_old_signatures_expire() -> None:
    path, headers = signed("GET", "http://127.0.0.1:8080/v1/deployments")
    later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
    with pytest.raises(sigv4.AuthError, match="expired"):
        sigv4.verify("GET", path, headers, b"", KEY, SECRET, now=later)
