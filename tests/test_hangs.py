"""Every command answers by its deadline, even when a thread of it is stuck in the kernel.

Each case runs the real CLI as a subprocess and measures the wall time until it has exited and
both its stdout and stderr reached EOF (a `$(sqlprobe check)` capture waits for both). The bound
is the command's own deadline plus SLACK_S for the interpreter's start-up. A FUSE daemon that
reads requests and never answers (tests/fusehang.py) leaves the caller in an uninterruptible
wait that even SIGKILL cannot end, as a dead NFS server does; a FIFO in place of a side file
blocks an open() until a writer comes.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import Holder, make_db
from fusehang import FuseHang, MountUnavailable, end_process

pytestmark = pytest.mark.process  # a FUSE server, holders and the CLI in subprocesses

SQLPROBE = [sys.executable, "-m", "sqlprobe"]
SLACK_S = 0.5  # the bound: deadline + 0.5 s, start-up included
HARD_CAP_S = 10.0  # past the bound: the process is killed and the test fails with its state
CHECK_DEFAULT_TIMEOUT = 3.0  # `run` has no --timeout: its preflight is a check with the default
VERDICT_CODES = {0, 3, 4, 5, 6}
MARK = "ran-the-command"  # what `run ... -- echo MARK` prints once the command runs
OUT_OF_TIME = re.compile(r"time ?out|timed out|no answer|not answer|out of time|deadline", re.I)
TRACEBACK = "Traceback (most recent call last)"
SYSCALLS_X86_64 = {
    0: "read", 2: "open", 4: "stat", 6: "lstat", 7: "poll", 61: "wait4", 83: "mkdir",
    202: "futex", 230: "clock_nanosleep", 257: "openat", 258: "mkdirat", 262: "newfstatat",
    270: "pselect6", 271: "ppoll", 332: "statx",
}  # fmt: skip


class Outcome(NamedTuple):
    args: list[str]
    code: int | None  # None: still running at the hard cap (then killed)
    stdout: str
    stderr: str
    elapsed: float  # until exit and EOF on both pipes (the hard cap when it never came)
    done_at: dict[str, float]  # "exit", "stdout", "stderr": seconds after the start
    last_output_at: dict[str, float]
    stuck: str  # /proc of the session's threads at the hard cap

    @property
    def overran(self) -> bool:
        return len(self.done_at) < 3

    def describe(self) -> str:
        done = ", ".join(f"{k} at {v:.2f} s" for k, v in sorted(self.done_at.items()))
        wrote = ", ".join(f"last {k} at {v:.2f} s" for k, v in sorted(self.last_output_at.items()))
        lines = [
            f"sqlprobe {' '.join(self.args)}",
            f"  exit code {self.code}, elapsed {self.elapsed:.2f} s ({done or 'nothing done'};"
            f" {wrote or 'no output'})",
            f"  stdout: {self.stdout[-1500:]!r}",
            f"  stderr: {self.stderr[-1500:]!r}",
        ]
        if self.stuck:
            lines.append("  threads at the hard cap:\n" + self.stuck)
        return "\n".join(lines)


def session_threads(sid: int) -> str:
    """State, wchan and syscall of every thread of every process in session `sid`."""
    rows = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
            if int(data[data.rindex(b")") + 2 :].split()[3]) != sid:
                continue
            for tid in sorted(os.listdir(f"/proc/{entry}/task"), key=int):
                task = f"/proc/{entry}/task/{tid}"
                st = Path(f"{task}/stat").read_bytes()
                comm = st[st.index(b"(") + 1 : st.rindex(b")")].decode(errors="replace")
                state = st[st.rindex(b")") + 2 :].split()[0].decode()
                wchan = Path(f"{task}/wchan").read_text()
                syscall = Path(f"{task}/syscall").read_text().split()
                name = syscall[0]
                if platform.machine() == "x86_64" and name.isdigit():
                    name = SYSCALLS_X86_64.get(int(name), name)
                rows.append(f"    pid {entry} tid {tid} ({comm}) {state} {wchan or '-'} {name}")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
    return "\n".join(rows) or "    (no thread left)"


def measure(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    cap: float,
    track: Callable[[subprocess.Popen[bytes]], object],
    unstick: Callable[[], None] = lambda: None,
) -> Outcome:
    """Run `sqlprobe ARGS`; wait for its exit and EOF on both pipes, at most `cap` seconds.

    At the cap its threads are recorded, its session is killed, and `unstick` runs (ending the
    FUSE daemon, so that a thread stuck on the mount can die).
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        [*SQLPROBE, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    track(proc)
    pidfd = os.pidfd_open(proc.pid)  # readable once the whole thread group has exited
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", pidfd: "exit"}  # type: ignore[union-attr]
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    done_at: dict[str, float] = {}
    last_output_at: dict[str, float] = {}

    def take(fd: int, now: float) -> None:
        name = names[fd]
        if name == "exit":
            done_at[name] = now
            return
        data = os.read(fd, 65536)
        if data:
            chunks[name].append(data)
            last_output_at[name] = now
        else:
            done_at[name] = now

    stuck = ""
    try:
        while len(done_at) < 3:
            left = started + cap - time.monotonic()
            if left <= 0:
                break
            watch = [fd for fd, name in names.items() if name not in done_at]
            ready, _, _ = select.select(watch, [], [], left)
            for fd in ready:
                take(fd, time.monotonic() - started)
        elapsed = time.monotonic() - started
        if len(done_at) < 3:
            stuck = session_threads(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            unstick()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            drain_until = time.monotonic() + 5
            while {"stdout", "stderr"} - done_at.keys() and time.monotonic() < drain_until:
                watch = [fd for fd, n in names.items() if n != "exit" and n not in done_at]
                ready, _, _ = select.select(watch, [], [], drain_until - time.monotonic())
                for fd in ready:
                    take(fd, cap)
            done_at = {k: v for k, v in done_at.items() if v < cap}
    finally:
        os.close(pidfd)
        # Its whole session while it is not reaped yet (so the group id cannot have been
        # reused): a worker it forked may still be stuck on the mount after it exited.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        end_process(proc)
    return Outcome(
        args,
        proc.returncode if not stuck else None,
        b"".join(chunks["stdout"]).decode(errors="replace"),
        b"".join(chunks["stderr"]).decode(errors="replace"),
        elapsed,
        done_at,
        last_output_at,
        stuck,
    )


def assert_answered_by(
    outcome: Outcome, deadline: float, answered: Callable[[Outcome], bool] = lambda _o: False
) -> None:
    """Done by `deadline` + SLACK_S, with a verdict's exit code, no traceback, and saying it
    ran out of time unless `answered` accepts what it said as a full answer."""
    report = outcome.describe()
    assert not outcome.overran, f"still not done at the {HARD_CAP_S:g} s hard cap:\n{report}"
    assert outcome.elapsed <= deadline + SLACK_S, f"past its {deadline:g} s deadline:\n{report}"
    assert outcome.code in VERDICT_CODES, f"not a verdict's exit code:\n{report}"
    text = outcome.stdout + outcome.stderr
    assert TRACEBACK not in text, report
    if not answered(outcome):
        assert OUT_OF_TIME.search(text), f"does not say it ran out of time:\n{report}"


def ran(outcome: Outcome) -> bool:
    """`run` ran its command: a full answer, when nothing it needs is out of reach."""
    return outcome.code == 0 and MARK in outcome.stdout


def clear(outcome: Outcome) -> bool:
    """A clear verdict (or, for `run`, the command ran): nothing holds the database."""
    return outcome.code == 0 and (outcome.args[0] != "run" or MARK in outcome.stdout)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def fuse_hang() -> Iterator[FuseHang]:
    """The FUSE daemon on a fresh directory serving `opencode.db` (and `sub/opencode.db`),
    answering until `fuse_hang.hang()`. At teardown: the daemon is ended first, then every
    process given to `fuse_hang.track`, then the mount is detached and the directory removed."""
    try:
        fuse = FuseHang(["opencode.db"])
    except MountUnavailable as err:
        pytest.skip(str(err))
    try:
        yield fuse
    finally:
        fuse.close()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test without a FUSE mount started: killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        end_process(proc)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A normal data dir with a real WAL database that nobody holds."""
    directory = tmp_path / "data"
    directory.mkdir()
    make_db(directory / "opencode.db")
    return directory


def isolated_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    """The environment of every sqlprobe run: XDG dirs, HOME, XDG_RUNTIME_DIR and TMPDIR in
    `tmp_path`; an override of None unsets the variable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "OPENCODE", "SQLPROBE")) and k not in ("HOME", "TMPDIR")
    }
    base = tmp_path / "env"
    for variable, name in (
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("HOME", "home"),
        ("XDG_RUNTIME_DIR", "runtime"),
        ("TMPDIR", "tmp"),
    ):
        (base / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        env[variable] = str(base / name)
    for variable, value in overrides.items():
        if value is None:
            env.pop(variable, None)
        else:
            env[variable] = value
    return env


# Python that opens a file read-only, says so, and keeps it open until stdin closes.
OPENER = "import sys; f = open(sys.argv[1], 'rb'); print('open', flush=True); sys.stdin.read()"


def hold_open(fuse: FuseHang, path: Path) -> subprocess.Popen[str]:
    proc = fuse.track(
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    )
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
    assert line == "open\n", f"the opener did not open {path}: {line!r}"
    return proc


# -- a. an unrelated process holds a file open on a mount that stopped answering -------------

UNRELATED_CASES = [
    pytest.param(["check", "{data}", "--timeout", "3"], 3.0, id="check"),
    pytest.param(["check", "--no-probe", "{data}", "--timeout", "3"], 3.0, id="check-no-probe"),
    pytest.param(["diagnose", "{data}", "--timeout", "1"], 1.0, id="diagnose"),
    pytest.param(["wait", "{data}", "--timeout", "2"], 2.0, id="wait"),
    pytest.param(["run", "{data}", "--", "echo", MARK], CHECK_DEFAULT_TIMEOUT, id="run"),
    pytest.param(["run", "--wait", "1", "{data}", "--", "echo", MARK], 1.0, id="run-wait"),
]


def fill(args: list[str], **places: Path) -> list[str]:
    return [a.format(**{k: str(v) for k, v in places.items()}) for a in args]


@pytest.mark.parametrize("mount", ["hung", "answering", "dead"])
@pytest.mark.parametrize(("args", "deadline"), UNRELATED_CASES)
def test_an_unrelated_file_on_a_mount_does_not_hold_the_answer(
    fuse_hang, data_dir, tmp_path, args, deadline, mount
):
    """hung: the daemon reads requests and never answers; answering, the control: the harness
    and the mount are not the hang; dead: the daemon is gone (a crashed sshfs), so a stat of
    the file fails at once with ENOTCONN."""
    hold_open(fuse_hang, fuse_hang.mnt / "opencode.db")
    if mount == "hung":
        fuse_hang.hang()
    elif mount == "dead":
        fuse_hang.abort()
    outcome = measure(
        fill(args, data=data_dir),
        isolated_env(tmp_path),
        tmp_path,
        deadline + HARD_CAP_S,
        fuse_hang.track,
        *((fuse_hang.abort,) if mount != "dead" else ()),
    )
    if mount == "dead":
        assert_answered_by(
            outcome, deadline, lambda o: clear(o) or "not connected" in o.stdout + o.stderr
        )
        return
    assert_answered_by(outcome, deadline, clear)
    if mount == "answering":
        assert clear(outcome), outcome.describe()
        assert "clear" in outcome.stdout + outcome.stderr or outcome.args[0] in ("wait", "run")


# -- b. a FIFO in place of the -wal or -shm beside a live holder -------------------------------

FIFO_CASES = [
    pytest.param(["check", "{data}", "--timeout", "1"], 1.0, id="check"),
    pytest.param(["run", "{data}", "--wait", "1", "--", "echo", MARK], 1.0, id="run-wait"),
]


@pytest.fixture
def held_data_dir(data_dir: Path, holder: Callable[..., Holder]) -> Path:
    """`data_dir` with a live WAL holder (SHARED on the database, DMS on the -shm)."""
    holder(data_dir / "opencode.db", "wal-idle")
    assert (data_dir / "opencode.db-wal").is_file()
    assert (data_dir / "opencode.db-shm").is_file()
    return data_dir


def names_the_fifo(outcome: Outcome) -> bool:
    """A full answer about the side file: it is a FIFO, or the holder's own one was deleted."""
    return bool(
        re.search(r"FIFO|not a regular file|deleted while", outcome.stdout + outcome.stderr)
    )


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
@pytest.mark.parametrize(
    "away",
    [
        # The holder's file is deleted: seen in its /proc/PID/fd as `... (deleted)`.
        pytest.param("unlinked", id="unlinked"),
        # The holder keeps it open under another name: only the FIFO is left to see.
        pytest.param("renamed", id="renamed"),
    ],
)
@pytest.mark.parametrize(("args", "deadline"), FIFO_CASES)
def test_fifo_side_file_beside_a_live_holder_does_not_hold_the_answer(
    held_data_dir, started, tmp_path, away, suffix, args, deadline
):
    side = held_data_dir / f"opencode.db{suffix}"
    if away == "unlinked":
        side.unlink()
    else:
        side.rename(tmp_path / f"moved{suffix}")
    os.mkfifo(side)
    outcome = measure(
        fill(args, data=held_data_dir),
        isolated_env(tmp_path),
        tmp_path,
        deadline + HARD_CAP_S,
        started.append,
    )
    assert_answered_by(outcome, deadline, names_the_fifo)


@pytest.mark.parametrize(("args", "deadline"), FIFO_CASES)
def test_control_regular_side_files_beside_a_live_holder_are_shared_at_once(
    held_data_dir, started, tmp_path, args, deadline
):
    outcome = measure(
        fill(args, data=held_data_dir),
        isolated_env(tmp_path),
        tmp_path,
        deadline + HARD_CAP_S,
        started.append,
    )
    # shared: the holder is idle; check says so (3), run goes ahead beside it (its command, 0)
    shared = 0 if args[0] == "run" else 3
    assert_answered_by(outcome, deadline, lambda o: o.code == shared)
    assert outcome.code == shared, outcome.describe()


# -- c. run's own directories (queue, isolated database) or PATH on the hung mount -------------

ON_MOUNT_CASES = [
    pytest.param("--serialize", "runtime", id="serialize-XDG_RUNTIME_DIR"),
    pytest.param("--serialize", "tmpdir", id="serialize-TMPDIR"),
    pytest.param("--serialize", "path", id="serialize-PATH"),
    pytest.param("--isolate", "runtime", id="isolate-XDG_RUNTIME_DIR"),
    pytest.param("--isolate", "tmpdir", id="isolate-TMPDIR"),
    pytest.param("--isolate", "path", id="isolate-PATH"),
]


def on_mount_run(
    mode: str, where: str, mnt: Path, data: Path, tmp_path: Path
) -> tuple[list[str], dict[str, str]]:
    sub = str(mnt / "sub")
    path = sub if where == "path" else str(data)
    if where == "runtime":
        env = isolated_env(tmp_path, XDG_RUNTIME_DIR=sub)
    elif where == "tmpdir":
        env = isolated_env(tmp_path, TMPDIR=sub, XDG_RUNTIME_DIR=None)
    else:
        env = isolated_env(tmp_path)
    return ["run", mode, path, "--", "echo", MARK], env


def may_run(mode: str, where: str) -> bool:
    """An isolated run judges no database and needs no queue: only its temp dir must answer."""
    return mode == "--isolate" and where != "tmpdir"


@pytest.mark.parametrize("mount", ["hung", "answering"])
@pytest.mark.parametrize(("mode", "where"), ON_MOUNT_CASES)
def test_run_with_its_directories_on_a_mount_answers_by_the_preflight_deadline(
    fuse_hang, data_dir, tmp_path, mode, where, mount
):
    """hung: by the deadline; answering, the control (a read-only filesystem): done long
    before it, whatever it makes of a queue or temp dir it cannot write."""
    if mount == "hung":
        fuse_hang.hang()
    args, env = on_mount_run(mode, where, fuse_hang.mnt, data_dir, tmp_path)
    outcome = measure(
        args,
        env,
        tmp_path,
        CHECK_DEFAULT_TIMEOUT + HARD_CAP_S,
        fuse_hang.track,
        fuse_hang.abort,
    )
    if mount == "hung":
        assert_answered_by(
            outcome, CHECK_DEFAULT_TIMEOUT, ran if may_run(mode, where) else lambda _o: False
        )
        return
    assert not outcome.overran, outcome.describe()
    assert outcome.elapsed <= CHECK_DEFAULT_TIMEOUT, outcome.describe()
    assert TRACEBACK not in outcome.stdout + outcome.stderr, outcome.describe()


def test_hook_with_a_directory_of_path_on_a_hung_mount_answers_by_its_step_deadline(
    fuse_hang, tmp_path
):
    """`hook` looks for sqlprobe along PATH: a stat there must not hold it past 3 s."""
    fuse_hang.hang()
    env = isolated_env(tmp_path)
    env["PATH"] = f"{fuse_hang.mnt / 'sub'}:{env.get('PATH', '/usr/bin:/bin')}"
    outcome = measure(
        ["hook", "bash"],
        env,
        tmp_path,
        CHECK_DEFAULT_TIMEOUT + HARD_CAP_S,
        fuse_hang.track,
        fuse_hang.abort,
    )
    assert_answered_by(outcome, CHECK_DEFAULT_TIMEOUT)
    assert outcome.code == 6 and "looking for sqlprobe on PATH" in outcome.stderr
