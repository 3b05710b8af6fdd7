"""`wait` and `run`: what they wait on, what they go ahead on, and what they say (issue 14)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fake_opencode, opencode_home

pytestmark = pytest.mark.process  # the CLI and the commands it runs, in subprocesses

BIN = Path(sys.executable).parent
SQLPROBE = [sys.executable, "-m", "sqlprobe"]
# Far below the waits the tests give (30 s, 10 s): "at once", on a loaded machine too.
AT_ONCE_S = 8.0


def sqlprobe(*args: object, **kwargs: object) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the real CLI in a subprocess: (the result, seconds it took)."""
    started = time.monotonic()
    result = subprocess.run(
        [*SQLPROBE, *map(str, args)], capture_output=True, text=True, timeout=120, **kwargs
    )
    return result, time.monotonic() - started


def check_line(db: Path) -> str:
    """The first line of `sqlprobe check DB`: `state: reason`."""
    result, _ = sqlprobe("check", db)
    return result.stdout.splitlines()[0]


# -- item 1: shared is not a reason to refuse, nor to wait ---------------------------------------


def test_run_goes_ahead_at_once_beside_an_idle_holder(wal_db, holder, tmp_path):
    holder(wal_db, "wal-idle")
    marker = tmp_path / "ran"
    result, _ = sqlprobe("run", wal_db, "--", "touch", marker)
    assert (result.returncode, result.stderr) == (0, "")
    assert marker.exists()


def test_run_with_wait_does_not_wait_on_an_idle_holder(wal_db, holder, tmp_path):
    holder(wal_db, "wal-idle")
    marker = tmp_path / "ran"
    result, took = sqlprobe("run", "--wait", "30", wal_db, "--", "touch", marker)
    assert (result.returncode, result.stderr) == (0, "")
    assert marker.exists() and took < AT_ONCE_S


def test_run_require_clear_refuses_shared_and_allow_shared_is_still_accepted(wal_db, holder):
    holder(wal_db, "wal-idle")
    refused, _ = sqlprobe("run", "--require-clear", wal_db, "--", "true")
    assert refused.returncode == 3
    assert refused.stderr.startswith("sqlprobe: not running true: pid ")
    assert "--require-clear" in refused.stderr and refused.stderr.count("\n") == 1
    allowed, _ = sqlprobe("run", "--allow", "shared", wal_db, "--", "true")
    assert (allowed.returncode, allowed.stderr) == (0, "")


def test_readme_hook_runs_opencode_at_once_beside_an_open_tui(tmp_path, holder):
    """`eval "$(sqlprobe hook bash)"` as the README says, with opencode's TUI open (idle)."""
    record = tmp_path / "opencode-ran"
    fake = fake_opencode(tmp_path / "bin", f'echo "$*" >> {record}')
    data, env = opencode_home(tmp_path)
    env["PATH"] = f"{fake.parent}:{BIN}:{os.environ['PATH']}"
    holder(data / "opencode.db", "wal-idle")
    script = 'eval "$(sqlprobe hook bash)"; opencode run hi; echo "rc=$?"'
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    took = time.monotonic() - started
    assert (result.stdout, result.stderr) == ("rc=0\n", "")
    assert record.read_text() == "run hi\n" and took < AT_ONCE_S


# -- item 2: a stuck holder ends the wait at once, with check's own words -------------------------


def test_wait_ends_at_once_on_a_stopped_writer_saying_what_check_says(wal_db, holder):
    h = holder(wal_db, "wal-write")
    h.stop()
    said = check_line(wal_db)
    assert said.startswith("stuck: ")
    result, took = sqlprobe("wait", "--timeout", "10", wal_db)
    assert result.returncode == 5 and took < AT_ONCE_S
    assert result.stderr == f"sqlprobe: {said}\n"


def test_run_wait_refuses_a_stopped_writer_at_once_saying_what_check_says(wal_db, holder):
    h = holder(wal_db, "wal-write")
    h.stop()
    reason = check_line(wal_db).removeprefix("stuck: ")
    result, took = sqlprobe("run", "--wait", "10", wal_db, "--", "true")
    assert result.returncode == 5 and took < AT_ONCE_S
    assert result.stderr == f"sqlprobe: not running true: {reason}\n"


def test_wait_that_times_out_gives_a_complete_verdict_not_a_budget_artefact(wal_db, holder):
    h = holder(wal_db, "wal-write", "--spin")
    result, _ = sqlprobe("wait", "--timeout", "2", wal_db)
    assert result.returncode == 4
    assert result.stderr.startswith(f"sqlprobe: still busy after 2 s: pid {h.pid} (")
    assert "for the whole 0.3 s window" in result.stderr
    assert "timeout cut short" not in result.stderr and "seen once" not in result.stderr


def test_wait_notices_a_writer_that_stops_while_it_waits(wal_db, holder):
    """The cheap polls only see the lock still held: a later full check finds it stuck."""
    h = holder(wal_db, "wal-write", "--spin")
    main, sub = pty.openpty()  # on a terminal, the status line says when it waits on busy
    waiter = subprocess.Popen(
        [*SQLPROBE, "wait", "--timeout", "60", str(wal_db)], stdout=sub, stderr=sub
    )
    os.close(sub)
    try:
        shown = b""
        while b"busy)" not in shown:  # "waiting 0.3s on pid N (the WAL write lock, busy)"
            chunk = os.read(main, 4096)
            assert chunk, shown
            shown += chunk
        h.stop()
        while chunk:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO once the waiter has gone
                break
            shown += chunk
        assert waiter.wait(timeout=30) == 5
        final = shown.decode().rsplit("\r\x1b[K", 1)[-1]
        assert final.startswith(f"sqlprobe: stuck: pid {h.pid} (") and "is stopped" in final
    finally:
        os.close(main)
        waiter.kill()
        waiter.wait()


# -- item 8: run's --timeout, and its usage ----------------------------------------------------


def test_run_timeout_bounds_the_preflight_check(wal_db, holder):
    h = holder(wal_db, "wal-write")
    h.stop()
    result, _ = sqlprobe("run", "--timeout", "0.3", wal_db, "--", "true")
    assert result.returncode in (4, 5)  # busy or stuck, by what the short window saw
    assert "(the 0.3 s timeout cut short the window" in result.stderr


def test_run_without_dashes_says_where_the_command_goes(wal_db):
    result, _ = sqlprobe("run", "opencode", "run", "hi")
    assert result.returncode == 2
    assert "put the command after --: sqlprobe run [PATH] -- opencode run hi" in result.stderr


def test_run_usage_line_shows_the_command():
    result, _ = sqlprobe("run", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: sqlprobe run [OPTIONS] [PATH] -- COMMAND...\n")
