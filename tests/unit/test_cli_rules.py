"""The llmhost command's decisions, without a stack: when a wait is over, how each shape of
API error is read, what a spec file may hold, and what the command may import."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from llmhost_cli.errors import CliFailure, refusal_from_body
from llmhost_cli.specfile import load_spec
from llmhost_cli.watch import progress

CLI = Path(__file__).resolve().parents[2] / "layers" / "llmhost" / "llmhost_cli"


def record(status: str, *events: str, generation: int = 1, failed: int | None = None) -> Any:
    history = [{"event": e, "status": status, "generation": generation} for e in events]
    return {
        "name": "m",
        "status": status,
        "generation": generation,
        "failed_generation": failed,
        "history": history,
    }


@pytest.mark.parametrize(
    ("current", "goal", "expected"),
    [
        (record("PENDING", "Created"), "IN_SERVICE", "waiting"),
        (record("IN_SERVICE", "CreateEndpoint m", "StatusChanged"), "IN_SERVICE", "done"),
        # a PATCH: still IN_SERVICE, but the reconciler has not taken the new generation up
        (
            record("IN_SERVICE", "StatusChanged", "SpecUpdated", generation=2),
            "IN_SERVICE",
            "waiting",
        ),
        (record("SLEEPING", "SleepRequested"), "SLEEPING", "waiting"),
        (record("SLEEPING", "WakeRequested"), "IN_SERVICE", "waiting"),
        (record("FAILED", "Failed", generation=2, failed=2), "IN_SERVICE", "failed"),
        # an old generation's failure, the spec changed since: the new one is being tried
        (record("FAILED", "SpecUpdated", generation=3, failed=2), "IN_SERVICE", "waiting"),
        (record("DELETING", "DeleteRequested"), "DELETED", "waiting"),
        (record("DELETED", "StatusChanged"), "DELETED", "done"),
    ],
)
def test_when_a_wait_is_over(current: Any, goal: Any, expected: str) -> None:
    assert progress(current, goal) == expected


def test_every_error_shape_gives_a_message_and_its_field() -> None:
    # llmhost's control API: code, message, fields
    body = {
        "error": {
            "code": "invalid_request",
            "message": "the request is invalid: hosting.instance_type: unknown",
            "fields": [{"field": "hosting.instance_type", "message": "unknown"}],
        }
    }
    refused = refusal_from_body(422, body, {})
    assert refused.lines() == [
        "error: 422 invalid_request: the request is invalid: hosting.instance_type: unknown",
        "  field hosting.instance_type: unknown",
    ]
    # the OpenAI-compatible server: param, and Retry-After for a cold model
    openai = {"error": {"message": "asleep", "type": "api_error", "code": "cold", "param": "model"}}
    cold = refusal_from_body(503, openai, {"Retry-After": "30"})
    assert (cold.field, cold.retry_after) == ("model", "30")
    assert cold.lines()[-1] == "  retry after 30 s"
    # API Gateway's own refusal (IAM, signature), and a body that is not JSON
    assert refusal_from_body(403, {"message": "Forbidden"}, {}).message == "Forbidden"
    assert refusal_from_body(502, "<html>bad gateway</html>", {}).message.startswith("<html>")


def test_a_spec_file_must_hold_a_mapping(tmp_path: Path) -> None:
    good = tmp_path / "ok.yaml"
    good.write_text("name: a\nmodel:\n  model_id: x/y\n")
    assert load_spec(str(good)) == {"name": "a", "model": {"model_id": "x/y"}}
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: a\nmodel: [unclosed\n")
    with pytest.raises(CliFailure, match=r"broken.yaml is not valid YAML or JSON \(line 3"):
        load_spec(str(broken))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(CliFailure, match="holds list, not a deployment spec"):
        load_spec(str(listed))


def test_the_command_imports_nothing_a_users_install_lacks() -> None:
    # The package installs llmhost and llmhost_cli; the emulation (local/) and moto are dev only
    offenders = []
    for path in sorted(CLI.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in {"llmhost_local", "moto"}
            ]
    assert offenders == []


def test_the_local_key_pair_the_command_falls_back_on_is_make_runs() -> None:
    from llmhost_cli import target
    from llmhost_local import cloud

    assert (target.LOCAL_ACCESS_KEY, target.LOCAL_SECRET_KEY, target.LOCAL_API_KEY) == (
        cloud.ACCESS_KEY,
        cloud.SECRET_KEY,
        cloud.LOCAL_API_KEY,
    )
