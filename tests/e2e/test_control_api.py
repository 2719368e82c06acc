"""The local control API over real sockets, as API Gateway would answer: many clients at once,
malformed framing, the functions' headers, and SigV4 as real clients (curl, botocore) sign it.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import local_stack
from llmhost_local import runner
from llmhost_local.cloud import ACCESS_KEY, REGION, SECRET_KEY, project_root

pytestmark = pytest.mark.e2e

CLIENTS = 200
PLANNED = {"model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.host, self.port = str(parts.hostname), int(parts.port or 80)

    def signed(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        request = AWSRequest(
            method=method,
            url=self.url + path,
            data=body,
            headers={"Content-Type": "application/json"},
        )
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION).add_auth(request)
        return dict(request.headers.items())

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any, Any]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=self.signed(method, path, body))
            reply = connection.getresponse()
            return reply.status, reply.headers, json.loads(reply.read() or b"{}")
        finally:
            connection.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with local_stack(
        tmp_path_factory.mktemp("qdrant"), openai=False, speed=600, drift_seconds=0.5
    ) as stack:
        yield Api(stack.api)


def test_two_hundred_concurrent_clients_are_all_answered(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    # Given 200 clients that connect at the same moment
    start = threading.Barrier(CLIENTS)

    def client(i: int) -> str:
        try:
            start.wait(timeout=120)
            if i % 2:
                name = f"nobody-{i}"
                status, headers, body = api.call("GET", f"/v1/deployments/{name}")
                # each answer is about this request, not another one handled at the same time
                own = status == 404 and f"'{name}'" in body.get("error", {}).get("message", "")
            else:
                name = f"plan-{i}"
                status, headers, body = api.call(
                    "POST", "/v1/plan", json.dumps({"name": name, **PLANNED}).encode()
                )
                own = status == 200 and body.get("name") == name
            return "ok" if own else f"{name}: {status} {dict(headers)} {body}"
        except Exception as error:  # a reset, a refused or dropped connection
            return f"{type(error).__name__}: {error}"

    # When half ask for a deployment that does not exist and half for a plan, all at once
    with caplog.at_level(logging.WARNING, logger="urllib3"), ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(client, range(CLIENTS)))
    # Then every one gets its own answer, none a reset connection or another's answer
    failures = [o for o in outcomes if o != "ok"]
    assert not failures, f"{len(failures)} of {CLIENTS} failed, e.g. {failures[:3]}"
    # And the functions' AWS clients, shared by the invocations running at once, keep every
    # connection they open (a pool smaller than the gateway's concurrency drops some)
    dropped = [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]
    assert not dropped, f"{len(dropped)} connections dropped, e.g. {dropped[0]}"


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_content_length_that_is_not_a_number_is_a_400(api: Api, method: str) -> None:
    with socket.create_connection((api.host, api.port), timeout=10) as raw:
        raw.sendall(f"{method} /v1/deployments HTTP/1.1\r\nHost: x\r\n".encode())
        raw.sendall(b"Content-Length: abc\r\n\r\n{}")
        reply = b""
        while chunk := raw.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400", head
    # And the answer names the header at fault, as JSON
    assert "Content-Length" in json.loads(body)["message"]
    # And the OpenAPI document describes that answer on that route, body and all
    status, _, doc = api.call("GET", "/v1/openapi.json")
    assert status == 200
    responses = doc["paths"]["/v1/deployments"][method.lower()]["responses"]
    assert "400" in responses, sorted(responses)
    schema = responses["400"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/GatewayError"} in schema.get("anyOf", [schema])


def test_a_request_framed_by_both_length_and_chunks_gets_one_400_and_a_close(api: Api) -> None:
    # Given a POST whose chunked body ends before a signed request its Content-Length covers
    signed = "".join(f"{k}: {v}\r\n" for k, v in api.signed("GET", "/v1/deployments").items())
    hidden = f"GET /v1/deployments HTTP/1.1\r\nHost: x\r\n{signed}\r\n".encode()
    body = b"0\r\n\r\n" + hidden
    head = (
        "POST /v1/plan HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((api.host, api.port), timeout=10) as raw:
        raw.sendall(head.encode() + body)
        reply = b""
        while chunk := raw.recv(4096):  # the server closes the connection after its answer
            reply += chunk
    # Then one answer came, a 400 naming both headers, and the hidden request never ran
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", reply)) == 1, reply
    head_bytes, _, answer = reply.partition(b"\r\n\r\n")
    assert head_bytes.split()[1] == b"400", head_bytes
    message = json.loads(answer)["message"]
    assert "Content-Length" in message and "Transfer-Encoding" in message


def test_the_functions_headers_reach_the_client(api: Api) -> None:
    # The handlers answer with multiValueHeaders (Powertools' REST resolver does)
    status, headers, body = api.call("GET", "/v1/deployments")
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    status, headers, body = api.call("GET", "/v1/deployments/missing")
    assert status == 404 and headers["Content-Type"].startswith("application/json")


def test_a_refused_signature_says_why_as_api_gateway_does(api: Api) -> None:
    connection = http.client.HTTPConnection(api.host, api.port, timeout=10)
    connection.request("GET", "/v1/deployments")
    reply = connection.getresponse()
    assert reply.status == 403
    assert reply.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert json.loads(reply.read()) == {"message": "Missing Authentication Token"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("GET", "/v1/deployments", None),
        ("GET", "/v1/deployments?limit=5&after=a%20b", None),
        ("POST", "/v1/rag", '{"model": "nobody", "collection": "docs", "query": "hi"}'),
        ("DELETE", "/v1/collections/docs/documents/a%2Fb.txt", None),
        ("DELETE", "/v1/collections/docs/documents/notes%20on%20tides.md", None),
    ],
)
def test_curl_signed_requests_are_accepted(api: Api, method: str, path: str, data: Any) -> None:
    # Given the README's way of calling the API: curl signs with --aws-sigv4
    command = [
        "curl",
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--aws-sigv4",
        "aws:amz:us-east-1:execute-api",
        "--user",
        f"{ACCESS_KEY}:{SECRET_KEY}",
        "-X",
        method,
        api.url + path,
    ]
    if data is not None:
        command += ["-H", "Content-Type: application/json", "-d", data]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    body, _, code = out.rpartition("\n")
    # Then API Gateway's IAM check lets it through to the function
    assert code != "403", body
    assert int(code) < 500, body


def test_the_banners_ingest_command_works_as_printed(api: Api) -> None:
    # Given the banner of a stack on a port other than 8080
    text = runner.banner(
        api.url,
        "http://127.0.0.1:1",
        moto="-",
        speed=600,
        documents=project_root(),
        engine="-",
    )
    command = next(line.strip() for line in text.splitlines() if " ingest README.md" in line)
    assert f"--url {api.url} ingest" in command
    # When it is run, as printed, from the project root
    done = subprocess.run(
        command, shell=True, cwd=project_root(), capture_output=True, text=True, timeout=180
    )
    # Then README.md lands in the "docs" collection of that stack
    assert done.returncode == 0, done.stdout + done.stderr
    status, _, collection = api.call("GET", "/v1/collections/docs")
    assert status == 200 and collection["points"] > 0, collection


def _curl_delete(api: Api, path: str) -> tuple[int, Any]:
    command = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "DELETE"]
    command += ["--aws-sigv4", "aws:amz:us-east-1:execute-api"]
    command += ["--user", f"{ACCESS_KEY}:{SECRET_KEY}", api.url + path]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize(
    ("client", "sent"),
    [
        ("curl", "guides%2Fsleep%20well.md"),
        ("botocore", "guides%2Fsleep%20well.md"),
        # as a front that decodes %2F would pass it on
        ("botocore", "guides/sleep%20well.md"),
    ],
)
def test_a_document_whose_id_has_a_slash_is_deleted_over_http(
    api: Api, client: str, sent: str
) -> None:
    # Given a document whose id holds '/', as every file the ingest CLI sends does
    doc_id = "guides/sleep well.md"
    body = json.dumps({"documents": [{"id": doc_id, "text": "Dormice hibernate all winter."}]})
    status, _, answer = api.call("POST", "/v1/collections/slashes/documents", body.encode())
    assert status == 200 and answer["indexed"], answer
    # When a signed DELETE names it, percent-encoded or with its '/' decoded
    path = f"/v1/collections/slashes/documents/{sent}"
    if client == "curl":
        status, answer = _curl_delete(api, path)
    else:
        status, _, answer = api.call("DELETE", path)
    # Then that document goes, and a second DELETE finds nothing
    assert (status, answer.get("deleted")) == (200, doc_id), answer
    status, _, answer = api.call("DELETE", path)
    assert status == 404 and doc_id in answer["error"]["message"], answer
