"""The file state in the report: WAL and index, hot journal, and the read-only SQLite probe."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import FIXTURES, make_db

pytestmark = pytest.mark.process  # real holders and the CLI's forked workers

FILES = FIXTURES / "files"


def copy_fixture(name: str, dest: Path, *suffixes: str) -> Path:
    """Copy fixtures/files/NAME{suffix} to DEST{suffix}; returns DEST."""
    for suffix in ("", *suffixes):
        shutil.copy(FILES / f"{name}{suffix}", f"{dest}{suffix}")
    return dest


def test_live_wal_state_matches_sqlites_own_checkpoint_numbers(
    tmp_path, holder, check_json, backend
):
    db = make_db(tmp_path / "opencode.db")
    h = holder(db, "wal-lagging")
    _busy, log, checkpointed = map(int, h.ready)
    assert 0 < checkpointed < log, "the reader should have capped the checkpoint"
    doc, code = check_json(db)
    wal = doc["databases"][0]["wal"]
    assert code == 3
    assert (wal["index"], wal["counted_from"]) == ("valid", "shm")
    assert (wal["frames"], wal["backfilled"]) == (log, checkpointed)
    assert wal["lag_frames"] == log - checkpointed
    assert wal["bytes"] == (log - checkpointed) * (4096 + 24)
    assert wal["page_size"] == 4096 and wal["checkpoint_seq"] == 0
    # The reader pins read-mark 1 at its snapshot; opencode-like holders hold DMS.
    assert checkpointed in wal["read_marks"]


def test_live_wal_state_in_the_human_report(tmp_path, holder, run, backend):
    db = make_db(tmp_path / "opencode.db")
    h = holder(db, "wal-lagging")
    _, log, checkpointed = map(int, h.ready)
    out = run("check", db, "--probe-live").stdout
    assert f"wal: {log} frames, {checkpointed} checkpointed, {log - checkpointed} to go" in out
    assert "index valid (frames from the -shm)" in out
    assert "probe: ok (readonly_shm, " in out and "journal_mode wal" in out


def test_stale_index_of_a_crashed_writer_is_counted_from_the_wal(tmp_path, check_json):
    db = copy_fixture("wal-crashed.db", tmp_path / "opencode.db", "-wal", "-shm")
    doc, code = check_json(db)
    state = doc["databases"][0]
    assert code == 0
    assert state["wal"]["index"] == "stale" and state["wal"]["counted_from"] == "wal"
    assert (state["wal"]["frames"], state["wal"]["verified_frames"]) == (5, 5)
    assert state["wal"]["backfilled"] is None and state["wal"]["lag_frames"] == 5
    # Nobody holds it: the probe opens it immutable, which reads the database file only.
    assert (state["probe"]["result"], state["probe"]["how"]) == ("ok", "immutable")


def test_wal_without_shm_is_counted_from_the_wal(tmp_path, check_json):
    db = copy_fixture("wal-crashed.db", tmp_path / "opencode.db", "-wal")
    wal = check_json(db)[0]["databases"][0]["wal"]
    assert (wal["index"], wal["frames"]) == ("absent", 5)


def test_hot_journal_is_reported_and_not_probed(tmp_path, check_json, run):
    db = copy_fixture("hot-journal.db", tmp_path / "opencode.db", "-journal")
    doc, code = check_json(db)
    state = doc["databases"][0]
    assert code == 0 and state["journal_mode"] == "rollback"
    assert state["hot_journal"] is True
    assert state["probe"]["result"] == "skipped" and "hot journal" in state["probe"]["detail"]
    assert any("is a hot journal" in w for w in doc["warnings"])
    assert "journal: hot (3.5 KiB): the next opener rolls it back" in run("check", db).stdout


def test_journal_of_a_live_writer_is_not_hot(tmp_path, holder, check_json, backend):
    db = make_db(tmp_path / "opencode.db", wal=False)
    h = holder(db, "rollback-reserved")
    # A journal with a header, as a writer has while its transaction runs.
    Path(f"{db}-journal").write_bytes((FILES / "hot-journal.db-journal").read_bytes())
    state = check_json(db)[0]["databases"][0]
    assert state["hot_journal"] is False
    assert [x["pid"] for x in state["holders"]] == [h.pid]


def test_probe_reads_user_version_and_page_count(tmp_path, check_json):
    db = make_db(tmp_path / "opencode.db")
    conn = sqlite3.connect(db)
    conn.execute("pragma user_version = 42")
    conn.close()
    probe = check_json(db)[0]["databases"][0]["probe"]
    assert (probe["result"], probe["user_version"], probe["page_count"]) == ("ok", 42, 2)


def test_probe_is_skipped_in_rollback_mode_with_live_holders(
    rollback_db, holder, check_json, backend
):
    holder(rollback_db, "rollback-read")
    probe = check_json(rollback_db, "--probe-live")[0]["databases"][0]["probe"]
    assert probe["result"] == "skipped" and "rollback mode with live holders" in probe["detail"]


def test_probe_is_skipped_when_the_holder_uses_no_shm(wal_db, holder, check_json, backend):
    holder(wal_db, "wal-exclusive")  # locking_mode=EXCLUSIVE: SQLite makes no -shm
    assert not os.path.exists(f"{wal_db}-shm")
    probe = check_json(wal_db)[0]["databases"][0]["probe"]
    assert probe["result"] == "skipped"


def test_probe_can_be_turned_off(wal_db, check_json):
    assert check_json(wal_db, "--no-probe")[0]["databases"][0]["probe"] is None
