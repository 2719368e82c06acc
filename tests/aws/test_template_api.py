"""template.yaml's entry points: every API route IAM-signed, the serving routes exactly what
the serving app routes, the API-key streaming URL, and the API samples in events/ that
match those routes and the request models.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

import sam_template as sam


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


# The routes the deployment API serves (all behind one /{proxy+} ANY route).
ROUTES: dict[tuple[str, str], str] = {
    ("POST", r"/v1/deployments"): "create",
    ("GET", r"/v1/deployments"): "list",
    ("GET", r"/v1/deployments/[A-Za-z0-9-]+"): "get",
    ("PATCH", r"/v1/deployments/[A-Za-z0-9-]+"): "patch",
    ("DELETE", r"/v1/deployments/[A-Za-z0-9-]+"): "delete",
    ("POST", r"/v1/deployments/[A-Za-z0-9-]+/sleep"): "sleep",
    ("POST", r"/v1/deployments/[A-Za-z0-9-]+/wake"): "wake",
    ("POST", r"/v1/plan"): "plan",
    ("GET", r"/v1/openapi\.json"): "openapi",
}


# The serving API's routes: explicit resources on the same API, which API Gateway prefers to
# /{proxy+}; they must be exactly what llmhost.api.serving routes (checked below).
SERVING_ROUTES = {
    ("POST", "/v1/rag"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/collections"),
    ("POST", "/v1/collections"),
    ("GET", "/v1/collections/{name}"),
    ("DELETE", "/v1/collections/{name}"),
    ("POST", "/v1/collections/{name}/documents"),
    # Greedy: an id whose '/' API Gateway decodes spans several segments (issue 8).
    ("DELETE", "/v1/collections/{name}/documents/{doc_id+}"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("DELETE", "/v1/jobs/{job_id}"),
}


def test_every_api_route_requires_iam_signing(template: dict[str, Any]) -> None:
    apis = sam.resources(template, "AWS::Serverless::Api")
    assert list(apis) == ["Api"]
    props = apis["Api"]["Properties"]
    assert props["Auth"]["DefaultAuthorizer"] == "AWS_IAM"
    # API Gateway invokes the function through its resource policy, not caller credentials.
    assert props["Auth"]["InvokeRole"] == "NONE"
    assert "DefinitionBody" not in props and "DefinitionUri" not in props
    assert props["TracingEnabled"] is True
    assert "DestinationArn" in props["AccessLogSetting"]
    # Nothing reachable around the signed API but the API-key streaming URL (checked below).
    assert not sam.resources(template, "AWS::Serverless::HttpApi")
    assert not sam.resources(template, "AWS::Lambda::Url")
    routes = 0
    for name, function in sam.functions(template).items():
        if name != "StreamFunction":
            assert "FunctionUrlConfig" not in function, f"{name} has an unsigned function URL"
        for event in function.get("Events", {}).values():
            assert event["Type"] not in {"HttpApi"}, f"{name}: HTTP API bypasses the REST API"
            if event["Type"] != "Api":
                continue
            routes += 1
            # Without RestApiId SAM would create an implicit API with no authorizer.
            assert event["Properties"]["RestApiId"] == {"Ref": "Api"}
            override = event["Properties"].get("Auth", {}).get("Authorizer", "AWS_IAM")
            assert override == "AWS_IAM", f"{name}: route overrides IAM auth"
            assert "ApiKeyRequired" not in event["Properties"].get("Auth", {}), name
    assert routes == 1 + len(SERVING_ROUTES)


def _served_routes(template: dict[str, Any], only: str | None = None) -> list[tuple[str, str]]:
    return [
        (event["Properties"]["Method"].upper(), event["Properties"]["Path"])
        for name, function in sam.functions(template).items()
        for event in function.get("Events", {}).values()
        if event["Type"] == "Api" and only in {None, name}
    ]


def test_serving_routes_are_exactly_what_the_serving_app_routes(template: dict[str, Any]) -> None:
    from llmhost.api.serving import build_serving_app

    # Given the serving app as functions/serve builds it (its routes need no dependencies)
    app = build_serving_app(lambda: None, lambda: None)  # type: ignore[arg-type,return-value]
    paths = app.get_openapi_schema().paths or {}
    routed = {
        (method.upper(), path)
        for path, item in paths.items()
        for method in ("get", "post", "put", "patch", "delete")
        if getattr(item, method, None) is not None
    }
    # Then the template sends exactly those routes to ServeFunction, and only ApiFunction
    # has the catch-all: a route missing here would land on the deployment API as a 404.
    # (OpenAPI has no greedy parameters: its {doc_id} is the template's {doc_id+}.)
    assert routed == {(method, path.replace("+}", "}")) for method, path in SERVING_ROUTES}
    assert set(_served_routes(template, "ServeFunction")) == SERVING_ROUTES
    assert _served_routes(template, "ApiFunction") == [("ANY", "/{proxy+}")]
    assert sam.functions(template)["ServeFunction"]["Handler"] == "app.handler"


def test_the_local_gateway_routes_to_the_serve_function_as_the_template_does(
    template: dict[str, Any],
) -> None:
    from llmhost_local import gateway

    # The local API Gateway's resource table is the template's ServeFunction routes
    local = {(method, resource) for resource, ms in gateway.SERVE_RESOURCES for method in ms}
    assert local == set(_served_routes(template, "ServeFunction"))
    # And it picks each resource for a path API Gateway would send there
    for method, resource in SERVING_ROUTES:
        path = resource.replace("{name}", "docs").replace("{doc_id+}", "guides/sleep.md")
        path = path.replace("{job_id}", "job-01abc")
        integration = gateway.integration_for(method, path)
        assert (integration.function, integration.resource) == ("serve", resource)
        assert integration.path_parameters == _path_parameters(resource, path)


def _path_parameters(resource: str, path: str) -> dict[str, str] | None:
    pattern = re.sub(r"\\{(\w+)\\\+\\}$", r"(?P<\1>[^/]+(?:/[^/]+)*)", re.escape(resource))
    pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", pattern)
    match = re.fullmatch(pattern, path)
    assert match is not None, f"{path} does not match {resource}"
    return match.groupdict() or None


def test_api_events_route_to_paths_the_template_serves(template: dict[str, Any]) -> None:
    served = _served_routes(template)
    stage = template["Parameters"]["StageName"]["Default"]
    samples = sam.sample_events("api-")
    covered = set()
    serving_covered = set()
    assert samples, "no API sample events"
    for name, event in samples.items():
        method, path = event["httpMethod"], event["path"]
        # The REST proxy event names the template route that matched.
        resource = event["resource"]
        assert event["requestContext"]["resourcePath"] == resource, name
        assert any(p == resource and m in {"ANY", method} for m, p in served), (
            f"{name}: {method} {resource} is not a route of the template"
        )
        assert event["requestContext"]["path"] == f"/{stage}{path}", name
        assert event["requestContext"]["httpMethod"] == method, name
        assert event["requestContext"]["stage"] == stage, name
        # Every route is IAM-signed: the caller is an IAM principal.
        identity = event["requestContext"]["identity"]
        assert identity["userArn"].startswith("arn:aws:"), name
        assert identity["accessKey"] and identity["accountId"], name
        assert event["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256 "), name
        if event["body"] is not None:
            json.loads(event["body"])
            assert event["headers"]["Content-Type"] == "application/json", name
        if resource != "/{proxy+}":
            # An explicit serving resource: API Gateway fills in its {parameters}.
            assert (method, resource) in SERVING_ROUTES, name
            assert event["pathParameters"] == _path_parameters(resource, path), name
            serving_covered.add((method, resource))
            continue
        assert event["pathParameters"] == {"proxy": path.lstrip("/")}, name
        matches = [
            r for (m, pattern), r in ROUTES.items() if m == method and re.fullmatch(pattern, path)
        ]
        assert len(matches) == 1, f"{name}: {method} {path} is not an llmhost route"
        covered.add(matches[0])
    assert covered == set(ROUTES.values()), (
        f"routes without a sample: {set(ROUTES.values()) - covered}"
    )
    assert serving_covered == SERVING_ROUTES, (
        f"serving routes without a sample: {SERVING_ROUTES - serving_covered}"
    )


class _WordEmbedder:
    """Whitespace tokens and hashed unit vectors: enough to run real ingestion offline."""

    dimension = 8
    max_tokens = 256

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]

    def count_tokens(self, text: str) -> int:
        return len(self.token_spans(text))

    def embed(self, texts: Any) -> Any:
        import numpy as np

        rows = [
            np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], dtype=np.uint8) + 1.0
            for text in texts
        ]
        matrix = np.asarray(rows, dtype=np.float32)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_serving_sample_bodies_match_the_request_models() -> None:
    from llmhost.api.serving import CreateCollection, DocumentsBody
    from llmhost.serving.requests import ChatCompletionRequest, RagRequest

    samples = sam.sample_events("api-")
    rag = RagRequest.model_validate(json.loads(samples["api-rag.json"]["body"]))
    assert rag.collection == "docs" and rag.filters
    chat = ChatCompletionRequest.model_validate(
        json.loads(samples["api-chat-completions.json"]["body"])
    )
    # API Gateway buffers: the sample must be the non-streamed form the serve function answers.
    assert not chat.stream and chat.rag is not None and chat.rag.collection == "docs"
    created = CreateCollection.model_validate(
        json.loads(samples["api-collections-create.json"]["body"])
    )
    assert created.name == samples["api-collection-get.json"]["pathParameters"]["name"]
    DocumentsBody.model_validate(json.loads(samples["api-documents-add.json"]["body"]))
    deleted = samples["api-document-delete.json"]["pathParameters"]["doc_id"]
    added = json.loads(samples["api-documents-add.json"]["body"])["documents"]
    assert deleted in {d["id"] for d in added}


def test_documents_sample_lands_all_but_its_one_bad_document() -> None:
    from qdrant_client import QdrantClient

    from llmhost.rag.ingest import ingest_documents
    from llmhost.rag.store import VectorStore

    # Given the sample batch and an in-memory collection
    sample = json.loads((sam.EVENTS / "api-documents-add.json").read_text())
    documents = json.loads(sample["body"])["documents"]
    embedder = _WordEmbedder()
    store = VectorStore(QdrantClient(":memory:"))
    store.create_collection("docs", embedder.dimension)
    # When it is ingested through the real path
    report = ingest_documents("docs", documents, embedder, store)  # type: ignore[arg-type]
    # Then exactly one document is reported, by field, and the rest land
    assert [r.field for r in report.rejected] == ["documents[1].text"]
    assert {i.id for i in report.indexed} == {d["id"] for d in documents} - {"draft-notes"}


def test_api_sample_bodies_match_the_spec_model() -> None:
    from llmhost.errors import SpecInvalid
    from llmhost.specs import DeploymentPatch, parse_spec

    samples = sam.sample_events("api-")
    for name in ("api-create-deployment.json", "api-plan.json"):
        spec = parse_spec(json.loads(samples[name]["body"]))
        assert spec.name == "llama3-8b"
    DeploymentPatch.model_validate(json.loads(samples["api-patch-deployment.json"]["body"]))
    with pytest.raises(SpecInvalid) as caught:
        parse_spec(json.loads(samples["api-create-deployment-invalid.json"]["body"]))
    assert [i.field for i in caught.value.issues] == ["scaling.min_capacity"]


def test_function_url_sample_is_a_request_the_stream_server_accepts() -> None:
    from llmhost.serving.auth import KEY_PREFIX, ApiKeyAuth, hash_key
    from llmhost.serving.requests import ChatCompletionRequest

    event = json.loads((sam.EVENTS / "function-url-chat-stream.json").read_text())
    # A function URL sends payload format 2.0; with AuthType NONE the caller is anonymous.
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    context = event["requestContext"]
    assert context["accountId"] == "anonymous" and "authorizer" not in context
    assert context["domainName"] == f"{context['apiId']}.lambda-url.us-east-1.on.aws"
    assert event["headers"]["host"] == context["domainName"]
    assert (context["http"]["method"], context["http"]["path"], event["rawPath"]) == (
        "POST",
        "/v1/chat/completions",
        "/v1/chat/completions",
    )
    assert int(event["headers"]["content-length"]) == len(event["body"].encode())
    request = ChatCompletionRequest.model_validate(json.loads(event["body"]))
    assert request.stream
    # The bearer key is in the minted format and authenticates against its hash.
    key = event["headers"]["authorization"].removeprefix("Bearer ")
    assert key.startswith(KEY_PREFIX)
    principal = ApiKeyAuth(lambda: {"sample": hash_key(key)}).authenticate(
        event["headers"]["authorization"]
    )
    assert principal.key_name == "sample"


def test_the_stream_url_has_a_concurrency_cap_and_per_key_rates_that_can_be_turned_off(
    template: dict[str, Any],
) -> None:
    from llmhost.serving.ratelimit import RateLimits

    params = template["Parameters"]
    stream = sam.functions(template)["StreamFunction"]
    # Reserved concurrency is a parameter; its 0 means "none" (AWS's 0 throttles everything,
    # so the property is left out rather than set to 0).
    reserved = params["StreamReservedConcurrency"]
    assert reserved["Type"] == "Number" and reserved["MinValue"] == 0 and reserved["Default"] > 0
    assert stream["ReservedConcurrentExecutions"] == {
        "Fn::If": [
            "HasStreamReservedConcurrency",
            {"Ref": "StreamReservedConcurrency"},
            {"Ref": "AWS::NoValue"},
        ]
    }
    assert template["Conditions"]["HasStreamReservedConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "StreamReservedConcurrency"}, "0"]}]
    }
    # Per-key limits: the server reads the parameters' defaults as valid limits, 0 is off
    variables = stream["Environment"]["Variables"]
    env = {
        key: str(params[variables[key]["Ref"]]["Default"])
        for key in ("API_KEY_REQUESTS_PER_MINUTE", "API_KEY_BURST")
    }
    limits = RateLimits.from_env(env)
    assert limits.requests_per_minute > 0 and limits.burst >= 1
    assert params["StreamRequestsPerMinutePerKey"]["MinValue"] == 0
    assert RateLimits.from_env({**env, "API_KEY_REQUESTS_PER_MINUTE": "0"}).requests_per_minute == 0
