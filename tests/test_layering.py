"""The import direction (pyproject.toml, [tool.importlinter]) holds, and its contracts can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # runs lint-imports

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # the dev extra's, in this venv
LAYERS = "Layers: each package imports only the ones below it"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the package and pyproject.toml in `cwd`, which it puts first on the path."""
    assert LINT_IMPORTS.is_file(), f"no {LINT_IMPORTS}: pip install -e '.[dev]'"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_import_points_down_the_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(
        ROOT / "sqlprobe", tmp_path / "sqlprobe", ignore=shutil.ignore_patterns("__pycache__")
    )
    locks = tmp_path / "sqlprobe" / "sqlite" / "locks.py"
    line = len(locks.read_text().splitlines()) + 1
    with locks.open("a") as f:
        f.write("import sqlprobe.cli  # planted: the lowest layers may not import the CLI\n")
    result = lint_imports(tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"{LAYERS} BROKEN" in out
    # The planted import itself, whatever else is broken meanwhile in the tree it was copied from.
    assert "sqlprobe.sqlite is not allowed to import sqlprobe.cli:" in out, out
    assert f"sqlprobe.sqlite.locks -> sqlprobe.cli (l.{line})" in out, out
