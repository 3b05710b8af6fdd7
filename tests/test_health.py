"""Holder health and the wait-for graph with real processes: stuck or busy, who waits on whom."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import READY_TIMEOUT, only_holder, sees

pytestmark = pytest.mark.process  # real holders and waiters

# Blocks in F_SETLKW on a byte of a file (the WAL write lock of the -shm, byte 120), as a process
# that waits in the kernel does. SQLite never does this itself; other tools might.
SETLKW_WAITER = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
print("ready", os.getpid(), flush=True)
lock = struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, int(sys.argv[2]), 1, 0)
fcntl.fcntl(fd, fcntl.F_SETLKW, lock)
sys.stdin.read()
"""

# One half of a deadlock the kernel cannot refuse: POSIX deadlock detection follows only POSIX
# waits, so a POSIX lock plus an flock wait make a real cycle.
#   role "posix": takes the WAL write lock (byte 120 of the -shm), then waits for flock(Z).
#   role "flock": takes flock(Z), then waits for the WAL write lock.
DEADLOCK_HALF = """
import fcntl, os, struct, sys
shm, z, role = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(shm, os.O_RDWR)
zfd = os.open(z, os.O_RDWR)
wal_write = struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 120, 1, 0)
if role == "posix":
    fcntl.fcntl(fd, fcntl.F_SETLK, wal_write)
else:
    fcntl.flock(zfd, fcntl.LOCK_EX)
print("ready", os.getpid(), flush=True)
sys.stdin.readline()  # go
if role == "posix":
    fcntl.flock(zfd, fcntl.LOCK_EX)
else:
    fcntl.fcntl(fd, fcntl.F_SETLKW, wal_write)
sys.stdin.read()
"""

# A SQLite writer with a long busy timeout: it waits in SQLite's busy handler (nanosleep).
BUSY_WAITER = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("select count(*) from t").fetchall()
print("ready", os.getpid(), flush=True)
conn.execute("begin immediate")  # waits for the holder's WAL write lock
sys.stdin.read()
"""


@pytest.fixture
def script() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a helper script; it prints `ready <pid>`; all are killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str, wait_ready: bool = True) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        if wait_ready:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line.startswith("ready"), line
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=READY_TIMEOUT)
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]


def holder_doc(doc: dict, pid: int) -> dict:
    return next(h for h in doc["databases"][0]["holders"] if h["pid"] == pid)


def test_writer_parked_on_a_futex_is_stuck(wal_db, holder, check_json, backend):
    h = holder(wal_db, "wal-write", "--futex")
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code) == ("stuck", 5)
    assert "used no CPU" in doc["reason"]
    health = only_holder(doc, h.pid)["health"]
    if sees(backend, "thread-waits"):
        assert "futex" in health["thread_summary"]
    else:  # no wchan: each thread carries the process's state, asleep (S)
        assert health["thread_summary"].split(": ", 1)[1] == f"S x{health['threads']}", health
    assert health["window_cpu_s"] == 0
    assert health["samples"] > 2


def test_spinning_writer_is_busy_with_its_cpu_shown(wal_db, holder, check_json, backend):
    h = holder(wal_db, "wal-write", "--spin")
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code) == ("busy", 4)
    health = only_holder(doc, h.pid)["health"]
    assert health["window_cpu_s"] > 0.05 and "running" in health["thread_summary"]
    assert health["window_switches"] is not None  # a lone spinner may never be switched out


def test_process_blocked_in_setlkw_is_reported_waiting_on_the_holder(
    wal_db, holder, script, check_json, backend
):
    h = holder(wal_db, "wal-write", "--spin")
    waiter = script(SETLKW_WAITER, f"{wal_db}-shm", "120")
    doc, _ = check_json(wal_db)
    entry = holder_doc(doc, waiter.pid)
    if sees(backend, "waiters"):
        assert entry["waiting_on"] == [h.pid]
        assert [(lk["file"], lk["lock"]) for lk in entry["waiting_for"]] == [("shm", "wal-write")]
    else:  # no lock table, no `->` line: the waiter shows as an opener that waits for nothing
        assert entry["waiting_on"] == [] and entry["waiting_for"] == []
        assert entry["files"] == ["shm"] and entry["locks"] == []
    assert doc["verdict"] == "busy"  # the holder works; the waiter itself blocks nobody


def test_deadlock_is_stuck_and_names_every_pid(
    wal_db, holder, script, check_json, tmp_path, backend
):
    idle = holder(wal_db, "wal-idle")  # keeps the -shm in use, as opencode would
    z = tmp_path / "z.lock"
    z.write_bytes(b"")
    flocker = script(DEADLOCK_HALF, f"{wal_db}-shm", str(z), "flock")
    poser = script(DEADLOCK_HALF, f"{wal_db}-shm", str(z), "posix")
    for proc in (poser, flocker):  # posix waits for the flock, then flock waits for posix
        proc.stdin.write("go\n")
        proc.stdin.flush()
    _wait_for_waiters(2)
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code) == ("stuck", 5)
    if sees(backend, "waiters"):
        assert (
            f"is deadlocked: pid {poser.pid}, which waits on pid {flocker.pid}, which waits on"
            f" pid {poser.pid}" in doc["reason"]
        )
    else:  # no wait-for graph: stuck by the no-CPU clause, the cycle not named
        assert "is deadlocked" not in doc["reason"]
        assert f"pid {poser.pid} (" in doc["reason"] and "used no CPU" in doc["reason"]
    assert idle.pid not in {b["pid"] for b in doc["databases"][0]["blockers"]}


def test_sqlite_busy_waiter_is_likely_waiting_on_the_holder(
    wal_db, holder, script, check_json, run, backend
):
    h = holder(wal_db, "wal-write", "--spin")
    waiter = script(BUSY_WAITER, str(wal_db))
    doc, _ = check_json(wal_db, "--window", "0.5")
    entry = holder_doc(doc, waiter.pid)
    assert holder_doc(doc, h.pid)["likely_waiting_on"] == []
    out = run("check", wal_db, "--window", "0.5").stdout
    if sees(backend, "thread-waits"):
        assert entry["likely_waiting_on"] == [h.pid] and entry["waiting_on"] == []
        assert f"pid {waiter.pid}: " in out and f"likely waiting on pid {h.pid} (inferred" in out
    else:  # no thread's wchan, so no nanosleep to infer from: nothing is claimed
        assert entry["likely_waiting_on"] == [] and entry["waiting_on"] == []
        assert "likely waiting on" not in out
    assert doc["verdict"] == "busy"  # the holder spins: the same verdict on both


def _wait_for_waiters(n: int) -> None:
    """Until /proc/locks shows `n` waiter lines (the helpers block asynchronously)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while Path("/proc/locks").read_text().count("->") < n:
        assert time.monotonic() < deadline, Path("/proc/locks").read_text()
        time.sleep(0.01)
