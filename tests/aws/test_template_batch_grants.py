"""template.yaml's roles grant every AWS call OpenAI's Batch API makes: the Files and Batches
routes (the stream function), a batch advanced from validation to its files (the batch
function) and a line's end counted (the jobs function), run against moto with their calls
recorded, each checked against its role, down to the table and the bucket prefix."""

from __future__ import annotations

import fnmatch
import json
from typing import Any
from urllib.parse import unquote

import pytest

import sam_template as sam

TABLE = "llmhost-jobs-grants"
BUCKET = "llmhost-jobs-grants"
# boto3 operations authorized by an IAM action of another name (S3's, Lambda's).
ACTIONS = {
    "s3:ListObjectsV2": ["s3:ListBucket"],
    "s3:HeadObject": ["s3:GetObject"],
    "s3:CopyObject": ["s3:GetObject", "s3:PutObject"],
    "lambda:Invoke": ["lambda:InvokeFunction"],
    # SQS authorizes a batch call by its single action's name.
    "sqs:SendMessageBatch": ["sqs:SendMessage"],
}
RESOURCES = {TABLE: "JobsTable", "llmhost-registry-test": "RegistryTable"}


@pytest.fixture
def aws_calls(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    from llmhost import aws, runtime

    aws.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    aws.client("s3").create_bucket(Bucket=BUCKET)
    queue = aws.client("sqs").create_queue(QueueName="llmhost-jobs-grants")["QueueUrl"]
    for name, value in {
        "JOBS_TABLE": TABLE,
        "JOBS_BUCKET": BUCKET,
        "JOBS_QUEUE_URL": queue,
        "BATCH_FUNCTION_NAME": "llmhost-batch",
    }.items():
        monkeypatch.setenv(name, value)
    runtime.reset()
    calls: list[tuple[str, dict[str, Any]]] = []

    def attach(service: str, client: Any) -> None:
        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            calls.append((f"{service}:{model.name}", dict(params)))

        client.meta.events.register("before-parameter-build", record)

    aws.reset()
    aws.add_customizer(attach)
    return calls


def _granted(template: dict[str, Any], role: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    grants = sam.grants(template, role)
    assert calls, "nothing was recorded"
    for call, params in calls:
        if call == "dynamodb:TransactWriteItems":
            # IAM authorizes each item of a transaction by its own action, on its table.
            for item in params["TransactItems"]:
                ((kind, action_params),) = item.items()
                action = f"dynamodb:{kind}Item"  # Put, Update, Delete, ConditionCheck
                assert action in grants, f"{role} lacks {action} (in a transaction)"
                table = action_params["TableName"]
                assert RESOURCES[table] in json.dumps(grants[action]), (role, action, table)
            continue
        for action in ACTIONS.get(call, [call]):
            assert action in grants, f"{role} lacks {action} ({call})"
            resources = json.dumps(grants[action])
            if "TableName" in params:
                assert RESOURCES[params["TableName"]] in resources, (role, action, params)
            elif "RequestItems" in params:
                assert all(RESOURCES[t] in resources for t in params["RequestItems"]), action
            elif call == "s3:ListObjectsV2":
                statement = _statement(template, role, action)
                prefixes = sam.as_list(statement["Condition"]["StringLike"]["s3:prefix"])
                assert any(fnmatch.fnmatchcase(params["Prefix"], p) for p in prefixes), params
            elif call.startswith("s3:"):
                key = params["Key"]
                if call == "s3:CopyObject" and action == "s3:GetObject":
                    # botocore has made the source "bucket/key" (URL-encoded) by now
                    key = unquote(str(params["CopySource"])).split("/", 1)[1]
                patterns = [
                    r["Fn::Sub"].split("}/", 1)[1]
                    for r in grants[action]
                    if isinstance(r, dict) and "Fn::Sub" in r
                ]
                assert any(fnmatch.fnmatchcase(key, p) for p in patterns), (role, action, key)
            elif call == "lambda:Invoke":
                assert {"Fn::GetAtt": ["BatchFunction", "Arn"]} in grants[action], role


def _statement(template: dict[str, Any], role: str, action: str) -> dict[str, Any]:
    return next(
        s
        for s in sam.role_statements(template, role)
        if action in sam.as_list(s["Action"]) and s["Effect"] == "Allow"
    )


def _line(custom_id: str, model: str) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        }
    )


def test_batch_calls_are_granted_to_the_function_that_makes_them(
    aws_calls: list[tuple[str, dict[str, Any]]],
) -> None:
    from llmhost import runtime
    from llmhost.batches.progress import line_finished
    from llmhost.batches.record import line_job_id
    from llmhost.specs import parse_spec

    template = sam.load()
    runtime.deployments().create(
        parse_spec({"name": "demo", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}})
    )
    batches = runtime.batches()
    # Given the stream function's routes: upload, create (handed over), read, list, delete
    del aws_calls[:]
    upload = batches.upload(
        "in.jsonl", "batch", "\n".join([_line("a", "demo"), _line("b", "x")]).encode()
    )
    batches.store.get_file(upload.id)
    batches.store.file_content(upload.id)
    batch = batches.create(upload.id, "/v1/chat/completions", "24h")
    batches.retrieve(batch.id)
    batches.page(after=batch.id)
    batches.page()
    _granted(template, "StreamFunctionRole", aws_calls)
    # When the batch function advances it: validates, starts its lines (one refused)
    del aws_calls[:]
    batches.advance(batch.id)
    assert "dynamodb:TransactWriteItems" in {call for call, _ in aws_calls}
    assert "sqs:SendMessageBatch" in {call for call, _ in aws_calls}
    _granted(template, "BatchFunctionRole", aws_calls)
    # And the jobs worker ends its remaining line and counts it (handing the batch over)
    jobs = runtime.jobs()
    jobs.complete(line_job_id(batch.id, 1), result={"object": "chat.completion"})
    del aws_calls[:]
    line_finished(batch.id, "SUCCEEDED")
    _granted(template, "JobsFunctionRole", aws_calls)
    # Then the batch function finalises it, and the sweep lists what is open
    del aws_calls[:]
    assert batches.advance(batch.id).status == "completed"
    batches.sweep()
    _granted(template, "BatchFunctionRole", aws_calls)
    # And the routes delete a file and cancel (a new batch)
    del aws_calls[:]
    again = batches.create(upload.id, "/v1/chat/completions", "24h")
    batches.cancel(again.id)
    batches.store.delete_file(upload.id)
    _granted(template, "StreamFunctionRole", aws_calls)
