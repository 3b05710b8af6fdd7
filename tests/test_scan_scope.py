"""Which processes the descriptor scan looks at: other users kept out by the files' modes are
skipped (and counted), and --thorough finds the database open under another name."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import is_root, make_db, wait_until

pytestmark = pytest.mark.process  # openers run as other users, and the CLI's forked workers

NOBODY = 65534
# Opens the file read-only (as root), then optionally becomes nobody, then either execs
# `sleep` (which makes /proc/PID belong to nobody again) or sleeps as it is.
OPENER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
os.set_inheritable(fd, True)
if sys.argv[2] == "nobody":
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
if sys.argv[3] == "exec":
    os.execv("/bin/sleep", ["sleep", "300"])
print("ready", flush=True)
time.sleep(300)
"""

needs_root = pytest.mark.skipif(not is_root(), reason="needs root to start processes as nobody")


@pytest.fixture
def opener() -> Iterator[Callable[..., int]]:
    """`opener(path, user, then)` -> pid of a process holding `path` open; killed at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(path: Path, user: str = "root", then: str = "sleep") -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", OPENER, str(path), user, then],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        if then == "exec":
            comm = Path(f"/proc/{proc.pid}/comm")
            wait_until(lambda: comm.read_text() == "sleep\n", "the opener did not exec sleep", 10)
        else:
            assert proc.stdout and proc.stdout.readline() == "ready\n"
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def holder_pids(doc: dict) -> list[int]:
    return [h["pid"] for h in doc["databases"][0]["holders"]]


def test_hard_link_holder_is_found_only_with_thorough(tmp_path, opener, check_json):
    db = make_db(tmp_path / "opencode.db", wal=False)
    other = tmp_path / "copy-by-link.db"
    os.link(db, other)
    pid = opener(other)

    doc, code = check_json(db)
    assert (doc["verdict"], code, holder_pids(doc), doc["thorough"]) == ("clear", 0, [], False)

    doc, code = check_json(db, "--thorough")
    assert (doc["verdict"], code, holder_pids(doc), doc["thorough"]) == ("shared", 3, [pid], True)
    assert doc["databases"][0]["holders"][0]["files"] == ["db"]


@needs_root
@pytest.mark.parametrize("split", [False, True], ids=["one-process-scan", "split-scan"])
def test_other_users_process_is_skipped_when_the_mode_keeps_it_out(
    tmp_path, opener, check_json, run, monkeypatch, split
):
    from sqlprobe.system import linux as procfs

    if split:
        monkeypatch.setattr(procfs, "PARALLEL_FROM", 1)
    db = make_db(tmp_path / "opencode.db", wal=False)
    db.chmod(0o600)
    # Opened while root, then handed to nobody across an exec: the case the rule cannot see.
    pid = opener(db, "nobody", "exec")
    assert os.stat(f"/proc/{pid}/fd").st_uid == NOBODY

    doc, code = check_json(db)
    assert (doc["verdict"], code, holder_pids(doc)) == ("clear", 0, [])
    assert doc["skipped_processes"] >= 1
    # The JSON reason carries the caveat the text report gives.
    assert "before a chmod" in doc["reason"] and "--thorough scans them" in doc["reason"]
    report = run("check", db).stdout
    assert "not scanned: " in report and "--thorough scans them" in report

    doc, code = check_json(db, "--thorough")
    assert (doc["verdict"], holder_pids(doc), doc["skipped_processes"]) == ("shared", [pid], 0)


@needs_root
def test_process_that_changed_user_without_exec_is_still_scanned(tmp_path, opener, check_json):
    # setuid() makes a process non-dumpable: /proc/PID/fd then belongs to root, so it is scanned.
    db = make_db(tmp_path / "opencode.db", wal=False)
    db.chmod(0o600)
    pid = opener(db, "nobody", "sleep")
    assert os.stat(f"/proc/{pid}/fd").st_uid == 0

    doc, _ = check_json(db)
    assert (doc["verdict"], holder_pids(doc)) == ("shared", [pid])


@needs_root
def test_nobody_is_skipped_when_the_mode_lets_others_read(tmp_path, opener, check_json, run):
    db = make_db(tmp_path / "opencode.db", wal=False)
    db.chmod(0o644)
    pid = opener(db, "nobody", "exec")

    doc, _ = check_json(db)
    assert (doc["verdict"], holder_pids(doc), doc["skipped_processes"]) == ("shared", [pid], 0)
    assert "not scanned" not in run("check", db).stdout


def test_a_process_that_exits_while_its_descriptors_are_listed_is_passed_over(tmp_path):
    """Its /proc/PID/fd was opened, then it exited (a parallel sqlprobe's worker does, all the
    time): the listing fails with ENOENT, which is "no such process", not a crash."""
    from sqlprobe.errors import NoSuchProcess
    from sqlprobe.system.linux import LinuxBackend

    proc = LinuxBackend()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    dir_fd = os.open(f"/proc/{child.pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        child.stdin.close()
        child.wait(timeout=30)  # gone, and reaped: its /proc entry is no more
        with pytest.raises(NoSuchProcess):
            proc._listing(child.pid, dir_fd)
        scan = proc._scan([child.pid], procfs_query())
        assert scan.found == [] and not scan.denied
    finally:
        os.close(dir_fd)


def procfs_query():
    from sqlprobe.system.linux import FdQuery

    return FdQuery(("/opencode.db",), frozenset(), ())
