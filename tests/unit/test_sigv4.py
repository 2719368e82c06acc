"""The local runner's IAM check accepts what botocore and curl sign and rejects the rest.

Requests are signed by botocore's SigV4Auth (the signer every AWS SDK call uses) and then
tampered with the way an attacker on the wire could.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from llmhost_local import sigv4

KEY, SECRET = "llmhost-local", "llmhost-local-secret"
HOST = "127.0.0.1:8080"


def signed(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    secret: str = SECRET,
    service: str = "execute-api",
    region: str = "us-east-1",
    headers: dict[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    request = AWSRequest(
        method=method,
        url=f"http://{HOST}{path}",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    SigV4Auth(Credentials(KEY, secret), service, region).add_auth(request)
    # An HTTP client always sends Host; botocore signs it without adding it to the dict.
    return path, {"Host": HOST, **dict(request.headers.items())}


def verify(method: str, path: str, headers: dict[str, str], body: bytes = b"", **kw) -> str:
    return sigv4.verify(method, path, headers, body, KEY, SECRET, **kw)


def test_botocore_signature_is_accepted() -> None:
    path, headers = signed("POST", "/v1/deployments?dry=1&a=b", b'{"x": 1}')
    assert verify("POST", path, headers, b'{"x": 1}') == KEY


@pytest.mark.parametrize(
    "path",
    [
        "/v1/collections/docs/documents/a%2Fb.txt",
        "/v1/collections/docs/documents/notes%20on%20tides.md",
        "/v1/collections/docs/documents/caf%C3%A9%2Fmenu.md",
    ],
)
def test_botocore_signs_encoded_paths_that_verify(path: str) -> None:
    # botocore encodes each segment once more (a%252Fb.txt) in its canonical URI
    path, headers = signed("DELETE", path)
    assert verify("DELETE", path, headers) == KEY


@pytest.mark.parametrize(
    ("path", "query"),
    [("/v1/collections/docs/documents/a%2Fb.txt", ""), ("/v1/deployments", "limit=5&after=a%20b")],
)
def test_a_signature_over_the_path_and_query_as_sent_is_accepted(path: str, query: str) -> None:
    # Given the canonical request curl 7.88 builds: the encoded path and query exactly as sent
    amz_date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    canonical = "\n".join(
        [
            "DELETE",
            path,
            query,
            f"host:{HOST}\nx-amz-date:{amz_date}\n",
            "host;x-amz-date",
            hashlib.sha256(b"").hexdigest(),
        ]
    )
    signer = SigV4Auth(Credentials(KEY, SECRET), "execute-api", "us-east-1")
    request = AWSRequest(method="DELETE", url=f"http://{HOST}{path}")
    request.context["timestamp"] = amz_date
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    scope = f"{KEY}/{amz_date[:8]}/us-east-1/execute-api/aws4_request"
    headers = {
        "Host": HOST,
        "X-Amz-Date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={scope}, "
        f"SignedHeaders=host;x-amz-date, Signature={signature}",
    }
    # Then it verifies, and the same signature over another path does not
    target = f"{path}?{query}" if query else path
    assert verify("DELETE", target, headers) == KEY
    with pytest.raises(sigv4.AuthError, match="does not match"):
        verify("DELETE", target.replace("a", "c", 1), headers)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda p, h, b: (p, {k: v for k, v in h.items() if k != "Authorization"}, b),
            "Missing Authentication Token",
        ),
        (lambda p, h, b: (p, h, b + b" "), "does not match"),
        (lambda p, h, b: ("/v1/other", h, b), "does not match"),
        (lambda p, h, b: (p, {**h, "Content-Type": "text/plain"}, b), "does not match"),
    ],
    ids=["unsigned", "body-tampered", "path-tampered", "signed-header-tampered"],
)
def test_tampered_or_unsigned_requests_are_rejected(mutate, message) -> None:
    path, headers = signed("POST", "/v1/deployments", b"{}")
    path, headers, body = mutate(path, headers, b"{}")
    with pytest.raises(sigv4.AuthError, match=message):
        verify("POST", path, headers, body)


def test_a_body_swapped_under_a_signed_content_hash_is_rejected() -> None:
    # Given a request that signs its body's hash in X-Amz-Content-SHA256
    body = b'{"name": "a"}'
    digest = hashlib.sha256(body).hexdigest()
    path, headers = signed(
        "POST", "/v1/deployments", body, headers={"X-Amz-Content-SHA256": digest}
    )
    assert verify("POST", path, headers, body) == KEY
    # When another body is sent under the same headers, it is refused
    with pytest.raises(sigv4.AuthError, match="x-amz-content-sha256"):
        verify("POST", path, headers, b'{"name": "evil"}')


def test_unsigned_payload_is_rejected() -> None:
    path, headers = signed(
        "POST", "/v1/deployments", b"{}", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    )
    with pytest.raises(sigv4.AuthError, match="UNSIGNED-PAYLOAD"):
        verify("POST", path, headers, b'{"anything": "at all"}')


def test_a_credential_scoped_to_another_region_is_rejected() -> None:
    path, headers = signed("GET", "/v1/deployments", region="eu-west-1")
    with pytest.raises(sigv4.AuthError, match="region"):
        verify("GET", path, headers)


def test_host_must_be_signed() -> None:
    # Given a signature whose signed headers leave Host out (the request can be replayed to
    # any host): botocore always signs host, so sign a request the way a careless client would
    path, headers = signed("GET", "/v1/deployments")
    headers["Authorization"] = headers["Authorization"].replace(
        "SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=content-type;x-amz-date"
    )
    assert "SignedHeaders=content-type;x-amz-date" in headers["Authorization"]
    with pytest.raises(sigv4.AuthError, match="'Host'"):
        verify("GET", path, headers)


def test_wrong_secret_wrong_key_and_wrong_service_are_rejected() -> None:
    path, headers = signed("GET", "/v1/deployments", secret="nope")
    with pytest.raises(sigv4.AuthError, match="does not match"):
        verify("GET", path, headers)
    path, headers = signed("GET", "/v1/deployments", service="s3")
    with pytest.raises(sigv4.AuthError, match="execute-api"):
        verify("GET", path, headers)
    path, headers = signed("GET", "/v1/deployments")
    with pytest.raises(sigv4.AuthError, match="security token"):
        sigv4.verify("GET", path, headers, b"", "someone-else", SECRET)


@pytest.mark.parametrize("offset", [timedelta(minutes=6), timedelta(minutes=-6)])
def test_signatures_more_than_five_minutes_away_are_rejected(offset: timedelta) -> None:
    path, headers = signed("GET", "/v1/deployments")
    with pytest.raises(sigv4.AuthError, match=r"Signature (expired|not yet current)"):
        verify("GET", path, headers, now=datetime.now(UTC) + offset)
    # and four minutes is within AWS's skew
    assert verify("GET", path, headers, now=datetime.now(UTC) + offset * 4 / 6) == KEY
