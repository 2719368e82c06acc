"""Ingest files or folders (.txt, .md, .jsonl) into a collection through the API.

    .venv/bin/python -m llmhost_local.ingest_folder ./docs --collection docs \\
        [--api http://127.0.0.1:8080]

The same as ``llmhost ingest`` (``llmhost_cli.ingest``: how files are read, named, batched
and sent, and what is reported), printing lines only, for scripts that called it before the
``llmhost`` command existed. Signs with the local key pair by default, or with your AWS
credentials with --aws.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llmhost_cli.client import Client
from llmhost_cli.errors import ApiRefused, CliFailure
from llmhost_cli.ingest import LineReport, ingest, summary
from llmhost_cli.target import Target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument(
        "--aws", action="store_true", help="sign with your AWS credentials, not the local keys"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for each request (default: 60 plus 1 per KB of text sent)",
    )
    args = parser.parse_args(argv)

    from botocore.credentials import Credentials

    if args.aws:
        import boto3

        session = boto3.Session()
        credentials, region = session.get_credentials(), session.region_name or "us-east-1"
    else:
        from llmhost_local.cloud import ACCESS_KEY, REGION, SECRET_KEY

        credentials, region = Credentials(ACCESS_KEY, SECRET_KEY), REGION
    target = Target(
        api=args.api.rstrip("/"),
        openai=None,
        region=region,
        credentials=credentials,
        api_key=None,
        where=args.api,
        hint="start it with `make run`, or pass --api",
    )
    try:
        outcome = ingest(
            Client(target),
            args.paths,
            args.collection,
            LineReport(sys.stdout, sys.stderr),
            timeout_s=args.timeout,
        )
    except ApiRefused as refused:
        print(f"error {refused.status}: {refused.message}", file=sys.stderr)
        return 1
    except CliFailure as failure:
        print("\n".join(failure.lines()), file=sys.stderr)
        return failure.exit_code
    print(summary(outcome, args.collection))
    return 0 if not outcome.problems else 1


if __name__ == "__main__":
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    raise SystemExit(main())
