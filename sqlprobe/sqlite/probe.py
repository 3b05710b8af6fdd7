"""The guarded read-only SQLite probe (sqlite-locking.md §4): is the database readable?

Opening a database with SQLite, even read-only, is not harmless, so:
- `plan` (pure) picks the only safe way for what the snapshot saw, or says why there is none:
  `immutable=1` when nobody holds the database (no locks, no side file touched); in WAL mode with
  live holders and both side files present, `mode=ro&readonly_shm=1` with a short busy timeout
  and SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE; otherwise skipped, with the reason.
  Live holders get no probe at all unless asked (`live`): even a read-only reader in the WAL
  makes a writer's `wal_checkpoint(TRUNCATE)` fail with SQLITE_BUSY while it reads.
- `run` opens through a VFS that cannot create or delete a file: every open is read-only and
  without O_CREAT, every delete is refused, and a file that is not a regular one (a FIFO would
  block the open) is refused. (SQLite's own read-only open creates an empty -wal when the -shm
  has vanished since the snapshot.) As root, SQLite's unix VFS would fchown the -wal and -shm
  to the database's owner on every open, changing their ctime (or owner): it is told that it
  does not run as root.
- It runs only after the snapshot has closed its raw descriptors: closing one of those would drop
  the probe connection's POSIX locks (sqlite-locking.md §4).
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any
from urllib.parse import quote

from sqlprobe.model import (
    DatabaseEffects,
    DatabaseSnapshot,
    FileKind,
    JournalMode,
    Probe,
    ProbeResult,
)
from sqlprobe.sqlite.effects import Outcome
from sqlprobe.system.deadline import run_until

IMMUTABLE = "immutable"
READONLY_SHM = "readonly_shm"
VFS_NAME = "sqlprobe-readonly"

_SKIPPING_OUTCOMES = {
    Outcome.PROTOCOL: "the locks predict SQLite's ~10 s SQLITE_PROTOCOL retry loop",
    Outcome.RECOVERY: "another process is recovering the WAL",
}


def plan(
    db: DatabaseSnapshot, live: bool = False, effects: DatabaseEffects | None = None
) -> tuple[str | None, str]:
    """(how, why): the safe way to open `db` with SQLite, or (None, why not).

    With live holders, a probe only when `live` (see the module's docstring), and only with
    the judge's decision about their locks (`effects`: the journal mode they use, and what
    each lock makes a new instance meet, which a reader would meet too).
    """
    if not _utf8(db.path):
        return None, (
            "the file name is not valid UTF-8, which SQLite's Python binding cannot pass on"
        )
    if db.size == 0:
        return None, "the database file is empty: there is nothing to read"
    if db.deleted_open:
        return None, "a file of the database was deleted while a process holds it open"
    if db.hot_journal:
        return None, (
            "a hot journal: the database file holds a half-written transaction until the next"
            " opener rolls it back; reading it as it is would mislead"
        )
    if not db.holders and not any(obs.locks for obs in db.observations):
        return IMMUTABLE, "nobody holds the database: opened immutable (no locks, no side files)"
    if not live:
        return None, (
            "other processes hold it: a read, even read-only, can make a writer's"
            " wal_checkpoint(TRUNCATE) fail with SQLITE_BUSY (--probe-live reads anyway)"
        )
    if effects is None:
        return None, "other processes hold it, and nothing decided what their locks mean"
    if effects.mode is not JournalMode.WAL:
        return None, (
            "rollback mode with live holders: a read takes SHARED, which can make a writer's"
            " commit fail at once"
        )
    present = {f.kind for f in db.files if f.key is not None}
    if not {FileKind.WAL, FileKind.SHM} <= present:
        return None, (
            "WAL mode with live holders but no -wal or -shm (locking_mode=EXCLUSIVE?): a read-only"
            " open would fail and could create the missing file"
        )
    for effect in effects.locks:
        why = _SKIPPING_OUTCOMES.get(effect.outcome)  # type: ignore[call-overload]
        if why:
            return None, why
    return READONLY_SHM, "live holders in WAL mode: opened mode=ro&readonly_shm=1"


def _utf8(path: str) -> bool:
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def skipped(why: str) -> Probe:
    return Probe(ProbeResult.SKIPPED, None, why)


def run(path: str, how: str, busy_timeout: float, budget: float) -> Probe:
    """Open `path` read-only the way `plan` chose and read its header and schema.

    Gives up waiting after `budget` seconds (result `timeout`): SQLite's SQLITE_PROTOCOL loop
    ignores the busy timeout, and the deadline must hold.
    """
    if budget <= 0:
        return Probe(ProbeResult.TIMEOUT, how, "no time left before the deadline")
    started = time.monotonic()
    job = run_until(lambda: _open_and_read(path, how, busy_timeout), budget, "sqlprobe-probe")
    if not job.done.is_set():
        return Probe(
            ProbeResult.TIMEOUT,
            how,
            f"SQLite had not answered after {budget:.2f} s (the deadline)",
            round(time.monotonic() - started, 4),
        )
    return job.get()


def _open_and_read(path: str, how: str, busy_timeout: float) -> Probe:
    import apsw  # only the probe needs SQLite: keep it off the other paths

    _guard_vfs(apsw)
    started = time.monotonic()
    flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_NOFOLLOW
    query = "immutable=1" if how == IMMUTABLE else "mode=ro&readonly_shm=1"
    uri = f"file:{quote(os.fsencode(path), safe='/')}?{query}"
    conn = None
    try:
        _not_root(_VFS[0], True)
        conn = apsw.Connection(uri, flags=flags, vfs=VFS_NAME)
        # Should this connection be the last to close, it must not checkpoint or delete the WAL.
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        conn.set_busy_timeout(max(1, round(busy_timeout * 1000)))
        # immutable=1 makes SQLite report "delete" whatever the database is: the header says.
        journal = None if how == IMMUTABLE else _one(conn, "pragma journal_mode")
        pages = _one(conn, "pragma page_count")
        user_version = _one(conn, "pragma user_version")
        _one(conn, "select count(*) from sqlite_schema")  # reads the schema: NOTADB, CORRUPT
        elapsed = round(time.monotonic() - started, 4)
        return Probe(ProbeResult.OK, how, "read", elapsed, journal, pages, user_version)
    except apsw.Error as err:
        elapsed = round(time.monotonic() - started, 4)
        code = _code_name(apsw, err)
        detail = str(err).split(":", 1)[-1].strip()
        return Probe(ProbeResult.of_code(code), how, detail, elapsed, code=code)
    finally:
        if conn is not None:
            conn.close()
        _not_root(_VFS[0], False)


def _not_root(vfs: Any, on: bool) -> None:
    """As root, make SQLite's unix VFS believe it is not (`on`), or undo it.

    Its geteuid() decides whether it fchown()s the -wal and -shm on open: the system call is
    swapped for getpid(), which never returns 0 here. Only SQLite's own (apsw's) system-call
    table changes, and only while a probe opens the database.
    """
    if os.geteuid() != 0:
        return
    if on:
        import ctypes

        libc = ctypes.CDLL(None)
        vfs.xSetSystemCall("geteuid", ctypes.cast(libc.getpid, ctypes.c_void_p).value)
    else:
        vfs.xSetSystemCall("geteuid", 0)  # NULL: SQLite's own again


def _one(conn: Any, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return row[0] if row else None


def _code_name(apsw: Any, err: Any) -> str:
    """SQLite's name for the error: the extended code's (SQLITE_BUSY_RECOVERY) when it has one."""
    extended = getattr(err, "extendedresult", None)
    name = apsw.mapping_extended_result_codes.get(extended)
    if not name:
        name = apsw.mapping_result_codes.get(getattr(err, "result", None), "SQLITE_ERROR")
    return name


def _regular_or_absent(apsw: Any, path: str) -> None:
    """Refuse a file that is not a regular one: SQLite's open() of a FIFO blocks (holding the
    interpreter), and of a directory or device fails in ways that mislead."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise apsw.CantOpenError(f"{path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise apsw.CantOpenError(f"{path} is not a regular file: not opened")


_VFS: list[Any] = []  # registered once per process; SQLite keeps a reference by name


def _guard_vfs(apsw: Any) -> None:
    if _VFS:
        return

    class ReadOnlyVFS(apsw.VFS):
        """The default VFS, except that it cannot create, write or delete a file."""

        def __init__(self) -> None:
            super().__init__(VFS_NAME, base="")

        def xOpen(self, name: Any, flags: list[int]) -> Any:
            unsafe = (
                apsw.SQLITE_OPEN_CREATE
                | apsw.SQLITE_OPEN_READWRITE
                | apsw.SQLITE_OPEN_DELETEONCLOSE
                | apsw.SQLITE_OPEN_EXCLUSIVE
            )
            flags[0] = (flags[0] & ~unsafe) | apsw.SQLITE_OPEN_READONLY
            if isinstance(name, str):
                _regular_or_absent(apsw, name)
            elif name is not None:
                # The database: its -shm is opened by SQLite's unix VFS directly, not here.
                path = name.filename()
                for suffix in ("", "-wal", "-shm", "-journal"):
                    _regular_or_absent(apsw, path + suffix)
            return apsw.VFSFile("", name, flags)

        def xDelete(self, name: str, syncdir: bool) -> None:
            raise apsw.IOError(f"sqlprobe never deletes a file ({name})")

    _VFS.append(ReadOnlyVFS())
