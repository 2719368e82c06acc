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


def test_internal_items_and_removes_name_no_deployment() -> None:
    sample = load_event("dynamodb-stream-spec-change.json")["Records"][0]

    def keyed(name: object, event_name: str = "MODIFY") -> dict:
        return {**sample, "eventName": event_name, "dynamodb": {"Keys": {"name": {"S": name}}}}

    records = [
        keyed("#budget#state"),
        keyed("#budget#2026-11-21"),
        keyed("#capacity#lock", "INSERT"),
        keyed("llama3-8b", "REMOVE"),
        keyed(42),
        keyed("x" * 10_000),
        {"eventSource": "aws:dynamodb"},
        "not a record",
        keyed("llama3-8b"),
    ]
    assert trigger_from_event({"Records": records}) == trigger_from_event(
        {"Records": [keyed("llama3-8b")]}
    )
    assert trigger_from_event({"Records": records[:-1]}).source == "ignored"


def test_a_direct_call_must_name_a_possible_deployment() -> None:
    assert trigger_from_event({"name": "llama3-8b"}).names == ("llama3-8b",)
    for bad in ("#budget#state", "", "a" * 500, None, 7):
        assert trigger_from_event({"name": bad}).source == "ignored"
