"""Files that are not what they should be: a side file that is not a regular file, a database
open under another name (a hard link) with a WAL of its own, and a PATH that is a device, a
pipe or a terminal (issue 13, items 11-13).

Every claim about what a new instance meets is checked against a real SQLite connection made
the way opencode makes it (journal_mode=WAL, busy_timeout 5000, a passive checkpoint, a write),
in a subprocess: where it would hang, the test waits until the kernel shows it blocked in the
FIFO's open (wchan `wait_for_partner`), then kills it.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import fingerprint, is_root, make_db

pytestmark = pytest.mark.process  # real holders and the CLI's forked workers

HANGS = "hangs"
NEW_INSTANCE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
try:  # each statement run to its end and reset, as Bun's exec() does
    for sql in (
        "pragma busy_timeout=5000",
        "pragma journal_mode=wal",
        "pragma wal_checkpoint(passive)",
        "create table if not exists u(x)",
        "insert into u values (1)",
    ):
        conn.execute(sql).fetchall()
    print("ok")
except sqlite3.Error as err:
    print(err)
"""


def new_instance(db: Path) -> str:
    """What a new SQLite writer meets on `db`: "ok", SQLite's error message, or HANGS when it
    blocks opening a FIFO (seen in its wchan; it is killed then)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", NEW_INSTANCE, str(db)], stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    try:
        while proc.poll() is None:
            try:
                wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
            except OSError:
                wchan = ""  # exited meanwhile
            if wchan == "wait_for_partner":  # fs/pipe.c: an open of a FIFO waiting for a writer
                return HANGS
            assert time.monotonic() < deadline, "the new instance neither ended nor blocked"
            time.sleep(0.01)
        return proc.communicate()[0].strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


IN_ACCESS, IN_OPEN = 0x1, 0x20


@contextmanager
def opens_of(path: Path) -> Iterator[Callable[[], int]]:
    """Count the opens of `path` by anyone, through inotify (which sees O_NONBLOCK opens too,
    and never opens the file itself): yields a function returning the count so far."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    assert libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN | IN_ACCESS) >= 0
    events: list[int] = []

    def count() -> int:
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return len(events)
            for i in range(0, len(data), 16):  # struct inotify_event without a name
                events.append(int.from_bytes(data[i + 4 : i + 8], sys.byteorder))

    try:
        yield count
    finally:
        os.close(fd)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


def _device(path: Path) -> None:
    if not is_root():
        pytest.skip("mknod needs root")
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a /dev/null


def _symlink(path: Path) -> None:
    target = path.with_name(path.name + ".real")
    target.write_bytes(b"")
    path.symlink_to(target)


KINDS: dict[str, Callable[[Path], None]] = {
    "fifo": os.mkfifo,
    "directory": os.mkdir,
    "socket": _socket,
    "device": _device,
    "symlink": _symlink,
    "dangling symlink": lambda p: p.symlink_to(p.with_name("nowhere")),
}
WHAT = {
    "fifo": "is a FIFO, not a regular file",
    "directory": "is a directory",
    "socket": "is a socket, not a regular file",
    "device": "is a character device, not a regular file",
    "symlink": "is a symbolic link",
    "dangling symlink": "is a dangling symbolic link",
}
# (side file, kind, database mode) whose outcome for a new instance does not depend on what the
# file reads as. A -journal device or symlink beside a WAL database is read as a possible hot
# journal and fails or not depending on what it reads: the rollback database shows it failing.
CASES = [(s, k, "wal") for s in ("-wal", "-shm") for k in KINDS]
CASES += [("-journal", k, "wal") for k in ("fifo", "directory", "socket")]
CASES += [("-journal", k, "rollback") for k in ("device", "symlink", "dangling symlink")]


@pytest.mark.parametrize(("suffix", "kind", "mode"), CASES)
def test_non_regular_side_file_is_an_error_saying_what_sqlite_does(
    tmp_path, check_json, suffix, kind, mode
):
    db = make_db(tmp_path / "opencode.db", wal=mode == "wal")
    side = Path(f"{db}{suffix}")
    KINDS[kind](side)
    doc, code = check_json(db, "--timeout", "5")
    assert (doc["verdict"], code) == ("error", 6), doc["reason"]
    reason = doc["reason"]
    assert reason.startswith(f"{side} {WHAT[kind]}: a new instance would "), reason
    assert doc["databases"][0]["not_regular"] == {suffix[1:]: WHAT[kind].split(",")[0][5:]}
    assert doc["databases"][0]["probe"]["result"] == "skipped"
    met = new_instance(db)  # after sqlprobe: SQLite may delete the odd file
    if met == HANGS:
        assert "would hang for ever opening it" in reason
    else:
        assert met != "ok"
        assert f'"{met}"' in reason, (met, reason)


