"""Bad client input through both API Gateway handlers: always a 4xx that names the problem.

Each request here once answered 500. The events are the REST API proxy events API Gateway
sends, including the base64 bodies it delivers for binary media types.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from llmhost import runtime
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext, api_gateway_event

SPEC = {
    "name": "llama3-8b",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}
CHAT = {"model": "llama3-8b", "messages": [{"role": "user", "content": "hi"}]}
JSON = {"Content-Type": "application/json"}


class EchoService:
    """Stands in for the serving service: answers with the text the request carried."""

    def chat(self, request: Any, watch: Any = None) -> dict[str, Any]:
        return {"texts": [m.text() for m in request.messages]}

    def rag(self, request: Any, watch: Any = None) -> dict[str, Any]:
        return {"query": request.query}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": []}


@pytest.fixture
def handlers(moto_aws: None) -> dict[str, Any]:
    runtime.override(serving_service=EchoService())
    return {
        "api": load_handler("api", "llmhost-api"),
        "serve": load_handler("serve", "llmhost-serve"),
    }


def send(
    module: Any,
    method: str,
    path: str,
    body: bytes | str = b"",
    headers: dict[str, str] | None = None,
    *,
    base64_body: bool = False,
) -> tuple[int, dict[str, Any], dict[str, list[str]]]:
    event = api_gateway_event(method, path, JSON if headers is None else headers, b"", "tester")
    if base64_body:
        raw = body if isinstance(body, bytes) else body.encode()
        event["body"], event["isBase64Encoded"] = base64.b64encode(raw).decode(), True
    else:
        event["body"] = body.decode() if isinstance(body, bytes) else (body or None)
    response = module.handler(event, LambdaContext("test"))
    assert "Traceback" not in response["body"]
    return response["statusCode"], json.loads(response["body"]), response["multiValueHeaders"]


def error_of(status: int, body: dict[str, Any]) -> tuple[int, str, str]:
    assert set(body) == {"error"}, body
    return status, body["error"]["code"], body["error"]["message"]


# ------------------------------------------------------------------------ bytes and framing


@pytest.mark.parametrize("route", [("api", "/v1/deployments"), ("serve", "/v1/rag")])
def test_a_base64_body_that_is_not_utf8_is_400(handlers: dict[str, Any], route) -> None:
    module, path = route
    # When API Gateway hands over a binary body that is not UTF-8 text
    status, body, _ = send(
        handlers[module], "POST", path, b'{"name": "\xff\xfe"}', base64_body=True
    )
    # Then the client hears that, with where the bad byte is
    status, code, message = error_of(status, body)
    assert (status, code) == (400, "invalid_body")
    assert "UTF-8" in message and "byte 10" in message


def test_text_that_is_not_valid_unicode_is_400(handlers: dict[str, Any]) -> None:
    # A body decoded with surrogate escapes (what a lenient proxy makes of invalid bytes)
    status, body, _ = send(handlers["api"], "POST", "/v1/deployments", '{"name": "\udcff"}')
    status, code, message = error_of(status, body)
    assert (status, code) == (400, "invalid_body") and "UTF-8" in message


def test_a_base64_body_that_is_not_base64_is_400(handlers: dict[str, Any]) -> None:
    event = api_gateway_event("POST", "/v1/deployments", JSON, b"", "tester")
    event["body"], event["isBase64Encoded"] = "not*base64!", True
    response = handlers["api"].handler(event, LambdaContext("test"))
    assert response["statusCode"] == 400
    assert "base64" in json.loads(response["body"])["error"]["message"]


@pytest.mark.parametrize(
    "route", [("api", "/v1/deployments"), ("api", "/v1/plan"), ("serve", "/v1/chat/completions")]
)
def test_json_nested_3000_deep_is_400(handlers: dict[str, Any], route) -> None:
    module, path = route
    status, body, _ = send(handlers[module], "POST", path, "[" * 3000 + "]" * 3000)
    status, code, message = error_of(status, body)
    assert (status, code) == (400, "invalid_json") and "nested" in message


def _nested_unknown_field(levels: int) -> str:
    """A valid chat whose unknown field is an object nested ``levels`` deep in all."""
    return json.dumps(CHAT)[:-1] + ', "extra": ' + '{"x": ' * (levels - 1) + "1" + "}" * levels


@pytest.mark.parametrize("route", [("api", "/v1/deployments"), ("serve", "/v1/chat/completions")])
def test_an_unknown_field_nested_past_the_limit_is_400_as_on_the_openai_server(
    handlers: dict[str, Any], route
) -> None:
    from llmhost.api.body import MAX_JSON_DEPTH

    module, path = route
    # An unknown field 190 deep is refused, as the OpenAI-compatible server refuses it
    status, body, _ = send(handlers[module], "POST", path, _nested_unknown_field(190))
    status, code, message = error_of(status, body)
    assert (status, code) == (400, "invalid_json"), message
    assert f"at most {MAX_JSON_DEPTH} levels" in message
    if module == "serve":
        # and one within the limit is ignored like any unknown field
        status, body, _ = send(handlers[module], "POST", path, _nested_unknown_field(60))
        assert (status, body) == (200, {"texts": ["hi"]})


def test_deep_json_inside_a_valid_spec_is_400(handlers: dict[str, Any]) -> None:
    deep = json.dumps({**SPEC, "tags": {"a": "b"}}).replace('"b"', "[" * 3000 + "]" * 3000)
    status, body, _ = send(handlers["api"], "POST", "/v1/deployments", deep)
    assert error_of(status, body)[:2] == (400, "invalid_json")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "multipart/form-data", "multipart/form-data; boundary=x", "application/xml"],
)
@pytest.mark.parametrize("route", [("api", "/v1/deployments"), ("serve", "/v1/rag")])
def test_a_body_that_is_not_json_is_415_naming_the_header(
    handlers: dict[str, Any], route, content_type: str
) -> None:
    module, path = route
    status, body, _ = send(
        handlers[module], "POST", path, json.dumps(SPEC), {"Content-Type": content_type}
    )
    status, code, message = error_of(status, body)
    assert (status, code) == (415, "unsupported_media_type")
    assert content_type.split(";")[0] in message and "application/json" in message


def test_json_with_a_charset_and_a_json_suffix_type_is_accepted(handlers: dict[str, Any]) -> None:
    for content_type in ("application/json; charset=UTF-8", "application/merge-patch+json"):
        status, _, _ = send(
            handlers["api"], "POST", "/v1/plan", json.dumps(SPEC), {"Content-Type": content_type}
        )
        assert status == 200, content_type
    status, body, _ = send(
        handlers["api"],
        "POST",
        "/v1/plan",
        json.dumps(SPEC),
        {"Content-Type": "application/json; charset=latin-1"},
    )
    assert error_of(status, body)[:2] == (415, "unsupported_media_type")


def test_a_content_length_that_is_not_a_number_is_ignored_by_the_handler(
    handlers: dict[str, Any],
) -> None:
    # API Gateway frames the request; the header is only information for the handler
    headers = {**JSON, "Content-Length": "abc"}
    status, body, _ = send(handlers["api"], "POST", "/v1/plan", json.dumps(SPEC), headers)
    assert status == 200, body


# ------------------------------------------------------------------------------ chat content


@pytest.mark.parametrize(
    ("parts", "says"),
    [
        ([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}], "'image_url'"),
        ([{"text": "no type"}], "type"),
        ([{"type": "text"}], "text"),
        ([{"type": "text", "text": 3}], "text"),
        (["a bare string"], "object"),
    ],
)
def test_chat_content_parts_that_are_not_text_are_422(
    handlers: dict[str, Any], parts: list[Any], says: str
) -> None:
    request = {**CHAT, "messages": [{"role": "user", "content": parts}]}
    status, body, _ = send(handlers["serve"], "POST", "/v1/chat/completions", json.dumps(request))
    status, code, message = error_of(status, body)
    assert (status, code) == (422, "invalid_request")
    fields = [f["field"] for f in body["error"]["fields"]]
    assert len(fields) == 1 and fields[0].startswith("messages.0.content.0"), body
    assert says in message


def test_text_parts_are_joined(handlers: dict[str, Any]) -> None:
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    request = {**CHAT, "messages": [{"role": "user", "content": parts}]}
    status, body, _ = send(handlers["serve"], "POST", "/v1/chat/completions", json.dumps(request))
    assert (status, body) == (200, {"texts": ["Hello, world"]})


def test_content_parts_count_against_the_message_limit(handlers: dict[str, Any]) -> None:
    # 200,000 characters split into parts: the limit is on the message's whole text
    parts = [{"type": "text", "text": "a" * 20_000} for _ in range(10)]
    request = {**CHAT, "messages": [{"role": "user", "content": parts}]}
    status, body, _ = send(handlers["serve"], "POST", "/v1/chat/completions", json.dumps(request))
    status, _, message = error_of(status, body)
    assert (status, body["error"]["fields"][0]["field"]) == (422, "messages.0.content")
    assert "32,000" in message and "200,000" in message


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}),
        ("/v1/rag", {"query": "a\ud800", "model": "m", "collection": "docs"}),
        (
            "/v1/chat/completions",
            {
                **CHAT,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}],
            },
        ),
    ],
)
def test_a_lone_surrogate_is_rejected_the_same_way_on_every_route(
    handlers: dict[str, Any], path: str, request_body: dict[str, Any]
) -> None:
    # json.dumps writes the lone surrogate as the escape "\ud800", as a client would
    status, body, _ = send(handlers["serve"], "POST", path, json.dumps(request_body))
    status, code, message = error_of(status, body)
    assert (status, code) == (400, "invalid_json")
    assert "surrogate" in message and "line 1" in message


def test_the_request_models_reject_a_lone_surrogate_on_their_own() -> None:
    # The OpenAI-compatible server validates the same models from its own parser
    from pydantic import ValidationError

    from llmhost.serving.requests import ChatCompletionRequest, RagRequest

    for model, data in (
        (ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": "x\ud800"}]}),
        (RagRequest, {"query": "\ud800", "model": "m", "collection": "docs"}),
        (
            ChatCompletionRequest,
            {
                **CHAT,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}],
            },
        ),
    ):
        with pytest.raises(ValidationError) as error:
            model.model_validate(data)
        assert {e["type"] for e in error.value.errors()} == {"lone_surrogate"}, error.value


# ------------------------------------------------------------------------------ the guard


class Unlucky(EchoService):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def rag(self, request: Any, watch: Any = None) -> dict[str, Any]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RecursionError("maximum recursion depth exceeded"), 400),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), 400),
        (KeyError("a bug"), 500),
    ],
)
def test_errors_only_input_can_cause_are_4xx_and_a_bug_is_a_bare_500(
    handlers: dict[str, Any], error: Exception, status: int
) -> None:
    # Given a route that fails deep inside (e.g. recursing over a client's nested filters)
    runtime.override(serving_service=Unlucky(error))
    request = {"query": "q", "model": "m", "collection": "docs"}
    got, body, headers = send(handlers["serve"], "POST", "/v1/rag", json.dumps(request))
    # Then the client gets the error shape: a 4xx for what input causes, a bare 500 otherwise
    assert got == status and set(body["error"]) >= {"code", "message"}
    assert headers["Content-Type"] == ["application/json"]
    if status == 500:
        assert body["error"]["code"] == "internal_error" and "a bug" not in json.dumps(body)


# ------------------------------------------------------------------------ plain messages


def fields_of(body: dict[str, Any]) -> dict[str, str]:
    return {f["field"]: f["message"] for f in body["error"]["fields"]}


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"hosting": {"kind": "gpu"}}, "hosting.kind", "'dedicated', 'shared', 'serverless'"),
        ({"model": {"kind": "git", "url": "x"}}, "model.kind", "'hub', 's3', 'model-package'"),
        ({"name": "Llama_3"}, "name", "letters, digits and hyphens, at most 54 characters"),
        ({"name": "x" * 60}, "name", "is 60 characters; at most 54"),
        ({"engine": {"name": "triton"}}, "engine.name", "one of 'tgi', 'vllm', 'lmi'"),
        (
            {"hosting": {"kind": "dedicated", "instance_count": "many"}},
            "hosting.instance_count",
            "whole number",
        ),
        ({"scaling": {"max_capacity": 0}}, "scaling.max_capacity", "at least 1"),
        ({"hosting": {"kind": "dedicated", "gpus": 2}}, "hosting.gpus", "not a known field"),
    ],
)
def test_validation_errors_are_plain_words(
    handlers: dict[str, Any], change: dict[str, Any], field: str, says: str
) -> None:
    status, body, _ = send(
        handlers["api"], "POST", "/v1/deployments", json.dumps({**SPEC, **change})
    )
    assert status == 422
    messages = fields_of(body)
    assert says in messages[field], messages
    # and nothing of pydantic's vocabulary reaches the client
    text = json.dumps(body)
    for jargon in ("Input tag", "kind()", "String should match pattern", "^[", "Input should"):
        assert jargon not in text, text


def test_patch_cannot_rename_and_says_how_to(handlers: dict[str, Any]) -> None:
    send(handlers["api"], "POST", "/v1/deployments", json.dumps(SPEC))
    status, body, _ = send(
        handlers["api"], "PATCH", "/v1/deployments/llama3-8b", json.dumps({"name": "other"})
    )
    assert status == 422
    message = fields_of(body)["name"]
    assert "cannot change" in message and "POST /v1/deployments" in message
    # the current name is accepted, so a spec read with GET can be sent back
    edit = {"name": "llama3-8b", "generation": {"max_new_tokens": 64}}
    status, body, _ = send(handlers["api"], "PATCH", "/v1/deployments/llama3-8b", json.dumps(edit))
    assert status == 200 and body["spec"]["generation"]["max_new_tokens"] == 64


def test_a_bad_name_in_the_path_is_explained(handlers: dict[str, Any]) -> None:
    status, body, _ = send(handlers["api"], "GET", "/v1/deployments/bad_name!")
    assert status == 422
    assert "letters, digits and hyphens" in fields_of(body)["name"]


def test_every_pattern_in_the_api_has_words_for_it(handlers: dict[str, Any]) -> None:
    from llmhost.field_errors import PATTERN_HINTS

    # Given the OpenAPI document both APIs are generated into
    status, doc, _ = send(handlers["api"], "GET", "/v1/openapi.json")
    assert status == 200
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.add(node["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    # Then a client rejected by any of them reads words, not a regular expression
    assert found and found <= set(PATTERN_HINTS), found - set(PATTERN_HINTS)


def test_documents_of_which_none_is_indexed_answer_the_error_shape_and_the_report(
    handlers: dict[str, Any], tmp_path: Any, embedder: Any
) -> None:
    from qdrant_client import QdrantClient

    from llmhost.rag.store import VectorStore

    client = QdrantClient(path=str(tmp_path / "qdrant"))
    runtime.override(store=VectorStore(client), embedder=embedder)
    try:
        body = {"documents": ["not an object", {"id": "x"}]}
        status, answer, _ = send(
            handlers["serve"], "POST", "/v1/collections/docs/documents", json.dumps(body)
        )
    finally:
        client.close()
    # Then it is an error like every other (found by schema fuzzing), report included
    assert status == 422 and answer["error"]["code"] == "no_document_indexed"
    assert [f["field"] for f in answer["error"]["fields"]] == [
        r["field"] for r in answer["rejected"]
    ]
    assert len(answer["rejected"]) == 2 and answer["indexed"] == []
