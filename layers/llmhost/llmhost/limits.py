"""Limits AWS enforces that botocore's service models do not express, one row each, with source.

botocore's ``ParamValidator`` checks types, required members and minimums; llmhost's
stand-ins also check the model's maximum lengths, ranges, enums and patterns. What AWS
enforces beyond the model is in ``TABLE``: relations between fields (an alarm's evaluation
window), steps (serverless memory), grammars (cron expressions, IANA time zones), patterns
written with Java's Unicode classes that Python's ``re`` cannot compile (tag keys), and
values whose valid range is only in the documentation (target tracking values).

Two uses, one table:
- ``request_issues(service, operation, params)`` checks an AWS request body against every
  row for that operation (the property tests run every request llmhost builds through it);
- ``spec_issues(spec)`` checks a deployment spec against the same rows before anything is
  created, naming the spec field and the limit (the API answers 422 with them).
Pure; no I/O.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from llmhost.errors import FieldIssue

if TYPE_CHECKING:
    from llmhost.specs import DeploymentSpec

# ------------------------------------------------------------------------------ the values

DAY_S = 86_400
WEEK_S = 604_800
HOUR_S = 3_600
# Period of llmhost's own idle alarm (one-minute SageMaker metrics).
IDLE_ALARM_PERIOD_S = 60
# The longest idle window whose alarm CloudWatch accepts: EvaluationPeriods x 60 s <= 1 day.
IDLE_MINUTES_MAX = DAY_S // IDLE_ALARM_PERIOD_S
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_CONCURRENCY_MAX = 200
TAGS_PER_RESOURCE = 50
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
TAG_PUNCTUATION = "_.:/=+-@"
# 2^-359 and 2^359 as the documentation gives them in base 10.
TARGET_VALUE_MIN = 8.515920e-109
TARGET_VALUE_MAX = 1.174271e108
CRON_YEARS = (1970, 2199)


@dataclass(frozen=True)
class Limit:
    """One limit: which requests it applies to, the rule in words, where AWS documents it,
    and a check returning what breaks it in a request body (empty: nothing)."""

    name: str
    operations: tuple[tuple[str, str], ...]  # (botocore service name, operation name)
    rule: str
    source: str
    check: Callable[[dict[str, Any]], list[str]]


# ------------------------------------------------------------------------------ the checks


def alarm_window_problem(period_s: int, evaluation_periods: int) -> str | None:
    """Why CloudWatch refuses an alarm evaluated over ``evaluation_periods`` x ``period_s``."""
    total = period_s * evaluation_periods
    longest = DAY_S if period_s < HOUR_S else WEEK_S
    if total > longest:
        return (
            f"EvaluationPeriods x Period is {total} s; CloudWatch allows at most {longest} s "
            f"({'one day' if longest == DAY_S else 'seven days'}) for a {period_s} s period"
        )
    return None


def _alarm_window(params: dict[str, Any]) -> list[str]:
    period, periods = params.get("Period"), params.get("EvaluationPeriods")
    if isinstance(period, int) and isinstance(periods, int):
        problem = alarm_window_problem(period, periods)
        return [problem] if problem else []
    return []


def _alarm_period(params: dict[str, Any]) -> list[str]:
    period = params.get("Period")
    if isinstance(period, int) and period not in (10, 20, 30) and period % 60:
        return [f"Period {period} must be 10, 20, 30 or a multiple of 60"]
    return []


def _datapoints(params: dict[str, Any]) -> list[str]:
    m, n = params.get("DatapointsToAlarm"), params.get("EvaluationPeriods")
    if isinstance(m, int) and isinstance(n, int) and m > n:
        return [f"DatapointsToAlarm {m} exceeds EvaluationPeriods {n}"]
    return []


def _variants(params: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in params.get("ProductionVariants") or [] if isinstance(v, dict)]


def _serverless(params: dict[str, Any]) -> list[str]:
    problems = []
    for variant in _variants(params):
        config = variant.get("ServerlessConfig")
        if not isinstance(config, dict):
            continue
        memory = config.get("MemorySizeInMB")
        if memory not in SERVERLESS_MEMORY_MB:
            problems.append(f"ServerlessConfig.MemorySizeInMB {memory} is not one of 1024..6144")
        provisioned, most = config.get("ProvisionedConcurrency"), config.get("MaxConcurrency")
        if isinstance(provisioned, int) and isinstance(most, int) and provisioned > most:
            problems.append(
                f"ServerlessConfig.ProvisionedConcurrency {provisioned} exceeds "
                f"MaxConcurrency {most}"
            )
    return problems


def tag_text_problem(text: str, what: str) -> str | None:
    """Why SageMaker refuses a tag key or value (``^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$``)."""
    for char in text:
        if unicodedata.category(char)[0] not in "LZN" and char not in TAG_PUNCTUATION:
            return (
                f"{what} '{text}' contains {char!r}; tags allow letters, digits, spaces and "
                f"{' '.join(TAG_PUNCTUATION)}"
            )
    if what == "key" and text.lower().startswith("aws:"):
        return f"key '{text}' starts with 'aws:', which AWS reserves for its own tags"
    return None


def _tags(params: dict[str, Any]) -> list[str]:
    problems = []
    tags = [t for t in params.get("Tags") or [] if isinstance(t, dict)]
    if len(tags) > TAGS_PER_RESOURCE:
        problems.append(f"{len(tags)} tags; a resource holds at most {TAGS_PER_RESOURCE}")
    for tag in tags:
        for what, value in (("key", tag.get("Key")), ("value", tag.get("Value"))):
            problem = tag_text_problem(value, what) if isinstance(value, str) else None
            if problem:
                problems.append(problem)
    return problems


def _target_value(params: dict[str, Any]) -> list[str]:
    config = params.get("TargetTrackingScalingPolicyConfiguration")
    value = config.get("TargetValue") if isinstance(config, dict) else None
    if isinstance(value, int | float) and not TARGET_VALUE_MIN <= abs(value) <= TARGET_VALUE_MAX:
        return [f"TargetValue {value} is outside {TARGET_VALUE_MIN:g}..{TARGET_VALUE_MAX:g}"]
    return []


def _capacity_order(params: dict[str, Any]) -> list[str]:
    action = params.get("ScalableTargetAction", params)
    low, high = action.get("MinCapacity"), action.get("MaxCapacity")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        return [f"MinCapacity {low} is above MaxCapacity {high}"]
    return []


def _variant_minimum(params: dict[str, Any]) -> list[str]:
    # Only inference components may scale to zero; a variant keeps at least one instance
    # (or one unit of provisioned concurrency).
    dimension, low = params.get("ScalableDimension", ""), params.get("MinCapacity")
    if dimension.startswith("sagemaker:variant:") and isinstance(low, int) and low < 1:
        return [f"MinCapacity {low} for {dimension}: a variant keeps at least 1"]
    return []


def _aws_schedule(expression: Any) -> list[str]:
    if not isinstance(expression, str):
        return []
    if not (expression.startswith("cron(") and expression.endswith(")")):
        return [f"'{expression}' is not cron(<six fields>)"]
    problem = cron_problem(expression[5:-1])
    return [f"'{expression}': {problem}"] if problem else []


def _timezone(value: Any) -> list[str]:
    if isinstance(value, str) and value not in iana_time_zones():
        return [f"time zone '{value}' is not an IANA time zone name"]
    return []


def _scheduled_action(params: dict[str, Any]) -> list[str]:
    return _aws_schedule(params.get("Schedule")) + _timezone(params.get("Timezone"))


def _scheduler(params: dict[str, Any]) -> list[str]:
    return _aws_schedule(params.get("ScheduleExpression")) + _timezone(
        params.get("ScheduleExpressionTimezone")
    )


_CW_ALARM = (
    "https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html"
)
_SERVERLESS = (
    "https://docs.aws.amazon.com/sagemaker/latest/APIReference/"
    "API_ProductionVariantServerlessConfig.html"
)
_TAG_SOURCE = "https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_Tag.html"
_SM_TAGGED = tuple(
    ("sagemaker", op)
    for op in ("CreateModel", "CreateEndpointConfig", "CreateEndpoint", "CreateInferenceComponent")
)

TABLE: tuple[Limit, ...] = (
    Limit(
        "cloudwatch.alarm-evaluation-window",
        (("cloudwatch", "PutMetricAlarm"),),
        "Period x EvaluationPeriods <= 86,400 s (one day) when Period < 3,600 s, "
        "else <= 604,800 s (seven days)",
        _CW_ALARM,
        _alarm_window,
    ),
    Limit(
        "cloudwatch.alarm-period",
        (("cloudwatch", "PutMetricAlarm"),),
        "Period is 10, 20, 30 or a multiple of 60 seconds",
        _CW_ALARM,
        _alarm_period,
    ),
    Limit(
        "cloudwatch.datapoints-to-alarm",
        (("cloudwatch", "PutMetricAlarm"),),
        "DatapointsToAlarm (M of N) is at most EvaluationPeriods",
        _CW_ALARM,
        _datapoints,
    ),
    Limit(
        "sagemaker.serverless-config",
        (("sagemaker", "CreateEndpointConfig"),),
        "MemorySizeInMB is 1024, 2048, 3072, 4096, 5120 or 6144; ProvisionedConcurrency "
        "<= MaxConcurrency (1..200)",
        _SERVERLESS,
        _serverless,
    ),
    Limit(
        "sagemaker.tags",
        _SM_TAGGED,
        "at most 50 tags; keys (1..128) and values (0..256) of letters, digits, spaces and "
        "_ . : / = + - @ (^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$); keys never start with 'aws:'",
        _TAG_SOURCE,
        _tags,
    ),
    Limit(
        "application-autoscaling.target-value",
        (("application-autoscaling", "PutScalingPolicy"),),
        "TargetValue magnitude within 8.515920e-109..1.174271e+108 (2^-360..2^360)",
        "https://docs.aws.amazon.com/autoscaling/application/APIReference/"
        "API_TargetTrackingScalingPolicyConfiguration.html",
        _target_value,
    ),
    Limit(
        "application-autoscaling.capacity-order",
        (
            ("application-autoscaling", "RegisterScalableTarget"),
            ("application-autoscaling", "PutScheduledAction"),
        ),
        "MinCapacity <= MaxCapacity",
        "https://docs.aws.amazon.com/autoscaling/application/APIReference/"
        "API_RegisterScalableTarget.html",
        _capacity_order,
    ),
    Limit(
        "application-autoscaling.variant-minimum",
        (("application-autoscaling", "RegisterScalableTarget"),),
        "MinCapacity 0 only for inference components (DesiredCopyCount); endpoint variants "
        "keep at least one instance or one unit of provisioned concurrency",
        "https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-zero-instances.html",
        _variant_minimum,
    ),
    Limit(
        "application-autoscaling.scheduled-action",
        (("application-autoscaling", "PutScheduledAction"),),
        "Schedule is cron(<six fields>) in EventBridge's cron grammar; Timezone an IANA name",
        "https://docs.aws.amazon.com/autoscaling/application/APIReference/"
        "API_PutScheduledAction.html",
        _scheduled_action,
    ),
    Limit(
        "scheduler.schedule-expression",
        (("scheduler", "CreateSchedule"), ("scheduler", "UpdateSchedule")),
        "ScheduleExpression cron(<six fields>) in EventBridge's cron grammar; "
        "ScheduleExpressionTimezone an IANA name",
        "https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html",
        _scheduler,
    ),
)


def request_issues(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    """Every row of ``TABLE`` that ``params`` (the body of ``service``'s ``operation``)
    breaks, as "<limit name>: <what> (<source>)"."""
    found = []
    for limit in TABLE:
        if (service, operation) in limit.operations:
            found += [f"{limit.name}: {p} ({limit.source})" for p in limit.check(params)]
    return found


# ------------------------------------------------------------------------- cron expressions

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1
    )
}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"], 1)}
# (name, lowest, highest, names, extra wildcards) per field, as EventBridge documents them.
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int], str], ...] = (
    ("minutes", 0, 59, {}, ""),
    ("hours", 0, 23, {}, ""),
    ("day-of-month", 1, 31, {}, "?LW"),
    ("month", 1, 12, _MONTHS, ""),
    ("day-of-week", 1, 7, _DAYS, "?L#"),
    ("year", *CRON_YEARS, {}, ""),
)


def cron_problem(fields_text: str) -> str | None:
    """Why AWS refuses ``fields_text`` (the part inside ``cron(...)``), or None.

    EventBridge's grammar, shared by Application Auto Scaling and EventBridge Scheduler
    (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-cron-expressions.html):
    six fields; day-of-month and day-of-week cannot both be given (one of them is '?').
    """
    fields = fields_text.split()
    if len(fields) != 6:
        return (
            "needs six fields (minutes hours day-of-month month day-of-week year), "
            "e.g. '0 8 ? * MON-FRI *'"
        )
    for text, (name, low, high, names, extra) in zip(fields, _CRON_FIELDS, strict=True):
        problem = _cron_field_problem(text, low, high, names, extra)
        if problem:
            return f"{name} '{text}' {problem}"
    if (fields[2] == "?") == (fields[4] == "?"):
        return (
            "needs '?' in exactly one of day-of-month and day-of-week (AWS cron cannot "
            "give both), e.g. '0 8 ? * MON-FRI *' or '0 8 1 * ? *'"
        )
    return None


def _cron_value(token: str, low: int, high: int, names: dict[str, int]) -> int | None:
    if token.upper() in names:
        return names[token.upper()]
    if token.isascii() and token.isdigit() and low <= int(token) <= high:
        return int(token)
    return None


def _cron_field_problem(
    text: str, low: int, high: int, names: dict[str, int], extra: str
) -> str | None:
    allowed = f"must be {low}-{high}" + (" or names" if names else "")
    if text == "?":
        return None if "?" in extra else "cannot be '?' (only day-of-month or day-of-week)"
    items = text.split(",")
    if "#" in text and len(items) > 1:
        return "may hold only one expression with '#'"
    for item in items:
        if item == "*" or ("L" in extra and item == "L") or ("W" in extra and item == "LW"):
            continue
        if "W" in extra and item.endswith("W"):
            if _cron_value(item[:-1], low, high, names) is None:
                return f"'{item}': {allowed} before W"
            continue
        if "#" in extra and "#" in item:
            day, _, nth = item.partition("#")
            if _cron_value(day, low, high, names) is None or nth not in {"1", "2", "3", "4", "5"}:
                return f"'{item}': use <day>#<1-5>, e.g. 'MON#2'"
            continue
        if "L" in extra and "#" in extra and item.endswith("L") and len(item) > 1:
            if _cron_value(item[:-1], low, high, names) is None:
                return f"'{item}': {allowed} before L"
            continue
        base, slash, step = item.partition("/")
        if slash and not (step.isascii() and step.isdigit() and int(step) >= 1):
            return f"'{item}': the increment after '/' must be a positive whole number"
        if base == "*":
            continue
        first, dash, last = base.partition("-")
        if _cron_value(first, low, high, names) is None or (
            dash and _cron_value(last, low, high, names) is None
        ):
            return f"'{item}': {allowed}"
    return None


@cache
def iana_time_zones() -> frozenset[str]:
    """IANA time zone names, without the pseudo-zones of a system's zoneinfo directory."""
    from zoneinfo import available_timezones

    return frozenset(available_timezones() - {"localtime", "Factory", "posixrules"})


# ----------------------------------------------------------------------------- spec checks


def spec_issues(spec: DeploymentSpec) -> list[FieldIssue]:
    """The spec fields that would lead to a request ``TABLE`` refuses, each naming the limit.

    Cron expressions and time zones are checked on their fields (``specs.ScheduleRule``)
    with ``cron_problem`` and ``iana_time_zones``.
    """
    issues: list[FieldIssue] = []
    scaling = spec.scaling
    if scaling.scale_to_zero and scaling.idle_minutes > IDLE_MINUTES_MAX:
        issues.append(idle_minutes_issue(scaling.idle_minutes))
    if scaling.target_value is not None and not (
        TARGET_VALUE_MIN <= scaling.target_value <= TARGET_VALUE_MAX
    ):
        issues.append(
            FieldIssue(
                "scaling.target_value",
                f"{scaling.target_value} is outside the range Application Auto Scaling "
                f"accepts ({TARGET_VALUE_MIN:g} to {TARGET_VALUE_MAX:g})",
            )
        )
    for key, value in spec.tags.items():
        for what, text in (("key", key), ("value", value)):
            problem = tag_text_problem(text, what)
            if problem:
                issues.append(FieldIssue(f"tags.{key}", f"{problem} ({_TAG_SOURCE})"))
    return issues


def idle_minutes_issue(minutes: int) -> FieldIssue:
    return FieldIssue(
        "scaling.idle_minutes",
        f"{minutes} is above {IDLE_MINUTES_MAX}: the idle alarm evaluates one-minute "
        "datapoints, and CloudWatch evaluates an alarm over at most one day "
        f"(EvaluationPeriods x Period <= {DAY_S} s); use {IDLE_MINUTES_MAX} or less",
    )
