"""Holding a request for a cold model: the Prefer header, and the decision after each poll."""

from __future__ import annotations

import pytest

from llmhost.clock import CloudClock
from llmhost.serving.hold import (
    MAX_WAIT_S,
    HoldBounds,
    HoldOutlastsRequest,
    HoldPolicy,
    ModelState,
    PreferInvalid,
    Wait,
    next_step,
    poll_delay,
    wait_preference,
)

WAKING = ModelState("waking", "scaled to zero", expected_s=5)


# ------------------------------------------------------------------------ the preference


@pytest.mark.parametrize(
    ("values", "seconds"),
    [
        (["wait=20"], 20),
        (["WAIT = 7"], 7),  # names are case-insensitive; BWS around '='
        (['wait="12"'], 12),  # a quoted word
        (["respond-async, wait=5"], 5),  # other preferences are ignored
        (["return=minimal", "wait=3"], 3),  # several Prefer headers
        (["wait=3, wait=9"], 3),  # the first instance counts (RFC 7240 section 2)
        (["wait=8;foo=bar"], 8),  # parameters are ignored
        (['handling="a,wait=1", wait=4'], 4),  # a comma inside quotes separates nothing
        (["wait=0"], 0),
        ([f"wait={MAX_WAIT_S + 1}"], MAX_WAIT_S),  # clamped
        (["wait=" + "9" * 40], MAX_WAIT_S),
        (["return=minimal"], None),
        ([], None),
    ],
)
def test_the_wait_preference_is_read_as_rfc_7240_says(values: list[str], seconds: int) -> None:
    assert wait_preference(values) == seconds


@pytest.mark.parametrize(
    "value", ["wait=-1", "wait=1.5", "wait=soon", "wait", "wait=", "wait=\u0661"]
)
def test_a_wait_that_is_not_whole_seconds_is_refused_naming_the_header(value: str) -> None:
    with pytest.raises(PreferInvalid) as refused:
        wait_preference([value])
    assert refused.value.status == 400
    assert "Prefer" in refused.value.message and "wait=20" in refused.value.message


# ----------------------------------------------------------------------- the decision


def test_a_ready_model_is_answered_and_a_failed_one_ends_the_hold() -> None:
    bounds = HoldBounds(wait_until=100, hold_until=100)
    assert next_step(0, bounds, ModelState("ready"), 0) == "answer"
    assert next_step(0, bounds, ModelState("failed", "failed to deploy"), 3) == "end"


def test_a_waking_model_is_polled_with_backoff_never_past_the_end() -> None:
    # Given a caller who waits 20 s in a function that may hold 100 s
    bounds = HoldBounds(wait_until=20, hold_until=100)
    # Then polls come after 1, 2, 4, 8 s, then every 15 s
    delays = [next_step(0, bounds, WAKING, polls) for polls in range(6)]
    assert delays == [Wait(1), Wait(2), Wait(4), Wait(8), Wait(15), Wait(15)]
    # And the last one ends with the caller's wait
    assert next_step(17, bounds, WAKING, 6) == Wait(3)


def test_when_the_wait_runs_out_the_refusal_is_the_answer() -> None:
    bounds = HoldBounds(wait_until=20, hold_until=100)
    assert next_step(20, bounds, WAKING, 5) == "give_up"
    # the function's own bound ends it too, for a function that cannot make jobs
    assert next_step(16, HoldBounds(wait_until=60, hold_until=16), WAKING, 5) == "give_up"


def test_a_wait_beyond_the_function_becomes_a_job_at_once_or_at_the_bound() -> None:
    # Given the serve function (16 s to hold) and a caller who waits 5 minutes
    bounds = HoldBounds(wait_until=300, hold_until=16, as_job=True)
    # When the wake is estimated at 5 minutes: a job at once (no hold API Gateway ends)
    assert next_step(0, bounds, ModelState("waking", "asleep", expected_s=300), 0) == ("become_job")
    # When it is estimated at 5 s: held, and a job only if it is still waking at the bound
    assert next_step(0, bounds, WAKING, 0) == Wait(1)
    assert next_step(16, bounds, WAKING, 4) == "become_job"
    # And a caller who waits less than the function can hold never becomes a job
    short = HoldBounds(wait_until=10, hold_until=16, as_job=True)
    assert next_step(10, short, WAKING, 4) == "give_up"


