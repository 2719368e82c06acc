"""Event shapes the local runner feeds to the handlers, as AWS would deliver them."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

# The local stack's AWS account (moto's default).
ACCOUNT = "123456789012"


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that Powertools reads."""

    function_name: str
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def api_gateway_event(
    method: str,
    raw_path: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    caller: str,
    *,
    resource: str = "/{proxy+}",
    path_parameters: dict[str, str] | None = None,
    source_ip: str = "127.0.0.1",
    stage: str = "local",
    account: str = ACCOUNT,
) -> dict[str, Any]:
    """A REST API (payload 1.0) Lambda proxy event, as API Gateway builds it with IAM auth.

    ``raw_path`` is the request target as sent (percent-encoding intact, with its query);
    ``headers`` every header received, repeated names included; ``caller`` the access key
    id the signature was made with. As API Gateway does: ``path`` keeps the path's
    encoding, path parameters and query values are decoded, ``headers`` and
    ``queryStringParameters`` hold the last value of a repeated name and the
    ``multiValue`` twins all of them (each ``None`` when empty), a body that is not UTF-8
    arrives base64-encoded with ``isBase64Encoded``. ``path_parameters`` default to the
    ``{proxy+}`` resource's.
    """
    parts = urlsplit(raw_path)
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        single[name] = value
        multi.setdefault(name, []).append(value)
    query = parse_qsl(parts.query, keep_blank_values=True)
    multi_query: dict[str, list[str]] = {}
    for key, value in query:
        multi_query.setdefault(key, []).append(value)
    text: str | None
    is_b64 = False
    try:
        text = body.decode("utf-8") if body else None
    except UnicodeDecodeError:
        text, is_b64 = base64.b64encode(body).decode(), True
    if path_parameters is None and resource == "/{proxy+}":
        path_parameters = {"proxy": unquote(parts.path.lstrip("/"))}
    lower = {name.lower(): value for name, value in pairs}
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    return {
        "resource": resource,
        "path": parts.path,
        "httpMethod": method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": dict(query) or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": resource,
            "httpMethod": method,
            "path": f"/{stage}{parts.path}",
            "stage": stage,
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "protocol": "HTTP/1.1",
            "accountId": account,
            "apiId": "local",
            "domainName": lower.get("host", "127.0.0.1"),
            "domainPrefix": lower.get("host", "127.0.0.1").split(".")[0],
            "identity": {
                # IAM auth with an IAM user's key: who signed, as API Gateway reports it.
                "accessKey": caller,
                "accountId": account,
                "caller": caller,
                "user": caller,
                "userArn": f"arn:aws:iam::{account}:user/{caller}",
                "sourceIp": source_ip,
                "userAgent": lower.get("user-agent"),
                "apiKey": None,
                "apiKeyId": None,
                "principalOrgId": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "clientCert": None,
            },
            "authorizer": None,
        },
        "body": text,
        "isBase64Encoded": is_b64,
    }


def schedule_event() -> dict[str, Any]:
    """The EventBridge "Scheduled Event" the drift-repair schedule sends."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:000000000000:rule/llmhost-reconcile"],
        "detail": {},
    }
