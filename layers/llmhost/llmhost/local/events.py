"""Event shapes the local runner feeds to the handlers, as AWS would deliver them."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit


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
    headers: dict[str, str],
    body: bytes,
    caller: str,
    stage: str = "local",
) -> dict[str, Any]:
    """A REST API (payload v1) proxy event for the ``/{proxy+}`` resource."""
    parts = urlsplit(raw_path)
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
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    return {
        "resource": "/{proxy+}",
        "path": parts.path,
        "httpMethod": method,
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": dict(query) or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": parts.path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/{stage}{parts.path}",
            "stage": stage,
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "protocol": "HTTP/1.1",
            "accountId": "000000000000",
            "apiId": "local",
            "identity": {
                "caller": caller,
                "user": caller,
                "userArn": f"arn:aws:iam::000000000000:user/{caller}",
                "accessKey": caller,
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("User-Agent", headers.get("user-agent", "")),
            },
        },
        "body": text,
        "isBase64Encoded": is_b64,
    }


def stream_event(name: str, table_arn: str) -> dict[str, Any]:
    """A DynamoDB stream batch with one MODIFY record for deployment ``name``."""
    return {
        "Records": [
            {
                "eventID": uuid.uuid4().hex,
                "eventName": "MODIFY",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "Keys": {"name": {"S": name}},
                    "SequenceNumber": str(uuid.uuid4().int)[:21],
                    "SizeBytes": 64,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
                "eventSourceARN": f"{table_arn}/stream/local",
            }
        ]
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
