"""Every sample event in events/ maps to the deployments the reconciler must look at."""

from __future__ import annotations

from conftest import load_event
from llmhost.lifecycle.triggers import trigger_from_event


def test_stream_batch_names_each_deployment_once() -> None:
    event = load_event("dynamodb-stream-spec-change.json")
    trigger = trigger_from_event(event)
    names = [r["dynamodb"]["Keys"]["name"]["S"] for r in event["Records"]]
    assert trigger.source == "spec-change"
    assert list(trigger.names) == list(dict.fromkeys(names))


def test_endpoint_state_change_names_the_endpoint() -> None:
    for sample in (
        "sagemaker-endpoint-state-change-inservice.json",
        "sagemaker-endpoint-state-change-failed.json",
    ):
        event = load_event(sample)
        trigger = trigger_from_event(event)
        assert trigger.source == "sagemaker"
        assert trigger.endpoint == event["detail"]["EndpointName"]


def test_schedule_sweeps_everything() -> None:
    trigger = trigger_from_event(load_event("schedule-reconcile.json"))
    assert trigger.source == "schedule" and trigger.everything


def test_unrelated_events_are_ignored() -> None:
    assert (
        trigger_from_event({"source": "aws.ec2", "detail-type": "EC2 Instance State-change"}).source
        == "ignored"
    )
    assert trigger_from_event({"Records": [{"eventSource": "aws:sqs"}]}).source == "ignored"
