"""template.yaml and Lambda SnapStart: the functions that embed or retrieve (serve, stream,
ingest) restore from a snapshot, within SnapStart's documented limits, and every invoker
calls the published alias that SnapStart applies to.

Limits, from https://docs.aws.amazon.com/lambda/latest/dg/snapstart.html ("Supported
features and limitations", "Supported Regions"): managed runtimes Java 11+, Python 3.12+ and
.NET 8+ only (no OS-only runtime, no container image); no provisioned concurrency, no Amazon
EFS, no ephemeral storage above 512 MB; published versions (and aliases of them) only, never
$LATEST; every commercial Region but Asia Pacific (Taipei) and Asia Pacific (New Zealand).
Both architectures are supported (arm64 is not among the limits). The stream function runs
the Lambda Web Adapter, which relays SnapStart's hooks to the web app from 1.1.0 (layer 30:
aws/aws-lambda-web-adapter#837, #871).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest

import sam_template as sam
from llmhost.serving import lambda_http

SAM_PYTHON = sam.ROOT / ".venv-sam" / "bin" / "python"

SNAPSTART = {"ServeFunction", "StreamFunction", "IngestFunction"}
UNSUPPORTED_REGIONS = {"ap-east-2", "ap-southeast-6"}  # Taipei, New Zealand


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def test_serving_and_ingest_functions_restore_from_published_versions(
    template: dict[str, Any],
) -> None:
    functions = sam.functions(template)
    for name in SNAPSTART:
        properties = functions[name]
        assert properties.get("SnapStart") == {"ApplyOn": "PublishedVersions"}, name
        # SnapStart applies to published versions only: SAM publishes one per change of
        # code or configuration and points the alias at it.
        assert properties.get("AutoPublishAlias"), name
    # The control plane is not asked for it (its cold start is measured without it)
    for name in functions.keys() - SNAPSTART:
        assert "SnapStart" not in functions[name], name


def test_snapstart_functions_stay_within_the_documented_limits(template: dict[str, Any]) -> None:
    functions = sam.functions(template)
    for name in SNAPSTART:
        properties = functions[name]
        runtime = properties["Runtime"]
        match = re.fullmatch(r"python3\.(\d+)", runtime)
        assert match and int(match.group(1)) >= 12, f"{name}: {runtime} (Python 3.12+ only)"
        assert properties.get("PackageType", "Zip") == "Zip", f"{name}: no container images"
        assert "ProvisionedConcurrencyConfig" not in properties, f"{name}: not with SnapStart"
        assert "FileSystemConfigs" not in properties, f"{name}: no EFS with SnapStart"
        size = properties.get("EphemeralStorage", {}).get("Size", 512)
        assert size <= 512, f"{name}: ephemeral storage above 512 MB"
        assert set(properties.get("Architectures", ["x86_64"])) <= {"arm64", "x86_64"}, name
    # No provisioned concurrency anywhere else either (an alias or version resource)
    for name, resource in template["Resources"].items():
        assert "ProvisionedConcurrencyConfig" not in resource.get("Properties", {}), name


def test_the_stack_refuses_regions_without_snapstart(template: dict[str, Any]) -> None:
    rule = template["Rules"]["SnapStartRegion"]
    assert "RuleCondition" not in rule  # always checked
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {
        "Fn::Not": [{"Fn::Contains": [sorted(UNSUPPORTED_REGIONS), {"Ref": "AWS::Region"}]}]
    }


def test_the_stream_server_gets_the_hooks_from_the_web_adapter(template: dict[str, Any]) -> None:
    stream = sam.functions(template)["StreamFunction"]
    variables = stream["Environment"]["Variables"]
    # The adapter runs the server as its own process: the runtime's hooks never reach it,
    # the adapter relays them to these routes (llmhost.serving.lambda_http serves them).
    before = variables[lambda_http.BEFORE_SNAPSHOT_PATH]
    after = variables[lambda_http.AFTER_RESTORE_PATH]
    assert before.startswith("/_llmhost/") and after.startswith("/_llmhost/") and before != after
    # ... from LWA 1.1.0 (layer 30) on; no stack may pick an adapter without them
    parameter = template["Parameters"]["LambdaAdapterLayerVersion"]
    assert parameter["MinValue"] >= 30 and parameter["Default"] >= parameter["MinValue"]
    assert any(
        "LambdaAdapterLayerArm64:${LambdaAdapterLayerVersion}" in json.dumps(layer)
        for layer in stream["Layers"]
    )


def test_the_runtime_provides_the_hook_library_and_the_layer_leaves_it_out() -> None:
    # A copy in the layer would come first on sys.path and shadow the runtime's own.
    requirements = (sam.ROOT / "layers" / "llmhost" / "requirements.txt").read_text()
    assert "snapshot-restore-py" not in requirements and "snapshot_restore_py" not in requirements
    assert "snapshot-restore-py" in (sam.ROOT / "pyproject.toml").read_text()  # for local runs


# ------------------------------------------------------------------ after the SAM transform

TRANSFORM = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

template = yaml_parse(open(sys.argv[1]).read())
for resource in template["Resources"].values():
    for key in ("CodeUri", "ContentUri"):  # sam validate does the same: no upload here
        if key in resource.get("Properties", {}):
            resource["Properties"][key] = "s3://bucket/key"


class NoManagedPolicies:
    def load(self):
        return {}


print(json.dumps(transform(template, {}, NoManagedPolicies())))
"""


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    """template.yaml through the SAM transform (aws-sam-translator of `make sam-validate`'s
    virtualenv: its pinned pydantic would fight the project's)."""
    if not SAM_PYTHON.exists():
        pytest.fail(f"no {SAM_PYTHON}: run `make .venv-sam/.installed` (make test does)")
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run(
        [str(SAM_PYTHON), "-c", TRANSFORM, str(sam.TEMPLATE)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    resources: dict[str, Any] = json.loads(result.stdout)["Resources"]
    return resources


def _refs(node: Any) -> set[str]:
    """Every logical id a node names (Ref, GetAtt, ${...} in Sub)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".")[0]
                found.add(target)
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found |= {name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text)}
                found |= _refs(value[1] if isinstance(value, list) else None)
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _refs(item)
    return found


def test_every_invoker_calls_the_alias(transformed: dict[str, Any]) -> None:
    # SAM names the alias resource <function>Alias<alias name>
    aliases = {name: f"{name}Aliaslive" for name in SNAPSTART}
    for name, alias in aliases.items():
        assert transformed[alias]["Type"] == "AWS::Lambda::Alias"
        assert transformed[alias]["Properties"]["Name"] == "live"
        version = transformed[alias]["Properties"]["FunctionVersion"]["Fn::GetAtt"][0]
        assert transformed[version]["Type"] == "AWS::Lambda::Version", name
    invokers = 0
    for logical_id, resource in transformed.items():
        kind, properties = resource["Type"], resource.get("Properties", {})
        if kind in {"AWS::Lambda::Alias", "AWS::Lambda::Version"}:
            continue
        if kind == "AWS::Lambda::EventInvokeConfig":
            # Asynchronous invocations' retries and dead letters: configured on the alias
            function = properties["FunctionName"]["Ref"]
            if function in SNAPSTART:
                assert properties["Qualifier"] == "live", logical_id
                invokers += 1
            continue
        if kind == "AWS::Lambda::LayerVersion" or kind == "AWS::IAM::Role":
            continue
        named = _refs(properties)
        if kind == "AWS::Lambda::Function":
            named.discard(logical_id)
        for function in SNAPSTART & named:
            # The bare function (its $LATEST) may only be named to be described, logged or
            # given its settings: Outputs aside, nothing that invokes it may.
            assert kind not in {
                "AWS::Lambda::Permission",
                "AWS::Lambda::Url",
                "AWS::Lambda::EventSourceMapping",
                "AWS::ApiGateway::RestApi",
                "AWS::S3::Bucket",
                "AWS::Events::Rule",
                "AWS::Scheduler::Schedule",
            }, f"{logical_id} ({kind}) invokes {function}, not {aliases[function]}"
        invokers += len(set(aliases.values()) & named)
    # The function URL, the API's routes, their permissions, the bucket's notifications
    assert invokers >= 15


def test_the_api_routes_and_the_bucket_invoke_the_alias(transformed: dict[str, Any]) -> None:
    (api,) = (r for r in transformed.values() if r["Type"] == "AWS::ApiGateway::RestApi")
    uris = {
        (path, method): json.dumps(operation["x-amazon-apigateway-integration"]["uri"])
        for path, operations in api["Properties"]["Body"]["paths"].items()
        for method, operation in operations.items()
    }
    serving = {key: uri for key, uri in uris.items() if "ServeFunction" in uri}
    assert serving and all("${ServeFunctionAliaslive}" in uri for uri in serving.values())
    url = transformed["StreamFunctionUrl"]["Properties"]
    assert url["TargetFunctionArn"] == {"Ref": "StreamFunctionAliaslive"}
    notifications = transformed["DocumentsBucket"]["Properties"]["NotificationConfiguration"]
    targets = {json.dumps(c["Function"]) for c in notifications["LambdaConfigurations"]}
    assert targets == {json.dumps({"Ref": "IngestFunctionAliaslive"})}
