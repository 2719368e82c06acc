"""Which Secrets Manager secrets a spec may name as its Hugging Face token.

A caller of the API must not be able to make llmhost read, and hand to a SageMaker model's
environment, any secret the reconciler's role could read. A secret is allowed when both:

- its name starts with the stack's ``SecretsPrefix`` (the reconciler's IAM grant is scoped
  to that prefix), and
- it carries the tag ``llmhost:allowed`` = ``true``, put there by whoever administers the
  secret. The reconciler's IAM grant requires the same tag (``aws:ResourceTag``), so a
  record written around the API cannot make it read an untagged secret either.

The API checks both at create and change time and answers 422 naming
``model.token_secret_arn`` and the fix.
"""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

FIELD = "model.token_secret_arn"
ALLOW_TAG = "llmhost:allowed"
ALLOW_VALUE = "true"
# arn:<partition>:secretsmanager:<region>:<account>:secret:<name>[-<6 random characters>]
_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):(\d{12}):secret:(.+)$")


def secret_problem(secretsmanager: Any, arn: str, prefix: str, region: str) -> str | None:
    """Why the secret ``arn`` may not be a model's token (None when it may), as a message
    that says what to do."""
    match = _ARN.match(arn)
    if match is None:
        return "must be a Secrets Manager secret ARN"
    secret_region, _, name = match.groups()
    if secret_region != region:
        return (
            f"the secret is in {secret_region}, but llmhost runs in {region}: create the "
            f"token secret in {region}"
        )
    if not name.startswith(prefix):
        return (
            f"the secret '{name}' is outside this stack's SecretsPrefix '{prefix}': store the "
            f"token in a secret whose name starts with '{prefix}'"
        )
    try:
        described = secretsmanager.describe_secret(SecretId=arn)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            return f"no secret '{name}' exists in {region}: create it, then tag it {_tag_hint()}"
        return f"the secret '{name}' cannot be read ({code}); check that it exists"
    except BotoCoreError as error:
        return f"the secret '{name}' could not be checked ({type(error).__name__}); retry"
    tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
    if tags.get(ALLOW_TAG) != ALLOW_VALUE:
        return (
            f"the secret '{name}' is not allowed for llmhost: tag it {_tag_hint()} "
            f"(aws secretsmanager tag-resource --secret-id {name} "
            f"--tags Key={ALLOW_TAG},Value={ALLOW_VALUE})"
        )
    return None


def _tag_hint() -> str:
    return f"{ALLOW_TAG}={ALLOW_VALUE}"
