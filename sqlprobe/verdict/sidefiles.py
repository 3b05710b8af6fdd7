"""What a new instance meets when a -wal, -shm or -journal exists but is not a regular file
(a FIFO, a directory, a device, a socket, a symbolic link): a pure table, measured against
SQLite. sqlprobe never opens such a file itself."""

from __future__ import annotations

from sqlprobe.model import DatabaseSnapshot, FileKind, JournalMode, SideFile
from sqlprobe.text import DANGLING

# What a new instance meets with a side file that is not a regular file (never opened by
# sqlprobe): measured with SQLite 3.40.1 and 3.54.1 doing what opencode does at start-up
# (journal_mode=WAL, a passive checkpoint, a write); tests/test_file_kinds.py repeats it.
_DEVICES = ("character device", "block device")
_LINKS = ("symbolic link", DANGLING)


def non_regular_effect(side: SideFile, db: DatabaseSnapshot) -> tuple[bool, str]:
    """(whether a new instance fails or hangs, what it meets) for a -wal, -shm or -journal
    that is not a regular file.

    Beside an empty or missing database SQLite deletes a -wal or -journal it finds and goes
    on (it cannot delete a directory, nor create a file through a dangling link); beside one
    with pages it opens them: a FIFO -journal blocks that open for ever (SQLite opens it to see
    whether it must roll it back). A -shm it always maps, and cannot.
    """
    kind = side.not_regular or ""
    pages = bool(db.size)
    wal_mode = db.journal_mode is JournalMode.WAL
    if side.kind is not FileKind.SHM and not pages and kind not in ("directory", DANGLING):
        if db.exists:
            return False, "the database is empty, so a new instance would delete it and go on"
        return False, (
            "the database does not exist: a new instance would create it and delete this file"
        )
    if side.kind is FileKind.JOURNAL:
        if kind == "FIFO":
            return True, (
                "a new instance would hang for ever opening it (SQLite opens a -journal, without"
                " O_NONBLOCK, to see whether it must roll it back)"
            )
        if kind in _DEVICES:
            return True, (
                'a new instance would fail with "disk I/O error" (SQLite reads it as a journal'
                " to roll back), unless the database is in WAL mode and the device reads as zeros"
            )
        if kind == "symbolic link":
            return True, (
                'a new instance would fail with "unable to open database file" (SQLite opens'
                " its side files without following a symbolic link), unless the database is in"
                " WAL mode and the link leads to an empty file"
            )
        if kind == DANGLING and wal_mode:
            return False, (
                "SQLite could not create a -journal there (it does not follow a symbolic link"
                " to a side file), which a database in WAL mode never needs"
            )
    return (
        True,
        f'a new instance would fail with "{_sqlite_error(side.kind, kind, pages, wal_mode)}"',
    )


def _sqlite_error(side: FileKind, kind: str, pages: bool, wal_mode: bool) -> str:
    """SQLite's message to a new instance for a side file of this kind (see non_regular_effect)."""
    if kind == "directory":
        if side is FileKind.SHM:
            return "attempt to write a readonly database"
        opened = (side is FileKind.WAL) == pages  # a -wal beside pages, a -journal beside none
        return "unable to open database file" if opened else "disk I/O error"
    if kind == "FIFO" or kind in _DEVICES:
        return "disk I/O error"
    # A socket cannot be opened (ENXIO), a link is not followed (O_NOFOLLOW); a -shm that
    # cannot be opened fails later than that, except beside a WAL database with pages.
    if side is FileKind.SHM and not (pages and wal_mode):
        return "disk I/O error"
    return "unable to open database file"
