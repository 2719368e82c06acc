"""One way to do each thing, in the product (the Lambda layer's code).

Logging goes through Powertools Logger (a library module's logger is a child of its
function's); AWS clients come from ``llmhost.aws``; the product makes no HTTP calls of its
own beside the AWS SDK's and qdrant-client's. A command's output to its user (a ``main``)
may print.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PRODUCT = Path(__file__).resolve().parents[2] / "layers" / "llmhost" / "llmhost"
# Modules that make HTTP requests themselves.
HTTP_CLIENTS = {"urllib.request", "http.client", "requests", "aiohttp", "httpx", "urllib3"}
# qdrant-client's transport is httpx; the store reads its exception types to type errors.
# botocore's is urllib3; the invoker reads its exception types the same way.
HTTP_ERROR_TYPES_READ_BY = {"rag/store.py": "httpx", "serving/invoke.py": "urllib3"}


def _modules() -> list[tuple[str, ast.Module]]:
    found = []
    for path in sorted(PRODUCT.rglob("*.py")):
        relative = path.relative_to(PRODUCT).as_posix()
        found.append((relative, ast.parse(path.read_text(), filename=str(path))))
    return found


def _imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _top(name: str, roots: set[str]) -> str | None:
    return next((r for r in roots if name == r or name.startswith(r + ".")), None)


def test_the_product_logs_only_through_powertools_and_prints_only_from_a_command() -> None:
    offenders = []
    for relative, tree in _modules():
        if any(_top(name, {"logging"}) for name in _imports(tree)):
            offenders.append(f"{relative}: imports logging (use Powertools Logger(child=True))")
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if getattr(function, "name", None) == "main":
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "print"
                ):
                    offenders.append(f"{relative}:{node.lineno}: print outside a command's main")
    assert offenders == []


def test_aws_clients_come_from_llmhost_aws_only() -> None:
    offenders = [
        f"{relative}: imports {name}"
        for relative, tree in _modules()
        if relative != "aws.py"
        for name in _imports(tree)
        if _top(name, {"boto3", "botocore.session"})
    ]
    assert offenders == []


def test_the_product_makes_no_http_calls_of_its_own() -> None:
    offenders = []
    for relative, tree in _modules():
        for name in _imports(tree):
            client = _top(name, HTTP_CLIENTS)
            if client is None:
                continue
            if HTTP_ERROR_TYPES_READ_BY.get(relative) == client:
                continue
            offenders.append(f"{relative}: imports {name}")
    assert offenders == []


def test_make_test_type_checks_the_library() -> None:
    # CI runs `make test` (.ci/run): mypy with the pydantic plugin is part of it
    makefile = (PRODUCT.parents[2] / "Makefile").read_text()
    assert re.search(r"^test: .*\btypecheck\b", makefile, re.M)
    assert re.search(
        r"^typecheck: .*\n\t\$\(VENV\)/bin/mypy layers/llmhost/llmhost layers/llmhost/llmhost_cli "
        r"local/llmhost_local$",
        makefile,
        re.M,
    )


def test_secrets_are_read_through_powertools_parameters() -> None:
    # llmhost.aws.secret: Powertools Parameters with a cache age, over llmhost.aws's client
    offenders = [
        f"{relative}:{node.lineno}"
        for relative, tree in _modules()
        if relative != "aws.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "get_secret_value"
    ]
    assert offenders == []
