"""The README tells the truth: exit codes, commands, the set-up steps CI runs, the JSON schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from sqlprobe.cli import cli
from sqlprobe.verdict.judge import ExitCode, State

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def _code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_readme_exit_code_table_matches_the_enum():
    rows = re.findall(r"^\| (\w+) \| (\d) \|", README, re.M)
    assert {name: int(code) for name, code in rows} == {
        s.value: int(ExitCode[s.name]) for s in State
    }


def test_readme_names_every_kind_of_finding_and_every_kind_has_words():
    from sqlprobe.model import FindingKind
    from sqlprobe.render.findings import _WORDS

    row = next(line for line in README.splitlines() if line.startswith("| `findings[]`"))
    named = set(re.findall(r"`([a-z-]+)`", row)) - {"kind", "path", "pid", "detail", "count"}
    named -= {"warnings"}  # where the opencode sentences are
    assert named - {"total", "pids"} == {k.value for k in FindingKind}
    assert set(_WORDS) == set(FindingKind)


def test_every_command_has_a_readme_section():
    for name in cli.list_commands(click.Context(cli)):
        assert f"## `sqlprobe {name}" in README, name


def test_ci_runs_exactly_the_readme_set_up_commands():
    install, tests = (block.strip() for block in _code_blocks("sh")[:2])
    ci = (ROOT / ".ci" / "run").read_text()
    assert install.startswith("python3 -m venv .venv") and install in ci.splitlines()
    assert tests == ".venv/bin/python -m pytest" and tests in ci.splitlines()


def _keys(value: object, prefix: str = "") -> set[str]:
    """Every key path of a JSON value, lists flattened: `databases[].holders[].pid`."""
    if isinstance(value, dict):
        out = set()
        for key, sub in value.items():
            out |= {f"{prefix}{key}"} | _keys(sub, f"{prefix}{key}.")
        return out
    if isinstance(value, list):
        return (
            set().union(*(_keys(v, prefix.rstrip(".") + "[].") for v in value)) if value else set()
        )
    return set()


@pytest.mark.process
def test_readme_json_example_matches_a_real_document(wal_db, holder, run):
    holder(wal_db, "wal-write", "--spin")
    real = json.loads(run("check", wal_db, "--json").stdout)
    example, _ = (json.loads(b) for b in _code_blocks("json"))
    assert _keys(example) == _keys(real)


@pytest.mark.process
def test_readme_opencode_json_example_matches_a_real_document(tmp_path, run):
    """The second example: opencode's locks, from a real lock holder and a left git lock."""
    from test_opencode_locks import OcEnv, backdate

    oc = OcEnv(tmp_path)
    oc.install_opencode("1.18.34")
    path = oc.lock_dir(oc.install_key)
    path.mkdir()
    (path / "heartbeat").touch()
    meta = {"token": "t", "pid": 1, "hostname": "x", "createdAt": "2026-01-01T00:00:00Z"}
    (path / "meta.json").write_text(json.dumps(meta))
    backdate(path, 1)
    repo = oc.data / "snapshot" / "p" / "w"
    repo.mkdir(parents=True)
    (repo / "index.lock").touch()
    real = json.loads(run("check", "--json", env=oc.env).stdout)
    _, example = (json.loads(b) for b in _code_blocks("json"))
    real_part = {k: real[k] for k in example}
    real_part["opencode"]["zombie_children"] = [{"parent": 1, "pid": 2, "command": "[git]"}]
    assert _keys(example) == _keys(real_part)


@pytest.mark.process
def test_readme_json_field_table_covers_every_top_level_and_database_field(wal_db, run):
    doc = json.loads(run("check", wal_db, "--json").stdout)
    table = README[README.index("| field | meaning |") :]
    self_evident = {"schema", "target", "databases", "path", "holders", "verdict", "reason"}
    for key in {*doc, *doc["databases"][0], "note"} - self_evident:
        assert re.search(rf"`(databases\[\]\.)?{key}(\[\])?[`.]", table), key


@pytest.mark.process
@pytest.mark.skipif(
    shutil.which("ruff", path=str(Path(sys.executable).parent)) is None
    and shutil.which("ruff") is None,
    reason="ruff is not installed (dev extra)",
)
@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(args):
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    proc = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _section(title: str) -> str:
    """The README's `## title` section, up to the next `## ` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else None]


def test_readme_platforms_section_names_every_backend_and_how_to_choose_it():
    from sqlprobe.system import BACKEND_VARIABLE, BACKENDS

    platforms = _section("Platforms")
    assert BACKEND_VARIABLE == "SQLPROBE_BACKEND"
    for name in BACKENDS:
        assert f"`SQLPROBE_BACKEND={name}`" in platforms, name
        assert f"- `{name}` (`sqlprobe/system/{name}.py`)" in platforms, name
        assert (ROOT / "sqlprobe" / "system" / f"{name}.py").is_file(), name
    assert "Nothing here ran on a Mac" in platforms


def test_opencode_paths_on_macos_are_xdg_as_the_readme_says():
    """opencode uses xdg-basedir on every OS (README, "Platforms"): so does paths.py, which
    has no platform branch, for a macOS home as for any other."""
    from sqlprobe.opencode import paths

    found = paths.dirs({"HOME": "/Users/me"})
    assert (found.data, found.state) == (
        "/Users/me/.local/share/opencode",
        "/Users/me/.local/state/opencode",
    )
    assert found.locks == "/Users/me/.local/state/opencode/locks"
    source = Path(paths.__file__).read_text()
    assert not any(word in source for word in ("sys.platform", "darwin", "Library"))
    platforms = _section("Platforms")
    assert "`~/.local/share/opencode`" in platforms and "`~/.local/state/opencode`" in platforms
    assert "packages/opencode/src/global/index.ts" in platforms and "http" not in platforms


def test_readme_module_table_names_modules_that_exist_and_every_module():
    table = README[README.index("| layer | package / module | owns |") :]
    table = table[: table.index("\n\n")]
    named = set(re.findall(r"`([a-z_/]+\.py)`", table))
    package = ROOT / "sqlprobe"
    assert named and all((package / name).is_file() for name in named), named
    modules = {
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name not in ("__main__.py",) and not (p.name == "__init__.py" and p.parent != package)
    }
    modules.discard("__init__.py")  # the library API, above every layer
    assert modules - named == set()  # a new module gets its row


def test_readme_names_every_kind_of_problem():
    from sqlprobe.model import ProblemKind

    row = next(line for line in README.splitlines() if line.startswith("| `error`, "))
    named = set(re.findall(r"`([a-z-]+)`", row)) - {"error", "kind", "path", "detail", "reason"}
    assert named == {k.value for k in ProblemKind}


@pytest.mark.process  # the check's scan may fork its workers
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    (block,) = _code_blocks("python")
    where = tmp_path / "sqlprobe-example"
    where.mkdir()
    exec(compile(block.replace("/tmp/sqlprobe-example", str(where)), "README", "exec"), {})
    assert capsys.readouterr().out.startswith("clear 0 ")
