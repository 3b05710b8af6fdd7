"""The command line as a user meets it: exact output, exit codes, errors, colour, pipes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import click
import pytest
from conftest import fingerprint, make_db, on_pty

from sqlprobe.cli import cli


def test_check_help_has_examples_and_exit_codes(run):
    result = run("check", "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert "sqlprobe check ~/.local/share/opencode --json" in result.stdout
    top = run("--help").stdout
    for code, word in [(0, "clear"), (3, "shared"), (4, "busy"), (5, "stuck"), (6, "error")]:
        assert f"{code}  {word}" in top


@pytest.mark.process
def test_clear_human_output_is_the_verdict_then_the_file_state(wal_db, run):
    result = run("check", wal_db)
    lines = result.stdout.splitlines()
    assert result.exit_code == 0
    assert lines[0] == f"clear: no other process holds {wal_db} or its side files"
    assert lines[2] == f"{wal_db}  [wal]  clear"
    assert lines[3].startswith("  database: 8.0 KiB, 2 pages of 4096 bytes")
    assert lines[-1].startswith("  probe: ok (immutable, ")


@pytest.mark.process
def test_missing_path_is_clear(tmp_path, run):
    result = run("check", tmp_path / "nope.db")
    assert result.exit_code == 0
    assert (
        result.stdout
        == f"clear: {tmp_path}/nope.db does not exist: a new instance would create it\n"
    )


@pytest.mark.process
def test_default_target_uses_opencode_environment(tmp_path, run):
    data = tmp_path / "opencode"
    data.mkdir()
    make_db(data / "opencode.db")
    result = run("check", "--json", env={"XDG_DATA_HOME": str(tmp_path), "OPENCODE_DB": ""})
    doc = json.loads(result.stdout)
    assert doc["target"] == str(data)
    assert [d["path"] for d in doc["databases"]] == [str(data / "opencode.db")]


@pytest.mark.process
def test_opencode_db_in_memory_is_clear_with_note(run):
    result = run("check", "--json", env={"OPENCODE_DB": ":memory:"})
    doc = json.loads(result.stdout)
    assert (result.exit_code, doc["verdict"], doc["databases"]) == (0, "clear", [])
    assert "nothing on disk to check" in doc["reason"]


@pytest.mark.process
def test_quiet_prints_nothing(wal_db, run):
    result = run("check", wal_db, "-q")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_json_and_quiet_together_is_a_usage_error(wal_db, run):
    result = run("check", wal_db, "--json", "-q")
    assert result.exit_code == 2
    assert "--json and --quiet cannot be used together" in result.stderr


def test_bad_window_is_a_usage_error(wal_db, run):
    assert run("check", wal_db, "--window", "-1").exit_code == 2


@pytest.mark.process
def test_non_sqlite_file_is_a_one_line_error(tmp_path, run):
    path = tmp_path / "opencode.db"
    path.write_bytes(b"hello, this is not a database" * 10)
    result = run("check", path)
    assert (result.exit_code, result.stdout) == (6, "")
    assert result.stderr == (
        f"sqlprobe: error: {path}: not a SQLite database (no 'SQLite format 3' header)\n"
    )


@pytest.mark.process
def test_fifo_named_opencode_db_does_not_hang(tmp_path, run):
    os.mkfifo(tmp_path / "opencode.db")
    started = time.monotonic()
    result = run("check", tmp_path)
    assert time.monotonic() - started < 5
    assert result.exit_code == 6
    assert "is a FIFO, not a regular file" in result.stderr


@pytest.mark.process
def test_directory_named_opencode_db_is_an_error(tmp_path, run):
    (tmp_path / "opencode.db").mkdir()
    result = run("check", tmp_path / "opencode.db")
    assert result.exit_code == 6
    assert "is a directory" in result.stderr


@pytest.mark.process
def test_json_document_has_the_documented_shape(wal_db, holder, run):
    h = holder(wal_db, "wal-idle")
    doc = json.loads(run("check", wal_db, "--json").stdout)
    assert set(doc) >= {
        "schema",
        "target",
        "verdict",
        "exit_code",
        "reason",
        "databases",
        "uninspected_processes",
        "warnings",
    }
    assert doc["schema"] == 1
    (db,) = doc["databases"]
    assert set(db) >= {"path", "verdict", "reason", "journal_mode", "holders"}
    (mine,) = db["holders"]
    assert set(mine) >= {"pid", "command", "user", "state", "age_s", "cpu_s", "files", "locks"}
    assert mine["pid"] == h.pid
    assert set(mine["locks"][0]) >= {"file", "lock", "mode", "start", "end"}


@pytest.mark.process
def test_escape_sequences_in_a_command_line_never_reach_the_terminal(wal_db, holder, run):
    # The holder's argv carries an escape sequence (the kind that retitles a terminal).
    h = holder(wal_db, "wal-idle", "--spin", "\x1b]0;pwned\x07")
    result = run("check", wal_db)
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b]0;pwned\\x07" in result.stdout
    assert str(h.pid) in result.stdout


@pytest.mark.process
def test_colour_only_on_a_terminal_and_never_with_no_color(wal_db, holder):
    """Run under a real pseudo-terminal: coloured, unless NO_COLOR is set."""
    pytest.importorskip("pty")
    holder(wal_db, "wal-idle")

    def on_tty(env: dict[str, str]) -> str:
        cmd = [sys.executable, "-m", "sqlprobe", "check", str(wal_db)]
        return on_pty(cmd, env={**os.environ, **env})[1]

    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    assert "\x1b[" in on_tty({**env, "NO_COLOR": ""})  # empty NO_COLOR does not count
    assert "\x1b[" not in on_tty({"NO_COLOR": "1"})


@pytest.mark.process
def test_closed_pipe_is_quiet(wal_db, holder):
    holder(wal_db, "wal-write", "--spin")
    cmd = f"{sys.executable} -m sqlprobe check {wal_db} | head -c 1"
    proc = subprocess.run(
        ["bash", "-c", cmd + "; echo ${PIPESTATUS[0]}"], capture_output=True, text=True, timeout=60
    )
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[-1] in ("4", "b4")  # busy, however much head read


@pytest.mark.process
def test_internal_error_is_one_line_and_exit_1(wal_db, monkeypatch, run):
    def boom(*args, **kwargs):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr("sqlprobe.collect.snapshot.take", boom)
    monkeypatch.delenv("SQLPROBE_DEBUG", raising=False)
    result = run("check", wal_db)
    assert result.exit_code == 1
    assert result.stderr == (
        "sqlprobe: internal error: RuntimeError: synthetic failure "
        "(a bug; set SQLPROBE_DEBUG=1 for the traceback)\n"
    )


# -- harmlessness --------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize(
    ("state", "wal"),
    [
        (None, True),
        ("wal-idle", True),
        ("wal-read", True),
        ("wal-write", True),
        ("wal-exclusive", True),
        ("rollback-read", False),
        ("rollback-reserved", False),
        ("rollback-exclusive", False),
    ],
)
def test_check_changes_no_byte_and_creates_no_file(tmp_path, holder, run, state, wal):
    db = make_db(tmp_path / "opencode.db", wal=wal)
    if state:
        holder(db, state)
    before = fingerprint(tmp_path)
    result = run("check", db, "--json")
    assert result.exit_code in (0, 3, 4, 5)
    assert fingerprint(tmp_path) == before


# -- the installed script -------------------------------------------------------------------------


@pytest.mark.process
def test_installed_console_script_runs(wal_db):
    script = shutil.which("sqlprobe", path=os.path.dirname(sys.executable)) or shutil.which(
        "sqlprobe"
    )
    if script is None:
        pytest.fail("the sqlprobe console script is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([script, "check", str(wal_db), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "clear"
    version = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("sqlprobe, version ")


def test_every_command_has_help_with_an_example():
    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert {"check", "diagnose", "wait", "run", "hook"} <= set(names)
    for name in names:
        command = cli.get_command(ctx, name)
        assert command and command.help and "Example:" in command.help, name


@pytest.mark.process
def test_path_with_newline_and_escape_stays_one_line(tmp_path, run):
    path = tmp_path / "odd\nname\x1b[2J.db"
    path.write_bytes(b"not a database at all" * 10)
    result = run("check", path)
    assert result.exit_code == 6
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr
    assert "odd\\nname\\x1b[2J.db: not a SQLite database" in result.stderr


@pytest.mark.process
def test_path_with_non_utf8_bytes_is_reported_not_a_crash(tmp_path):
    path = os.path.join(os.fsencode(tmp_path), b"caf\xe9.db")
    with open(path, "wb") as f:
        f.write(b"not a database at all" * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "sqlprobe", "check", path], capture_output=True, timeout=60
    )
    assert proc.returncode == 6, proc.stderr
    assert b"caf\\xe9.db: not a SQLite database" in proc.stderr
    doc = subprocess.run(
        [sys.executable, "-m", "sqlprobe", "check", path, "--json"], capture_output=True, timeout=60
    )
    assert json.loads(doc.stdout)["verdict"] == "error"
