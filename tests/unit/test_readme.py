"""The README, as a newcomer reads it: what it names must exist, and deploy steps must work.

A user deploying llmhost has the README and the stack's outputs, nothing else; these tests
keep the two from drifting apart (a parameter the README does not explain, an output it
names that the stack does not have, a region pinned for them).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !Sub, ...) as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _any_tag)
TEMPLATE = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _table_first_column(text: str, header: str) -> set[str]:
    """The backticked names in the first column of the markdown table under ``header``."""
    rows = text[text.index(header) :].splitlines()[2:]
    names = set()
    for row in rows:
        if not row.startswith("|"):
            break
        names.update(re.findall(r"`([A-Za-z0-9]+)`", row.split("|")[1]))
    return names


def test_every_stack_parameter_is_explained_in_the_readme() -> None:
    # Given the parameters table of "Deploying to AWS"
    documented = _table_first_column(_section("Deploying to AWS"), "| parameter |")
    # Then it lists exactly the template's parameters: none missing, none invented
    assert documented == set(TEMPLATE["Parameters"])


def test_outputs_the_readme_tells_users_to_use_exist() -> None:
    documented = _table_first_column(_section("Deploying to AWS"), "| output |")
    assert {"ApiUrl", "StreamUrl", "ApiKeysSecretArn", "DocumentsBucketName"} <= documented
    assert documented <= set(TEMPLATE["Outputs"])


def test_the_deploy_steps_name_the_sam_the_build_installs() -> None:
    # `make build` installs the SAM CLI into .venv-sam; a newcomer has no other `sam`
    makefile = (ROOT / "Makefile").read_text()
    assert "SAM_VENV := .venv-sam" in makefile
    steps = _section("Deploying to AWS")
    assert ".venv-sam/bin/sam deploy --guided" in steps
    assert "QdrantUrl" in steps and "QdrantApiKeySecretArn" in steps
    # And every sam command a newcomer copies from it (deploy, delete) is that one
    bare = re.findall(r"(?m)^\s*sam \w+.*$", steps)
    assert not bare, bare


def test_samconfig_does_not_pin_a_region() -> None:
    # `sam deploy --guided` asks for the region; a pinned one silently overrides the profile's
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for command in config["default"].values():
        assert "region" not in command["parameters"]


def test_the_api_key_secret_format_matches_what_the_server_reads() -> None:
    # The README's example entry is what `python -m llmhost.serving.auth` prints for a key,
    # and the server accepts that key against a secret holding the entry.
    from llmhost.serving.auth import ApiKeyAuth, hash_key

    assert '{"alice": "' in README
    key = "llmh-example"
    auth = ApiKeyAuth(lambda: {"alice": hash_key(key)})
    assert auth.authenticate(f"Bearer {key}").key_name == "alice"
