"""Which llmhost the CLI talks to, and with which credentials.

In this order: ``--stack NAME`` (a deployed stack: its CloudFormation outputs ``ApiUrl`` and
``StreamUrl``, signed with the normal AWS credential chain), ``--url`` (any API URL), the
local stack ``make run`` announces in ``.llmhost/local.json`` (looked for from the working
directory upwards, then in the checkout this package was installed from), and last
``make run``'s default address, which then says how to start it when nothing answers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmhost_cli.errors import CliFailure, StackUnreachable

LOCAL_FILE = Path(".llmhost") / "local.json"
DEFAULT_API = "http://127.0.0.1:8080"
DEFAULT_REGION = "us-east-1"
START_LOCAL = "start it with `make run` in the llmhost checkout"
_EXECUTE_API_HOST = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# make run's published key pair (llmhost_local.cloud's, which this package cannot import: a
# user's install has no llmhost_local): a loopback URL without an announcement is signed so.
LOCAL_ACCESS_KEY = "llmhost-local"
LOCAL_SECRET_KEY = "llmhost-local-secret"
LOCAL_API_KEY = "llmhost-local-key"


@dataclass(frozen=True)
class Target:
    """A stack to talk to. ``api``: the control API's base URL (SigV4 for ``execute-api``);
    ``openai``: the OpenAI-compatible base URL without ``/v1`` (API key), if known;
    ``credentials``: botocore credentials to sign with (None: requests go unsigned);
    ``where``: how it was found, and ``hint``: what to do if it does not answer."""

    api: str
    openai: str | None
    region: str
    credentials: Any
    api_key: str | None
    where: str
    hint: str


def resolve(
    *,
    stack: str | None,
    url: str | None,
    openai_url: str | None,
    api_key: str | None,
    region: str | None,
    profile: str | None,
) -> Target:
    """The target the options name (see the module's docstring for the order).

    Raises StackUnreachable (no such stack), CliFailure (no credentials or region).
    """
    if stack:
        return from_stack(stack, region=region, profile=profile, api_key=api_key)
    found = find_local_file()
    local = read_local_file(found) if found else None
    if url:
        return from_url(url, openai_url=openai_url, api_key=api_key, local=local, profile=profile)
    if local is not None and found is not None:
        return from_local(local, found, openai_url=openai_url, api_key=api_key)
    from botocore.credentials import Credentials

    return Target(
        api=DEFAULT_API,
        openai=openai_url or "http://127.0.0.1:8081",
        region=DEFAULT_REGION,
        credentials=Credentials(LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY),
        api_key=api_key or LOCAL_API_KEY,
        where=f"the default local address (no {LOCAL_FILE} found)",
        hint=f"{START_LOCAL}, or pass --url or --stack",
    )


def find_local_file(start: Path | None = None) -> Path | None:
    """``.llmhost/local.json`` in ``start`` (the working directory) or a parent, else in the
    checkout this package runs from (an editable install), else None."""
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents, Path(__file__).resolve().parents[2]]:
        candidate = folder / LOCAL_FILE
        if candidate.is_file():
            return candidate
    return None


def read_local_file(path: Path) -> dict[str, Any] | None:
    """The local stack's announcement, or None when it is unreadable (a stack stopping)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("api"), str) else None


def from_local(
    local: dict[str, Any], path: Path, *, openai_url: str | None, api_key: str | None
) -> Target:
    from botocore.credentials import Credentials

    pid = local.get("pid")
    return Target(
        api=local["api"].rstrip("/"),
        openai=_base(openai_url or local.get("openai")),
        region=str(local.get("region") or DEFAULT_REGION),
        credentials=Credentials(str(local.get("access_key")), str(local.get("secret_key"))),
        api_key=api_key or local.get("api_key"),
        where=f"the local stack in {path}" + (f" (pid {pid})" if pid else ""),
        hint=f"it may have stopped: {START_LOCAL}",
    )


def from_url(
    url: str,
    *,
    openai_url: str | None,
    api_key: str | None,
    local: dict[str, Any] | None,
    profile: str | None,
) -> Target:
    """An API URL given by hand. A loopback URL is a local stack: signed with the key pair
    of the one ``make run`` announced (else make run's published one); another is signed
    with your AWS credentials, in the region its execute-api host names."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliFailure(f"--url {url!r} is not an http(s) URL", field="--url")
    api = url.rstrip("/")
    if parts.hostname in _LOOPBACK:
        from botocore.credentials import Credentials

        local = local or {}
        creds = Credentials(
            str(local.get("access_key") or LOCAL_ACCESS_KEY),
            str(local.get("secret_key") or LOCAL_SECRET_KEY),
        )
        openai = openai_url or local.get("openai")
        if openai is None and parts.port:
            openai = f"{parts.scheme}://{parts.hostname}:{parts.port + 1}"
        return Target(
            api=api,
            openai=_base(openai),
            region=str(local.get("region") or DEFAULT_REGION),
            credentials=creds,
            api_key=api_key or local.get("api_key") or LOCAL_API_KEY,
            where=f"--url {api}",
            hint=f"check the URL, or {START_LOCAL}",
        )
    match = _EXECUTE_API_HOST.search(parts.hostname)
    session = _session(profile, match.group(1) if match else None)
    return Target(
        api=api,
        openai=_base(openai_url),
        region=session.region_name or DEFAULT_REGION,
        credentials=session.get_credentials(),
        api_key=api_key,
        where=f"--url {api}",
        hint="check the URL and your network",
    )


def from_stack(
    name: str, *, region: str | None, profile: str | None, api_key: str | None
) -> Target:
    """A deployed stack, by its CloudFormation outputs, signed with the credential chain."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    session = _session(profile, region)
    if session.region_name is None:
        raise CliFailure(
            "no AWS region: pass --region, or set AWS_REGION or a profile's region",
            field="--region",
        )
    credentials = session.get_credentials()
    if credentials is None:
        raise CliFailure(
            "no AWS credentials found (environment, profile, SSO or instance role): "
            "configure them as for the AWS CLI",
            field="--stack",
        )
    cloudformation = session.client("cloudformation")
    try:
        stacks = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as error:
        message = error.response.get("Error", {}).get("Message", str(error))
        if "does not exist" in message:
            raise StackUnreachable(
                f"no stack {name!r} in {session.region_name}",
                hint="check --stack and --region (sam deploy names the stack)",
            ) from None
        raise CliFailure(f"CloudFormation refused DescribeStacks: {message}") from None
    except EndpointConnectionError as error:
        raise StackUnreachable(
            f"cannot reach CloudFormation: {error}", hint="check your network"
        ) from None
    except BotoCoreError as error:
        raise CliFailure(f"cannot read stack {name!r}: {error}") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs") or []}
    if "ApiUrl" not in outputs:
        raise CliFailure(
            f"stack {name!r} has no ApiUrl output (status {stacks[0].get('StackStatus')}): "
            "is it an llmhost stack, and is its deployment complete?",
            field="--stack",
        )
    return Target(
        api=outputs["ApiUrl"].rstrip("/"),
        openai=_base(outputs.get("StreamUrl")),
        region=session.region_name,
        credentials=credentials,
        api_key=api_key,
        where=f"stack {name} ({session.region_name})",
        hint="check the stack's status: aws cloudformation describe-stacks --stack-name " + name,
    )


def _session(profile: str | None, region: str | None) -> Any:
    # The user's own session (profile, SSO, environment), not llmhost.aws's: that one serves
    # the stack's functions with their limits and the local runner's endpoint overrides.
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.Session(profile_name=profile, region_name=region)
    except ProfileNotFound as error:
        raise CliFailure(str(error), field="--profile") from None


def _base(url: str | None) -> str | None:
    """An OpenAI-compatible base URL without its ``/v1`` (StreamUrl ends with it)."""
    if not url:
        return None
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url
