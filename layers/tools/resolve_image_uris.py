"""Resolve the container image URIs llmhost deploys and write them to a JSON file (build time).

Run with the Python of a virtualenv that has the SageMaker Python SDK v3 installed::

    /tmp/smsdk/bin/python layers/tools/resolve_image_uris.py

The SDK is about 1 GB installed and takes over a second to import, so no Lambda imports
it: this script asks it once, at build time, and ``llmhost.images`` reads the JSON it
writes (``layers/llmhost/llmhost/data/image_uris.json``). Nothing here calls AWS: the
SDK resolves URIs from tables it ships with.

Output shape::

    {"tgi": {"3.3.6": {"us-east-1": "<uri>", ...}, ...}, ..., "defaults": {"tgi": "3.3.6"},
     "frameworks": {"tgi": "huggingface-llm", ...}, "generated_by": ..., "sdk_version": ...}

Re-run it after upgrading the SDK to pick up new container releases; the output is
deterministic (sorted, no timestamps) so the diff shows exactly what changed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

# The regions llmhost supports out of the box; URIs for others can be added by passing
# --regions. Every one of these hosts the AWS Deep Learning Containers registry.
DEFAULT_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-south-1",
    "sa-east-1",
)

# How many of the newest versions the SDK knows to keep per engine. Older ones stay
# reachable by pinning engine.version only if they are listed here, so keep a few.
VERSIONS_PER_ENGINE = 4

# llmhost engine name -> SageMaker SDK framework name (image_uris.retrieve's first argument).
FRAMEWORKS = {
    "tgi": "huggingface-llm",  # Hugging Face TGI DLC
    "vllm": "vllm",  # AWS vLLM DLC for SageMaker (configured with SM_VLLM_* env vars)
    "lmi": "djl-lmi",  # Large Model Inference (DJL Serving, vLLM/lmi-dist backends)
    "hf-inference": "huggingface",  # HF inference toolkit on PyTorch, CPU image
    "hf-inference-gpu": "huggingface",  # the same toolkit, GPU image
}

# The HF inference toolkit image is keyed by transformers version and needs an instance
# type only to pick the CPU or GPU build.
_PROCESSOR_INSTANCE = {"hf-inference": "ml.m5.xlarge", "hf-inference-gpu": "ml.g5.xlarge"}

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1] / "llmhost" / "llmhost" / "data" / "image_uris.json"
)

log = logging.getLogger("resolve_image_uris")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _full_versions(image_uris, framework: str) -> list[str]:
    """Full x.y.z versions (no aliases such as '3.3' or 'latest'), oldest first."""
    versions = image_uris.list_versions(framework, "inference")
    full = [v for v in versions if v.count(".") == 2 and all(p.isdigit() for p in v.split("."))]
    return sorted(set(full), key=_version_key)


def _retriever(image_uris, engine: str) -> Callable[[str, str], str]:
    framework = FRAMEWORKS[engine]
    if framework != "huggingface":
        return lambda version, region: image_uris.retrieve(framework, region, version=version)

    config = image_uris.config_for_framework(framework)["inference"]["versions"]

    def retrieve(version: str, region: str) -> str:
        # Each transformers version is built on one PyTorch version; the newest wins.
        bases = sorted(k for k in config[version] if k.startswith("pytorch"))
        return image_uris.retrieve(
            framework,
            region,
            version=version,
            base_framework_version=bases[-1],
            instance_type=_PROCESSOR_INSTANCE[engine],
            image_scope="inference",
        )

    return retrieve


def resolve(regions: tuple[str, ...], per_engine: int) -> dict:
    """Ask the SDK for every (engine, version, region) URI; skip combinations it lacks."""
    from sagemaker.core import image_uris  # slow import: only when actually resolving

    table: dict = {}
    defaults: dict[str, str] = {}
    for engine, framework in FRAMEWORKS.items():
        retrieve = _retriever(image_uris, engine)
        versions = _full_versions(image_uris, framework)[-per_engine:]
        by_version: dict[str, dict[str, str]] = {}
        for version in versions:
            uris: dict[str, str] = {}
            for region in regions:
                try:
                    uris[region] = retrieve(version, region)
                except ValueError as error:  # the SDK's "not available in region" signal
                    log.warning("%s %s has no image in %s: %s", engine, version, region, error)
            if uris:
                by_version[version] = dict(sorted(uris.items()))
        if not by_version:
            raise SystemExit(f"the SDK knows no {framework} images for {engine}; is it v3?")
        table[engine] = by_version
        defaults[engine] = max(by_version, key=_version_key)
        log.info("%s: %s (default %s)", engine, ", ".join(by_version), defaults[engine])

    table["defaults"] = defaults
    table["frameworks"] = dict(FRAMEWORKS)
    table["generated_by"] = "layers/tools/resolve_image_uris.py (make images)"
    table["sdk_version"] = (
        f"sagemaker {importlib.metadata.version('sagemaker')}, "
        f"sagemaker-core {importlib.metadata.version('sagemaker-core')}"
    )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--regions", nargs="+", default=list(DEFAULT_REGIONS))
    parser.add_argument("--versions-per-engine", type=int, default=VERSIONS_PER_ENGINE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The SDK logs noisy warnings on import (config files, telemetry); they are not ours.
    logging.getLogger("sagemaker").setLevel(logging.ERROR)

    table = resolve(tuple(args.regions), args.versions_per_engine)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    count = sum(len(r) for e, v in table.items() if e in FRAMEWORKS for r in v.values())
    print(f"wrote {count} image URIs to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
