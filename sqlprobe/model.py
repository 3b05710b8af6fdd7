"""The plain records every layer shares: files, byte ranges, locks, processes, snapshots.

Raw facts only. Derived views (what blocks, the verdict, table cells) are computed from these by
`effects`, `verdict` and `render`. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FileKind(str, Enum):
    """Which of a database's files a descriptor or a lock is on."""

    DB = "db"
    WAL = "wal"
    SHM = "shm"
    JOURNAL = "journal"

    @property
    def suffix(self) -> str:
        return "" if self is FileKind.DB else f"-{self.value}"


class Mode(str, Enum):
    """A lock's mode: READ locks are shared, WRITE locks exclusive."""

    SHARED = "shared"
    EXCLUSIVE = "exclusive"


class JournalMode(str, Enum):
    """What the database header (bytes 18/19) says about the journal."""

    WAL = "wal"
    ROLLBACK = "rollback"  # delete, truncate, persist, memory or off: the header cannot tell
    UNKNOWN = "unknown"  # empty file, or header not readable


@dataclass(frozen=True, slots=True)
class FileKey:
    """A file's identity: (device, inode), as the kernel prints it in /proc/locks."""

    dev: int
    ino: int


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range; `end` None means to end of file (the kernel's `EOF`)."""

    start: int
    end: int | None

    def intersect(self, other: ByteRange) -> ByteRange | None:
        start = max(self.start, other.start)
        ends = [e for e in (self.end, other.end) if e is not None]
        end = min(ends) if ends else None
        if end is not None and end < start:
            return None
        return ByteRange(start, end)


@dataclass(frozen=True, slots=True)
class LockLine:
    """One line of /proc/locks (or a `lock:` line of /proc/PID/fdinfo), undecoded."""

    lock_id: int
    waiter: bool  # a `->` line: `pid` is blocked waiting for the lock listed above it
    lock_class: str  # POSIX, OFDLCK, FLOCK, LEASE, ...
    exclusive: bool  # WRITE (True) or READ
    pid: int  # -1 for OFD locks; in the reader's pid namespace
    file: FileKey
    range: ByteRange


@dataclass(frozen=True, slots=True)
class Lock:
    """A lock decoded into SQLite's terms (sqlite-locking.md §1-2)."""

    file: FileKind
    name: str  # shared/reserved/pending/exclusive, wal-write ... dms, or other/flock
    mode: Mode
    range: ByteRange
    pid: int | None  # None: the holder is not visible (another pid namespace, or an OFD lock)
    lock_class: str
    waiter: bool = False
    # "proc-locks" when listed in /proc/locks; "getlk" when only F_GETLK saw it.
    source: str = "proc-locks"

    @property
    def identity(self) -> tuple[FileKind, str, Mode, int | None, bool]:
        """What must stay the same for a lock to count as the same lock in two samples."""
        return (self.file, self.name, self.mode, self.pid, self.waiter)


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One look at a process: /proc/PID/stat, plus its threads when they were sampled."""

    pid: int
    start_ticks: int  # field 22 of stat: with the pid, the process's identity
    state: str  # R, S, D, T, t, Z, ...
    cpu_s: float  # utime + stime, in seconds (clock-tick precision)
    # Per-thread (tid, state, CPU ns from schedstat); empty when threads were not sampled.
    threads: tuple[tuple[int, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Observation:
    """The locks on one database's files and its holders' process state, at one moment."""

    t: float  # monotonic seconds
    locks: tuple[Lock, ...]
    procs: tuple[ProcSample, ...]

    def proc(self, pid: int | None) -> ProcSample | None:
        return next((p for p in self.procs if p.pid == pid), None)


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that has one of the database's files open, or holds a lock on one."""

    pid: int
    command: str  # decoded cmdline (NULs as spaces); not yet made safe for a terminal
    uid: int | None
    user: str | None
    files: tuple[FileKind, ...]  # what it has open; empty when its fds could not be read
    age_s: float | None
    fds_readable: bool = True


@dataclass(frozen=True, slots=True)
class SideFile:
    """One of the database's files: its resolved path and identity; key None when absent."""

    kind: FileKind
    path: str
    key: FileKey | None


@dataclass(frozen=True, slots=True)
class DbHeader:
    """The fields of the 100-byte database header that sqlprobe reports."""

    page_size: int
    write_version: int
    read_version: int
    change_counter: int
    page_count: int
    schema_cookie: int
    user_version: int

    @property
    def journal_mode(self) -> JournalMode:
        if self.write_version == 2 and self.read_version == 2:
            return JournalMode.WAL
        if self.write_version == 1 and self.read_version == 1:
            return JournalMode.ROLLBACK
        return JournalMode.UNKNOWN


@dataclass(frozen=True, slots=True)
class DatabaseSnapshot:
    """Everything observed about one database: its files, holders and the sampled locks."""

    path: str
    exists: bool
    files: tuple[SideFile, ...] = ()
    header: DbHeader | None = None
    size: int | None = None
    error: str | None = None  # why it cannot be judged (not SQLite, not a regular file, ...)
    holders: tuple[Holder, ...] = ()
    observations: tuple[Observation, ...] = ()

    @property
    def journal_mode(self) -> JournalMode:
        return self.header.journal_mode if self.header else JournalMode.UNKNOWN

    def holder(self, pid: int | None) -> Holder | None:
        return next((h for h in self.holders if h.pid == pid), None)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One inspection of a target (a data dir or a database file)."""

    target: str
    databases: tuple[DatabaseSnapshot, ...]
    window_s: float
    note: str | None = None  # why there is nothing to inspect (`:memory:`, empty data dir)
    error: str | None = None  # the target itself cannot be inspected
    uninspected_processes: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def samples(self) -> int:
        return max((len(d.observations) for d in self.databases), default=0)
