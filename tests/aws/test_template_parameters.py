"""template.yaml's parameters, conditions and outputs: every parameter described and
defaulted, samconfig.toml's overrides valid, every condition used, and checkov's skips
justified.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

import sam_template as sam


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def test_history_limit_parameter_fits_the_registry_settings(template: dict[str, Any]) -> None:
    # A value CloudFormation accepts but the functions reject would break every one of them.
    from llmhost.runtime import ApiSettings

    parameter = template["Parameters"]["HistoryLimit"]
    for value in (parameter["MinValue"], parameter["Default"], parameter["MaxValue"]):
        settings = ApiSettings.model_validate(
            {"registry_table_name": "llmhost-registry", "history_limit": value}
        )
        assert settings.history_limit == value


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    for key in (
        "ApiUrl",
        "RegistryTableName",
        "SageMakerExecutionRoleArn",
        "ReconcileFunctionName",
        "ReconcileDeadLetterQueueUrl",
    ):
        assert key in outputs and outputs[key].get("Description"), key
    assert outputs["ApiUrl"]["Value"] == {
        "Fn::Sub": "https://${Api}.execute-api.${AWS::Region}.amazonaws.com/${StageName}"
    }
    for key in ("StreamUrl", "DocumentsBucketName", "ApiKeysSecretArn", "IngestDeadLetterQueueUrl"):
        assert key in outputs and outputs[key].get("Description"), key
    assert outputs["ScalingFunctionName"]["Value"] == {"Ref": "ScalingFunction"}
    assert outputs["ScalingDeadLetterQueueUrl"]["Value"] == {"Ref": "ScalingDeadLetterQueue"}
    for key in ("ScalingFunctionName", "ScalingDeadLetterQueueUrl"):
        assert outputs[key].get("Description"), key
    # The function URL ends with "/": the OpenAI base_url is it plus "v1".
    assert outputs["StreamUrl"]["Value"] == {"Fn::Sub": "${StreamFunctionUrl.FunctionUrl}v1"}
    assert outputs["DocumentsBucketName"]["Value"] == {"Ref": "DocumentsBucket"}
    assert outputs["ApiKeysSecretArn"]["Value"] == {
        "Fn::If": ["CreateApiKeysSecret", {"Ref": "ApiKeysSecret"}, {"Ref": "ApiKeysSecretArn"}]
    }


# Without a Qdrant server the data plane cannot work at all, so deploying must ask for it.
REQUIRED_PARAMETERS = {"QdrantUrl"}


def test_every_parameter_has_a_description_and_a_default(template: dict[str, Any]) -> None:
    for name, parameter in template["Parameters"].items():
        assert parameter.get("Description"), name
        if name in REQUIRED_PARAMETERS:
            assert "Default" not in parameter, name
            assert parameter["Description"].startswith("REQUIRED."), name
            continue
        assert "Default" in parameter, f"{name}: `sam deploy` should work without answers"
        # An optional value's pattern must accept its own default.
        pattern = parameter.get("AllowedPattern")
        if pattern:
            assert re.fullmatch(pattern, str(parameter["Default"])), name


def test_samconfig_overrides_are_template_parameters_with_valid_values(
    template: dict[str, Any],
) -> None:
    import tomllib

    config = tomllib.loads((sam.ROOT / "samconfig.toml").read_text())
    overrides = config["default"]["deploy"]["parameters"]["parameter_overrides"]
    values = dict(item.split("=", 1) for item in overrides)
    parameters = template["Parameters"]
    # Every optional parameter is listed (so a deploy shows what it runs with); the required
    # one is left for the user, since any value written here would be wrong for them.
    assert set(values) == set(parameters) - REQUIRED_PARAMETERS
    for name, raw in values.items():
        value = raw.strip('"')
        parameter = parameters[name]
        assert value == str(parameter["Default"]), f"{name}: samconfig differs from the default"
        if "AllowedValues" in parameter:
            assert value in [str(v) for v in parameter["AllowedValues"]], name
        if "AllowedPattern" in parameter:
            assert re.fullmatch(parameter["AllowedPattern"], value), name


def test_retrieval_parameters_accept_real_values_and_refuse_typos(
    template: dict[str, Any],
) -> None:
    parameters = template["Parameters"]

    def accepts(name: str, value: str) -> bool:
        return re.fullmatch(parameters[name]["AllowedPattern"], value) is not None

    assert accepts("QdrantUrl", "https://xyz.eu-central-1-0.aws.cloud.qdrant.io:6333")
    assert accepts("QdrantUrl", "http://10.0.3.7:6333")
    assert not accepts("QdrantUrl", "")
    assert not accepts("QdrantUrl", "xyz.cloud.qdrant.io:6333")  # no scheme
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:llmhost/qdrant-AbCdEf"
    for name in ("QdrantApiKeySecretArn", "ApiKeysSecretArn"):
        assert accepts(name, secret) and accepts(name, ""), name
        # IAM needs the full ARN: a name without its random suffix would match nothing.
        assert not accepts(name, secret.removesuffix("-AbCdEf")), name
    # SageMaker lower-cases names in ARNs, and IAM compares ARNs case-sensitively.
    assert accepts("EmbeddingEndpointName", "minilm-embeddings")
    assert not accepts("EmbeddingEndpointName", "MiniLM-Embeddings")
    assert parameters["EmbeddingBackend"]["AllowedValues"] == ["onnx", "sagemaker"]


def test_every_checkov_skip_names_a_check_and_says_why() -> None:
    # `make checkov` fails on any failed check; a check may only be skipped in the template
    # itself, on its resource, with the reason written next to it.
    skips = re.findall(r"#\s*checkov:skip=([^:\n]*)(?::([^\n]*))?", sam.TEMPLATE.read_text())
    assert skips, "the template skips no check: then drop this test's premise, not the test"
    for check, reason in skips:
        assert re.fullmatch(r"CKV_AWS_\d+", check), check
        assert len((reason or "").split()) >= 8, f"{check}: say why it does not apply"
    makefile = (sam.ROOT / "Makefile").read_text()
    # and checkov runs in make test, on the template, from its own pinned virtualenv
    assert re.search(r"^test: .*\bcheckov\b", makefile, re.M)
    assert "--file template.yaml --framework cloudformation" in makefile
    assert re.search(r"^CHECKOV_VERSION := \d+\.\d+\.\d+$", makefile, re.M)
    assert '"checkov==$(CHECKOV_VERSION)"' in makefile


def test_every_condition_is_used(template: dict[str, Any]) -> None:
    # cfn-lint (W8001, in `sam validate --lint`) refuses a template with an unused condition;
    # this says which one in the unit suite, before `make test` reaches the linter
    conditions = set(template["Conditions"])
    used: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "Condition" and isinstance(value, str):
                    used.add(value)
                elif key == "Fn::If" and isinstance(value, list) and value:
                    used.add(str(value[0]))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in template.items() if k != "Conditions"})
    walk(list(template["Conditions"].values()))
    assert conditions <= used, f"declared but never used: {sorted(conditions - used)}"