def test_a_hold_the_estimate_says_cannot_end_in_time_answers_at_once() -> None:
    bounds = HoldBounds(wait_until=20, hold_until=100)
    # A wake estimated at 10 minutes, 20 s to wait: the 503 and its Retry-After now
    assert next_step(0, bounds, ModelState("waking", "asleep", expected_s=600), 0) == "give_up"
    # Within twice the time left, the estimate may be wrong in the caller's favour: held
    assert next_step(0, bounds, ModelState("waking", "asleep", expected_s=40), 0) == Wait(1)


def test_polls_are_compressed_with_the_clouds_clock_but_not_below_a_floor() -> None:
    # make run's clock (60x): 1 s of cloud time is 1/60 s, 15 s a quarter
    local = CloudClock(speed=60)
    assert poll_delay(0, local) == pytest.approx(0.05)
    assert poll_delay(10, local) == pytest.approx(0.25)
    assert poll_delay(1000, CloudClock()) == 15


def test_the_policy_keeps_time_for_the_answer() -> None:
    # Given the serve function: 29 s left, model calls of up to 12 s
    hold = HoldPolicy(answer_s=12).hold(300, 29, as_job=True, monotonic=lambda: 1000.0)
    # Then it holds until 13 s before the end (12 s for the answer, 1 s for the reply)
    assert hold.bounds == HoldBounds(wait_until=1300, hold_until=1016, as_job=True)
    # And a function with little time keeps half of it for the answer
    short = HoldPolicy(answer_s=120).hold(60, 30, monotonic=lambda: 0.0)
    assert short.bounds.hold_until == 14


def test_a_hold_raises_the_refusal_or_a_job_and_counts_its_polls() -> None:
    from llmhost.serving.errors import ModelUnavailable
    from llmhost.serving.routing import ModelNotReady, ModelWillNotWake

    now = [0.0]
    hold = HoldPolicy(answer_s=12).hold(60, 29, as_job=True, monotonic=lambda: now[0])
    # A component at zero copies, estimated 5 s: a first poll after 1 s
    zero = ModelUnavailable("sleeping", retry_after=5)
    assert hold.next(zero) == Wait(1)
    assert hold.state == "scaled to zero"
    # A model that failed to deploy: the refusal itself ends the hold
    failed = ModelWillNotWake("model 'm' failed to deploy: boom", retry_after=5)
    with pytest.raises(ModelWillNotWake):
        hold.next(failed)
    # A refusal no wake will end (SageMaker unavailable): also the end
    with pytest.raises(ModelUnavailable):
        hold.next(ModelUnavailable("service_unavailable"))
    # At the function's bound, a caller who waits longer gets a job
    now[0] = 16
    with pytest.raises(HoldOutlastsRequest) as outlasting:
        hold.next(ModelNotReady("model 'm' is waking up", retry_after=5))
    assert outlasting.value.retry_after == 5


def test_the_stream_function_holds_within_its_invocations_deadline() -> None:
    import json
    import time

    from llmhost.serving.http_app import _time_left

    # The Lambda Web Adapter's context header: the invocation ends in 100 s
    header = json.dumps({"request_id": "r", "deadline": (time.time() + 100) * 1000})
    assert 90 < _time_left(header, 300) <= 100
    # Never more than the function's timeout (a client may send the header itself)
    far = json.dumps({"deadline": (time.time() + 10_000) * 1000})
    assert _time_left(far, 300) == 300
    # Without it, or unreadable, the function's timeout is all there is
    for unreadable in (None, "", "not json", "[1]", '{"deadline": "soon"}', '{"deadline": true}'):
        assert _time_left(unreadable, 300) == 300
