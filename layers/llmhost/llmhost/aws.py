"""The one way llmhost builds AWS clients: lazily, once per process, with explicit limits.

Nothing here runs at import. ``client("sagemaker")`` creates the client on first use and
reuses it afterwards (Lambda keeps the process warm between invocations). Timeouts and
retries are set explicitly, never left to SDK defaults. ``LLMHOST_AWS_ENDPOINT_URL`` points
every client at an emulator (the local runner's moto server), and
``LLMHOST_AWS_ENDPOINT_URL_<SERVICE>`` one service (``..._SAGEMAKER_RUNTIME``);
``add_customizer`` lets the local runner and the tests attach the SageMaker stand-in to the
clients that need it. Secrets are read through Powertools Parameters (``secret``), over this
module's own Secrets Manager client, so its limits, endpoint and customizers apply there too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters.base import BaseProvider

_lock = threading.Lock()
_clients: dict[tuple[str, float, float, int], Any] = {}
_session: Any = None
_secrets: BaseProvider | None = None
_customizers: list[Callable[[str, Any], None]] = []

CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 20
MAX_ATTEMPTS = 3
# Connections a client keeps open (botocore's default). A Lambda process runs one invocation
# at a time; the local runner runs many at once in one process, sharing these clients, and
# sets ``LLMHOST_AWS_MAX_POOL_CONNECTIONS`` to how many, so none is opened only to be dropped.
MAX_POOL_CONNECTIONS = 10


def client(
    service: str,
    *,
    read_timeout: float = READ_TIMEOUT_S,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    max_attempts: int = MAX_ATTEMPTS,
) -> Any:
    """The process-wide client for ``service`` with these limits (created on first call).

    ``max_attempts`` counts the first try. Clients are cached per (service, limits).
    """
    key = (service, read_timeout, connect_timeout, max_attempts)
    cached = _clients.get(key)
    if cached is not None:
        return cached
    with _lock:
        if key not in _clients:
            _clients[key] = _build(service, read_timeout, connect_timeout, max_attempts)
        return _clients[key]


def lazy(service: str) -> Callable[[], Any]:
    """A zero-argument function returning the client, for code that may never need it."""
    return lambda: client(service)


def add_customizer(customize: Callable[[str, Any], None]) -> None:
    """Run ``customize(service, client)`` on every client built from now on."""
    _customizers.append(customize)


def reset() -> None:
    """Forget every client, customizer and cached secret (tests and the local runner start
    clean)."""
    global _session, _secrets
    with _lock:
        _clients.clear()
        _customizers.clear()
        _session = None
        _secrets = None


def secrets_provider() -> BaseProvider:
    """The process's Powertools Parameters provider for Secrets Manager (created on first
    call), built on ``client("secretsmanager")``; it keeps each value for the ``max_age`` its
    reader asks for."""
    global _secrets
    if _secrets is None:
        from aws_lambda_powertools.utilities.parameters import SecretsProvider

        built = SecretsProvider(boto3_client=client("secretsmanager"))
        with _lock:
            if _secrets is None:
                _secrets = built
    return _secrets


def secret(
    secret_id: str,
    *,
    max_age: int,
    transform: Literal["json"] | None = None,
    force_fetch: bool = False,
    provider: BaseProvider | None = None,
) -> Any:
    """A secret's value, read through Powertools Parameters and kept ``max_age`` seconds
    (``force_fetch`` reads it now). ``transform="json"`` parses it (ValueError when it is not
    JSON). A read that fails raises botocore's own error, as any AWS call here does (Parameters
    wraps it in GetParameterError), so callers type it like the rest of their AWS errors.
    ``provider`` replaces the process's (``secrets_provider()``), for tests."""
    from aws_lambda_powertools.utilities.parameters.exceptions import (
        GetParameterError,
        TransformParameterError,
    )
    from botocore.exceptions import BotoCoreError, ClientError

    source = provider if provider is not None else secrets_provider()
    try:
        return source.get(secret_id, max_age=max_age, transform=transform, force_fetch=force_fetch)
    except GetParameterError as error:
        cause = error.__context__
        if isinstance(cause, ClientError | BotoCoreError):
            raise cause from None
        raise
    except TransformParameterError as error:
        raise ValueError(f"the secret {secret_id} is not JSON: {error}") from None


def refresh() -> None:
    """Build every client again, from a new session, on its next use (after a SnapStart
    restore: ``llmhost.snapstart``). The new session resolves credentials afresh and the new
    clients open their own connections; customizers stay, and so do the service models the
    old session already read from disk (reading them again is most of a client's cost). The
    secrets provider goes too: it holds the old Secrets Manager client."""
    global _session, _secrets
    with _lock:
        loader = _session._session.get_component("data_loader") if _session is not None else None
        for built in _clients.values():
            built.close()  # its connection pool: sockets a snapshot may have captured
        _clients.clear()
        _session = _new_session(loader)
        _secrets = None


def max_pool_connections() -> int:
    """Connections each client keeps open: ``LLMHOST_AWS_MAX_POOL_CONNECTIONS``, else 10."""
    return int(os.environ.get("LLMHOST_AWS_MAX_POOL_CONNECTIONS") or MAX_POOL_CONNECTIONS)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _new_session(loader: Any = None) -> Any:
    import boto3
    import botocore.session

    core = botocore.session.Session()
    if loader is not None:
        core.register_component("data_loader", loader)
    return boto3.session.Session(botocore_session=core)


def credentials() -> Any:
    """The process's AWS credentials as they are now (frozen: access key, secret, token), for
    signing a request that is no SDK call (CloudWatch's OTLP endpoint). Raises RuntimeError
    when the credential chain finds none."""
    global _session
    if _session is None:
        _session = _new_session()
    found = _session.get_credentials()
    if found is None:
        raise RuntimeError("no AWS credentials: the function's role or the environment gives none")
    return found.get_frozen_credentials()


def service_model(service: str) -> Any:
    """botocore's model of ``service`` (its shapes and enums), from the shared session."""
    global _session
    if _session is None:
        _session = _new_session()
    return _session._session.get_service_model(service)


def _build(service: str, read_timeout: float, connect_timeout: float, max_attempts: int) -> Any:
    global _session
    from botocore.config import Config

    if _session is None:
        _session = _new_session()
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        max_pool_connections=max_pool_connections(),
    )
    # A per-service override first (the local runner's SageMaker runtime front), then one for
    # every service (its moto server).
    service_key = "LLMHOST_AWS_ENDPOINT_URL_" + service.upper().replace("-", "_")
    endpoint = os.environ.get(service_key) or os.environ.get("LLMHOST_AWS_ENDPOINT_URL") or None
    built = _session.client(service, region_name=region(), config=config, endpoint_url=endpoint)
    for customize in _customizers:
        customize(service, built)
    return built
