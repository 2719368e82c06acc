"""The job's rules, with no AWS: its id and the transitions a job may make."""

from __future__ import annotations

import re

import pytest

from llmhost.jobs.record import (
    STATUSES,
    TERMINAL,
    batch_line_id,
    can_transition,
    new_job_id,
)


def test_ids_are_ulid_like_and_sort_by_creation_time() -> None:
    ids = [new_job_id(1_700_000_000.0 + i) for i in range(5)]
    for job_id in ids:
        assert re.fullmatch(r"job-[0-9a-hjkmnp-tv-z]{26}", job_id)
    assert ids == sorted(ids)
    assert len({new_job_id(1_700_000_000.0) for _ in range(100)}) == 100


def test_a_batch_line_id_is_the_same_every_time() -> None:
    assert batch_line_id("batch_abc", 7) == "batch_abc-000007"


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_an_ended_job_never_changes(status: str) -> None:
    assert not any(can_transition(status, new) for new in STATUSES)


def test_transitions() -> None:
    allowed = {(a, b) for a in STATUSES for b in STATUSES if can_transition(a, b)}
    assert allowed == {
        ("QUEUED", "RUNNING"),
        ("QUEUED", "SUCCEEDED"),  # an asynchronous endpoint's notification needs no claim
        ("QUEUED", "FAILED"),
        ("QUEUED", "CANCELLED"),
        ("RUNNING", "RUNNING"),  # a lease that ran out is taken over
        ("RUNNING", "QUEUED"),  # handed back to run later (the model is waking)
        ("RUNNING", "SUCCEEDED"),
        ("RUNNING", "FAILED"),
    }
