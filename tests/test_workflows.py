"""Running opencode in parallel: wait, refuse, queue, isolate, and the shell hook."""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fake_opencode, make_db, on_pty, opencode_home, wait_until

pytestmark = pytest.mark.process  # the CLI and the commands it runs, in subprocesses

BIN = Path(sys.executable).parent
SQLPROBE = [sys.executable, "-m", "sqlprobe"]

# An opencode-like writer: records when it starts and ends, and writes for a while in between.
# The database is argv[1], or $OPENCODE_DB when argv[1] is "-".
WRITER = """
import os, sqlite3, sys, time
db = os.environ["OPENCODE_DB"] if sys.argv[1] == "-" else sys.argv[1]
log, seconds = sys.argv[2], float(sys.argv[3])
with open(log, "a") as f:
    f.write(f"start {os.getpid()} {time.time()} {db}\\n")
conn = sqlite3.connect(db, isolation_level=None, timeout=0)
conn.execute("pragma journal_mode=wal")
conn.execute("create table if not exists t(x)")
end = time.monotonic() + seconds
conn.execute("begin immediate")
while time.monotonic() < end:
    conn.execute("insert into t values (1)")
    time.sleep(0.01)
conn.execute("commit")
conn.close()
with open(log, "a") as f:
    f.write(f"end {os.getpid()} {time.time()} {db}\\n")
"""


def sqlprobe(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SQLPROBE, *args], capture_output=True, text=True, timeout=120, **kwargs)


def intervals(log: Path) -> dict[int, list[float]]:
    spans: dict[int, list[float]] = {}
    for line in log.read_text().splitlines():
        _what, pid, at, _db = line.split(" ", 3)
        spans.setdefault(int(pid), []).append(float(at))
    return spans


# -- queue -------------------------------------------------------------------------------------


def test_serialized_runs_started_together_never_overlap(tmp_path):
    db = make_db(tmp_path / "opencode.db")
    log = tmp_path / "runs.log"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "runtime")}
    (tmp_path / "runtime").mkdir(mode=0o700)
    cmd = [*SQLPROBE, "run", str(db), "--serialize", "--"]
    runs = [
        subprocess.Popen([*cmd, sys.executable, "-c", WRITER, str(db), str(log), "0.3"], env=env)
        for _ in range(5)
    ]
    codes = [r.wait(timeout=120) for r in runs]
    assert codes == [0] * 5
    spans = sorted(intervals(log).values())
    assert len(spans) == 5 and all(len(s) == 2 for s in spans)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"runs overlapped: {spans}"
    # The queue's lock file lives in the runtime dir, never beside the database.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opencode.db", "runs.log", "runtime"]
    assert len(list((tmp_path / "runtime" / "sqlprobe").iterdir())) == 1


def test_serialize_honours_wait_as_its_bound(tmp_path):
    db = make_db(tmp_path / "opencode.db")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    first = subprocess.Popen(
        [*SQLPROBE, "run", str(db), "--serialize", "--", "sleep", "10"], env=env
    )
    try:
        _until_running(first.pid, b"sleep")  # exec'd: the command holds the queue now
        second = sqlprobe("run", str(db), "--serialize", "--wait", "0.5", "--", "true", env=env)
        assert second.returncode == 4
        assert "the queue was still taken after 0.5 s" in second.stderr
    finally:
        first.kill()
        first.wait()


# -- refuse, pass through ------------------------------------------------------------------------


def test_run_refuses_a_busy_database_with_the_reason(wal_db, holder):
    h = holder(wal_db, "wal-write", "--spin")
    result = sqlprobe("run", str(wal_db), "--", "true")
    assert result.returncode == 4
    assert result.stderr.startswith(f"sqlprobe: not running true: pid {h.pid} (")
    assert "has held the WAL write lock" in result.stderr and result.stderr.count("\n") == 1


def test_run_passes_the_exit_status_through(wal_db):
    assert sqlprobe("run", str(wal_db), "--", sys.executable, "-c", "exit(7)").returncode == 7


