"""What a new opencode instance meets when another process holds a given lock.

The table of sqlite-locking.md §6, as a pure function. opencode opens with journal_mode=WAL,
busy_timeout=5000 (0 in some releases) and a passive checkpoint, then writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from sqlprobe.model import FileKind, JournalMode, Lock, Mode
from sqlprobe.sqlite.locks import FCNTL_CLASSES


class Outcome(str, Enum):
    """How a new instance fails because of a lock; the value completes "a new instance would …"."""

    LOCKED = 'wait its busy timeout (5 s in opencode) and fail with "database is locked"'
    PROTOCOL = 'stall about 10 s, whatever its busy timeout, and fail with "locking protocol"'
    RECOVERY = "wait its busy timeout and fail with SQLITE_BUSY_RECOVERY (WAL recovery in progress)"
    SWITCH_FAILS = 'fail at once with "database is locked" when it switches the database to WAL'
    SWITCH_WAITS = (
        "wait its busy timeout to switch the database to WAL, holding PENDING meanwhile (which "
        'makes the holder\'s new reads fail), then fail with "database is locked"'
    )


def effective_mode(header_mode: JournalMode, locks: Iterable[Lock]) -> JournalMode:
    """The journal mode the holders are using: the header's, else inferred from the locks.

    An empty or unreadable header says nothing; a process holding DMS on the -shm is in WAL mode.
    """
    if header_mode is not JournalMode.UNKNOWN:
        return header_mode
    if any(lock.file is FileKind.SHM and lock.name == "dms" for lock in locks):
        return JournalMode.WAL
    return JournalMode.ROLLBACK


def outcome(lock: Lock, mode: JournalMode) -> Outcome | None:
    """What a new instance meets because of `lock` (held by another process), or None.

    `mode` is the effective journal mode. Waiter records (`->` lines) block nobody.
    """
    if lock.waiter or lock.lock_class not in FCNTL_CLASSES:
        return None  # flock and lease locks never conflict with SQLite's fcntl locks on Linux
    exclusive = lock.mode is Mode.EXCLUSIVE
    if lock.file is FileKind.SHM:
        return _shm_outcome(lock.name, exclusive)
    if lock.file is not FileKind.DB:
        return None
    if mode is JournalMode.WAL:
        # A WAL connection needs only SHARED on the db: PENDING or EXCLUSIVE stop that.
        if lock.name == "exclusive" or (lock.name == "pending" and exclusive):
            return Outcome.LOCKED
        return None
    # Rollback mode: opencode's first statement switches the database to WAL.
    if lock.name in ("pending", "exclusive") and exclusive:
        return Outcome.LOCKED
    if lock.name == "reserved" and exclusive:
        return Outcome.SWITCH_FAILS
    if lock.name == "shared":
        return Outcome.SWITCH_WAITS
    return None


def _shm_outcome(name: str, exclusive: bool) -> Outcome | None:
    if not exclusive:
        return None  # readers, DMS holders and momentary tests: a new instance proceeds
    if name == "wal-write":
        return Outcome.LOCKED
    if name == "wal-recover":
        return Outcome.RECOVERY
    # DMS held exclusively, or a read-mark held exclusively: walTryBeginRead retries ~100 times
    # over ~10 s, then gives up with SQLITE_PROTOCOL. A checkpoint alone only makes opencode's
    # passive checkpoint return busy; `other` bytes are not SQLite's.
    if name == "dms" or name.startswith("wal-read-"):
        return Outcome.PROTOCOL
    return None


def describe(lock: Lock) -> str:
    """The lock in words for a reason sentence: `the WAL write lock`."""
    names = {
        "wal-write": "the WAL write lock",
        "wal-checkpoint": "the WAL checkpoint lock",
        "wal-recover": "the WAL recovery lock",
        "dms": "the DMS lock",
        "pending": "the PENDING lock",
        "reserved": "the RESERVED lock",
        "exclusive": "an EXCLUSIVE lock on the database",
        "shared": "a SHARED lock on the database",
    }
    if lock.name.startswith("wal-read-"):
        words = f"WAL read-mark {lock.name.rsplit('-', 1)[1]}"
    else:
        words = names.get(lock.name, f"a {lock.name} lock on the {lock.file.value} file")
    if lock.mode is Mode.EXCLUSIVE and lock.file is FileKind.SHM and lock.name != "wal-write":
        words += " exclusively"  # these are normally shared: say that this one is not
    return words
