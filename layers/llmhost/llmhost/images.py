"""Container image URIs per engine, version and region, read from a table built offline.

``layers/tools/resolve_image_uris.py`` asks the SageMaker Python SDK for the URIs at
build time (``make images``) and writes ``llmhost/data/image_uris.json``; this module only
reads that file, lazily and once per process, so no Lambda imports the 1 GB SDK.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Literal

from llmhost.errors import LlmhostError

Processor = Literal["gpu", "cpu"]

# Keys of the JSON file that are metadata, not engines.
_META_KEYS = frozenset({"defaults", "frameworks", "generated_by", "sdk_version"})


class ImageNotAvailable(LlmhostError):
    """No known container image for an engine, version and region combination."""

    code = "image_not_available"
    status = 422


@cache
def _table() -> dict[str, Any]:
    text = resources.files("llmhost").joinpath("data/image_uris.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def _key(engine: str, processor: Processor | None) -> str:
    # The HF inference toolkit has separate CPU and GPU builds; other engines are GPU only.
    if engine == "hf-inference" and processor == "gpu":
        return "hf-inference-gpu"
    return engine


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def engines() -> list[str]:
    """Engine names with images in the table (including 'hf-inference-gpu')."""
    return sorted(k for k in _table() if k not in _META_KEYS)


def known_versions(engine: str, processor: Processor | None = None) -> list[str]:
    """Versions the table has for an engine, oldest first; [] for an unknown engine."""
    return sorted(_table().get(_key(engine, processor), {}), key=_version_key)


def default_version(engine: str, processor: Processor | None = None) -> str:
    """The version used when a spec leaves engine.version unset (the newest shipped)."""
    key = _key(engine, processor)
    default = _table()["defaults"].get(key)
    if default is None:
        raise ImageNotAvailable(
            f"llmhost ships no container images for engine '{engine}'; known engines: "
            f"{', '.join(engines())}"
        )
    return str(default)


def resolve_version(engine: str, version: str | None, processor: Processor | None = None) -> str:
    """The full version a spec's engine.version means: exact, or the newest 'x.y.*' for 'x.y'.

    Raises ImageNotAvailable naming the known versions when nothing matches.
    """
    if version is None:
        return default_version(engine, processor)
    versions = known_versions(engine, processor)
    if version in versions:
        return version
    matching = [v for v in versions if v.startswith(f"{version}.")]
    if matching:
        return matching[-1]
    if not versions:
        default_version(engine, processor)  # raises, naming the known engines
    raise ImageNotAvailable(
        f"engine.version '{version}' has no {engine} image in llmhost; use one of "
        f"{', '.join(versions)}, or leave engine.version unset for {versions[-1]} "
        "(newer images: upgrade the SageMaker SDK and run 'make images')"
    )


def image_uri(
    engine: str, version: str | None, region: str, *, processor: Processor | None = None
) -> str:
    """The ECR image URI for an engine at a version (None: the default) in an AWS region.

    ``processor`` matters only for 'hf-inference' (CPU image unless 'gpu'). Raises
    ImageNotAvailable naming the known versions or regions when the table lacks one.
    """
    full = resolve_version(engine, version, processor)
    by_region: dict[str, str] = _table()[_key(engine, processor)][full]
    uri = by_region.get(region)
    if uri is None:
        raise ImageNotAvailable(
            f"no {engine} {full} image is listed for region '{region}'; llmhost has it for "
            f"{', '.join(sorted(by_region))} (add regions with "
            "'layers/tools/resolve_image_uris.py --regions ...' and 'make images')"
        )
    return uri
