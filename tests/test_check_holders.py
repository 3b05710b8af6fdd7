"""`sqlprobe check` against real holder processes, one SQLite state each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import lock_names, make_db, only_holder, sees

pytestmark = pytest.mark.process  # real holders and the CLI's forked workers

SHM, DB = "shm", "db"
SHARED, EXCL = "shared", "exclusive"


def test_nothing_open_is_clear(wal_db, check_json, backend):
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code, doc["exit_code"]) == ("clear", 0, 0)
    assert doc["databases"][0]["holders"] == []
    assert doc["databases"][0]["journal_mode"] == "wal"
    assert doc["window"]["samples"] == 1  # nothing blocking: answered at once


def test_idle_wal_connection_is_shared(wal_db, holder, check_json, backend):
    h = holder(wal_db, "wal-idle")
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code) == ("shared", 3)
    mine = only_holder(doc, h.pid)
    assert lock_names(mine) == {(DB, "shared", SHARED), (SHM, "dms", SHARED)}
    assert mine["files"] == ["db", "wal", "shm"]
    assert mine["command"].endswith(f"holder.py {wal_db} wal-idle")
    assert str(h.pid) in doc["reason"]


def test_wal_read_transaction_is_shared(wal_db, holder, check_json, backend):
    h = holder(wal_db, "wal-read")
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code) == ("shared", 3)
    names = lock_names(only_holder(doc, h.pid))
    assert {(DB, "shared", SHARED), (SHM, "dms", SHARED)} < names
    assert any(f == SHM and n.startswith("wal-read-") and m == SHARED for f, n, m in names)


def test_writer_holding_wal_write_lock_is_busy(wal_db, holder, check_json, backend):
    h = holder(wal_db, "wal-write", "--spin")
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code) == ("busy", 4)
    assert (SHM, "wal-write", EXCL) in lock_names(only_holder(doc, h.pid))
    blocker = doc["databases"][0]["blockers"][0]
    assert (blocker["pid"], blocker["lock"], blocker["stuck"]) == (h.pid, "wal-write", None)
    assert f"pid {h.pid} (" in doc["reason"]
    assert "WAL write lock for the whole 0.3 s window" in doc["reason"]
    assert '"database is locked"' in doc["reason"]
    assert doc["window"]["samples"] > 2


def test_locking_mode_exclusive_is_busy(wal_db, holder, check_json, backend):
    h = holder(wal_db, "wal-exclusive", "--spin")
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code) == ("busy", 4)
    names = lock_names(only_holder(doc, h.pid))
    assert (DB, "exclusive", EXCL) in names
    assert not os.path.exists(f"{wal_db}-shm")  # exclusive locking mode uses no -shm
    assert "EXCLUSIVE lock on the database" in doc["reason"]


def test_rollback_reader_is_busy(rollback_db, holder, check_json, backend):
    h = holder(rollback_db, "rollback-read", "--spin")
    doc, code = check_json(rollback_db)
    assert (doc["verdict"], code) == ("busy", 4)
    assert doc["databases"][0]["journal_mode"] == "rollback"
    assert lock_names(only_holder(doc, h.pid)) == {(DB, "shared", SHARED)}
    assert "switch the database to WAL" in doc["reason"]


def test_rollback_reserved_is_busy_and_fails_at_once(rollback_db, holder, check_json, backend):
    h = holder(rollback_db, "rollback-reserved", "--spin")
    doc, code = check_json(rollback_db)
    assert (doc["verdict"], code) == ("busy", 4)
    assert lock_names(only_holder(doc, h.pid)) == {(DB, "reserved", EXCL), (DB, "shared", SHARED)}
    assert "fail at once" in doc["reason"]


def test_rollback_exclusive_decodes_merged_range(rollback_db, holder, check_json, backend):
    h = holder(rollback_db, "rollback-exclusive", "--spin")
    doc, code = check_json(rollback_db)
    assert (doc["verdict"], code) == ("busy", 4)
    # One merged WRITE 1073741824..1073742335 line in /proc/locks: three locks.
    assert lock_names(only_holder(doc, h.pid)) == {
        (DB, "pending", EXCL),
        (DB, "reserved", EXCL),
        (DB, "exclusive", EXCL),
    }


def test_stopped_writer_is_stuck(wal_db, holder, check_json, backend):
    h = holder(wal_db, "wal-write", "--spin")
    h.stop()
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code) == ("stuck", 5)
    mine = only_holder(doc, h.pid)
    assert mine["state"] == "T"
    assert mine["stuck"] == "is stopped (state T)"
    assert "waiting will not help" in doc["reason"]


def test_sleeping_writer_using_no_cpu_is_stuck(wal_db, holder, check_json, backend):
    h = holder(wal_db, "wal-write")  # holds the write lock and sleeps
    doc, code = check_json(wal_db)
    assert (doc["verdict"], code) == ("stuck", 5)
    assert only_holder(doc, h.pid)["stuck"].startswith("used no CPU")


def test_window_zero_judges_on_one_look(wal_db, holder, check_json, backend):
    h = holder(wal_db, "wal-write")
    doc, code = check_json(wal_db, "--window", "0")
    assert (doc["verdict"], code) == ("busy", 4)  # no window: no evidence of being stuck
    assert doc["window"]["samples"] == 1
    assert doc["databases"][0]["blockers"][0]["pid"] == h.pid


@pytest.mark.holder_writes
def test_short_write_transactions_do_not_count_as_busy(wal_db, holder, check_json, backend):
    holder(wal_db, "wal-commit-loop")
    verdicts = {check_json(wal_db)[0]["verdict"] for _ in range(5)}
    assert verdicts == {"shared"}


def test_busy_answer_takes_about_the_window(wal_db, holder, run, backend):
    holder(wal_db, "wal-write", "--spin")
    started = time.monotonic()
    result = run("check", wal_db, "-q", "--window", "0.5")
    elapsed = time.monotonic() - started
    assert result.exit_code == 4 and result.stdout == ""
    assert elapsed >= 0.5  # the lock had to persist across the whole window


def test_directory_worst_database_wins(tmp_path, holder, check_json, backend):
    make_db(tmp_path / "opencode.db")
    beta = make_db(tmp_path / "opencode-beta.db")
    h = holder(beta, "wal-write", "--spin")
    doc, code = check_json(tmp_path)
    assert (doc["verdict"], code) == ("busy", 4)
    assert [(d["path"], d["verdict"]) for d in doc["databases"]] == [
        (str(tmp_path / "opencode-beta.db"), "busy"),
        (str(tmp_path / "opencode.db"), "clear"),
    ]
    assert doc["reason"].startswith(f"{beta}: pid {h.pid}")


def test_holder_through_symlinked_data_dir_is_found(tmp_path, holder, check_json, backend):
    real = tmp_path / "real"
    real.mkdir()
    make_db(real / "opencode.db")
    (tmp_path / "link").symlink_to(real)
    h = holder(tmp_path / "link" / "opencode.db", "wal-idle")
    doc, _ = check_json(tmp_path / "link")
    assert only_holder(doc, h.pid)["files"] == ["db", "wal", "shm"]
    assert doc["databases"][0]["path"] == str(real / "opencode.db")


def test_human_report_names_holder_and_lock(wal_db, holder, run, backend):
    h = holder(wal_db, "wal-write", "--spin")
    result = run("check", wal_db)
    assert result.exit_code == 4
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"busy: pid {h.pid} (")
    assert "wal-write:EX*" in result.stdout
    assert "What you can do:" in result.stdout
    assert "\x1b[" not in result.stdout  # no colour when not a terminal


def test_split_descriptor_scan_finds_the_same_holders(wal_db, holder, check_json, monkeypatch):
    from sqlprobe.system import linux as procfs

    h = holder(wal_db, "wal-idle")
    serial, _ = check_json(wal_db)
    monkeypatch.setattr(procfs, "PARALLEL_FROM", 1)  # a split scan even for a few processes
    monkeypatch.setattr(procfs, "SCAN_WORKERS", 3)
    fork = procfs.LinuxBackend._scan_in_child
    read_end, write_end = os.pipe()  # the check runs in a worker process: it reports here

    def counted(self, pids, query):
        os.write(write_end, b"%d\n" % len(pids))
        return fork(self, pids, query)

    monkeypatch.setattr(procfs.LinuxBackend, "_scan_in_child", counted)
    threaded, _ = check_json(wal_db)
    os.close(write_end)
    with os.fdopen(read_end) as counts:
        children = [int(n) for n in counts.read().split()]
    if len(os.sched_getaffinity(0)) > 1:
        assert children and all(children)  # some processes really were scanned by a child

    def seen(doc: dict) -> list[tuple[int, list[str]]]:
        return [(x["pid"], x["files"]) for x in doc["databases"][0]["holders"]]

    assert seen(threaded) == seen(serial) == [(h.pid, ["db", "wal", "shm"])]


def test_idle_holders_locks_come_from_fdinfo_without_reading_proc_locks(
    wal_db, holder, check_json, monkeypatch, backend
):
    from sqlprobe.system import linux as procfs

    h = holder(wal_db, "wal-idle")
    reads = []
    real = procfs.LinuxBackend.locks
    monkeypatch.setattr(procfs.LinuxBackend, "locks", lambda self: reads.append(1) or real(self))
    doc, code = check_json(wal_db)
    assert code == 3 and reads == []  # /proc/locks (an RCU grace period in the kernel) skipped
    entry = only_holder(doc, h.pid)
    assert {(lk["file"], lk["lock"]) for lk in entry["locks"]} == {("db", "shared"), ("shm", "dms")}
    if sees(backend, "fdinfo"):
        assert all(lk["source"] == "fdinfo" for lk in entry["locks"])
    else:  # no fdinfo and no lock table: every lock is F_GETLK's answer
        assert all(lk["source"] == "getlk" for lk in entry["locks"])


def test_fdinfo_that_misses_a_lock_falls_back_to_proc_locks(
    wal_db, holder, check_json, monkeypatch
):
    from sqlprobe.system import linux as procfs

    h = holder(wal_db, "wal-idle")
    monkeypatch.setattr(procfs.LinuxBackend, "fd_locks", lambda self, pid, fd: [])
    doc, _ = check_json(wal_db)
    entry = only_holder(doc, h.pid)
    assert {(lk["file"], lk["lock"]) for lk in entry["locks"]} == {("db", "shared"), ("shm", "dms")}
    assert doc["databases"][0]["unattributed_locks"] == []


@pytest.mark.holder_writes
def test_a_writer_committing_back_to_back_is_busy_but_may_be_waited_out(
    wal_db, holder, run, backend
):
    """The write lock is there at every sample, yet free between transactions: a new instance's
    busy handler may get in at a gap (or not: SQLite's retries may all miss the gaps), so the
    verdict must not promise that it would fail."""
    holder(wal_db, "wal-tight-loop")
    busy = []
    for _ in range(10):
        doc = json.loads(run("check", wal_db, "--json").stdout)
        if doc["verdict"] == "busy":
            busy.append(doc["reason"])
    assert busy, "the writer's lock never persisted across a window: the test saw nothing"
    for reason in busy:
        assert "may wait up to its busy timeout" in reason and "committed" in reason, reason
        assert "and fail with" not in reason, reason


OFD_HOLDER = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 120, 1, 0))
print("ready", flush=True)
sys.stdin.read()
"""


def test_an_ofd_lock_is_advised_as_such_not_as_another_pid_namespace(wal_db, holder, run, backend):
    holder(wal_db, "wal-idle")  # makes the -shm, and keeps it
    ofd = subprocess.Popen(
        [sys.executable, "-c", OFD_HOLDER, f"{wal_db}-shm"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert ofd.stdout.readline().strip() == "ready"
        result = run("check", wal_db)
        assert result.exit_code == 4, result.stdout  # the WAL write lock: busy
        assert "open-file-description lock" in result.stdout
        assert "outside this pid namespace" not in result.stdout
    finally:
        ofd.kill()
        ofd.wait()
        ofd.stdin.close()
        ofd.stdout.close()
