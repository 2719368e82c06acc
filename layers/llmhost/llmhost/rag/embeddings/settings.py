"""The embedding part of a function's environment, and the embedder it selects."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from llmhost.rag.embeddings import Embedder, EmbeddingMisconfigured
from llmhost.rag.embeddings.artifact import LAMBDA_MODEL_DIR, REPO_MODEL_DIR
from llmhost.rag.embeddings.onnx import OnnxEmbedder
from llmhost.rag.embeddings.sagemaker import SageMakerEmbedder


class EmbeddingSettings(BaseModel):
    """The embedding part of a function's environment (upper-case variable names)."""

    embedding_backend: Literal["onnx", "sagemaker"] = "onnx"
    embedding_model_dir: Path | None = None
    embedding_endpoint_name: str | None = Field(default=None, min_length=1, max_length=63)
    embedding_inference_component: str | None = Field(default=None, min_length=1)
    embedding_threads: int | None = Field(default=None, ge=1, le=64)
    embedding_dimension: int | None = Field(default=None, ge=1)
    embedding_max_tokens: int | None = Field(default=None, ge=8)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EmbeddingSettings:
        """Read and validate; raises EmbeddingMisconfigured naming the bad variables."""
        env = os.environ if environ is None else environ
        values = {
            name: env[name.upper()]
            for name in cls.model_fields
            if env.get(name.upper(), "").strip()
        }
        try:
            settings = cls.model_validate(values)
        except ValidationError as error:
            bad = "; ".join(
                f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
            )
            raise EmbeddingMisconfigured(f"the embedding settings are invalid: {bad}") from None
        if settings.embedding_backend == "sagemaker" and not settings.embedding_endpoint_name:
            raise EmbeddingMisconfigured(
                "EMBEDDING_BACKEND=sagemaker needs EMBEDDING_ENDPOINT_NAME (the endpoint that "
                "serves the embedding model)"
            )
        return settings

    def model_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """EMBEDDING_MODEL_DIR, else the layer's folder in Lambda, else the checkout's."""
        if self.embedding_model_dir is not None:
            return self.embedding_model_dir
        env = os.environ if environ is None else environ
        if LAMBDA_MODEL_DIR.is_dir() or env.get("AWS_LAMBDA_FUNCTION_NAME"):
            return LAMBDA_MODEL_DIR
        return REPO_MODEL_DIR


def embedder_from_env(
    environ: Mapping[str, str] | None = None, runtime_client: Any = None
) -> Embedder:
    """The embedder the environment selects (call once per process and keep it).

    ``runtime_client`` defaults to llmhost.aws's ``sagemaker-runtime`` client and is only
    used by the SageMaker backend. Raises EmbeddingMisconfigured with the fix.
    """
    settings = EmbeddingSettings.from_env(environ)
    model_dir = settings.model_dir(environ)
    if settings.embedding_backend == "onnx":
        return OnnxEmbedder(model_dir, threads=settings.embedding_threads)
    if runtime_client is None:
        from llmhost import aws

        runtime_client = aws.client("sagemaker-runtime")
    assert settings.embedding_endpoint_name is not None  # checked by from_env
    return SageMakerEmbedder(
        settings.embedding_endpoint_name,
        runtime_client,
        model_dir,
        settings.embedding_inference_component,
        dimension=settings.embedding_dimension,
        max_tokens=settings.embedding_max_tokens,
    )
