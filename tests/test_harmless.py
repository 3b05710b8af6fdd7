"""First, do no harm: sqlprobe never costs a live connection its locks."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NOBODY, is_root, make_db

import sqlprobe

pytestmark = [
    pytest.mark.process,  # real holders and the CLI's forked workers
    pytest.mark.usefixtures("backend"),  # harmless on both backends
]

WRITE_NOW = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    conn.execute("begin immediate")
except sqlite3.OperationalError as err:
    print(err)
else:
    print("got the write lock")
"""


def other_process_write(db) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", WRITE_NOW, str(db)], capture_output=True, text=True, timeout=30
    )
    return proc.stdout.strip()


def test_library_call_keeps_the_callers_own_connection_locks(wal_db):
    """Closing a raw descriptor would drop this process's POSIX locks: sqlprobe must not open one.

    The calling process holds a write transaction; after sqlprobe ran in the same process, another
    process must still be refused the write lock.
    """
    conn = sqlite3.connect(wal_db, isolation_level=None)
    try:
        conn.execute("begin immediate")
        conn.execute("insert into t values (9)")
        assert other_process_write(wal_db) == "database is locked"

        snapshot = sqlprobe.check(str(wal_db), window=0)

        assert other_process_write(wal_db) == "database is locked"
        from sqlprobe.render.findings import words

        assert any("open in sqlprobe's own process" in words(w) for w in snapshot.warnings)
        conn.execute("commit")
    finally:
        conn.close()


WRITER_LOOP = """
import sqlite3, sys, time
db, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
conn = sqlite3.connect(db, timeout=0, isolation_level=None)  # busy_timeout 0, like Bun's default
conn.execute(f"pragma journal_mode={mode}")
commits = busy = 0
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        conn.execute("begin immediate")
        conn.execute("insert into t values (1)")
        conn.execute("commit")
        commits += 1
        if mode == "wal" and commits % 50 == 0:
            conn.execute("pragma wal_checkpoint(truncate)")
    except sqlite3.OperationalError as err:
        busy += 1
        print("error:", err, flush=True)
        if conn.in_transaction:
            conn.execute("rollback")
print("commits", commits, "busy", busy, flush=True)
"""


def _writer_beside_checks(db, mode: str, seconds: float = 2.0) -> tuple[int, int, int, set[str]]:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_LOOP, str(db), mode, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        checks = 0
        probes = set()
        while writer.poll() is None:
            snapshot = sqlprobe.check(str(db), window=0.05, probe_live=True)
            if snapshot.databases[0].holders:  # not the last instants, after the writer closed
                probes.add(snapshot.databases[0].probe.result)
            checks += 1
        out = writer.stdout.read()
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    last = out.strip().splitlines()[-1].split()
    assert last[0] == "commits", out
    return int(last[1]), int(last[3]), checks, probes


def test_busy_timeout_zero_writer_in_wal_mode_never_sees_busy(wal_db):
    commits, busy, checks, probes = _writer_beside_checks(wal_db, "wal")
    assert busy == 0
    assert commits > 100 and checks > 10  # both really ran, side by side
    assert "ok" in probes  # and the SQLite probe really opened the database beside the writer


def test_busy_timeout_zero_writer_in_rollback_mode_never_sees_busy(rollback_db):
    commits, busy, checks, probes = _writer_beside_checks(rollback_db, "delete")
    assert busy == 0
    assert commits > 100 and checks > 10
    assert probes == {"skipped"}  # a read would take SHARED: the probe must stay away


def test_probe_as_root_changes_no_owner_and_no_ctime(tmp_path, holder, run):
    """SQLite's unix VFS, as root, fchown()s the -wal and -shm to the database's owner on every
    open: a probe beside live holders must not (the `run` fixture compares owners and ctimes)."""
    if not is_root():
        pytest.skip("SQLite changes owners only when it runs as root")
    db = make_db(tmp_path / "opencode.db")
    holder(db, "wal-idle")  # root's: the -wal and -shm are root's
    os.chown(db, NOBODY, NOBODY)  # the database another user's, as in a shared container
    side = [Path(f"{db}-wal"), Path(f"{db}-shm")]
    before = [(p.stat().st_uid, p.stat().st_ctime_ns) for p in side]
    doc = json.loads(run("check", db, "--probe-live", "--json").stdout)
    assert doc["databases"][0]["probe"]["result"] == "ok"  # SQLite really opened both files
    assert [(p.stat().st_uid, p.stat().st_ctime_ns) for p in side] == before
