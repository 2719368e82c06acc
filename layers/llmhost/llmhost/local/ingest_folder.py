"""Ingest files or folders (.txt, .md, .jsonl) into a collection through the API.

    python -m llmhost.local.ingest_folder ./docs --collection docs [--api http://127.0.0.1:8080]

Files are read with the same rules as objects dropped in the documents bucket (a .txt/.md
file is one document named by its path; each .jsonl line is a document with its own id),
then posted in batches, SigV4-signed like any API client. Works against ``make run`` (its
local key pair is the default) or a deployed stack (pass --api and real credentials via the
usual AWS environment variables with --aws).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from llmhost.rag.ingest import parse_s3_object

SUFFIXES = {".txt", ".md", ".jsonl"}
BATCH = 100


def files_under(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"{path}: no such file or folder")
    return found


def signed_post(url: str, body: dict[str, Any], credentials: Any, region: str) -> tuple[int, Any]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    data = json.dumps(body).encode()
    request = AWSRequest(
        method="POST", url=url, data=data, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(credentials, "execute-api", region).add_auth(request)
    http = urllib.request.Request(url, data=data, headers=dict(request.headers), method="POST")
    try:
        with urllib.request.urlopen(http, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument(
        "--aws", action="store_true", help="sign with your AWS credentials, not the local keys"
    )
    args = parser.parse_args(argv)

    from botocore.credentials import Credentials

    if args.aws:
        import boto3

        session = boto3.Session()
        credentials, region = session.get_credentials(), session.region_name or "us-east-1"
    else:
        from llmhost.local.runner import ACCESS_KEY, REGION, SECRET_KEY

        credentials, region = Credentials(ACCESS_KEY, SECRET_KEY), REGION

    documents: list[dict[str, Any]] = []
    problems = 0
    for path in files_under(args.paths):
        parsed = parse_s3_object(path.as_posix(), path.read_bytes())
        for rejected in parsed.rejected:
            problems += 1
            print(f"  skipped {rejected.field}: {rejected.reason}", file=sys.stderr)
        for doc in parsed.documents:
            doc.setdefault("metadata", {}).setdefault("source", path.as_posix())
            documents.append(doc)
    url = f"{args.api.rstrip('/')}/v1/collections/{args.collection}/documents"
    indexed = chunks = 0
    for start in range(0, len(documents), BATCH):
        status, body = signed_post(
            url, {"documents": documents[start : start + BATCH]}, credentials, region
        )
        if status >= 400 and "indexed" not in body:
            print(f"error {status}: {body.get('error', body)}", file=sys.stderr)
            return 1
        indexed += len(body["indexed"])
        chunks += sum(item["chunks"] for item in body["indexed"])
        for item in body["rejected"]:
            problems += 1
            print(f"  rejected {item['field']}: {item['reason']}", file=sys.stderr)
    print(
        f"indexed {indexed} documents ({chunks} chunks) into '{args.collection}'"
        + (f"; {problems} problems above" if problems else "")
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    raise SystemExit(main())
