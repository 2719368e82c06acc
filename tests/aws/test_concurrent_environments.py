"""Execution environments that run at the same time in one process (the local gateway runs
each function's environments as threads of one Python process, and tests call handlers from
threads): each invocation answers its own event, whatever the others are doing.

Lambda runs each environment in a process of its own, so state Powertools keeps for the
process (not for one app or one Metrics) is per environment there. Here it is shared by every
copy of a function's module, so it must not carry anything that belongs to one invocation:
the resolver's current event, the metrics counted so far.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

from conftest import api_function

PLANNED = {"model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}


def _held_between_receiving_and_routing(
    monkeypatch: pytest.MonkeyPatch, thread_name: str, release: threading.Event
) -> threading.Event:
    """Hold the invocation running on ``thread_name`` after its resolver took the event and
    before it routes it, until ``release``; returns an event set once it is held."""
    held = threading.Event()
    route = ApiGatewayResolver._resolve

    def holding(self: Any) -> Any:
        if threading.current_thread().name == thread_name:
            held.set()
            assert release.wait(30), "the other invocation never answered"
        return route(self)

    monkeypatch.setattr(ApiGatewayResolver, "_resolve", holding)
    return held


def _in_thread(name: str, call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["answer"] = call()
        except Exception as error:  # reported by the assertion below
            result["answer"] = error

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread, result


def test_two_environments_answer_their_own_events_when_their_invocations_overlap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given two execution environments of the api function, as the local gateway starts them
    first, second = api_function(), api_function()
    second_answered = threading.Event()
    first_held = _held_between_receiving_and_routing(monkeypatch, "first", second_answered)
    # When the first has received its request, and the second gets one and answers it
    thread, first_result = _in_thread(
        "first", lambda: first("POST", "/v1/plan", {"name": "plan-a", **PLANNED})
    )
    assert first_held.wait(30), "the first invocation never reached routing"
    try:
        second_status, second_body = second("POST", "/v1/plan", {"name": "plan-b", **PLANNED})
    finally:
        second_answered.set()
        thread.join(60)
    # Then each answers its own request, not the other's
    assert (second_status, second_body.get("name")) == (200, "plan-b"), second_body
    first_status, first_body = first_result["answer"]
    assert (first_status, first_body.get("name")) == (200, "plan-a"), first_body


def test_one_environment_called_from_two_threads_answers_each_its_own_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given one api function whose handler two threads call at once (as tests do)
    api = api_function()
    second_answered = threading.Event()
    first_held = _held_between_receiving_and_routing(monkeypatch, "first", second_answered)
    # When the first call is held after receiving its event, and a GET for a route that does
    # not exist runs meanwhile
    thread, first_result = _in_thread(
        "first", lambda: api("POST", "/v1/plan", {"name": "plan-a", **PLANNED})
    )
    assert first_held.wait(30), "the first invocation never reached routing"
    try:
        second_status, second_body = api("GET", "/v1/no-such-route")
    finally:
        second_answered.set()
        thread.join(60)
    # Then each answers its own request
    assert second_status == 404 and "GET /v1/no-such-route" in second_body["error"]["message"]
    first_status, first_body = first_result["answer"]
    assert (first_status, first_body.get("name")) == (200, "plan-a"), first_body


def test_an_invocation_publishes_its_own_metrics_not_another_environments(
    moto_aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two execution environments of the api function, the first creating a deployment
    # (it counts DeploymentCreated) and held after its route answered, before it publishes
    first, second = api_function(), api_function()
    second_answered = threading.Event()
    held = threading.Event()
    route = ApiGatewayResolver._resolve

    def holding_after(self: Any) -> Any:
        answer = route(self)
        if threading.current_thread().name == "first":
            held.set()
            assert second_answered.wait(30), "the other invocation never answered"
        return answer

    monkeypatch.setattr(ApiGatewayResolver, "_resolve", holding_after)
    spec = {"name": "counted", **PLANNED, "hosting": {"kind": "dedicated"}}
    thread, first_result = _in_thread("first", lambda: first("POST", "/v1/deployments", spec))
    assert held.wait(30), "the first invocation never answered"
    # When the second environment answers a request that counts nothing, and publishes
    capsys.readouterr()
    try:
        status, _ = second("GET", "/v1/deployments")
        published_by_second = capsys.readouterr().out
    finally:
        second_answered.set()
        thread.join(60)
    published_by_first = capsys.readouterr().out
    # Then the second publishes nothing of the first's, and the first publishes its own count
    assert status == 200
    assert "DeploymentCreated" not in published_by_second, published_by_second
    assert first_result["answer"][0] == 201, first_result["answer"]
    assert "DeploymentCreated" in published_by_first, published_by_first
