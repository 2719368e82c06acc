"""Which SageMaker resources llmhost may change: the ones it created, as their tags say.

Every resource llmhost creates carries ``llmhost:stack`` (the CloudFormation stack, so two
stacks in one account never touch each other's resources) and ``llmhost:deployment`` (or
``llmhost:pool`` for a shared pool's endpoint and config). A resource with the name llmhost
would use but without these tags belongs to someone else: llmhost refuses to create over it
(409 at the API), never adopts it in the observer, and never updates or deletes it. The
reconciler's IAM role enforces the same rule in AWS (``aws:ResourceTag/llmhost:stack``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from botocore.exceptions import ClientError

STACK_TAG = "llmhost:stack"
DEPLOYMENT_TAG = "llmhost:deployment"
POOL_TAG = "llmhost:pool"
# Tag keys llmhost sets itself; a spec's own tags may not use them.
RESERVED_TAG_PREFIX = "llmhost:"
# The stack name the local runner and the tests use (``make run`` has no CloudFormation).
LOCAL_STACK = "llmhost-local"

# A deployment's CloudWatch alarms are known by their names. (Here, not in the observer: the
# scaling hook reads alarm names on every event and need not import the observer for it.)
AlarmKind = Literal["idle", "no-capacity", "overload", "underload"]
# Every alarm llmhost creates for a deployment is ``llmhost-<deployment>-<kind>``.
ALARM_KINDS: tuple[AlarmKind, ...] = ("idle", "no-capacity", "overload", "underload")


def alarm_prefix(deployment: str) -> str:
    """Every CloudWatch alarm llmhost creates for a deployment starts with this."""
    return f"llmhost-{deployment}-"


def is_own_alarm(deployment: str, alarm_name: str) -> bool:
    """Is this one of ``deployment``'s alarms? The prefix alone also matches the alarms of
    a deployment whose name extends this one's ("demo" and "demo-zero")."""
    return alarm_name in {alarm_prefix(deployment) + kind for kind in ALARM_KINDS}


def deployment_tags(stack: str, deployment: str) -> dict[str, str]:
    """The tags marking a resource of one deployment (model, config, endpoint, component)."""
    return {STACK_TAG: stack, DEPLOYMENT_TAG: deployment}


def pool_tags(stack: str, pool: str) -> dict[str, str]:
    """The tags marking a shared pool's endpoint and endpoint config (no one deployment's)."""
    return {STACK_TAG: stack, POOL_TAG: pool}


def as_tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def not_ours(
    kind: str, name: str, tags: Mapping[str, str], stack: str, owner: tuple[str, str]
) -> str | None:
    """Why the existing SageMaker ``kind`` ``name`` is not this stack's (None if it is).

    ``owner`` is the identity tag it must carry: (``llmhost:deployment``, name) or
    (``llmhost:pool``, pool).
    """
    holder = tags.get(STACK_TAG)
    key, value = owner
    if holder == stack and tags.get(key) == value:
        return None
    if holder is None:
        whose = "was not created by llmhost (it has no llmhost:stack tag)"
    elif holder != stack:
        whose = f"belongs to llmhost stack '{holder}', not to this stack ('{stack}')"
    else:
        whose = f"belongs to another llmhost resource ({key} is '{tags.get(key, '')}')"
    return f"the SageMaker {kind} '{name}' already exists and {whose}"


def tags_of(sagemaker: Any, arn: str) -> dict[str, str]:
    """Every tag of a SageMaker resource (ListTags, all pages)."""
    tags: dict[str, str] = {}
    kwargs: dict[str, Any] = {"ResourceArn": arn, "MaxResults": 100}
    while True:
        page = sagemaker.list_tags(**kwargs)
        tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        if not page.get("NextToken"):
            return tags
        kwargs["NextToken"] = page["NextToken"]


def endpoint_conflict(
    sagemaker: Any, endpoint: str, stack: str, owner: tuple[str, str]
) -> str | None:
    """Why llmhost may not use the SageMaker endpoint ``endpoint`` (None: free, or ours)."""
    try:
        described = sagemaker.describe_endpoint(EndpointName=endpoint)
    except ClientError as error:
        if is_missing(error):
            return None
        raise
    return not_ours(
        "endpoint", endpoint, tags_of(sagemaker, described["EndpointArn"]), stack, owner
    )


def is_missing(error: ClientError) -> bool:
    """SageMaker reports a missing resource as a ValidationException "Could not find ..."."""
    err = error.response.get("Error", {})
    return err.get("Code") in {"ValidationException", "ResourceNotFound"} and (
        "Could not find" in err.get("Message", "") or err.get("Code") == "ResourceNotFound"
    )
