"""Shared fixtures: closed sockets, moto for AWS, the SageMaker stand-in on a manual clock."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
TABLE = "llmhost-registry-test"
ROLE_ARN = "arn:aws:iam::123456789012:role/llmhost-sagemaker-execution"
STACK = "llmhost-test"

_real_connect = socket.socket.connect

# Every local stack a test starts answers with the extractive engine, whatever the machine has
# installed (`make run` defaults to the real model when it is there): `make test` must not
# depend on it. tests/llm (`make test-llm`) asks for the real model by name.
os.environ["LLMHOST_ENGINE"] = "extractive"


def _import_fuzzing_libraries() -> None:
    """Import hypothesis and schemathesis, with what they load lazily, before any test runs.

    Both are pytest plugins, so pytest rewrites (compiles from the AST) every module of theirs
    as it is first imported, and without a bytecode cache (PYTHONDONTWRITEBYTECODE=1) it does
    so then. On CPython 3.11 such a compile inside a running hypothesis test has failed now
    and then with "SystemError: AST constructor recursion depth mismatch" (CPython 3.11's AST
    conversion checks a depth counter that can go wrong: python/cpython#106905). Imported
    here, they are compiled once at session start, outside any test, for every test module.
    """
    import contextlib
    import importlib
    import pkgutil

    import hypothesis  # noqa: F401
    import schemathesis  # noqa: F401

    packages = ("schemathesis.specs.openapi", "schemathesis.generation", "hypothesis.strategies")
    for package in packages:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            # optional integrations (django, flask...) may not be installed
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)


@pytest.hookimpl(trylast=True)  # after hypothesis's own: its start-up is then over
def pytest_sessionstart(session: pytest.Session) -> None:
    _import_fuzzing_libraries()


def _loopback_only(self: socket.socket, address: Any) -> Any:
    host = address[0] if isinstance(address, tuple) else address
    if (
        isinstance(host, str)
        and host not in {"127.0.0.1", "localhost", "::1"}
        and not host.startswith("/")
    ):
        raise ConnectionRefusedError(f"tests run offline; refused a connection to {host}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def offline_aws(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: no outside network, fake credentials, a clean client cache.

    End-to-end tests share one running local stack per module, which owns its environment.
    """
    from llmhost import aws, runtime

    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    if request.node.get_closest_marker("e2e"):
        yield
        return
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "llmhost",
        "POWERTOOLS_SERVICE_NAME": "llmhost-test",
        "REGISTRY_TABLE_NAME": TABLE,
        "SAGEMAKER_EXECUTION_ROLE_ARN": ROLE_ARN,
        "LLMHOST_STACK_NAME": STACK,
        "SECRETS_PREFIX": "llmhost/",
        # Where async endpoints put results and announce them (the stack's bucket, topics).
        "JOBS_BUCKET": "llmhost-jobs",
        "ASYNC_SUCCESS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:llmhost-async-success",
        "ASYNC_ERROR_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:llmhost-async-error",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LLMHOST_AWS_ENDPOINT_URL", raising=False)
    aws.reset()
    runtime.reset()
    yield
    aws.reset()
    runtime.reset()


_DYNAMODB_WRITE_LOCK = threading.RLock()


def _atomic(write: Any) -> Any:
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _DYNAMODB_WRITE_LOCK:
            return write(*args, **kwargs)

    return locked


@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto for every AWS service, with the registry table created.

    DynamoDB checks a write's condition and applies it atomically; moto checks, then
    writes, unlocked, so two threads can both pass one condition. Its writes are
    serialised here, so the concurrency tests test llmhost and not moto's race.
    """
    from moto import mock_aws
    from moto.dynamodb.models import DynamoDBBackend

    from llmhost import aws

    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        monkeypatch.setattr(DynamoDBBackend, name, _atomic(getattr(DynamoDBBackend, name)))
    with mock_aws():
        aws.client("dynamodb").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "name", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "name", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def attach_standins(fake: Any, clock: Any) -> Any:
    """Route llmhost's sagemaker clients, and the autoscaling requests moto cannot serve, to
    the stand-ins. Returns the Application Auto Scaling stand-in."""
    from llmhost import aws
    from llmhost_local.standin import AutoScalingStandIn

    scaling = AutoScalingStandIn(sagemaker=fake, clock=clock, region="us-east-1")

    def customize(service: str, client: Any) -> None:
        if service == "sagemaker":
            fake.attach(client)
        elif service == "application-autoscaling":
            scaling.attach(client)

    aws.add_customizer(customize)
    return scaling


@pytest.fixture
def standin(moto_aws: None, clock: ManualClock) -> Any:
    """The SageMaker stand-in attached to every sagemaker client llmhost builds (and the
    Application Auto Scaling stand-in to the autoscaling ones)."""
    from llmhost_local.standin import SageMakerStandIn

    fake = SageMakerStandIn(clock=clock, region="us-east-1")
    # Kept on the SageMaker stand-in for the tests that look at scalable targets.
    fake.autoscaling = attach_standins(fake, clock)  # type: ignore[attr-defined]
    return fake


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The real all-MiniLM-L6-v2 artifact, loaded once for the whole session."""
    import os

    from llmhost.rag.embeddings.artifact import REPO_MODEL_DIR
    from llmhost.rag.embeddings.onnx import OnnxEmbedder

    model_dir = Path(os.environ.get("EMBEDDING_MODEL_DIR") or REPO_MODEL_DIR)
    if not (model_dir / "model.onnx").is_file():
        pytest.fail(f"no embedding model at {model_dir}: run `make embedding-model` first")
    loaded = OnnxEmbedder(model_dir)
    loaded.load()
    return loaded


class StreamGate:
    """A local engine's pause before each streamed token (its ``sleep``), made a handshake with
    the client: token k is produced only once the client has received token k-2 (or, after a
    generous wait that only a stalled stream needs, anyway, recorded in ``stalled``).

    Streaming is then checked by causality, not by the clock: every event must reach the client
    before the engine has produced two more, however slow or loaded the machine. A server that
    held events back (buffered them, or sent them all at the end) stalls the engine.
    """

    WAIT_S = 30

    def __init__(self) -> None:
        self.produced = 0
        self.stalled: list[int] = []
        self._received = 0
        self._changed = threading.Condition()

    def before_token(self, _seconds: float) -> None:
        token = self.produced
        with self._changed:
            if not self._changed.wait_for(
                lambda: self._received >= token - 1, 0 if self.stalled else self.WAIT_S
            ):
                self.stalled.append(token)
            self.produced += 1

    def received(self) -> None:
        with self._changed:
            self._received += 1
            self._changed.notify_all()


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


ApiCall = Callable[..., tuple[int, dict[str, Any]]]


def api_function() -> ApiCall:
    """One API function instance (its own module, as in its own Lambda container), called
    with the proxy events API Gateway sends: ``call(method, path, body=None)``."""
    from llmhost_local.cloud import load_handler
    from llmhost_local.events import LambdaContext, api_gateway_event

    module = load_handler("api", "llmhost-api")

    def call(method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        raw = json.dumps(body).encode() if body is not None else b""
        event = api_gateway_event(method, path, {"Content-Type": "application/json"}, raw, "tester")
        response = module.handler(event, LambdaContext("llmhost-api"))
        return response["statusCode"], json.loads(response["body"])

    return call


@dataclass
class RunningStack:
    """``make run`` in this process: the emulated cloud and the URLs of its servers."""

    cloud: Any  # llmhost_local.cloud.LocalCloud
    api: str  # the control API (SigV4), as API Gateway serves it
    openai: str  # the OpenAI-compatible server's base URL, without /v1 ("" when not started)


@contextlib.contextmanager
def local_stack(
    qdrant_path: Path,
    *,
    log: Callable[[str], None] | None = None,
    openai: bool = True,
    **options: Any,
) -> Iterator[RunningStack]:
    """Start the local stack on free ports (``options`` go to LocalCloud), and on exit stop
    it and give the process back its environment and fresh client caches."""
    from llmhost import aws, runtime
    from llmhost_local import runner
    from llmhost_local.cloud import LocalCloud

    saved = dict(os.environ)
    os.environ["QDRANT_PATH"] = str(qdrant_path)
    cloud = LocalCloud(moto_port=0, **options)
    cloud.log = log or (lambda line: None)
    cloud.start()
    servers: list[Any] = []
    try:
        servers.append(runner.serve(0, cloud))
        if openai:
            servers.append(cloud.start_openai_server(0))
        yield RunningStack(
            cloud,
            runner.url_of(servers[0]),
            runner.url_of(servers[1]) if openai else "",
        )
    finally:
        for server in servers:
            server.shutdown()
        cloud.stop()
        os.environ.clear()
        os.environ.update(saved)
        aws.reset()
        runtime.reset()
