"""The command line at its edges, in real processes: bad numbers, odd names, closed and full
output streams, and Ctrl-C."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import make_db, wait_until

from sqlprobe.model import DatabaseSnapshot, Snapshot
from sqlprobe.verdict.judge import judge

SQLPROBE = [sys.executable, "-m", "sqlprobe"]
FULL = "sqlprobe: cannot write output: No space left on device\n"
# The command run under `sqlprobe run` to report what it inherited as its stdout.
SAYS_STDOUT = (
    "import os, sys\n"
    "try:\n"
    "    os.fstat(1)\n"
    "    print('stdout open:', os.readlink('/proc/self/fd/1'), file=sys.stderr)\n"
    "except OSError:\n"
    "    print('stdout closed', file=sys.stderr)\n"
    "sys.exit(5)\n"
)


def sqlprobe(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("capture_output", True)
    return subprocess.run([*SQLPROBE, *map(str, args)], text=True, timeout=60, **kwargs)


def with_stdout_closed(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    """sqlprobe started as `sqlprobe ARGS >&-`: its fd 1 is not open at all."""
    cmd = ["sh", "-c", 'exec "$@" >&-', "sh", *SQLPROBE, *map(str, args)]
    return subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=60, **kwargs)


def to_dev_full(*args: str | Path) -> subprocess.CompletedProcess[str]:
    with open("/dev/full", "w") as full:
        return sqlprobe(*args, stdout=full, stderr=subprocess.PIPE, capture_output=False)


class Terminal:
    """A process with its stderr (and stdout) on a pseudo-terminal, read as it goes."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.main, sub = pty.openpty()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sub, stderr=sub, env=env)
        os.close(sub)
        self.seen = b""

    def read_until(self, text: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never printed {text!r}: {self.seen!r}"
            if select.select([self.main], [], [], left)[0]:
                self.seen += os.read(self.main, 4096)

    def finish(self) -> tuple[int, bytes]:
        """Read to the end; (exit code, what was printed after what read_until saw)."""
        before, rest = len(self.seen), b""
        while True:
            try:
                chunk = os.read(self.main, 4096)
            except OSError:  # EIO once the last writer has gone
                break
            if not chunk:
                break
            rest += chunk
        self.seen = self.seen[:before] + rest
        return self.proc.wait(timeout=30), rest

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.main)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(cmd: list[str], env: dict[str, str] | None = None) -> Terminal:
        started.append(Terminal(cmd, env))
        return started[-1]

    yield start
    for t in started:
        t.close()


# -- issue 13, item 4: numbers of seconds ----------------------------------------------------------


SECONDS_OPTIONS = [
    (["check", "{db}", "--timeout"], "--timeout", "0.1", "3600"),
    (["check", "{db}", "--window"], "--window", "0", "10"),
    (["check", "{db}", "--busy-timeout"], "--busy-timeout", "0", "10"),
    (["diagnose", "{db}", "--timeout"], "--timeout", "0.1", "3600"),
    (["wait", "{db}", "--timeout"], "--timeout", "0", "86400"),
    (["run", "{db}", "--wait"], "--wait", "0", "86400"),
    (["hook", "bash", "--wait"], "--wait", "0", "86400"),
]


@pytest.mark.process
@pytest.mark.parametrize("value", ["nan", "NaN", "-nan", "inf", "-inf", "-1"])
@pytest.mark.parametrize(("args", "option", "low", "high"), SECONDS_OPTIONS)
def test_seconds_that_are_not_finite_or_negative_are_a_usage_error(
    wal_db, args, option, low, high, value
):
    argv = [a.format(db=wal_db) for a in args] + [value]
    if argv[0] == "run":
        argv += ["--", "true"]
    result = sqlprobe(*argv)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '{option}': {value} is not a number of seconds"
        f" from {low} to {high}."
    )


# -- issue 13, item 16: odd names, empty names -----------------------------------------------------


@pytest.mark.process
def test_json_writes_a_non_utf8_file_name_as_valid_unicode(tmp_path):
    db = make_db(tmp_path / "x\udcff.db")  # the file name's byte 0xff is not UTF-8
    result = sqlprobe("check", "--no-probe", "--json", db)
    assert result.returncode == 0
    assert "\\ud" not in result.stdout  # no lone surrogate that a strict parser rejects
    doc = json.loads(result.stdout)
    assert doc["target"] == doc["databases"][0]["path"] == f"{tmp_path}/x\\xff.db"
    assert doc["reason"] == f"no other process holds {tmp_path}/x\\xff.db or its side files"


