"""Bad input: each gets one line naming the file and the problem, no traceback, nothing changed.

Errors (exit 6) go to stderr; inputs that a new instance copes with by itself (SQLite rebuilds a
bad -shm, ignores a bad -wal, deletes an orphan -wal) are `clear` with a warning naming the file,
as the README's bad-input table says. Unreadable files and symlink loops are tested in
test_environments.py and test_targets.py; odd path bytes in test_cli.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import FIXTURES, fingerprint, is_root, make_db

pytestmark = pytest.mark.process  # real holders and the CLI's forked workers

FILES = FIXTURES / "files"


def _fixture(name: str, *suffixes: str) -> Callable[[Path], None]:
    def put(db: Path) -> None:
        for suffix in suffixes:
            shutil.copy(FILES / f"{name}{suffix}", f"{db}{suffix}")

    return put


def _side(fixture: str, suffix: str) -> Callable[[Path], None]:
    """A good WAL database (its -wal from the crashed writer), with one bad side file."""

    def put(db: Path) -> None:
        shutil.copy(FILES / "wal-crashed.db", db)
        shutil.copy(FILES / "wal-crashed.db-wal", f"{db}-wal")
        shutil.copy(FILES / "wal-crashed.db-shm", f"{db}-shm")
        shutil.copy(FILES / fixture, f"{db}{suffix}")

    return put


def _socket(db: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(db))
    sock.close()  # the socket file stays


def _device(db: Path) -> None:
    if not is_root():
        pytest.skip("mknod needs root")
    os.mknod(db, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a /dev/null


ERRORS = {
    "directory": (lambda db: db.mkdir(), "is a directory"),
    "fifo": (lambda db: os.mkfifo(db), "is a FIFO, not a regular file"),
    "socket": (_socket, "is a socket, not a regular file"),
    "device": (_device, "is a character device, not a regular file"),
    "not-sqlite": (
        _fixture("not-sqlite", ".db"),
        "not a SQLite database (no 'SQLite format 3' header)",
    ),
    "short": (_fixture("short", ".db"), "database header cut short: 50 bytes, shorter than 100"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_database_file_is_a_one_line_error(tmp_path, run, case):
    make, problem = ERRORS[case]
    db = tmp_path / "opencode.db"
    if case in ("not-sqlite", "short"):
        shutil.copy(FILES / f"{case}.db", db)
    else:
        make(db)
    before = fingerprint(tmp_path)
    result = run("check", db, "--timeout", "5")
    assert (result.exit_code, result.stdout) == (6, "")
    assert result.stderr == f"sqlprobe: error: {db}: {problem}\n"
    assert fingerprint(tmp_path) == before


WARNINGS = {
    "garbage-shm": (
        _side("garbage.db-shm", "-shm"),
        "opencode.db-shm: the two copies of the WAL index header differ; nobody has it open,"
        " so the next opener rebuilds it from the WAL",
    ),
    "short-shm": (_side("short.db-shm", "-shm"), "opencode.db-shm: the WAL index is 40 bytes"),
    "zero-shm": (_side("zero.db-shm", "-shm"), "opencode.db-shm: the WAL index is empty"),
    "garbage-wal": (
        _side("garbage.db-wal", "-wal"),
        "opencode.db-wal: not a WAL file (magic 0x",
    ),
    "truncated-wal": (
        _side("truncated.db-wal", "-wal"),
        "opencode.db-wal: ends in a partial frame (524 bytes, a write cut short) right after its"
        " last valid frame: SQLite ignores it",
    ),
    "wal-without-db": (
        lambda db: shutil.copy(FILES / "wal-crashed.db-wal", f"{db}-wal"),
        "opencode.db-wal exists without its database: a new instance would create the database"
        " and delete this file (its contents are lost)",
    ),
}


@pytest.mark.parametrize("case", sorted(WARNINGS))
def test_bad_side_file_is_clear_with_a_warning_naming_it(tmp_path, run, check_json, case):
    make, warning = WARNINGS[case]
    db = tmp_path / "opencode.db"
    make(db)
    before = fingerprint(tmp_path)
    doc, code = check_json(db)
    assert code == 0, doc["reason"]
    assert any(warning in w for w in doc["warnings"]), doc["warnings"]
    human = run("check", db)
    lines = [line for line in human.stdout.splitlines() if line.startswith("warning: ")]
    assert any(warning in line for line in lines), human.stdout
    assert human.stderr == ""
    assert fingerprint(tmp_path) == before


def test_zero_length_database_is_clear_and_says_it_is_empty(tmp_path, run):
    db = tmp_path / "opencode.db"
    db.write_bytes(b"")
    before = fingerprint(tmp_path)
    result = run("check", db)
    assert result.exit_code == 0
    assert "  database: empty (0 bytes): a new instance initialises it" in result.stdout
    assert fingerprint(tmp_path) == before


def test_zero_length_database_held_open_is_judged_by_its_locks(tmp_path, holder, check_json):
    db = tmp_path / "opencode.db"
    db.write_bytes(b"")
    h = holder(db, "rollback-reserved", "--spin")  # sqlite3 starts a database in the empty file
    doc, code = check_json(db)
    assert code == 4 and doc["databases"][0]["blockers"][0]["pid"] == h.pid


def test_path_with_spaces_is_checked(tmp_path, holder, run):
    data = tmp_path / "my data dir"
    data.mkdir()
    db = make_db(data / "opencode.db")
    h = holder(db, "wal-write", "--spin")
    result = run("check", data)
    assert result.exit_code == 4
    assert f"{db}  [wal]  busy" in result.stdout and f"pid {h.pid}" in result.stdout


# -- a database deleted while a process still holds it open -------------------------------------


@pytest.fixture
def deleted_db(tmp_path: Path, holder) -> Iterator[tuple[Path, int]]:
    db = make_db(tmp_path / "opencode.db")
    h = holder(db, "wal-idle")
    yield db, h.pid


def test_database_deleted_while_held_is_an_error_naming_the_holder(deleted_db, run):
    db, pid = deleted_db
    for suffix in ("", "-wal", "-shm"):
        os.unlink(f"{db}{suffix}")
    result = run("check", db)
    assert result.exit_code == 6
    assert result.stderr.startswith(
        f"sqlprobe: error: {db} was deleted while pid {pid} ("
    ) and result.stderr.endswith(f"; stop pid {pid} first\n")
    assert "a new instance would start on another database" in result.stderr
    assert not db.exists()  # and nothing was created


def test_shm_deleted_while_held_is_an_error(deleted_db, check_json):
    db, pid = deleted_db
    os.unlink(f"{db}-shm")
    doc, code = check_json(db)
    assert code == 6
    assert doc["databases"][0]["deleted_open"] == [{"pid": pid, "file": "shm"}]
    assert "would not see each other's writes" in doc["reason"]
    assert doc["databases"][0]["probe"]["result"] == "skipped"


def test_database_replaced_while_an_old_holder_keeps_the_deleted_copy(deleted_db, check_json):
    db, pid = deleted_db
    for suffix in ("", "-wal", "-shm"):
        os.unlink(f"{db}{suffix}")
    make_db(db)  # a new database under the same name
    doc, code = check_json(db)
    assert code == 6 and doc["databases"][0]["deleted_open"][0] == {"pid": pid, "file": "db"}
