"""The guarded read-only SQLite probe: what it opens, what it can never do, and its deadline."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest
from conftest import FIXTURES, make_db

from sqlprobe.sqlite import probe

FILES = FIXTURES / "files"

# Holds a WAL database open and all four read-marks 1..4 exclusively (as a WAL restart does for
# a moment): a new reader that needs a read-mark retries for ~10 s, then fails SQLITE_PROTOCOL.
READ_MARKS_HOLDER = """
import fcntl, os, sqlite3, struct, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("insert into t values (1)")  # a WAL frame, so a reader needs a read-mark
conn.execute("select count(*) from t").fetchall()
shm = os.open(sys.argv[1] + "-shm", os.O_RDWR)
fcntl.fcntl(shm, fcntl.F_SETLK, struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 124, 4, 0))
print("ready", flush=True)
sys.stdin.read()
"""


def test_guarded_open_never_creates_the_missing_wal(tmp_path):
    db = tmp_path / "opencode.db"
    shutil.copy(FILES / "wal-crashed.db", db)  # a WAL database, without its -wal and -shm
    # Unguarded, SQLite's own read-only open creates an empty -wal before it fails ...
    with pytest.raises(apsw.CantOpenError):
        apsw.Connection(
            f"file:{db}?mode=ro&readonly_shm=1",
            flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
        ).execute("pragma page_count").fetchall()
    assert sorted(os.listdir(tmp_path)) == ["opencode.db", "opencode.db-wal"]
    os.unlink(f"{db}-wal")
    # ... the probe's VFS refuses to create it, and the probe says what SQLite said.
    result = probe.run(str(db), probe.READONLY_SHM, busy_timeout=0.1, budget=5)
    assert result.code == "SQLITE_CANTOPEN"
    assert os.listdir(tmp_path) == ["opencode.db"]


def test_guarded_open_never_deletes(tmp_path):
    # An empty database beside a -wal: even SQLite's read-only open deletes that -wal ...
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    shutil.copy(FILES / "wal-crashed.db-wal", f"{empty}-wal")
    apsw.Connection(
        f"file:{empty}?mode=ro&readonly_shm=1",
        flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
    ).execute("pragma page_count").fetchall()
    assert not os.path.exists(f"{empty}-wal")
    # ... the probe's VFS refuses (and `plan` never probes an empty database in the first place).
    shutil.copy(FILES / "wal-crashed.db-wal", f"{empty}-wal")
    result = probe.run(str(empty), probe.READONLY_SHM, busy_timeout=0.1, budget=5)
    assert "never deletes" in result.detail
    assert os.path.exists(f"{empty}-wal")


@pytest.mark.process
def test_probe_reports_sqlites_code_for_a_database_it_cannot_read(tmp_path, run):
    db = make_db(tmp_path / "opencode.db")
    data = bytearray(db.read_bytes())
    data[16:18] = struct.pack(">H", 3)  # page size 3: the header starts right, SQLite refuses
    db.write_bytes(bytes(data))
    result = run("check", db)
    assert result.exit_code == 6
    assert result.stderr == (
        f"sqlprobe: error: SQLite cannot read {db}: file is not a database (SQLITE_NOTADB)\n"
    )


@pytest.fixture
def read_marks_db(tmp_path):
    """A WAL database beside a process holding all its read marks exclusively; killed after."""
    db = make_db(tmp_path / "opencode.db")
    holder = subprocess.Popen(
        [sys.executable, "-c", READ_MARKS_HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield db
    finally:
        holder.kill()
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()


@pytest.mark.process
def test_probe_gives_up_at_its_budget_inside_sqlites_retry_loop(read_marks_db):
    started = time.monotonic()
    result = probe.run(str(read_marks_db), probe.READONLY_SHM, busy_timeout=0.1, budget=0.5)
    elapsed = time.monotonic() - started
    assert result.result == "timeout", result
    assert elapsed < 2.0  # SQLite alone would retry for ~10 s


@pytest.mark.process
def test_check_skips_the_probe_when_the_locks_predict_the_protocol_stall(read_marks_db, check_json):
    started = time.monotonic()
    doc, code = check_json(read_marks_db, "--probe-live")
    assert time.monotonic() - started < 2.0
    state = doc["databases"][0]
    assert code in (4, 5) and state["blockers"][0]["outcome"] == "protocol"
    assert state["probe"]["result"] == "skipped"
    assert "SQLITE_PROTOCOL" in state["probe"]["detail"]


def test_probe_with_no_time_left_does_not_open(tmp_path):
    db = make_db(tmp_path / "opencode.db")
    assert probe.run(str(db), probe.IMMUTABLE, busy_timeout=0.1, budget=0).result == "timeout"


@pytest.mark.process
def test_probe_runs_only_where_plan_allows(wal_db, holder):
    import sqlprobe

    holder(wal_db, "wal-idle")
    from sqlprobe.verdict.decide import database_effects

    snapshot = sqlprobe.check(str(wal_db), window=0)
    effects = database_effects(snapshot.databases[0])
    assert probe.plan(snapshot.databases[0], live=True, effects=effects)[0] == probe.READONLY_SHM
    how, why = probe.plan(snapshot.databases[0])  # by default, no read beside live holders
    assert how is None and "TRUNCATE" in why and "--probe-live" in why


@pytest.mark.process
def test_a_file_name_that_is_not_utf8_is_not_probed_and_does_not_crash(tmp_path, check_json):
    db = make_db(tmp_path / "plain.db")
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/odd-\xff.db"))
    db.rename(odd)
    doc, code = check_json(odd)
    assert code == 0, doc["reason"]
    probe_doc = doc["databases"][0]["probe"]
    assert probe_doc["result"] == "skipped" and "not valid UTF-8" in probe_doc["detail"]
