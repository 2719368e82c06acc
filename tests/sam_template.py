"""template.yaml as written (before the SAM transform), and what the template tests ask of it.

The template tests (tests/aws/test_template_*.py) read it with ``load`` in a module-scoped
fixture, so they run offline and in milliseconds; `sam validate --lint` and `sam build` cover
what only the transform can check.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
EVENTS = ROOT / "events"

# The functions that embed or retrieve, and so carry the embedding and retrieval layers.
DATA_PLANE = {"ServeFunction", "StreamFunction", "IngestFunction", "JobsFunction", "BatchFunction"}
CONTROL_PLANE = {"ApiFunction", "ReconcileFunction", "ScalingFunction"}
# Only with OtlpEndpoint set; the OpenTelemetry SDK is in its own code (the llmhost layer only).
TRACE_EXPORT = {"TraceExportFunction"}

SCALING_DLQ_ARN = {"Fn::GetAtt": ["ScalingDeadLetterQueue", "Arn"]}
ACCOUNT_ARN = "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"

# What the deployment API's scaling view reads (llmhost.scaling.view), and nothing more.
API_SCALING_READS = {
    "application-autoscaling:DescribeScalableTargets",
    "application-autoscaling:DescribeScalingPolicies",
    "application-autoscaling:DescribeScheduledActions",
    "application-autoscaling:DescribeScalingActivities",
    "cloudwatch:DescribeAlarms",
    "sagemaker:DescribeEndpoint",
    "sagemaker:DescribeInferenceComponent",
}


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags (!Ref, !Sub, ...) into long form."""


def _cfn_tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        return {"Fn::GetAtt": value.split(".", 1)}
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load() -> dict[str, Any]:
    """template.yaml, short tags in long form (a fresh copy on each call)."""
    # _CfnLoader is a SafeLoader: tags become plain dicts, never Python objects.
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def merge(base: Any, override: Any, key: str = "") -> Any:
    """SAM's Globals rules: maps merge key by key, lists are the global entries followed by
    the function's (Layers), except Architectures, which the function replaces; anything
    else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for name, value in override.items():
            merged[name] = (
                merge(merged[name], value, name) if name in merged else copy.deepcopy(value)
            )
        return merged
    if isinstance(base, list) and isinstance(override, list) and key != "Architectures":
        return copy.deepcopy(base + override)
    return copy.deepcopy(override)


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every AWS::Serverless::Function's properties with Globals.Function applied."""
    defaults = template.get("Globals", {}).get("Function", {})
    return {
        name: merge(defaults, resource["Properties"])
        for name, resource in resources(template, "AWS::Serverless::Function").items()
    }


def statements(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement anywhere in ``node``, including both branches of an Fn::If."""
    if isinstance(node, dict):
        if "Fn::If" in node:
            _, when_true, when_false = node["Fn::If"]
            yield from _statements_or_branch(when_true, where)
            yield from _statements_or_branch(when_false, where)
            return
        statement = node.get("Statement")
        if isinstance(statement, list):
            for item in statement:
                yield from _statements_or_branch(item, where)
        elif isinstance(statement, dict):
            yield where, statement
        for key, value in node.items():
            if key != "Statement":
                yield from statements(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from statements(item, f"{where}[{index}]")


def _statements_or_branch(item: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(item, dict) and "Fn::If" in item:
        yield from statements(item, where)
    elif isinstance(item, dict) and ("Action" in item or "NotAction" in item):
        yield where, item


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def sample_events(prefix: str) -> dict[str, dict[str, Any]]:
    """The samples in events/ whose file name starts with ``prefix``, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(EVENTS.glob(f"{prefix}*.json"))}


def role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    policies = template["Resources"][role]["Properties"]["Policies"]
    return [s for _, s in statements(policies)]


def actions(listed: list[dict[str, Any]]) -> set[str]:
    return {a for s in listed for a in as_list(s["Action"])}


def grants(template: dict[str, Any], role: str) -> dict[str, list[Any]]:
    """Action -> the resources granted with it, over every Allow statement of ``role``."""
    granted: dict[str, list[Any]] = {}
    for statement in role_statements(template, role):
        if statement["Effect"] == "Allow":
            for action in as_list(statement["Action"]):
                granted.setdefault(action, []).extend(as_list(statement["Resource"]))
    return granted
