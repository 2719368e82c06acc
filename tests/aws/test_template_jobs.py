"""template.yaml's jobs resources: the table the store queries, the private bucket of
results, and the queue whose redrive ends a failing job in its dead-letter queue."""

from __future__ import annotations

from typing import Any

import pytest

import sam_template as sam


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def test_jobs_table_has_the_indexes_the_store_queries(template: dict[str, Any]) -> None:
    from llmhost.jobs.store import BY_BATCH, BY_MODEL, BY_STATUS

    table = template["Resources"]["JobsTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    keys = {
        index["IndexName"]: [k["AttributeName"] for k in index["KeySchema"]]
        for index in table["GlobalSecondaryIndexes"]
    }
    assert keys == {
        BY_MODEL: ["model", "created_key"],
        BY_STATUS: ["status", "created_key"],
        BY_BATCH: ["batch_id", "id"],
    }
    # The listings read whole jobs from the index.
    assert {i["Projection"]["ProjectionType"] for i in table["GlobalSecondaryIndexes"]} == {"ALL"}


def test_jobs_bucket_is_private_tls_only_and_expires_jobs(template: dict[str, Any]) -> None:
    props = template["Resources"]["JobsBucket"]["Properties"]
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    expiring = {
        r["Prefix"]: r["ExpirationInDays"]
        for r in props["LifecycleConfiguration"]["Rules"]
        if "ExpirationInDays" in r
    }
    assert expiring == {p: {"Ref": "JobRetentionDays"} for p in ("jobs/", "async/")}
    (deny,) = template["Resources"]["JobsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    retention = template["Parameters"]["JobRetentionDays"]
    assert retention["Default"] == 7 and retention["MinValue"] >= 1


def test_jobs_queue_redrives_to_its_dead_letter_queue(template: dict[str, Any]) -> None:
    queue = template["Resources"]["JobsQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]},
        "maxReceiveCount": 3,
    }
    # AWS's guidance for a Lambda event source: six times the function's timeout (900 s).
    assert queue["VisibilityTimeout"] >= 6 * 900
    for name in ("JobsQueue", "JobsDeadLetterQueue"):
        assert template["Resources"][name]["Properties"]["SqsManagedSseEnabled"] is True


def test_the_serve_role_may_delete_a_job_whose_submission_was_refused(
    template: dict[str, Any],
) -> None:
    # The serving API deletes a job it stored when the submission is refused before dispatch
    # (JobStore.discard): without DeleteItem, every such refusal would be a 500.
    role = template["Resources"]["ServeFunctionRole"]["Properties"]
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    (jobs,) = [s for s in statements if s.get("Sid") == "Jobs"]
    assert "dynamodb:DeleteItem" in jobs["Action"]
    assert {"Fn::GetAtt": ["JobsTable", "Arn"]} in jobs["Resource"]
