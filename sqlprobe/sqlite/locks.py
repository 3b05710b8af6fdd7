"""SQLite's lock bytes and header offsets, and decoding a locked byte range into lock names.

Every number here comes from docs/sqlite-locking.md (§1, §2, §5), itself read from
os_unix.c and wal.c. Pure: no I/O.
"""

from __future__ import annotations

from sqlprobe.model import ByteRange, FileKind, Lock, LockLine, LockName, Mode

# Main database file (sqlite-locking.md §1).
PENDING_BYTE = 0x40000000
RESERVED_BYTE = PENDING_BYTE + 1
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510
SHARED_LAST = SHARED_FIRST + SHARED_SIZE - 1

# -shm file (sqlite-locking.md §2): WAL_WRITE_LOCK .. WAL_READ_LOCK(4), then the DMS byte.
SHM_WRITE = 120
SHM_CHECKPOINT = 121
SHM_RECOVER = 122
SHM_READ_FIRST = 123  # read-mark 0; read-mark i is SHM_READ_FIRST + i
SHM_READ_MARKS = 5
SHM_DMS = 128

# The 100-byte database header (sqlite-locking.md §5).
DB_HEADER_SIZE = 100
DB_MAGIC = b"SQLite format 3\x00"

# The -wal file (sqlite-locking.md §5): a 32-byte header, then frames of a 24-byte header + a page.
WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
WAL_MAGIC_LE = 0x377F0682  # checksums over little-endian words
WAL_MAGIC_BE = 0x377F0683  # checksums over big-endian words
WAL_VERSION = 3007000

# The -shm file's header (sqlite-locking.md §5), native byte order: two copies of the 48-byte
# index header, then the checkpoint info (nBackfill, aReadMark[5], lock bytes, nBackfillAttempted).
SHM_INDEX_HEADER_SIZE = 48
SHM_CKPT_INFO = 2 * SHM_INDEX_HEADER_SIZE  # 96: nBackfill
SHM_HEADER_SIZE = SHM_CKPT_INFO + 40  # up to nBackfillAttempted and one unused word
SHM_VERSION = 3007000
READ_MARK_UNUSED = 0xFFFFFFFF

# Lock names, by file, in the order of their bytes. These are the JSON vocabulary.
DB_LOCKS: tuple[tuple[LockName, ByteRange], ...] = (
    (LockName.PENDING, ByteRange(PENDING_BYTE, PENDING_BYTE)),
    (LockName.RESERVED, ByteRange(RESERVED_BYTE, RESERVED_BYTE)),
    (LockName.SHARED, ByteRange(SHARED_FIRST, SHARED_LAST)),  # WRITE on it is "exclusive"
)
SHM_LOCKS: tuple[tuple[LockName, ByteRange], ...] = (
    (LockName.WAL_WRITE, ByteRange(SHM_WRITE, SHM_WRITE)),
    (LockName.WAL_CHECKPOINT, ByteRange(SHM_CHECKPOINT, SHM_CHECKPOINT)),
    (LockName.WAL_RECOVER, ByteRange(SHM_RECOVER, SHM_RECOVER)),
    *(
        (LockName(f"wal-read-{i}"), ByteRange(SHM_READ_FIRST + i, SHM_READ_FIRST + i))
        for i in range(SHM_READ_MARKS)
    ),
    (LockName.DMS, ByteRange(SHM_DMS, SHM_DMS)),
)

# The lock classes that conflict with SQLite's own fcntl locks (flock locks never do on Linux).
FCNTL_CLASSES = frozenset({"POSIX", "OFDLCK"})


def lock_bytes(kind: FileKind) -> tuple[tuple[LockName, ByteRange], ...]:
    """The named lock bytes of one kind of file (none for -wal and -journal, never locked)."""
    if kind is FileKind.DB:
        return DB_LOCKS
    if kind is FileKind.SHM:
        return SHM_LOCKS
    return ()


def decode(kind: FileKind, line: LockLine) -> list[Lock]:
    """Decode one lock line on a database file into SQLite's lock names.

    The kernel merges adjacent ranges of one owner, so one line may name several locks: decode by
    range intersection, never by exact start and end. A range that covers no SQLite byte, or a lock
    of a class SQLite never takes, is kept as `other` or `flock` rather than dropped.
    """
    mode = Mode.EXCLUSIVE if line.exclusive else Mode.SHARED
    pid = line.pid if line.pid > 0 else None

    def make(name: LockName, rng: ByteRange) -> Lock:
        return Lock(kind, name, mode, rng, pid, line.lock_class, line.waiter)

    if line.lock_class not in FCNTL_CLASSES:
        # The class itself is kept in Lock.lock_class: the name says only that it is not SQLite's.
        name = LockName.LEASE if line.lock_class == "LEASE" else LockName.FLOCK
        return [make(name, line.range)]
    locks = []
    for name, named in lock_bytes(kind):
        overlap = line.range.intersect(named)
        if overlap is not None:
            if name is LockName.SHARED and line.exclusive:
                name = LockName.EXCLUSIVE
            locks.append(make(name, overlap))
    return locks or [make(LockName.OTHER, line.range)]
