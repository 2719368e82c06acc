"""The OpenTelemetry SDK is the trace export function's alone: no serving function imports it,
so turning export on (or off) leaves their cold starts as they are.

Checked twice: in the source (only llmhost.traces.otlp and .export import opentelemetry,
and only the export function's path reaches them), and in fresh processes that import the
serving handlers and build what their first request builds, with export configured.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ROOT / "layers" / "llmhost" / "llmhost"
EXPORTER_MODULES = {"traces/otlp.py", "traces/export.py"}


def _imports(tree: ast.AST, *, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only and isinstance(tree, ast.Module) else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_exporter_modules_import_opentelemetry() -> None:
    importers = {
        path.relative_to(PRODUCT).as_posix()
        for path in PRODUCT.rglob("*.py")
        if any(
            n == "opentelemetry" or n.startswith("opentelemetry.")
            for n in _imports(ast.parse(path.read_text()), top_level_only=False)
        )
    }
    assert importers == EXPORTER_MODULES


def test_nothing_imports_the_exporter_modules_at_import_time() -> None:
    # Given every module of the product and every function's handler
    sources = [*PRODUCT.rglob("*.py"), *(ROOT / "functions").rglob("*.py")]
    offenders = []
    for path in sources:
        relative = path.relative_to(ROOT).as_posix()
        if relative.endswith(("traces/export.py", "functions/trace_export/app.py")):
            continue  # the exporter itself and its function
        top = _imports(ast.parse(path.read_text()), top_level_only=True)
        if top & {"llmhost.traces.otlp", "llmhost.traces.export"}:
            offenders.append(relative)
    # Then none reaches the exporter when it is imported (runtime.trace_exporter does, lazily)
    assert offenders == []


PROBE = """
import importlib.util, json, sys
from pathlib import Path
root = Path(sys.argv[1])
for name, path in [
    ("serve", "functions/serve/app.py"),
    ("api", "functions/api/app.py"),
    ("jobs", "functions/jobs/app.py"),
    ("stream", "layers/llmhost/llmhost/serving/lambda_http.py"),
]:
    spec = importlib.util.spec_from_file_location(f"app_{name}", root / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
from llmhost import runtime
runtime.registry(); runtime.serving_service()._invoker(); runtime.request_observers()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))
"""


def test_serving_functions_never_load_opentelemetry_even_with_export_configured() -> None:
    # Given the serving handlers imported in a fresh process, tracing and export configured
    env = {
        **os.environ,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "REGISTRY_TABLE_NAME": "llmhost-registry",
        "LLMHOST_STACK_NAME": "llmhost-test",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_SERVICE_NAME": "probe",
        # Tracing on (the recorder is built), and every export setting present
        "TRACES_TABLE": "llmhost-traces",
        "OTLP_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
        "OTLP_HEADERS_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:x",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "llmhost"), str(ROOT / "local")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # Then not one opentelemetry module was loaded
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
