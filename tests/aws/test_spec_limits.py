"""The API refuses specs AWS would refuse later: 422 naming the field and the limit.

Each case once passed the API and failed only in the reconciler (or never failed at all and
left a deployment FAILED). POST, PATCH and the dry-run plan all check the same table.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import api_function
from llmhost import limits

SPEC = {
    "name": "llama3-8b",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}
SHARED = {"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"}

# (what, patch of the spec, field named, words of the limit in the message)
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "engine version without an image",
        {"engine": {"name": "lmi", "version": "82"}},
        "engine.version",
        "0.38.0",
    ),
    (
        "idle alarm longer than CloudWatch evaluates",
        {
            "scaling": {
                "min_capacity": 1,
                "max_capacity": 2,
                "scale_to_zero": True,
                "idle_minutes": 2000,
            }
        },
        "scaling.idle_minutes",
        "86400",
    ),
    (
        "cron giving both day-of-month and day-of-week",
        {
            "scaling": {
                "max_capacity": 2,
                "schedules": [{"cron": "0 8 * * MON *", "min_capacity": 2}],
            }
        },
        "scaling.schedules.0.cron",
        "'?'",
    ),
    (
        "cron hour out of range",
        {"scaling": {"schedules": [{"cron": "0 25 ? * * *", "action": "sleep"}]}},
        "scaling.schedules.0.cron",
        "0-23",
    ),
    (
        "time zone that is not an IANA name",
        {
            "scaling": {
                "schedules": [{"cron": "0 2 ? * * *", "action": "sleep", "timezone": "localtime"}]
            }
        },
        "scaling.schedules.0.timezone",
        "IANA",
    ),
    ("tag key with a character AWS refuses", {"tags": {"team&cost": "ml"}}, "tags.team&cost", "@"),
    (
        "tag key in AWS's reserved namespace",
        {"tags": {"aws:owner": "me"}},
        "tags",
        "aws:",
    ),
    (
        "target value below Application Auto Scaling's range",
        {"scaling": {"max_capacity": 2, "target_value": 1e-200}},
        "scaling.target_value",
        "range",
    ),
    (
        "model package name longer than SageMaker's 63 characters",
        {
            "model": {
                "kind": "model-package",
                "arn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/" + "a" * 64,
            }
        },
        "model.arn",
        "model package ARN",
    ),
    (
        "a quarter core is the least CPU an inference component asks for",
        {"hosting": {**SHARED, "cpus": 0.1}},
        "hosting.cpus",
        "0.25",
    ),
    (
        "model data URI longer than SageMaker takes",
        {"model": {"kind": "s3", "uri": "s3://bkt/" + "k" * 1100}},
        "model.uri",
        "1024",
    ),
]


@pytest.fixture
def api(moto_aws: None) -> Any:
    return api_function()


def _refused(status: int, body: dict[str, Any], field: str, words: str) -> None:
    assert status == 422, body
    fields = {f["field"]: f["message"] for f in body["error"]["fields"]}
    assert field in fields, fields
    assert words in fields[field].replace(",", ""), fields[field]  # 1,024 reads as 1024


@pytest.mark.parametrize(("case", "change", "field", "words"), REFUSED, ids=[c[0] for c in REFUSED])
def test_post_patch_and_plan_refuse_what_aws_would(
    api: Any, case: str, change: dict[str, Any], field: str, words: str
) -> None:
    bad = {**SPEC, **change}
    # When the spec is posted, or dry-run, it is refused naming the field and the limit
    _refused(*api("POST", "/v1/plan", bad), field, words)
    _refused(*api("POST", "/v1/deployments", bad), field, words)
    assert api("GET", "/v1/deployments")[1]["count"] == 0
    # And a deployment cannot be changed into it either
    if "hosting" in change:
        return  # the hosting kind of a deployment never changes; POST covers it
    assert api("POST", "/v1/deployments", SPEC)[0] == 201
    _refused(*api("PATCH", "/v1/deployments/llama3-8b", change), field, words)
    assert api("GET", "/v1/deployments/llama3-8b")[1]["generation"] == 1


def test_every_limit_cites_aws_documentation() -> None:
    names = [limit.name for limit in limits.TABLE]
    assert len(names) == len(set(names))
    for limit in limits.TABLE:
        assert limit.source.startswith("https://docs.aws.amazon.com/"), limit
        assert limit.operations and limit.rule, limit


@pytest.mark.parametrize(
    "cron",
    [
        "0 8 ? * MON-FRI *",
        "0 19 ? * MON-FRI *",
        "*/5 9-17 1 * ? *",
        "0 0 L * ? 2030-2035",
        "15 10 ? JAN-MAR 6L *",
        "0 8 ? * MON#2 *",
        "0 12 3W * ? *",
        "0,30 */2 ? * SAT,SUN *",
    ],
)
def test_cron_expressions_aws_accepts_pass(cron: str) -> None:
    assert limits.cron_problem(cron) is None


@pytest.mark.parametrize(
    "cron",
    [
        "0 8 * * MON *",
        "0 8 ? * ? *",
        "60 8 ? * * *",
        "0 24 ? * * *",
        "0 8 32 * ? *",
        "0 8 ? 13 * *",
        "0 8 ? * 8 *",
        "0 8 ? * * 1969",
        "0 8 ? * MON#6 *",
        "0 8 ? * MON#1,FRI *",
        "0/0 8 ? * * *",
        "? 8 ? * * *",
        "0 8 * *",
        "a b c d e f",
    ],
)
def test_cron_expressions_aws_refuses_fail(cron: str) -> None:
    assert limits.cron_problem(cron)


def test_idle_alarm_body_is_checked_against_the_evaluation_window() -> None:
    from llmhost.scaling.policy import policy_from_spec
    from llmhost.specs import Scaling

    policy = policy_from_spec(Scaling(min_capacity=0, max_capacity=2, scale_to_zero=True))
    alarm = policy.idle_alarm
    assert alarm is not None
    body = alarm.put_metric_alarm_request("llmhost-x-idle", {"EndpointName": "x"}, [])
    assert limits.request_issues("cloudwatch", "PutMetricAlarm", body) == []
    body["EvaluationPeriods"] = limits.IDLE_MINUTES_MAX + 1
    body["DatapointsToAlarm"] = limits.IDLE_MINUTES_MAX + 1
    (issue,) = limits.request_issues("cloudwatch", "PutMetricAlarm", body)
    assert issue.startswith("cloudwatch.alarm-evaluation-window")


def test_a_spec_without_an_image_in_the_stacks_region_is_refused(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment created while the image table lists the stack's region (us-east-1)
    assert api("POST", "/v1/deployments", SPEC)[0] == 201
    # When the image table lists that region for no engine (a stack deployed in a region
    # 'make images' was not run for)
    from llmhost import images

    table = {
        engine: (
            versions
            if engine in {"defaults", "frameworks", "generated_by", "sdk_version"}
            else {
                version: {r: uri for r, uri in uris.items() if r != "us-east-1"}
                for version, uris in versions.items()
            }
        )
        for engine, versions in images._table().items()
    }
    monkeypatch.setattr(images, "_table", lambda: table)
    # Then no spec that needs an image is accepted there: each would only fail in the
    # reconciler. The message names the region and how to add it.
    other = {**SPEC, "name": "other"}
    for status, body in (
        api("POST", "/v1/plan", other),
        api("POST", "/v1/deployments", other),
        api("PATCH", "/v1/deployments/llama3-8b", {"generation": {"max_new_tokens": 64}}),
    ):
        _refused(status, body, "engine.version", "us-east-1")
        assert "make images" in body["error"]["fields"][0]["message"], body
    assert api("GET", "/v1/deployments/llama3-8b")[1]["generation"] == 1
    # A model package brings its own image
    package = {
        **other,
        "model": {
            "kind": "model-package",
            "arn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/cohere/1",
        },
    }
    assert api("POST", "/v1/plan", package)[0] == 200
