"""The local API Gateway builds proxy events and reads proxy responses as API Gateway does
(REST API, Lambda proxy integration, payload 1.0)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from llmhost_local import events, gateway


def test_the_event_keeps_every_value_of_repeated_headers_and_query_parameters() -> None:
    # Given a request with a repeated header and a repeated query parameter
    event = events.api_gateway_event(
        "GET",
        "/v1/deployments?tag=a&tag=b%20c&limit=5",
        [("Host", "127.0.0.1:8080"), ("Accept", "text/html"), ("Accept", "application/json")],
        b"",
        "llmhost-local",
    )
    # Then the single-value maps hold the last value, the multi-value maps all of them
    assert event["headers"]["Accept"] == "application/json"
    assert event["multiValueHeaders"]["Accept"] == ["text/html", "application/json"]
    assert event["queryStringParameters"] == {"tag": "b c", "limit": "5"}
    assert event["multiValueQueryStringParameters"] == {"tag": ["a", "b c"], "limit": ["5"]}
    assert event["path"] == "/v1/deployments" and event["body"] is None
    assert event["isBase64Encoded"] is False


def test_a_body_that_is_not_utf8_is_base64_encoded() -> None:
    body = b"\xff\xfe\x00binary"
    event = events.api_gateway_event("POST", "/v1/rag", {"Host": "h"}, body, "k")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body


def test_the_caller_identity_is_the_iam_user_who_signed() -> None:
    event = events.api_gateway_event("GET", "/v1/models", {"User-Agent": "curl/8"}, b"", "AKIA1")
    identity = event["requestContext"]["identity"]
    assert identity["accessKey"] == "AKIA1"
    assert identity["userArn"] == f"arn:aws:iam::{events.ACCOUNT}:user/AKIA1"
    assert identity["accountId"] == event["requestContext"]["accountId"] == events.ACCOUNT
    assert identity["userAgent"] == "curl/8" and identity["sourceIp"] == "127.0.0.1"


def test_serving_resources_get_their_path_parameters_decoded_and_the_path_stays_encoded() -> None:
    path = "/v1/collections/docs/documents/a%2Fb.txt"
    integration = gateway.integration_for("DELETE", path)
    assert integration.function == "serve"
    assert integration.resource == "/v1/collections/{name}/documents/{doc_id+}"
    assert integration.path_parameters == {"name": "docs", "doc_id": "a/b.txt"}
    event = events.api_gateway_event(
        "DELETE",
        path,
        {"Host": "h"},
        b"",
        "k",
        resource=integration.resource,
        path_parameters=integration.path_parameters,
    )
    assert event["path"] == path and event["resource"] == integration.resource
    assert event["pathParameters"] == {"name": "docs", "doc_id": "a/b.txt"}


@pytest.mark.parametrize(
    ("path", "doc_id"),
    [
        ("/v1/collections/docs/documents/guides/sleep.md", "guides/sleep.md"),
        ("/v1/collections/docs/documents/notes/2024/a%20b.txt", "notes/2024/a b.txt"),
        ("/v1/collections/docs/documents/guides%2Fsleep.md", "guides/sleep.md"),
        ("/v1/collections/docs/documents/plain", "plain"),
    ],
)
def test_a_document_id_takes_every_segment_after_documents(path: str, doc_id: str) -> None:
    # The template's {doc_id+} is greedy: an id whose '/' arrives decoded still reaches the
    # serve function under that resource, with every remaining segment in its parameter.
    integration = gateway.integration_for("DELETE", path)
    assert integration.function == "serve"
    assert integration.resource == "/v1/collections/{name}/documents/{doc_id+}"
    assert integration.path_parameters == {"name": "docs", "doc_id": doc_id}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/collections/docs/documents/"),  # a greedy parameter takes >= 1 segment
        ("DELETE", "/v1/collections/docs/documents"),
        ("GET", "/v1/collections/docs/documents/guides/sleep.md"),  # DELETE only
        ("DELETE", "/v1/collections/docs/other/guides/sleep.md"),
    ],
)
def test_only_a_delete_under_documents_matches_the_greedy_resource(method: str, path: str) -> None:
    integration = gateway.integration_for(method, path)
    assert integration.resource != "/v1/collections/{name}/documents/{doc_id+}"


def test_other_paths_go_to_the_api_function_through_proxy() -> None:
    integration = gateway.integration_for("PATCH", "/v1/deployments/demo")
    assert (integration.function, integration.resource) == ("api", "/{proxy+}")
    assert integration.path_parameters == {"proxy": "v1/deployments/demo"}


def test_response_headers_merge_headers_and_multi_value_headers() -> None:
    # Given a function answer with both maps (Powertools sets multiValueHeaders)
    response = {
        "statusCode": 503,
        "headers": {"X-Only-Single": "1", "Retry-After": "999"},
        "multiValueHeaders": {"Retry-After": ["30"], "Set-Cookie": ["a=1", "b=2"]},
        "body": "{}",
    }
    headers = gateway.response_headers(response)
    # Then both reach the client; a name in both keeps the multiValueHeaders values
    assert ("X-Only-Single", "1") in headers
    assert [v for n, v in headers if n == "Retry-After"] == ["30"]
    assert [v for n, v in headers if n == "Set-Cookie"] == ["a=1", "b=2"]
    # And API Gateway's default content type applies when the function set none
    assert ("Content-Type", "application/json") in headers


def test_a_base64_response_body_is_decoded() -> None:
    raw = b"\x89PNG"
    response = {"statusCode": 200, "body": base64.b64encode(raw).decode(), "isBase64Encoded": True}
    assert gateway.response_body(response) == raw


def test_each_invocation_has_an_execution_environment_to_itself() -> None:
    # Given a function whose environments are numbered as they start (cold starts)
    started: list[int] = []

    def start() -> Any:
        started.append(len(started))
        number = started[-1]
        return lambda event, context: {"statusCode": 200, "body": str(number)}

    environments = gateway.Environments(start)
    # When two invocations overlap, they run in two environments
    with environments.acquire() as first, environments.acquire() as second:
        assert first is not second
    # And a later one reuses a warm environment instead of starting a third
    with environments.acquire() as third:
        assert third in (first, second)
    assert environments.started == 2
