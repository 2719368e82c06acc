"""The one way llmhost builds AWS clients: lazily, once per process, with explicit limits.

Nothing here runs at import. ``client("sagemaker")`` creates the client on first use and
reuses it afterwards (Lambda keeps the process warm between invocations). Timeouts and
retries are set explicitly, never left to SDK defaults. ``LLMHOST_AWS_ENDPOINT_URL`` points
every client at an emulator (the local runner's moto server), and
``LLMHOST_AWS_ENDPOINT_URL_<SERVICE>`` one service (``..._SAGEMAKER_RUNTIME``);
``add_customizer`` lets the local runner and the tests attach the SageMaker stand-in to the
clients that need it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_clients: dict[tuple[str, float, float, int], Any] = {}
_session: Any = None
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
    """Forget every client and customizer (tests and the local runner start clean)."""
    global _session
    with _lock:
        _clients.clear()
        _customizers.clear()
        _session = None


def refresh() -> None:
    """Build every client again, from a new session, on its next use (after a SnapStart
    restore: ``llmhost.snapstart``). The new session resolves credentials afresh and the new
    clients open their own connections; customizers stay, and so do the service models the
    old session already read from disk (reading them again is most of a client's cost)."""
    global _session
    with _lock:
        loader = _session._session.get_component("data_loader") if _session is not None else None
        for built in _clients.values():
            built.close()  # its connection pool: sockets a snapshot may have captured
        _clients.clear()
        _session = _new_session(loader)


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
