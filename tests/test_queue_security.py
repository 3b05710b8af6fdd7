"""`run --serialize` uses its queue directory and lock file only when they are safely ours.

Issue 13, item 7: `/tmp/sqlprobe-<uid>/` sits in a directory every user can write, so another
user can make it first, plant a symlink that makes sqlprobe create a file beside a database,
hold a lock in it to block the queue, or rename the lock file to break the queue. Every test
drives the real command, with TMPDIR pointed at a fresh public directory (XDG_RUNTIME_DIR
unset unless the test is about it) and the other user a real uid (nobody).
"""

from __future__ import annotations

import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NOBODY, is_root, make_db

from sqlprobe.workflows.run import queue_name

SQLPROBE = [sys.executable, "-m", "sqlprobe"]
TIMEOUT = 60
# A command that says it runs, then holds the queue (inherited) until its stdin closes.
HOLD = "import sys; print('ready', flush=True); sys.stdin.read()"

pytestmark = [
    pytest.mark.process,  # the CLI in subprocesses, and holders run as another user
    pytest.mark.skipif(not is_root(), reason="needs root: another uid plants the files"),
]


@pytest.fixture
def public_tmp(public_dir: Path) -> Path:
    """A directory like /tmp (sticky, everyone may create in it), for TMPDIR."""
    public_dir.chmod(0o1777)
    return public_dir


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A data dir with a database in it: nothing may ever be created beside it."""
    data = tmp_path / "data"
    data.mkdir()
    make_db(data / "opencode.db")
    assert os.listdir(data) == ["opencode.db"]
    return data


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Helper processes, killed at teardown."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                stream.close()


def environment(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    return {**env, "TMPDIR": str(tmp), **extra}


def serialize(
    path: Path, env: dict[str, str], *command: str, argv: list[str] = SQLPROBE
) -> subprocess.CompletedProcess[str]:
    cmd = [*argv, "run", "--serialize", str(path), "--", *(command or ["true"])]
    user = NOBODY if argv is not SQLPROBE else None
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, user=user)


def as_user(user: int | None, script: str, *args: str | Path) -> None:
    """Run a shell script as `user` (None: as ourselves), with `args` as $1, $2, ..."""
    subprocess.run(["sh", "-c", script, "sh", *map(str, args)], user=user, check=True)


def lock_of(queue: Path, data: Path) -> Path:
    return queue / queue_name(str(data / "opencode.db"))


def refused_directory(queue: Path, problem: str) -> str:
    return (
        f"sqlprobe: refusing the queue directory {queue}: {problem};"
        " remove it or set XDG_RUNTIME_DIR\n"
    )


def refused_lock(lock: Path, problem: str) -> str:
    return f"sqlprobe: refusing the queue lock file {lock}: {problem}; remove it\n"


def ready(proc: subprocess.Popen[str]) -> None:
    """Wait for a HOLD command's `ready` line: it runs, so it holds the queue."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    line = proc.stdout.readline() if readable else ""
    assert line == "ready\n", f"the queued command did not start: {line!r}"


def hold_queue(
    path: Path, env: dict[str, str], procs: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*SQLPROBE, "run", "--serialize", str(path), "--", sys.executable, "-c", HOLD],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    ready(proc)
    return proc


def identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def fd_on(pid: int, file: tuple[int, int], until: float) -> bool:
    """Whether process `pid` has a descriptor open on `file`, a (device, inode) (False once it
    has exited)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == file:
            return True
    assert time.monotonic() < until, f"pid {pid} never opened {file}"
    return False


# -- the queue directory ------------------------------------------------------------------------

PLANTED = {
    # Another user's 0777 directory, with the lock's name a symlink to the victim's -journal:
    # following it would create opencode.db-journal beside the database.
    "foreign-0777-with-symlinked-lock": (
        NOBODY,
        'umask 0; mkdir -m 0777 "$1" && ln -s "$2/opencode.db-journal" "$1/$3"',
        "owned by uid 65534, not you",
    ),
    "foreign-0755": (NOBODY, 'mkdir -m 0755 "$1"', "owned by uid 65534, not you"),
    "regular-file": (NOBODY, ': > "$1"', "a regular file, not a directory"),
    # A symlink to the victim's data dir: the lock file would be created beside the database.
    "symlink-to-the-data-dir": (NOBODY, 'ln -s "$2" "$1"', "a symlink, not a directory"),
    "symlink-to-a-dir-of-ours": (
        None,
        'mkdir -m 0700 "$1.real" && ln -s "$1.real" "$1"',
        "a symlink, not a directory",
    ),
    "ours-but-0755": (None, 'mkdir -m 0755 "$1"', "mode 0755: others have access to it"),
}


@pytest.mark.parametrize("case", PLANTED, ids=list(PLANTED))
def test_a_queue_directory_that_is_not_ours_alone_is_refused(case, public_tmp, victim):
    user, script, problem = PLANTED[case]
    queue = public_tmp / f"sqlprobe-{os.geteuid()}"
    as_user(user, script, queue, victim, lock_of(queue, victim).name)
    result = serialize(victim, environment(public_tmp))
    assert (result.returncode, result.stderr) == (6, refused_directory(queue, problem))
    assert os.listdir(victim) == ["opencode.db"], "sqlprobe created a file beside the database"


def test_a_lock_held_by_another_user_in_a_planted_directory_does_not_block(
    public_tmp, victim, procs
):
    queue = public_tmp / f"sqlprobe-{os.geteuid()}"
    lock = lock_of(queue, victim)
    as_user(NOBODY, 'umask 0; mkdir -m 0777 "$1" && : > "$2" && chmod 0666 "$2"', queue, lock)
    # The shell locks its own descriptor and becomes the sleep: the process killed at teardown
    # is the one holding the lock.
    blocker = subprocess.Popen(
        ["sh", "-c", 'exec 9<>"$1" && flock 9 && echo ready && exec sleep 600', "sh", str(lock)],
        user=NOBODY,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(blocker)
    ready(blocker)
    result = serialize(victim, environment(public_tmp))
    assert (result.returncode, result.stderr) == (
        6,
        refused_directory(queue, "owned by uid 65534, not you"),
    )


def test_a_foreign_queue_directory_is_a_clear_error_for_an_unprivileged_user(public_tmp, as_nobody):
    """The report of issue 13: nobody met `internal error: PermissionError` here."""
    queue = public_tmp / f"sqlprobe-{NOBODY}"
    queue.mkdir(mode=0o755)
    result = serialize(public_tmp / "data", environment(public_tmp), argv=as_nobody)
    assert (result.returncode, result.stderr) == (
        6,
        refused_directory(queue, "owned by uid 0, not you"),
    )


def test_the_queue_directory_is_made_private_and_the_command_runs(public_tmp, victim):
    env = environment(public_tmp)
    assert serialize(victim, env, "sh", "-c", "exit 7").returncode == 7
    queue = public_tmp / f"sqlprobe-{os.geteuid()}"
    st = queue.lstat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.geteuid()
    lock = lock_of(queue, victim)
    assert os.listdir(queue) == [lock.name]
    st = lock.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert serialize(victim, env).returncode == 0, "the directory it made is used again"
    assert os.listdir(victim) == ["opencode.db"]


def test_the_queue_works_for_an_unprivileged_user(public_tmp, as_nobody):
    result = serialize(public_tmp / "data", environment(public_tmp), argv=as_nobody)
    assert (result.returncode, result.stderr) == (0, "")
    queue = public_tmp / f"sqlprobe-{NOBODY}"
    st = queue.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o700)
    (lock,) = queue.iterdir()
    st = lock.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o600)


# -- the lock file --------------------------------------------------------------------------------

LOCKS = {
    "symlink-to-the-journal": ('ln -s "$2/opencode.db-journal" "$1"', "a symlink"),
    "fifo": ('mkfifo -m 0600 "$1"', "a FIFO, not a regular file"),
    "foreign": (': > "$1" && chown 65534 "$1"', "owned by uid 65534, not you"),
    "writable-by-others": (': > "$1" && chmod 0666 "$1"', "writable by others (mode 0666)"),
    "hard-link-to-the-database": ('ln "$2/opencode.db" "$1"', "it has 2 names (hard links)"),
}


@pytest.mark.parametrize("case", LOCKS, ids=list(LOCKS))
def test_a_lock_file_that_is_not_a_plain_file_of_ours_is_refused(case, public_tmp, victim):
    script, problem = LOCKS[case]
    queue = public_tmp / f"sqlprobe-{os.geteuid()}"
    queue.mkdir(mode=0o700)
    lock = lock_of(queue, victim)
    as_user(None, script, lock, victim)
    before = {p.name: p.lstat().st_mtime_ns for p in victim.iterdir()}
    result = serialize(victim, environment(public_tmp))  # a FIFO must not hang it (timeout)
    assert (result.returncode, result.stderr) == (6, refused_lock(lock, problem))
    assert {p.name: p.lstat().st_mtime_ns for p in victim.iterdir()} == before


@pytest.mark.parametrize("renamed", ["lock-file", "queue-directory"])
def test_a_queued_run_follows_the_lock_file_when_it_is_renamed(
    tmp_path, public_tmp, procs, renamed
):
    """A holds the queue, B queues behind it, then the lock file (or its directory) is renamed:
    C takes a new one. When A ends, B must not run alongside C on the old, renamed file."""
    env = environment(public_tmp)
    data = tmp_path / "data"
    data.mkdir()
    first = hold_queue(data, env, procs)
    lock = lock_of(public_tmp / f"sqlprobe-{os.geteuid()}", data)
    old = identity(lock)
    second = subprocess.Popen(
        [*SQLPROBE, "run", "--serialize", str(data), "--", "echo", "second ran"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(second)
    until = time.monotonic() + TIMEOUT
    while not fd_on(second.pid, old, until):  # the second run waits on the lock file
        assert second.poll() is None, second.communicate()
        time.sleep(0.01)
    moved = lock if renamed == "lock-file" else lock.parent
    moved.rename(moved.with_name("moved"))
    third = hold_queue(data, env, procs)  # a new lock file: A holds only the moved one
    new = identity(lock)
    first.stdin.close()  # type: ignore[union-attr]
    first.wait(timeout=TIMEOUT)
    until = time.monotonic() + TIMEOUT
    while not fd_on(second.pid, new, until):
        assert second.poll() is None, "the second run ran while the third held the queue"
        time.sleep(0.01)
    assert second.poll() is None
    third.stdin.close()  # type: ignore[union-attr]
    out, _ = second.communicate(timeout=TIMEOUT)
    assert (second.returncode, out) == (0, "second ran\n")


# -- $XDG_RUNTIME_DIR -----------------------------------------------------------------------------

RUNTIME = {
    "owned-by-another-user": (NOBODY, 'mkdir -m 0700 "$1"', "owned by uid 65534, not you"),
    "writable-by-others": (None, 'mkdir -m 0777 "$1"', "writable by others (mode 0777)"),
}


@pytest.mark.parametrize("case", RUNTIME, ids=list(RUNTIME))
def test_a_runtime_dir_that_is_not_ours_alone_is_not_used(case, public_tmp, victim):
    user, script, problem = RUNTIME[case]
    runtime = public_tmp / "runtime"
    as_user(user, script, runtime)
    result = serialize(victim, environment(public_tmp, XDG_RUNTIME_DIR=str(runtime)))
    queue = public_tmp / f"sqlprobe-{os.geteuid()}"
    assert (result.returncode, result.stderr) == (
        0,
        f"sqlprobe: not queueing in $XDG_RUNTIME_DIR ({runtime}): {problem};"
        f" queueing in {queue} instead\n",
    )
    assert os.listdir(runtime) == []
    assert os.listdir(queue) == [lock_of(queue, victim).name]
