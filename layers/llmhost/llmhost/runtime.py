"""Per-function settings (validated from the environment at first use) and wiring.

Handlers ask for their dependencies here; nothing is read or built at import time. Tests
and the local runner replace the defaults with ``override``.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from llmhost import aws

if TYPE_CHECKING:
    from llmhost.lifecycle.reconciler import Reconciler
    from llmhost.lifecycle.registry import Registry


class SettingsError(RuntimeError):
    """The function's environment is incomplete: a deployment problem, not a user error."""


class ApiSettings(BaseModel):
    registry_table_name: str = Field(min_length=3)


class ReconcileSettings(BaseModel):
    registry_table_name: str = Field(min_length=3)
    sagemaker_execution_role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    history_limit: int = Field(default=50, ge=5, le=500)


def _from_env(model: type[BaseModel]) -> Any:
    values = {
        name: os.environ[name.upper()] for name in model.model_fields if name.upper() in os.environ
    }
    try:
        return model.model_validate(values)
    except ValidationError as error:
        missing = ", ".join(".".join(map(str, e["loc"])).upper() for e in error.errors())
        raise SettingsError(f"the function's environment is invalid: {missing}") from None


_overrides: dict[str, Any] = {}


def override(**deps: Any) -> None:
    """Replace dependencies (``registry=...``, ``reconciler=...``) until ``reset()``."""
    _overrides.update(deps)


def reset() -> None:
    _overrides.clear()
    for cached in (_registry, _reconciler, _serving_service, _embedder, _store):
        cached.cache_clear()


@cache
def _registry() -> Registry:
    from llmhost.lifecycle.registry import Registry

    settings: ApiSettings = _from_env(ApiSettings)
    return Registry(aws.client("dynamodb"), settings.registry_table_name)


def registry() -> Registry:
    return _overrides.get("registry") or _registry()


@cache
def _reconciler() -> Reconciler:
    from llmhost.lifecycle.applier import SageMakerApplier
    from llmhost.lifecycle.observer import SageMakerObserver
    from llmhost.lifecycle.reconciler import Reconciler, resolve_desired

    settings: ReconcileSettings = _from_env(ReconcileSettings)
    region = aws.region()
    role = settings.sagemaker_execution_role_arn
    sagemaker = aws.client("sagemaker")
    return Reconciler(
        registry=registry(),
        observer=SageMakerObserver(
            sagemaker, aws.lazy("application-autoscaling"), aws.lazy("cloudwatch")
        ),
        applier=SageMakerApplier(
            sagemaker,
            aws.lazy("application-autoscaling"),
            aws.lazy("cloudwatch"),
            role_arn=role,
            read_secret=read_secret,
        ),
        resolve=lambda spec: resolve_desired(spec, region, role),
        history_limit=settings.history_limit,
    )


def reconciler() -> Reconciler:
    return _overrides.get("reconciler") or _reconciler()


def read_secret(arn: str) -> str:
    """The string value of a Secrets Manager secret. Raises SageMakerRejected if unreadable."""
    from botocore.exceptions import ClientError

    from llmhost.errors import SageMakerRejected

    try:
        return aws.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise SageMakerRejected(
            f"cannot read the token secret {arn} ({code}); check that it exists and that "
            "its name starts with the stack's SecretsPrefix"
        ) from None


class ServingSettings(BaseModel):
    registry_table_name: str = Field(min_length=3)
    # API Gateway cuts requests at 29 s: two attempts of 12 s fit; the stream function,
    # behind a function URL, may wait longer between tokens.
    serving_timeout_s: float = Field(default=12.0, gt=0, le=900)
    serving_max_attempts: int = Field(default=2, ge=1, le=5)
    stream_url: str | None = None
    api_keys_secret_arn: str | None = None


def serving_settings() -> ServingSettings:
    return _overrides.get("serving_settings") or _from_env(ServingSettings)


@cache
def _serving_service() -> Any:
    from llmhost.serving.invoke import ModelInvoker
    from llmhost.serving.routing import ModelDirectory
    from llmhost.serving.service import ServingService

    settings = serving_settings()
    invoker = cache(
        lambda: ModelInvoker.create(
            timeout_s=settings.serving_timeout_s, max_attempts=settings.serving_max_attempts
        )
    )
    return ServingService(ModelDirectory(registry), invoker, embedder, store)


def serving_service() -> Any:
    """The RAG/chat service (its embedder, store and clients are built on first use)."""
    return _overrides.get("serving_service") or _serving_service()


@cache
def _embedder() -> Any:
    from llmhost.rag.embeddings import embedder_from_env

    return embedder_from_env()


def embedder() -> Any:
    return _overrides.get("embedder") or _embedder()


@cache
def _store() -> Any:
    from llmhost.rag.store import store_from_env

    return store_from_env()


def store() -> Any:
    return _overrides.get("store") or _store()


def warm_rag() -> None:
    """Build the embedder and the vector store together, in two threads.

    Loading the ONNX session mostly runs in C++ without the GIL, while importing
    qdrant-client is Python work: overlapping them takes about a third off a serving
    function's first RAG request. Safe to call more than once.
    """
    import threading

    errors: list[BaseException] = []

    def build_store() -> None:
        try:
            store()
        except BaseException as error:  # re-raised below, in the caller's thread
            errors.append(error)

    worker = threading.Thread(target=build_store, name="warm-store")
    worker.start()
    loaded = embedder()
    load = getattr(loaded, "load", None)
    if load is not None:
        load()
    worker.join()
    if errors:
        raise errors[0]