def test_run_execs_so_signals_reach_the_command(wal_db):
    proc = subprocess.Popen([*SQLPROBE, "run", str(wal_db), "--", "sleep", "30"])
    try:
        _until_running(proc.pid, b"sleep")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def _until_running(pid: int, program: bytes) -> None:
    """Wait until process `pid` has exec'd `program` (its argv[0])."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    wait_until(
        lambda: cmdline.read_bytes().split(b"\0")[0] == program,
        f"pid {pid} never ran {program!r}",
        20,
    )


def test_run_of_a_missing_command_is_127(wal_db):
    result = sqlprobe("run", str(wal_db), "--", "no-such-command-sqlprobe")
    assert result.returncode == 127 and "cannot run no-such-command-sqlprobe" in result.stderr


def test_run_without_a_command_is_a_usage_error(wal_db):
    result = sqlprobe("run", str(wal_db))
    assert result.returncode == 2 and "give the command after --" in result.stderr


# -- wait --------------------------------------------------------------------------------------


def test_wait_returns_soon_after_the_writer_releases(wal_db, holder):
    import pty

    h = holder(wal_db, "wal-write", "--spin")
    main, sub = pty.openpty()  # its live status line, on a terminal: the sign that it waits
    waiter = subprocess.Popen(
        [*SQLPROBE, "wait", str(wal_db), "--timeout", "30"], stderr=sub, stdin=subprocess.DEVNULL
    )
    os.close(sub)
    try:
        said = b""
        deadline = time.monotonic() + 20
        while b"waiting" not in said:
            assert time.monotonic() < deadline and waiter.poll() is None, said
            if select.select([main], [], [], 0.5)[0]:
                said += os.read(main, 4096)
        h.end()
        released = time.monotonic()
        while waiter.poll() is None:  # drained, so that its status line never blocks it
            assert time.monotonic() - released < 20
            if select.select([main], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):  # EIO once it has exited
                    os.read(main, 4096)
        assert waiter.returncode == 0
        # One poll (0.1 s) and one full check; the margin absorbs a loaded machine.
        assert time.monotonic() - released < 2.0
    finally:
        waiter.kill()
        waiter.wait()
        os.close(main)


def test_wait_gives_up_at_its_timeout_with_the_last_state(wal_db, holder):
    holder(wal_db, "wal-write", "--spin")
    started = time.monotonic()
    result = sqlprobe("wait", str(wal_db), "--timeout", "1")
    assert result.returncode == 4
    assert time.monotonic() - started < 1 + 5  # the timeout, plus start-up on a loaded machine
    assert result.stderr.startswith("sqlprobe: still busy after 1 s: ")


def test_wait_until_clear_is_not_satisfied_by_idle_holders(wal_db, holder):
    holder(wal_db, "wal-idle")
    assert sqlprobe("wait", str(wal_db), "--timeout", "0.5", "-q").returncode == 0
    result = sqlprobe("wait", str(wal_db), "--until", "clear", "--timeout", "0.5", "-q")
    assert (result.returncode, result.stderr) == (3, "")


# -- isolate -----------------------------------------------------------------------------------


def test_isolated_runs_write_at_once_and_leave_nothing(tmp_path):
    log = tmp_path / "runs.log"
    cmd = [*SQLPROBE, "run", "--isolate", "--", sys.executable, "-c", WRITER, "-", str(log), "1"]
    runs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [r.communicate(timeout=60) for r in runs]
    assert [r.returncode for r in runs] == [0, 0]
    (_, a_end), (b_start, _) = sorted(intervals(log).values())
    assert b_start < a_end, "the two isolated writers should have run at the same time"
    dbs = {line.split(" ", 3)[3] for line in log.read_text().splitlines()}
    assert len(dbs) == 2
    for db in dbs:
        assert not os.path.exists(os.path.dirname(db))  # removed after the run
    for _, err in outputs:
        assert err.startswith("sqlprobe: isolated run: OPENCODE_DB=")


def test_isolated_run_with_keep_keeps_the_database(tmp_path):
    log = tmp_path / "runs.log"
    cmd = ["run", "--isolate", "--keep", "--", sys.executable, "-c", WRITER, "-", str(log), "0"]
    result = sqlprobe(*cmd)
    db = log.read_text().split()[3]
    try:
        assert result.returncode == 0 and os.path.getsize(db) > 0
    finally:
        shutil.rmtree(os.path.dirname(db))


# -- hook ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_hook_is_valid_shell(shell):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    code = sqlprobe("hook", shell, "--serialize").stdout
    assert "opencode" in code and "--serialize" in code
    check = subprocess.run([shell, "-n"], input=code, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_bash_hook_wraps_run_and_passes_other_commands_through(tmp_path, holder):
    fake = fake_opencode(tmp_path / "bin")
    data, env = opencode_home(tmp_path)
    env["PATH"] = f"{fake.parent}:{BIN}:{os.environ['PATH']}"
    db = data / "opencode.db"
    script = "; ".join(
        [
            'eval "$(sqlprobe hook bash --wait 0)"',
            'opencode run "a b"',
            'echo "rc=$?"',
            "opencode auth list",
        ]
    )
    clear = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert clear.stdout == "opencode got: run a b\nrc=0\nopencode got: auth list\n"
    holder(db, "wal-write", "--spin")
    busy = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert busy.stdout == "rc=4\nopencode got: auth list\n"
    assert busy.stderr.startswith("sqlprobe: not running opencode: pid ")


def test_wait_shows_one_live_status_line_only_on_a_terminal(wal_db, holder):
    h = holder(wal_db, "wal-write", "--spin")
    code, shown = on_pty([*SQLPROBE, "wait", str(wal_db), "--timeout", "1"])
    assert code == 4
    assert "\r\x1b[Ksqlprobe: waiting " in shown and f"on pid {h.pid} (the WAL write lock" in shown
    # Not a terminal: no status line, only the final one-line answer.
    piped = sqlprobe("wait", str(wal_db), "--timeout", "1")
    assert "\r" not in piped.stderr and piped.stderr.count("\n") == 1
