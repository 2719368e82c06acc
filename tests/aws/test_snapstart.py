"""SnapStart hooks (llmhost.snapstart): what is built before the snapshot, and what a restored
environment gets of its own. The runtime's side is played as Lambda's Python runtime plays it:
the hooks registered with snapshot_restore_py, before-snapshot ones in reverse order of
registration, after-restore ones in order."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import snapshot_restore_py
from starlette.testclient import TestClient

from llmhost import aws, runtime, snapstart
from llmhost.serving import lambda_http
from llmhost_local.cloud import load_handler


@pytest.fixture
def hooks() -> Iterator[tuple[list[Any], list[Any]]]:
    """The runtime's registries, emptied for the test and restored after it."""
    before = snapshot_restore_py.get_before_snapshot()
    after = snapshot_restore_py.get_after_restore()
    saved = list(before), list(after)
    before.clear()
    after.clear()
    yield before, after
    before[:] = saved[0]
    after[:] = saved[1]


def _run(registry: list[Any], reverse: bool = False) -> None:
    for func, args, kwargs in reversed(registry) if reverse else registry:
        func(*args, **kwargs)


@pytest.fixture
def rag_env(moto_aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.delenv("QDRANT_URL", raising=False)


def _calls() -> list[str]:
    """Every AWS API call llmhost's clients make from now on (appended as they happen)."""
    made: list[str] = []
    aws.add_customizer(
        lambda service, client: client.meta.events.register(
            "before-call", lambda model, **_: made.append(f"{service}:{model.name}")
        )
    )
    return made


@pytest.mark.parametrize(
    ("function", "warm"), [("serve", snapstart.warm_serving), ("ingest", snapstart.warm_ingest)]
)
def test_the_handler_module_registers_both_hooks(
    hooks: tuple[list[Any], list[Any]], rag_env: None, function: str, warm: Any
) -> None:
    # Lambda runs only the hooks that the handler module (or what it imports) registers.
    load_handler(function, f"llmhost-{function}")
    before, after = hooks
    assert before == [(snapstart.before_snapshot, (warm,), {})]
    assert after == [(snapstart.after_restore, (warm,), {})]


def test_before_snapshot_builds_the_rag_stack_and_reads_nothing(
    hooks: tuple[list[Any], list[Any]], rag_env: None
) -> None:
    load_handler("serve", "llmhost-serve")
    calls = _calls()
    _run(hooks[0], reverse=True)
    # Built: the clients a RAG request uses, the ONNX session (run once), the Qdrant client
    built = {key[0] for key in aws._clients}
    assert {"dynamodb", "sagemaker-runtime"} <= built
    assert runtime.embedder()._session is not None
    assert runtime._store.cache_info().currsize == 1
    # ... and no call to AWS: no record, secret or key that a restore could find stale
    assert calls == []


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_with_a_qdrant_server_only_its_key_is_read_and_read_again_after_a_restore(
    hooks: tuple[list[Any], list[Any]], rag_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _calls()
    arn = aws.client("secretsmanager").create_secret(Name="qdrant", SecretString="k")["ARN"]
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")  # no connection at construction
    monkeypatch.setenv("QDRANT_API_KEY_SECRET_ARN", arn)
    load_handler("serve", "llmhost-serve")
    calls.clear()
    _run(hooks[0], reverse=True)
    assert calls == ["secretsmanager:GetSecretValue"]
    store = runtime.store()
    _run(hooks[1])
    assert calls == ["secretsmanager:GetSecretValue"] * 2
    assert runtime.store() is not store


def test_after_restore_gives_the_environment_its_own_clients_credentials_and_randomness(
    hooks: tuple[list[Any], list[Any]], rag_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_handler("serve", "llmhost-serve")
    _run(hooks[0], reverse=True)
    snapshot_registry = runtime.registry()
    snapshot_client = aws.client("dynamodb")
    embedder, store = runtime.embedder(), runtime.store()
    snapshot_random = random.getstate()
    # The restored environment has credentials of its own
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "restored")

    def restore() -> float:
        random.setstate(snapshot_random)
        _run(hooks[1])
        return random.random()

    first, second = restore(), restore()
    # Two environments restored from one snapshot draw different random numbers
    assert first != second
    # New clients, from a session that resolved the new credentials
    client = aws.client("dynamodb")
    assert client is not snapshot_client
    assert client._request_signer._credentials.access_key == "restored"
    registry = runtime.registry()
    assert registry is not snapshot_registry
    assert registry.deployments() == []  # and they work
    # Kept: the ONNX session (what the snapshot is for) and embedded Qdrant (no connection)
    assert runtime.embedder() is embedder
    assert runtime.store() is store


def test_a_qdrant_server_client_is_closed_and_built_again(
    rag_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Constructing the client opens no connection (no version handshake)
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")
    store = runtime.store()
    closed: list[bool] = []
    monkeypatch.setattr(store, "close", lambda: closed.append(True))
    runtime.refresh()
    assert closed == [True]
    assert runtime.store() is not store


def test_an_endpoint_embedder_is_built_again(
    rag_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SageMaker-hosted embedding model: the embedder holds a sagemaker-runtime client
    monkeypatch.setenv("EMBEDDING_BACKEND", "sagemaker")
    monkeypatch.setenv("EMBEDDING_ENDPOINT_NAME", "embeddings")
    embedder = runtime.embedder()
    assert getattr(embedder, "load", None) is None
    aws.refresh()
    runtime.refresh()
    assert runtime.embedder() is not embedder


def test_refresh_keeps_customizers(moto_aws: None) -> None:
    # The local runner's stand-ins attach themselves to every client built
    seen: list[str] = []
    aws.add_customizer(lambda service, client: seen.append(service))
    aws.client("s3")
    aws.refresh()
    aws.client("s3")
    assert seen == ["s3", "s3"]


def test_stream_server_serves_the_adapter_hooks_only_where_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(snapstart, "before_snapshot", lambda warm: ran.append("before"))
    monkeypatch.setattr(snapstart, "after_restore", lambda warm: ran.append("after"))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    env = {
        lambda_http.BEFORE_SNAPSHOT_PATH: "/_llmhost/snapstart/before",
        lambda_http.AFTER_RESTORE_PATH: "/_llmhost/snapstart/after",
    }
    client = TestClient(lambda_http.SnapStartRoutes.from_env(app, env))
    # The adapter's empty POSTs run the hooks; a 2xx tells it the phase succeeded
    assert client.post("/_llmhost/snapstart/before").status_code == 204
    assert client.post("/_llmhost/snapstart/after").status_code == 204
    assert ran == ["before", "after"]
    # Anything else is the app's
    assert client.get("/_llmhost/snapstart/before").text == "/_llmhost/snapstart/before"
    assert client.post("/v1/rag").text == "/v1/rag"
    # Without the adapter's variables there are no hook routes
    bare = TestClient(lambda_http.SnapStartRoutes.from_env(app, {}))
    assert bare.post("/_llmhost/snapstart/after").text == "/_llmhost/snapstart/after"
    assert ran == ["before", "after"]


def test_a_failing_hook_fails_the_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(warm: Any) -> None:
        raise RuntimeError("no model")

    monkeypatch.setattr(snapstart, "before_snapshot", broken)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not the app's request")

    env = {lambda_http.BEFORE_SNAPSHOT_PATH: "/_llmhost/snapstart/before"}
    routes = lambda_http.SnapStartRoutes.from_env(app, env)
    client = TestClient(routes, raise_server_exceptions=False)
    assert client.post("/_llmhost/snapstart/before").status_code == 500


def test_the_secrets_provider_is_built_again_on_the_new_client(moto_aws: None) -> None:
    # Powertools Parameters reads secrets through llmhost.aws's own Secrets Manager client
    provider = aws.secrets_provider()
    assert provider.client is aws.client("secretsmanager")  # type: ignore[attr-defined]
    aws.refresh()
    # a restored environment reads with its own client, not the snapshot's
    assert aws.secrets_provider() is not provider
    assert aws.secrets_provider().client is aws.client("secretsmanager")  # type: ignore[attr-defined]
