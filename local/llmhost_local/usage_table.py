"""The usage table as template.yaml declares it (UsageTable), created in the local DynamoDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llmhost_local.queues import _CfnLoader

USAGE_TABLE = "llmhost-usage"
TABLE_RESOURCE = "UsageTable"


def provision_usage_table(dynamodb: Any, template: Path) -> dict[str, str]:
    """Create the table with the template's keys and TTL; returns the functions' USAGE_*
    variables (template.yaml's Globals set the same)."""
    table = yaml.load(template.read_text(), Loader=_CfnLoader)["Resources"][TABLE_RESOURCE]
    properties = table["Properties"]
    dynamodb.create_table(
        TableName=USAGE_TABLE,
        KeySchema=properties["KeySchema"],
        AttributeDefinitions=properties["AttributeDefinitions"],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=USAGE_TABLE,
        TimeToLiveSpecification={
            "AttributeName": properties["TimeToLiveSpecification"]["AttributeName"],
            "Enabled": True,
        },
    )
    return {"USAGE_TABLE": USAGE_TABLE}
