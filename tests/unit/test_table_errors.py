"""A DynamoDB refusal on one of llmhost's own tables (jobs, traces, usage) reaches the client
as that table's typed error: 503 with Retry-After when retrying gets past it, else a 500
whose detail stays in the operator's logs."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from llmhost.jobs import store as jobs
from llmhost.traces import store as traces
from llmhost.usage import store as usage

TABLES = [
    (jobs.table_errors, jobs.JobsTableError, "jobs_busy", "jobs_table_error"),
    (traces.table_errors, traces.TracesTableError, "traces_busy", "traces_table_error"),
    (usage.table_errors, usage.UsageTableError, "usage_busy", "usage_table_error"),
]


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "no"}}, "PutItem")


@pytest.mark.parametrize(("errors", "error_type", "busy", "_"), TABLES)
def test_a_throttled_call_is_a_503_with_retry_after(errors, error_type, busy, _) -> None:
    # Given DynamoDB throttles the call, When it is made under the table's adapter
    with pytest.raises(error_type) as raised, errors():
        raise client_error("ProvisionedThroughputExceededException")
    # Then the client gets a 503 it can retry, naming the table's business
    assert raised.value.status == 503 and raised.value.code == busy
    assert raised.value.retry_after and raised.value.retry_after > 0
    assert "busy" in str(raised.value)


@pytest.mark.parametrize(("errors", "error_type", "_", "code"), TABLES)
def test_a_configuration_error_is_a_500_without_its_detail(errors, error_type, _, code) -> None:
    with pytest.raises(error_type) as raised, errors():
        raise client_error("AccessDeniedException")
    assert raised.value.status == 500 and raised.value.code == code
    # the detail is for the operator's logs, not the client's message
    assert "AccessDenied" not in str(raised.value)
    assert "AccessDenied" in raised.value.log_detail


@pytest.mark.parametrize(("errors", "error_type", "busy", "_"), TABLES)
def test_an_unreachable_table_is_a_503(errors, error_type, busy, _) -> None:
    with pytest.raises(error_type) as raised, errors():
        raise EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")
    assert raised.value.status == 503 and "unavailable" in str(raised.value)
