"""The Jobs API through the serve function's handler (API Gateway proxy events) and the jobs
function on its queue, against moto; and every AWS call both make checked against their
roles in template.yaml."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

import sam_template as sam
from conftest import ROOT, load_event

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}


class StandInServing:
    def __init__(self) -> None:
        self.calls = 0

    def chat(self, request: Any, watch: Any = None) -> dict[str, Any]:
        self.calls += 1
        return {"object": "chat.completion", "model": request.model, "answer": "hi"}

    def rag(self, request: Any, watch: Any = None) -> dict[str, Any]:
        self.calls += 1
        return {"answer": "because", "model": request.model}


@pytest.fixture
def stack(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The jobs' resources as provisioned locally, their variables set as the template sets
    them, a deployment "demo", and the serve and jobs functions loaded."""
    from llmhost import aws, runtime
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.specs import parse_spec
    from llmhost_local.cloud import load_handler
    from llmhost_local.queues import jobs_source, provision_jobs

    source = jobs_source(ROOT / "template.yaml")
    resources = provision_jobs(
        aws.client("dynamodb"), aws.client("s3"), aws.client("sqs"), source, speed=5400
    )
    for key, value in resources.environment(source.max_receive_count).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("JOBS_RETRY_DELAY_S", "0")
    spec = {
        "name": "demo",
        "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
        "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    }
    runtime.registry().create(DeploymentRecord(name="demo", spec=parse_spec(spec)))
    serving = StandInServing()
    runtime.override(worker_serving_service=serving)
    return {
        "serve": load_handler("serve", "llmhost-serve"),
        "jobs": load_handler("jobs", "llmhost-jobs"),
        "resources": resources,
        "source": source,
        "serving": serving,
    }


def call(
    stack: dict[str, Any],
    method: str,
    path: str,
    body: Any = None,
    query: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    from llmhost_local.events import LambdaContext, api_gateway_event
    from llmhost_local.gateway import integration_for

    integration = integration_for(method, path)
    assert integration.function == "serve", path
    raw = json.dumps(body).encode() if body is not None else b""
    event = api_gateway_event(
        method,
        path,
        {"Content-Type": "application/json"},
        raw,
        "tester",
        resource=integration.resource,
        path_parameters=integration.path_parameters,
    )
    if query:
        event["queryStringParameters"] = query
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    response = stack["serve"].handler(event, LambdaContext("llmhost-serve"))
    headers = {**response.get("headers", {})}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers[name] = values[0]
    return response["statusCode"], json.loads(response["body"]), headers


def deliver(stack: dict[str, Any]) -> None:
    """Deliver what is on the queue to the jobs function, as the event source mapping does."""
    from llmhost import aws
    from llmhost_local.events import LambdaContext
    from llmhost_local.queues import QueuePoller

    resources = stack["resources"]
    poller = QueuePoller(
        aws.client("sqs"),
        resources.queue_url,
        resources.queue_arn,
        stack["source"],
        lambda event: stack["jobs"].handler(event, LambdaContext("llmhost-jobs")),
        region="us-east-1",
        wait_s=0,
    )
    while poller.poll():
        pass


def test_submit_poll_and_read_the_result(stack: dict[str, Any]) -> None:
    # When a chat job is submitted
    status, job, headers = call(stack, "POST", "/v1/jobs", {"type": "chat", "body": CHAT})
    # Then it is accepted, with where to poll
    assert status == 202, job
    assert headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "QUEUED" and job["kind"] == "chat" and job["model"] == "demo"
    assert "lease_until" not in job
    # And once the worker ran it, GET shows its result
    deliver(stack)
    status, done, _ = call(stack, "GET", headers["Location"])
    assert status == 200
    assert done["status"] == "SUCCEEDED" and done["result"]["answer"] == "hi"
    assert done["started_at"] and done["finished_at"] and done["attempts"] == 1


def test_the_sample_event_submits_a_job(stack: dict[str, Any]) -> None:
    from llmhost_local.events import LambdaContext

    response = stack["serve"].handler(load_event("api-job-submit.json"), LambdaContext("serve"))
    assert response["statusCode"] == 202, response["body"]
    assert json.loads(response["body"])["custom_id"] == "contract-42"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "chat", "body": {"model": "demo"}}, "body.messages"),
        ({"type": "chat", "body": {**CHAT, "max_tokens": 0}}, "body.max_tokens"),
        ({"type": "rag", "body": CHAT}, "body.query"),
        ({"type": "poem", "body": CHAT}, "type"),
        ({"body": CHAT}, "type"),
        ({"type": "chat", "body": CHAT, "extra": 1}, "extra"),
    ],
)
def test_a_bad_submission_is_a_422_naming_the_field(
    stack: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    status, answer, _ = call(stack, "POST", "/v1/jobs", body)
    assert status == 422, answer
    assert field in [f["field"] for f in answer["error"]["fields"]]


def test_the_jobs_body_is_refused_exactly_as_the_synchronous_route_refuses_it(
    stack: dict[str, Any],
) -> None:
    bad = {"model": "demo", "messages": [{"role": "assistant", "content": "no user turn"}]}
    sync_status, sync_answer, _ = call(stack, "POST", "/v1/chat/completions", bad)
    job_status, job_answer, _ = call(stack, "POST", "/v1/jobs", {"type": "chat", "body": bad})
    assert sync_status == job_status == 422
    # (the job's body is the request's "body" field: its fields are under it)
    expected = [
        ("body" if f["field"] == "body" else f"body.{f['field']}", f["message"])
        for f in sync_answer["error"]["fields"]
    ]
    assert expected == [(f["field"], f["message"]) for f in job_answer["error"]["fields"]]
    assert sync_answer["error"]["code"] == job_answer["error"]["code"]


def test_unknown_model_job_and_token(stack: dict[str, Any]) -> None:
    status, answer, _ = call(
        stack, "POST", "/v1/jobs", {"type": "chat", "body": {**CHAT, "model": "ghost"}}
    )
    assert status == 404 and "ghost" in answer["error"]["message"]
    status, answer, _ = call(stack, "GET", "/v1/jobs/job-00000000000000000000000000")
    assert status == 404 and answer["error"]["code"] == "not_found"
    status, answer, _ = call(stack, "GET", "/v1/jobs", query={"next_token": "bogus"})
    assert status == 400 and "next_token" in answer["error"]["message"]
    status, answer, _ = call(stack, "GET", "/v1/jobs", query={"status": "DONE"})
    assert status == 422 and answer["error"]["fields"][0]["field"] == "status"


def test_list_filters_and_pages(stack: dict[str, Any]) -> None:
    ids = [
        call(stack, "POST", "/v1/jobs", {"type": "chat", "body": CHAT})[1]["id"] for _ in range(3)
    ]
    seen: list[str] = []
    token = None
    for _ in range(5):
        query = {"model": "demo", "status": "QUEUED", "limit": "2"}
        if token:
            query["next_token"] = token
        status, page, _ = call(stack, "GET", "/v1/jobs", query=query)
        assert status == 200, page
        seen += [j["id"] for j in page["jobs"]]
        token = page["next_token"]
        if not token:
            break
    assert seen == ids[::-1]
    status, page, _ = call(stack, "GET", "/v1/jobs", query={"status": "SUCCEEDED"})
    assert page["jobs"] == [] and page["count"] == 0


def test_cancel_before_it_starts_and_409_after(stack: dict[str, Any]) -> None:
    _, queued, _ = call(stack, "POST", "/v1/jobs", {"type": "chat", "body": CHAT})
    status, cancelled, _ = call(stack, "DELETE", f"/v1/jobs/{queued['id']}")
    assert status == 200 and cancelled["status"] == "CANCELLED"
    # A DELETE sent again (a client's retry after a lost answer) finds it cancelled: 200
    status, again, _ = call(stack, "DELETE", f"/v1/jobs/{queued['id']}")
    assert status == 200 and again == cancelled
    _, ran, _ = call(stack, "POST", "/v1/jobs", {"type": "chat", "body": CHAT})
    deliver(stack)
    status, refused, _ = call(stack, "DELETE", f"/v1/jobs/{ran['id']}")
    assert status == 409 and refused["error"]["code"] == "job_started"
    assert "SUCCEEDED" in refused["error"]["message"]
    assert stack["serving"].calls == 1  # the cancelled one never ran


# ------------------------------------------------------------------------------------ IAM


def _record_aws_calls() -> list[tuple[str, dict[str, Any]]]:
    from llmhost import aws

    calls: list[tuple[str, dict[str, Any]]] = []

    def attach(service: str, client: Any) -> None:
        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            calls.append((f"{service}:{model.name}", dict(params)))

        client.meta.events.register("before-parameter-build", record)

    for service in ("dynamodb", "sqs", "s3", "events"):
        attach(service, aws.client(service))
    aws.add_customizer(attach)
    return calls


def _resource_of(action: str, params: dict[str, Any], names: dict[str, str]) -> str:
    """The template resource (as a grant names it) a call acts on."""
    if action.startswith("dynamodb:"):
        table = {names["jobs_table"]: "JobsTable", names["registry"]: "RegistryTable"}[
            params["TableName"]
        ]
        return f"{table}/index/*" if "IndexName" in params else table
    if action.startswith("sqs:"):
        assert params["QueueUrl"] == names["queue_url"], params
        return "JobsQueue"
    if action.startswith("s3:"):
        assert params["Bucket"] == names["bucket"]
        return f"JobsBucket/{params['Key']}"
    if action == "events:PutEvents":
        (entry,) = params["Entries"]
        return f"event-bus/{entry['EventBusName']}"
    raise AssertionError(f"unexpected call {action}")


def _granted(grant: Any, resource: str) -> bool:
    text = json.dumps(grant)
    if resource.startswith("JobsBucket/"):
        return "${JobsBucket.Arn}/jobs/*" in text and fnmatch.fnmatch(
            resource.removeprefix("JobsBucket/"), "jobs/*"
        )
    if resource.endswith("/index/*"):
        return "${" + resource.split("/")[0] + ".Arn}/index/*" in text
    if resource.startswith("event-bus/"):
        return ":event-bus/" + resource.removeprefix("event-bus/") in text
    return grant == {"Fn::GetAtt": [resource, "Arn"]}


def _assert_granted(role: str, calls: list[tuple[str, dict[str, Any]]], names: dict[str, str]):
    grants = sam.grants(sam.load(), role)
    for called, params in calls:
        # SQS authorizes a batch call by its single-message action. (The event source
        # mapping's receives and deletes use the function's role too.)
        action = called.removesuffix("Batch") if called.startswith("sqs:") else called
        assert action in grants, f"{role} lacks {action}, which the code calls"
        resource = _resource_of(action, params, names)
        assert any(_granted(g, resource) for g in grants[action]), (role, action, resource)


def test_each_jobs_call_is_granted_to_its_functions_role(stack: dict[str, Any]) -> None:
    from llmhost import runtime
    from llmhost.jobs.service import INLINE_RESULT_BYTES

    resources = stack["resources"]
    names = {
        "jobs_table": resources.table,
        "registry": runtime.registry().table_name,
        "queue_url": resources.queue_url,
        "bucket": resources.bucket,
    }
    calls = _record_aws_calls()
    # When the serve function submits (a small and a large request), lists, reads, cancels
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 30_000}] * 3}
    _, small, _ = call(stack, "POST", "/v1/jobs", {"type": "chat", "body": CHAT})
    _, large, _ = call(stack, "POST", "/v1/jobs", {"type": "chat", "body": big})
    _, cancelled, _ = call(
        stack,
        "POST",
        "/v1/jobs",
        {"type": "rag", "body": {"model": "demo", "query": "q", "collection": "docs"}},
    )
    call(stack, "DELETE", f"/v1/jobs/{cancelled['id']}")
    call(stack, "GET", "/v1/jobs", query={"model": "demo"})
    call(stack, "GET", "/v1/jobs", query={"status": "QUEUED"})
    call(stack, "GET", "/v1/jobs")
    call(stack, "GET", f"/v1/jobs/{small['id']}")
    serve_calls = list(calls)
    assert {
        "dynamodb:PutItem",
        "dynamodb:Query",
        "dynamodb:Scan",
        "dynamodb:UpdateItem",
        "sqs:SendMessage",
        "s3:PutObject",
    } <= {a for a, _ in serve_calls}
    _assert_granted("ServeFunctionRole", serve_calls, names)
    # When the jobs function runs them (a large request, a large result)
    calls.clear()
    stack["serving"].chat = lambda request, **_: {"answer": "z" * (INLINE_RESULT_BYTES + 1)}
    deliver(stack)
    worker_calls = list(calls)
    assert {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "s3:GetObject",
        "s3:PutObject",
        "events:PutEvents",
    } <= {a for a, _ in worker_calls}
    _assert_granted("JobsFunctionRole", worker_calls, names)
    # And the result URL the serve function presigns is for an object its role may read
    calls.clear()
    _, done, _ = call(stack, "GET", f"/v1/jobs/{large['id']}")
    assert done["status"] == "SUCCEEDED" and f"jobs/{large['id']}/result.json" in done["result_url"]
    grants = sam.grants(sam.load(), "ServeFunctionRole")
    assert any(
        _granted(g, f"JobsBucket/jobs/{large['id']}/result.json") for g in grants["s3:GetObject"]
    )


def test_the_worker_calls_models_with_the_serving_functions_grants() -> None:
    # The worker runs the serve function's code (registry reads, a wake, model invocations):
    # its role holds the same grants for them.
    template = sam.load()
    serve = {s["Sid"]: s for s in sam.role_statements(template, "ServeFunctionRole")}
    jobs = {s["Sid"]: s for s in sam.role_statements(template, "JobsFunctionRole")}
    for sid in ("RegistryRead", "WakeOnRequest"):
        assert (
            jobs[sid]["Action"] == serve[sid]["Action"]
            and jobs[sid]["Resource"] == serve[sid]["Resource"]
        )
    assert jobs["InvokeModels"]["Action"] == "sagemaker:InvokeEndpoint"
    assert jobs["InvokeModels"]["Resource"] == serve["InvokeModels"]["Resource"]
    assert not [a for a in sam.actions(list(jobs.values())) if "*" in a]
