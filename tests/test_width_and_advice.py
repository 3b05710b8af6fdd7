"""The human report fits the terminal (and keeps lines whole in a pipe); its advice is short,
concrete, and names only files that exist (issue 14, items 4 and 7)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import HOLDER, make_db, on_pty

pytestmark = pytest.mark.process  # real holders, the CLI on a pty

PROGRAM = os.path.basename(sys.executable)
FULL_COMMAND = f"{sys.executable} {HOLDER}"


def _pty_check(db: Path, columns: int, *options: str, command: str = "check") -> str:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    _, out = on_pty([sys.executable, "-m", "sqlprobe", command, str(db), *options], env)
    return out.replace("\r\n", "\n")


def _advice(text: str) -> list[str]:
    return text.split("What you can do:\n", 1)[1].splitlines()


def test_check_on_an_80_column_terminal_fits_every_line(wal_db, holder):
    h = holder(wal_db, "wal-write", "--futex")
    out = _pty_check(wal_db, 80)
    lines = out.splitlines()
    assert out.startswith("stuck: ") and lines[1].startswith("  ")  # the verdict line wrapped
    assert max(map(len, lines)) <= 80, max(lines, key=len)
    row = next(line for line in lines if line.startswith(f"  {h.pid} "))
    assert f"{PROGRAM} holder.py /" in row and sys.executable not in row
    assert "--wide shows all" in out  # what was left out is said


def test_piped_report_keeps_lines_whole_with_the_programs_name(wal_db, holder, run):
    h = holder(wal_db, "wal-write", "--futex")
    out = run("check", wal_db, env={"COLUMNS": "80"}).stdout
    lines = out.splitlines()
    assert lines[0].startswith("stuck: ") and lines[1] == ""  # one verdict line, not wrapped
    assert all(line.startswith("  - ") for line in _advice(out))  # one line per bullet
    row = next(line for line in lines if line.startswith(f"  {h.pid} "))
    assert row.endswith(f"  {PROGRAM} holder.py {wal_db} wal-write --futex")
    assert "USER" in lines[lines.index(row) - 1]  # no column dropped in a pipe


def test_wide_shows_every_column_and_the_full_command_on_a_terminal(wal_db, holder, run):
    h = holder(wal_db, "wal-write", "--futex")
    out = _pty_check(wal_db, 80, "--wide")
    row = next(line for line in out.splitlines() if line.startswith(f"  {h.pid} "))
    assert row.endswith(f"  {FULL_COMMAND} {wal_db} wal-write --futex")
    assert "db,wal,shm" in row and "--wide shows" not in out
    doc = run("check", wal_db, "--json").stdout  # JSON always has the whole command
    assert f'"command": "{FULL_COMMAND} {wal_db} wal-write --futex"' in doc


def test_stuck_holder_that_is_not_stopped_is_told_to_be_killed(wal_db, holder, run):
    h = holder(wal_db, "wal-write", "--futex")
    advice = _advice(run("check", wal_db).stdout)
    kill = next(line for line in advice if f"kill {h.pid} " in line)
    assert "not committed is rolled back" in kill
    assert not any("kill -CONT" in line for line in advice)


def test_shared_advice_is_two_short_lines(wal_db, holder, run):
    holder(wal_db, "wal-idle")
    advice = _advice(run("check", wal_db).stdout)
    assert 1 <= len(advice) <= 2
    assert all(len(line.replace(str(wal_db), "PATH")) <= 100 for line in advice), advice


def test_auth_json_is_named_only_when_it_exists(wal_db, holder, run, tmp_path):
    holder(wal_db, "wal-write", "--futex")
    data = tmp_path / "data"
    (data / "opencode").mkdir(parents=True)
    env = {"XDG_DATA_HOME": str(data)}
    assert "auth.json" not in run("check", wal_db, env=env).stdout
    (data / "opencode" / "auth.json").write_text("{}")
    assert f"needs {data}/opencode/auth.json copied in" in run("check", wal_db, env=env).stdout


def test_diagnose_on_an_80_column_terminal_fits_every_line(tmp_path, holder):
    """Its prose wraps; a log line or an open file's long path is cut (whole in a pipe)."""
    data = tmp_path / "a-data-dir-with-a-rather-long-name" / "share" / "opencode"
    (data / "log").mkdir(parents=True)
    db = make_db(data / "opencode.db")
    log = data / "log" / "2026-11-25T100000.log"
    holder(db, "wal-idle", "--log", str(log))
    out = _pty_check(db, 80, command="diagnose")
    lines = out.splitlines()
    # Only a path longer than the terminal passes it, alone on its line, whole to copy.
    over = [line for line in lines if len(line) > 80]
    assert all(len(line.split()) == 1 for line in over), over
    assert f"    {log}" in lines  # the log's path, on a line of its own
    assert any(line.endswith("…") and line.lstrip().startswith(("3 ", "4 ")) for line in lines)
    piped = _pty_check(db, 80, "--wide", command="diagnose")
    assert str(log) in piped  # --wide: every line whole