@pytest.mark.process
def test_a_channel_database_with_a_non_utf8_name_is_reported_escaped(tmp_path):
    make_db(tmp_path / "opencode-\udcff.db")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # as in a UTF-8 locale
    text = sqlprobe("check", "--no-probe", tmp_path, env=env)
    assert text.returncode == 0 and text.stderr == ""
    assert text.stdout.splitlines()[2] == f"{tmp_path}/opencode-\\xff.db  [wal]  clear"
    doc = json.loads(sqlprobe("check", "--no-probe", "--json", tmp_path, env=env).stdout)
    assert [d["path"] for d in doc["databases"]] == [f"{tmp_path}/opencode-\\xff.db"]


@pytest.mark.process
def test_a_command_to_copy_quotes_an_odd_path_for_the_shell(tmp_path, holder):
    db = make_db(tmp_path / "h\udcff\x1b[2J.db")
    holder(db, "wal-idle")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    result = sqlprobe("check", "--no-probe", db, env=env)
    assert (result.returncode, result.stderr) == (3, "")
    assert f"sqlprobe run --wait 60 $'{tmp_path}/h\\xff\\x1b[2J.db' --" in (result.stdout)
    assert "\x1b" not in result.stdout


@pytest.mark.process
@pytest.mark.parametrize("isolate", [False, True], ids=["exec", "isolate"])
def test_an_empty_command_fails_as_in_a_shell(wal_db, isolate):
    shell = subprocess.run(["sh", "-c", "''"], capture_output=True)
    where = ["--isolate"] if isolate else [wal_db]
    result = sqlprobe("run", *where, "--", "")
    assert result.returncode == shell.returncode == 127
    assert result.stderr.splitlines()[-1] == "sqlprobe: cannot run '': command not found"


@pytest.mark.process
def test_a_command_name_that_is_not_utf8_is_named_escaped(wal_db):
    result = sqlprobe("run", wal_db, "--", "no-such-\udcff-\x1b[2J")
    assert result.returncode == 127
    assert result.stderr == "sqlprobe: cannot run $'no-such-\\xff-\\x1b[2J': command not found\n"


@pytest.mark.process
@pytest.mark.parametrize(
    "args", [["check"], ["diagnose"], ["wait"], ["run", "", "--", "true"]], ids=lambda a: a[0]
)
def test_an_empty_path_is_a_usage_error(tmp_path, args):
    make_db(tmp_path / "opencode.db")  # what the current directory would have given
    argv = args if args[0] == "run" else [*args, ""]
    result = sqlprobe(*argv, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        "Error: Invalid value for '[PATH]': an empty PATH names no file"
        " (leave it out for opencode's own database)."
    )


# -- issue 13, item 17: closed and failing output, Ctrl-C, messages --------------------------------


@pytest.mark.process
def test_check_with_stdout_closed_exits_with_its_verdict(tmp_path, wal_db):
    clear = with_stdout_closed("check", wal_db)
    assert (clear.returncode, clear.stderr) == (0, "")
    clear_json = with_stdout_closed("check", "--json", wal_db)
    assert (clear_json.returncode, clear_json.stderr) == (0, "")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database" * 10)
    error = with_stdout_closed("check", bad)
    assert error.returncode == 6
    assert (
        error.stderr
        == f"sqlprobe: error: {bad}: not a SQLite database (no 'SQLite format 3' header)\n"
    )


@pytest.mark.process
@pytest.mark.parametrize(
    "how", [[], ["--isolate"], ["--serialize"]], ids=["exec", "isolate", "queue"]
)
def test_run_with_stdout_closed_runs_the_command_with_stdout_closed(tmp_path, wal_db, how):
    where = [] if how == ["--isolate"] else [wal_db]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    result = with_stdout_closed(
        "run", *how, *where, "--", sys.executable, "-c", SAYS_STDOUT, env=env
    )
    assert result.returncode == 5  # the command's own
    assert result.stderr.splitlines()[-1] == "stdout closed"  # not a file sqlprobe opened


@pytest.mark.process
@pytest.mark.parametrize(
    "args",
    [
        ["check", "{db}"],
        ["check", "{db}", "--json"],
        ["diagnose", "{db}"],
        ["hook", "bash"],
        ["--help"],
        ["check", "--help"],
        ["--version"],
    ],
    ids=" ".join,
)
def test_output_to_a_full_disk_is_one_line_and_exit_7(wal_db, args):
    result = to_dev_full(*(a.format(db=wal_db) for a in args))
    assert (result.returncode, result.stderr) == (7, FULL)