def test_fifo_journal_beside_a_held_database_is_never_opened(wal_db, holder, check_json):
    """Not by sqlprobe, nor by its SQLite probe, which with a live holder (--probe-live: mode=ro
    &readonly_shm=1) would open the -journal to see whether it is hot, and block there."""
    holder(wal_db, "wal-idle")
    fifo = Path(f"{wal_db}-journal")
    os.mkfifo(fifo)
    with opens_of(fifo) as opens:
        started = time.monotonic()
        doc, code = check_json(wal_db, "--timeout", "5", "--probe-live")
        elapsed = time.monotonic() - started
        assert opens() == 0
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        assert opens() == 1  # the watch works
    assert (doc["verdict"], code) == ("error", 6), doc["reason"]
    assert "would hang for ever opening it" in doc["reason"]
    assert doc["databases"][0]["probe"]["result"] == "skipped"
    assert elapsed < 4
    assert new_instance(wal_db) == HANGS


def test_fifo_wal_beside_an_empty_database_is_clear_with_a_warning(tmp_path, check_json):
    db = tmp_path / "opencode.db"
    db.write_bytes(b"")
    os.mkfifo(f"{db}-wal")
    doc, code = check_json(db)
    assert (doc["verdict"], code) == ("clear", 0), doc["reason"]
    assert (
        f"{db}-wal is a FIFO, not a regular file: the database is empty, so a new instance"
        " would delete it and go on"
    ) in doc["warnings"]
    assert new_instance(db) == "ok" and not os.path.lexists(f"{db}-wal")


def test_directory_wal_without_its_database_is_an_error(tmp_path, check_json):
    db = tmp_path / "opencode.db"
    os.mkdir(f"{db}-wal")
    doc, code = check_json(db)
    assert (doc["verdict"], code) == ("error", 6), doc["reason"]
    assert doc["reason"].startswith(f"{db}-wal is a directory: a new instance would fail")
    assert not any("exists without its database" in w for w in doc["warnings"])
    met = new_instance(db)
    assert f'"{met}"' in doc["reason"], (met, doc["reason"])


def test_non_regular_side_file_shows_in_the_human_report_on_stderr(tmp_path, run):
    db = make_db(tmp_path / "opencode.db")
    os.mkfifo(f"{db}-shm")
    result = run("check", db)
    assert (result.exit_code, result.stdout) == (6, "")
    assert result.stderr == (
        f"sqlprobe: error: {db}-shm is a FIFO, not a regular file: a new instance would fail"
        ' with "disk I/O error"\n'
    )


# -- the database open under another name: a WAL of its own ------------------------------------


@pytest.fixture
def linked(tmp_path: Path) -> tuple[Path, Path]:
    """a/opencode.db and a hard link of it, a/other.db."""
    (tmp_path / "a").mkdir()
    db = make_db(tmp_path / "a" / "opencode.db")
    other = tmp_path / "a" / "other.db"
    os.link(db, other)
    return db, other


