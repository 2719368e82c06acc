"""The Lambda layer ships the product only: the emulated AWS and the trace replay
(``local/``, the ``llmhost-local`` distribution) never reach it.

The product never imports ``llmhost_local`` (it could not: the layer does not hold it), and
the layer's own build (``layers/llmhost/Makefile``, as ``sam build`` runs it, with pip's
download of the requirements stubbed out) copies no emulator module.
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ROOT / "layers" / "llmhost" / "llmhost"
LOCAL = ROOT / "local" / "llmhost_local"
# What only runs on a developer's machine (and the llmhost command, shipped with the package
# but never in the layer).
NOT_THE_PRODUCT = {"llmhost_local", "moto", "llmhost_cli"}

# Stands in for the layer's python3.13 in `-m pip install ... --target DIR ...`: creates the
# target folder and installs nothing (the tests run offline; the requirements are not ours).
FAKE_PIP = """#!{python}
import sys
from pathlib import Path

args = sys.argv[1:]
assert args[:3] == ["-m", "pip", "install"], args
Path(args[args.index("--target") + 1]).mkdir(parents=True)
"""


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _offenders(package: Path) -> list[str]:
    return [
        f"{path.relative_to(package).as_posix()}: imports {name}"
        for path in sorted(package.rglob("*.py"))
        for name in sorted(_imported(ast.parse(path.read_text(), filename=str(path))))
        if name in NOT_THE_PRODUCT
    ]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_product_never_imports_the_local_emulation() -> None:
    # Given every module of the product (layers/llmhost/llmhost)
    # Then none imports llmhost_local or moto, at module level or inside a function
    assert _offenders(PRODUCT) == []


def test_the_local_emulation_is_a_package_of_its_own() -> None:
    # The emulators and the replay are in local/, and the product has no copy of them
    assert (LOCAL / "runner.py").is_file()
    assert (LOCAL / "replay" / "simulator.py").is_file()
    assert not (PRODUCT / "local").exists()
    assert not {"simulator.py", "traces.py", "scenarios.py"} & {
        path.name for path in (PRODUCT / "scaling").iterdir()
    }


def test_a_built_layer_holds_no_emulator(tmp_path: Path) -> None:
    # Given the layer built by its own Makefile (pip stubbed: nothing to download)
    fake_python = tmp_path / "python3.13"
    fake_python.write_text(FAKE_PIP.format(python=sys.executable))
    fake_python.chmod(0o755)
    artifacts = tmp_path / "layer"
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT / "layers" / "llmhost"),
            "build-LlmhostLayer",
            f"ARTIFACTS_DIR={artifacts}",
            f"LAYER_PYTHON={fake_python}",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    site = artifacts / "python"
    shipped = [path for path in site.rglob("*") if path.is_file()]
    # Then it holds the product ...
    assert (site / "llmhost" / "serving" / "h11_protocol.py").is_file()
    assert len([p for p in shipped if p.suffix == ".py"]) == len(list(PRODUCT.rglob("*.py")))
    # ... and nothing of local/: no package of that name, no copy of any of its modules
    assert not list(site.rglob("llmhost_local"))
    assert not list(site.rglob("llmhost_cli"))
    assert not (site / "llmhost" / "local").exists()
    emulation = {_digest(path) for path in LOCAL.rglob("*.py") if path.stat().st_size}
    assert [p for p in shipped if _digest(p) in emulation] == []
    # ... and nothing in it imports the emulation or moto
    assert _offenders(site) == []