@pytest.mark.process
def test_diagnose_prints_its_error_on_stderr_as_check_does(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database" * 10)
    line = f"sqlprobe: error: {bad}: not a SQLite database (no 'SQLite format 3' header)\n"
    result = sqlprobe("diagnose", bad)
    assert (result.returncode, result.stderr) == (6, line)
    assert result.stdout.startswith(f"filesystem of {tmp_path}: ")  # the diagnosis
    assert "not a SQLite database" not in result.stdout


@pytest.mark.process
def test_ctrl_c_during_wait_exits_130_and_says_nothing_more(wal_db, holder, terminal):
    h = holder(wal_db, "wal-write", "--spin")  # busy: a stuck holder ends the wait at once
    waiting = terminal([*SQLPROBE, "wait", str(wal_db), "--timeout", "30"])
    waiting.read_until(b"sqlprobe: waiting")
    waiting.read_until(f"on pid {h.pid}".encode())
    waiting.proc.send_signal(signal.SIGINT)
    code, rest = waiting.finish()
    assert code == 130
    # Nothing but the status line (refreshed until the signal came), cleared on the way out.
    assert rest.endswith(b"\r\x1b[K")
    assert re.sub(rb"\r\x1b\[K(sqlprobe: waiting [^\r]*)?", b"", rest) == b"", rest


@pytest.mark.process
def test_ctrl_c_while_queued_exits_130_and_frees_the_queue(tmp_path, wal_db, holder, terminal):
    holder(wal_db, "wal-write", "--spin")  # busy: a stuck holder ends the wait at once
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    queued = terminal(
        [*SQLPROBE, "run", "--serialize", "--wait", "30", str(wal_db), "--", "true"], env
    )
    queued.read_until(b"sqlprobe: waiting")  # it holds the queue and waits for the database
    queued.proc.send_signal(signal.SIGINT)
    code, rest = queued.finish()
    assert code == 130 and b"Aborted" not in rest
    after = sqlprobe("run", "--serialize", "--wait", "0.2", wal_db, "--", "true", env=env)
    assert after.returncode == 4 and "the queue was still taken" not in after.stderr


def _blocked_writing(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rindex(b")") + 2 :].split()[0] == b"S"


@pytest.mark.process
def test_ctrl_c_before_an_isolated_command_starts_removes_its_directory(tmp_path):
    # sqlprobe prints the isolated database's path after making its directory: with stderr a
    # full pipe, it blocks right there, between the directory and the command.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETFL, os.O_NONBLOCK)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass
    fcntl.fcntl(write_end, fcntl.F_SETFL, 0)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [*SQLPROBE, "run", "--isolate", "--", "sleep", "30"], stderr=write_end, env=env
    )
    os.close(write_end)
    try:
        wait_until(
            lambda: list(tmp_path.glob("sqlprobe-isolated-*")) and _blocked_writing(proc.pid),
            "sqlprobe did not block writing after making its directory",
            30,
            alive=proc,
        )
        proc.send_signal(signal.SIGINT)
        os.set_blocking(read_end, False)
        while proc.poll() is None:  # drain, so that a process that insists on printing can
            select.select([read_end], [], [], 0.1)
            with contextlib.suppress(BlockingIOError):
                os.read(read_end, 1 << 16)
        assert proc.returncode == 130
        assert list(tmp_path.glob("sqlprobe-isolated-*")) == []
    finally:
        proc.kill()
        proc.wait()
        os.close(read_end)


def _runs(pid: int, name: bytes) -> bool:
    """Whether `pid` has a child running `name`."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] == name:
                return True
        except FileNotFoundError:
            continue  # a worker that has just exited
    return False


@pytest.mark.process
def test_ctrl_c_during_an_isolated_run_removes_its_directory(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [*SQLPROBE, "run", "--isolate", "--", "sleep", "30"], stderr=subprocess.PIPE, env=env
    )
    try:
        # The command (not a worker of the preflight) runs.
        wait_until(lambda: _runs(proc.pid, b"sleep"), "the command did not start", 30, alive=proc)
        (made,) = tmp_path.glob("sqlprobe-isolated-*")
        proc.send_signal(signal.SIGINT)  # forwarded to the command, which dies of it
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGINT  # as the command did: its caller sees it
        assert not made.exists()
        assert err.decode().startswith("sqlprobe: isolated run: OPENCODE_DB=")
    finally:
        proc.kill()
        proc.wait()


def test_a_computed_timeout_is_printed_rounded():
    snapshot = Snapshot(
        "/d",
        (DatabaseSnapshot("/d/opencode.db", False),),
        0.3,
        timeout_s=0.999998,
        cut_short=("the window",),
    )
    assert judge(snapshot).reason.endswith(" (the 1 s timeout cut short the window)")


@pytest.mark.process
def test_a_timeout_given_with_many_digits_is_printed_rounded(wal_db, holder):
    holder(wal_db, "wal-write")
    result = sqlprobe("check", wal_db, "--timeout", "0.3456789", "--window", "5")
    assert "(the 0.35 s timeout cut short the window (" in result.stdout.splitlines()[0]
