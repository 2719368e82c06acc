"""template.yaml's storage: the registry table, the documents bucket, and the S3
notifications that send documents to ingestion (with the S3 samples in events/).
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

import sam_template as sam


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def test_registry_table(template: dict[str, Any]) -> None:
    table = template["Resources"]["RegistryTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "name", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "name", "AttributeType": "S"}]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"


def test_documents_bucket_is_private_encrypted_and_kept(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["DocumentsBucket"]
    assert bucket["Type"] == "AWS::S3::Bucket"
    assert (bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == ("Retain", "Retain")
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    # Plain-HTTP requests are refused for everyone.
    policy = template["Resources"]["DocumentsBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "DocumentsBucket"}
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"}
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert {"s3:GetObject", "s3:PutObject"} <= set(deny["Action"])


def _ingest_notifications(template: dict[str, Any]) -> list[dict[str, Any]]:
    events = sam.functions(template)["IngestFunction"]["Events"]
    assert {e["Type"] for e in events.values()} == {"S3"}
    return [e["Properties"] for e in events.values()]


def _key_filter(notification: dict[str, Any]) -> dict[str, str]:
    rules = notification["Filter"]["S3Key"]["Rules"]
    # S3 takes at most one prefix and one suffix rule per notification.
    assert sorted(r["Name"] for r in rules) == ["prefix", "suffix"]
    return {r["Name"]: r["Value"] for r in rules}


def test_s3_notifications_cover_the_document_types_the_code_ingests(
    template: dict[str, Any],
) -> None:
    from llmhost.rag.ingest import JSONL_SUFFIX, TEXT_SUFFIXES
    from llmhost.rag.s3_events import PREFIX

    notifications = _ingest_notifications(template)
    filters = [_key_filter(n) for n in notifications]
    for notification in notifications:
        assert notification["Bucket"] == {"Ref": "DocumentsBucket"}
        # Puts, copies and multipart uploads index; deletes remove the chunks.
        assert notification["Events"] == ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    # One rule per suffix the code reads, all under the prefix it parses collections from.
    assert {f["prefix"] for f in filters} == {PREFIX}
    suffixes = [f["suffix"] for f in filters]
    assert sorted(suffixes) == sorted({*TEXT_SUFFIXES, JSONL_SUFFIX})
    # S3 refuses rules of one event type whose filters overlap: no suffix may end another.
    for a in suffixes:
        for b in suffixes:
            assert a == b or not a.endswith(b), (a, b)
    # Failed notifications (after Lambda's retries) land in the ingest dead-letter queue.
    config = sam.functions(template)["IngestFunction"]["EventInvokeConfig"]
    assert config["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["IngestDeadLetterQueue", "Arn"]},
    }
    assert any(
        s.get("Sid") == "DeadLetters" for s in sam.role_statements(template, "IngestFunctionRole")
    )


def _s3_sample_matches(template: dict[str, Any], record: dict[str, Any]) -> bool:
    key = record["s3"]["object"]["key"]
    for notification in _ingest_notifications(template):
        rule = _key_filter(notification)
        if not (key.startswith(rule["prefix"]) and key.endswith(rule["suffix"])):
            continue
        for pattern in notification["Events"]:
            if fnmatch.fnmatchcase("s3:" + record["eventName"], pattern):
                return True
    return False


def test_s3_samples_pass_the_filters_and_map_to_ingest_and_delete(
    template: dict[str, Any],
) -> None:
    from llmhost.rag.s3_events import ObjectChange, changes_from_event

    expected = {
        "s3-object-created.json": ("ObjectCreated:Put", "ingest"),
        "s3-object-removed.json": ("ObjectRemoved:Delete", "delete"),
    }
    for name, (event_name, action) in expected.items():
        event = json.loads((sam.EVENTS / name).read_text())
        (record,) = event["Records"]
        assert (record["eventSource"], record["eventVersion"]) == ("aws:s3", "2.1"), name
        assert record["eventName"] == event_name, name
        bucket = record["s3"]["bucket"]
        assert bucket["arn"] == f"arn:aws:s3:::{bucket['name']}", name
        assert record["s3"]["object"]["key"] == "collections/docs/guide.md", name
        # A created object names its size and ETag; a deleted one no longer has them.
        assert ("size" in record["s3"]["object"]) == (action == "ingest"), name
        assert _s3_sample_matches(template, record), f"{name} would not reach the function"
        (change,) = changes_from_event(event)
        assert isinstance(change, ObjectChange), name
        assert (change.action, change.collection, change.bucket) == (action, "docs", bucket["name"])
    # And a file type the code cannot read never reaches it.
    pdf = json.loads((sam.EVENTS / "s3-object-created.json").read_text())["Records"][0]
    pdf["s3"]["object"]["key"] = "collections/docs/guide.pdf"
    assert not _s3_sample_matches(template, pdf)
