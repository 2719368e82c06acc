"""The jobs table against moto, created as template.yaml declares it (indexes, TTL): every
state change is one conditional write, so duplicates and races cannot double a job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from conftest import ROOT

NOW = 1_800_000_000.0
ISO = "2027-01-15T08:00:00.000Z"


@pytest.fixture
def jobs_aws(moto_aws: None) -> Any:
    """The jobs table, bucket and queues as the local runner provisions them."""
    from llmhost import aws
    from llmhost_local.queues import jobs_source, provision_jobs

    return provision_jobs(
        aws.client("dynamodb"),
        aws.client("s3"),
        aws.client("sqs"),
        jobs_source(ROOT / "template.yaml"),
    )


@pytest.fixture
def store(jobs_aws: Any) -> Any:
    from llmhost import aws
    from llmhost.jobs.store import JobStore

    return JobStore(aws.client("dynamodb"), jobs_aws.table)


def job(**fields: Any) -> Any:
    from llmhost.jobs.record import Job, new_job_id

    values: dict[str, Any] = {
        "id": new_job_id(),
        "kind": "chat",
        "model": "demo",
        "request": {"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
        "created_at": ISO,
        "expires_at": int(NOW) + 7 * 86400,
    }
    values.update(fields)
    return Job.model_validate(values)


def claim(store: Any, job_id: str, now: float = NOW, lease: float = 900) -> Any:
    return store.claim(job_id, now_s=now, now_iso=ISO, lease_s=lease)


def test_create_is_idempotent_on_the_id(store: Any) -> None:
    # Given a job created once
    first = job()
    created, new = store.create(first)
    assert new and created == first
    # When the same id is created again with another request (a retried submit)
    again, new = store.create(first.model_copy(update={"request": {"other": True}}))
    # Then the stored job is returned unchanged, and nothing was overwritten
    assert not new
    assert again == first
    assert store.get(first.id).request == first.request


def test_a_job_reads_back_as_written_with_every_field(store: Any) -> None:
    from llmhost.jobs.record import JobError

    original = job(
        kind="rag",
        batch_id="batch_abc",
        custom_id="line-7",
        route="queue",
        request={"model": "demo", "question": "why?", "temperature": 0.25},
    )
    store.create(original)
    assert store.get(original.id) == original
    claimed = claim(store, original.id)
    assert claimed.started_at == ISO and claimed.lease_until == NOW + 900
    store.complete(original.id, now_iso=ISO, error=JobError(code="x", message="y"))
    ended = store.get(original.id)
    assert ended.error == JobError(code="x", message="y") and ended.lease_until is None
    assert ended.request == original.request


def test_missing_job_is_not_found(store: Any) -> None:
    from llmhost.jobs.record import JobNotFound

    with pytest.raises(JobNotFound, match="no job with id 'job-nope'"):
        store.get("job-nope")
    assert claim(store, "job-nope") is None
    assert store.complete("job-nope", now_iso=ISO, result={"a": 1}) is False


def test_claim_takes_a_queued_job_once_while_its_lease_runs(store: Any) -> None:
    queued = job()
    store.create(queued)
    # When two workers claim the same job (a duplicate delivery)
    first = claim(store, queued.id)
    second = claim(store, queued.id, now=NOW + 10)
    # Then only the first gets it
    assert first.status == "RUNNING" and first.attempts == 1
    assert second is None


def test_a_job_whose_worker_died_is_claimed_again_after_its_lease(store: Any) -> None:
    queued = job()
    store.create(queued)
    claim(store, queued.id, lease=60)
    # When the message comes back after the lease ran out (the worker died)
    again = claim(store, queued.id, now=NOW + 61)
    # Then the new worker owns it, attempt 2, and its start time is the first one
    assert again.status == "RUNNING" and again.attempts == 2
    assert again.started_at == ISO and again.lease_until == NOW + 61 + 900


def test_complete_once_and_a_duplicate_is_a_no_op(store: Any) -> None:
    from llmhost.jobs.record import JobError

    queued = job()
    store.create(queued)
    claim(store, queued.id)
    assert store.complete(queued.id, now_iso=ISO, result={"answer": "first"}) is True
    # When a second completion arrives (a duplicate delivery or notification)
    assert store.complete(queued.id, now_iso="later", result={"answer": "second"}) is False
    assert store.complete(queued.id, now_iso="later", error=JobError(code="a", message="b")) is (
        False
    )
    # Then the first outcome stands, and an ended job cannot be claimed again
    ended = store.get(queued.id)
    assert (ended.status, ended.finished_at) == ("SUCCEEDED", ISO)
    assert ended.result == {"answer": "first"}
    assert ended.error is None
    assert claim(store, queued.id, now=NOW + 10_000) is None


def test_a_large_result_is_kept_by_its_key(store: Any) -> None:
    queued = job()
    store.create(queued)
    assert store.complete(queued.id, now_iso=ISO, result_key=f"jobs/{queued.id}/result.json")
    ended = store.get(queued.id)
    assert ended.result is None and ended.result_key == f"jobs/{queued.id}/result.json"


def test_release_hands_the_job_back_only_for_its_holder(store: Any) -> None:
    queued = job()
    store.create(queued)
    claim(store, queued.id, lease=60)
    claim(store, queued.id, now=NOW + 61)  # another worker took over: attempt 2
    assert store.release(queued.id, attempts=1) is None
    released = store.release(queued.id, attempts=2)
    assert released.status == "QUEUED" and released.lease_until is None


def test_cancel_only_while_queued(store: Any) -> None:
    from llmhost.jobs.record import JobAlreadyStarted, JobNotFound

    queued, started = job(), job()
    store.create(queued)
    store.create(started)
    claim(store, started.id)
    assert store.cancel(queued.id, now_iso=ISO).status == "CANCELLED"
    with pytest.raises(JobAlreadyStarted, match="is RUNNING: only a QUEUED job"):
        store.cancel(started.id, now_iso=ISO)
    with pytest.raises(JobAlreadyStarted, match="is CANCELLED"):
        store.cancel(queued.id, now_iso=ISO)
    with pytest.raises(JobNotFound):
        store.cancel("job-missing", now_iso=ISO)
    # A cancelled job is never run
    assert claim(store, queued.id) is None


def _all_pages(store: Any, **filters: Any) -> list[str]:
    ids: list[str] = []
    token = None
    for _ in range(50):
        page = store.list(limit=2, next_token=token, **filters)
        ids += [j.id for j in page.jobs]
        token = page.next_token
        if token is None:
            return ids
    raise AssertionError("pagination did not end")


def test_list_filters_by_model_and_status_newest_first_across_pages(store: Any) -> None:
    from llmhost.jobs.record import new_job_id

    made = []
    for i, model in enumerate(["demo", "other", "demo", "demo", "other"]):
        at = datetime.fromtimestamp(NOW + i, UTC).isoformat()
        made.append(job(id=new_job_id(NOW + i), model=model, created_at=at))
    for item in made:
        store.create(item)
    claim(store, made[2].id)
    demo = [j.id for j in made if j.model == "demo"]
    assert _all_pages(store, model="demo") == demo[::-1]
    assert _all_pages(store, model="demo", status="QUEUED") == [made[3].id, made[0].id]
    assert _all_pages(store, status="RUNNING") == [made[2].id]
    assert sorted(_all_pages(store)) == sorted(j.id for j in made)
    assert _all_pages(store, model="nobody") == []


def test_list_a_batch_lines_in_order(store: Any) -> None:
    from llmhost.jobs.record import batch_line_id

    for line in (2, 0, 1):
        store.create(job(id=batch_line_id("batch_x", line), batch_id="batch_x"))
    store.create(job())
    assert _all_pages(store, batch_id="batch_x") == [
        "batch_x-000000",
        "batch_x-000001",
        "batch_x-000002",
    ]


@pytest.mark.parametrize(
    "token",
    ["not base64!", "e30", "W10", "eyJpZCI6MX0", "eyJpZCI6ImEiLCJ4IjoiYiJ9"],
)
def test_a_token_not_from_this_listing_is_refused(store: Any, token: str) -> None:
    from llmhost.jobs.record import PageTokenInvalid

    # ("{}", "[]", {"id": 1}, an unknown key, garbage) on the by-model listing
    with pytest.raises(PageTokenInvalid, match="next_token"):
        store.list(model="demo", next_token=token)


def test_a_token_from_another_listing_is_refused(store: Any) -> None:
    from llmhost.jobs.record import PageTokenInvalid

    for _ in range(3):
        store.create(job())
    token = store.list(limit=1).next_token  # an unfiltered (scan) token: {"id"}
    assert token
    with pytest.raises(PageTokenInvalid):
        store.list(model="demo", next_token=token)


def test_table_failures_are_typed(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    from llmhost.jobs.store import JobsTableError

    def throttled(**_: Any) -> Any:
        raise ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}},
            "GetItem",
        )

    monkeypatch.setattr(store._ddb, "get_item", throttled)
    with pytest.raises(JobsTableError) as raised:
        store.get("job-x")
    assert (raised.value.status, raised.value.retry_after) == (503, 2)
