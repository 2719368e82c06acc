"""Image URIs: the table built by layers/tools/resolve_image_uris.py, read offline."""

from __future__ import annotations

import re
import typing

import pytest

from llmhost import images
from llmhost.errors import LlmhostError
from llmhost.specs import Engine

ENGINES = typing.get_args(Engine.model_fields["name"].annotation)
REGIONS = [
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "ap-southeast-1",
    "ap-south-1",
]
ECR_URI = re.compile(r"^\d{12}\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/[a-z0-9-]+:\S+$")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("region", REGIONS)
def test_every_engine_has_a_default_image_in_every_supported_region(
    engine: str, region: str
) -> None:
    # Given an engine a spec may name and a region llmhost supports
    # When its default image is looked up
    uri = images.image_uri(engine, None, region)
    # Then it is an ECR URI in that region
    match = ECR_URI.match(uri)
    assert match is not None, uri
    assert match.group("region") == region


@pytest.mark.parametrize("engine", ENGINES)
def test_default_is_the_newest_of_several_versions(engine: str) -> None:
    versions = images.known_versions(engine)
    assert len(versions) >= 2
    newest = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    assert images.default_version(engine) == newest


def test_tgi_images_are_the_hugging_face_llm_container() -> None:
    uri = images.image_uri("tgi", None, "us-east-1")
    assert "/huggingface-pytorch-tgi-inference:" in uri
    assert f"tgi{images.default_version('tgi')}" in uri


def test_a_minor_version_resolves_to_its_newest_patch() -> None:
    # Given a major.minor version the table has patches of
    full = images.default_version("tgi")
    minor = full.rsplit(".", 1)[0]
    # When it is resolved
    # Then the newest x.y.* wins, and an exact version resolves to itself
    assert images.resolve_version("tgi", minor) == full
    oldest = images.known_versions("tgi")[0]
    assert images.resolve_version("tgi", oldest) == oldest


def test_unknown_version_is_a_422_naming_the_known_versions() -> None:
    with pytest.raises(images.ImageNotAvailable) as caught:
        images.image_uri("tgi", "0.1", "us-east-1")
    error = caught.value
    assert isinstance(error, LlmhostError) and error.status == 422
    assert "engine.version '0.1'" in error.message
    for version in images.known_versions("tgi"):
        assert version in error.message


def test_unknown_region_is_a_422_naming_the_known_regions() -> None:
    with pytest.raises(images.ImageNotAvailable) as caught:
        images.image_uri("vllm", None, "mars-north-1")
    assert "mars-north-1" in caught.value.message and "eu-west-1" in caught.value.message


def test_hf_inference_has_distinct_cpu_and_gpu_images() -> None:
    cpu = images.image_uri("hf-inference", None, "us-east-1")
    gpu = images.image_uri("hf-inference", None, "us-east-1", processor="gpu")
    assert "-cpu-" in cpu and "-gpu-" in gpu


def test_the_table_records_how_it_was_built() -> None:
    table = images._table()
    assert "resolve_image_uris.py" in table["generated_by"]
    assert table["sdk_version"].startswith("sagemaker 3")