def _second_writer_commits_beside(db: Path) -> None:
    """A writer through `db` commits at once (busy timeout 0) although another holds the WAL
    write lock through the other name: nothing keeps the two apart."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    conn.execute("begin immediate")
    conn.execute("insert into t values ('beside')")
    conn.execute("commit")
    conn.close()


@pytest.mark.parametrize("thorough", [True, False], ids=["thorough", "default"])
def test_holder_through_a_hard_link_with_its_own_wal_is_an_error(
    linked, holder, check_json, thorough
):
    db, other = linked
    h = holder(other, "wal-write", "--spin")
    doc, code = check_json(db, *(["--thorough"] if thorough else []))
    assert (doc["verdict"], code) == ("error", 6), doc["reason"]
    reason = doc["reason"]
    assert reason.startswith(f"pid {h.pid} (") and f"has {db} open as {other}" in reason
    assert f"a WAL of its own ({other}-wal, {other}-shm)" in reason
    assert f"would write to {db}-wal" in reason
    assert doc["databases"][0]["other_names"] == [
        {"pid": h.pid, "path": str(other), "side_files": [f"{other}-wal", f"{other}-shm"]}
    ]
    assert doc["databases"][0]["links"] == 2
    assert [h["files"] for h in doc["databases"][0]["holders"]] == [["db"]]
    _second_writer_commits_beside(db)


def test_same_name_hard_link_in_another_directory_is_found_without_thorough(
    tmp_path, holder, check_json
):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    db = make_db(tmp_path / "a" / "opencode.db")
    os.link(db, tmp_path / "b" / "opencode.db")
    h = holder(tmp_path / "b" / "opencode.db", "wal-idle")
    doc, code = check_json(db)
    assert (doc["verdict"], code) == ("error", 6), doc["reason"]
    assert f"pid {h.pid} (" in doc["reason"]
    assert f"open as {tmp_path / 'b' / 'opencode.db'}" in doc["reason"]


def test_hard_link_nobody_uses_is_a_warning_unless_thorough(linked, check_json):
    db, _ = linked
    doc, code = check_json(db)
    assert (doc["verdict"], code) == ("clear", 0)
    warning = (
        f"{db} has 2 hard links: a process using another name keeps its own -wal and -shm"
        " beside that name (two WALs for one database); none holds a lock on it now, and"
        " --thorough also finds one that has it open without a lock"
    )
    assert warning in doc["warnings"]
    doc, code = check_json(db, "--thorough")
    assert code == 0 and not any("hard links" in w for w in doc["warnings"]), doc["warnings"]


# -- PATH is not a file: a device, a pipe, a terminal, /proc/self/fd/N ---------------------------


def test_dev_null_as_path_is_an_error_without_a_process_scan(check_json):
    doc, code = check_json("/dev/null")
    assert (doc["verdict"], code) == ("error", 6)
    assert doc["reason"] == "/dev/null: is a character device, not a regular file"
    assert doc["databases"] == []


def _pipe() -> tuple[int, ...]:
    return os.pipe()


def _tty() -> tuple[int, ...]:
    main, sub = os.openpty()
    return sub, main


def _socketpair() -> tuple[int, ...]:
    a, b = socket.socketpair()
    return a.detach(), b.detach()


DESCRIPTORS = {
    "pipe": (_pipe, "is a FIFO, not a regular file"),
    "tty": (_tty, "is a character device, not a regular file"),
    "socket": (_socketpair, "is a socket, not a regular file"),
}


@pytest.mark.parametrize("kind", sorted(DESCRIPTORS))
def test_proc_self_fd_of_a_non_file_is_an_error(check_json, kind):
    make, problem = DESCRIPTORS[kind]
    fds = make()
    try:
        path = f"/proc/self/fd/{fds[0]}"
        doc, code = check_json(path)
        assert (doc["verdict"], code) == ("error", 6), doc["reason"]
        assert doc["reason"].startswith(f"{path}: {problem} (")
    finally:
        for fd in fds:
            os.close(fd)


def test_proc_self_fd_of_a_deleted_file_is_an_error(tmp_path, check_json):
    gone = make_db(tmp_path / "gone.db")
    with open(gone, "rb") as f:
        gone.unlink()
        path = f"/proc/self/fd/{f.fileno()}"
        doc, code = check_json(path)
    assert (doc["verdict"], code) == ("error", 6), doc["reason"]
    assert doc["reason"] == f"{path}: names {gone} (deleted), a file that no longer has a name"


def _sqlprobe_json(path: str, stdin: object) -> tuple[dict, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "sqlprobe", "check", path, "--json"],
        stdin=stdin,
        capture_output=True,
        timeout=60,
    )
    return json.loads(proc.stdout), proc.returncode


def test_dev_stdin_of_a_regular_file_is_checked_as_that_file(wal_db, holder):
    """The standard streams are sqlprobe's own, not those of the process that does its work."""
    h = holder(wal_db, "wal-write", "--spin")
    before = fingerprint(wal_db.parent)
    with open(wal_db, "rb") as f:
        doc, code = _sqlprobe_json("/dev/stdin", f)
    assert fingerprint(wal_db.parent) == before
    assert [d["path"] for d in doc["databases"]] == [str(wal_db)]
    assert (doc["verdict"], code) == ("busy", 4), doc["reason"]
    assert f"pid {h.pid} (" in doc["reason"]


def test_proc_self_fd_0_of_a_pipe_is_an_error():
    doc, code = _sqlprobe_json("/proc/self/fd/0", subprocess.PIPE)
    assert (doc["verdict"], code) == ("error", 6), doc["reason"]
    assert doc["reason"].startswith("/proc/self/fd/0: is a FIFO, not a regular file (pipe:[")


def test_holder_through_a_bind_mount_of_the_file_with_its_own_wal_is_an_error(
    tmp_path, holder, check_json
):
    """The file bound onto a name in another directory: its -wal and -shm are made there."""
    if not is_root():
        pytest.skip("mount --bind needs root")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    db = make_db(tmp_path / "a" / "opencode.db")
    bound = tmp_path / "b" / "x.db"
    bound.write_bytes(b"")
    if subprocess.run(["mount", "--bind", str(db), str(bound)], capture_output=True).returncode:
        pytest.skip("bind mounts are not permitted here")
    try:
        h = holder(bound, "wal-idle")
        try:
            doc, code = check_json(db)
        finally:
            h.end()  # before the umount, which a holder would keep busy
    finally:
        subprocess.run(["umount", str(bound)], check=False)
    assert (doc["verdict"], code) == ("error", 6), doc["reason"]
    assert f"pid {h.pid} (" in doc["reason"] and f"open as {bound}" in doc["reason"]
    assert doc["databases"][0]["other_names"] == [
        {"pid": h.pid, "path": str(bound), "side_files": [f"{bound}-wal", f"{bound}-shm"]}
    ]
    assert doc["databases"][0]["links"] == 1  # no hard link: only a holder shows it
