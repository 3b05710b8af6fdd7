"""The plain records every layer shares: files, byte ranges, locks, processes, snapshots.

Raw facts only. Derived views (what blocks, the verdict, table cells) are computed from these by
`effects`, `verdict` and `render`. Nothing here does I/O.
"""

# No `from __future__ import annotations` here, on purpose: typing.NamedTuple turns string
# annotations into ForwardRefs by compiling each one, which made importing this module ~1 ms
# slower on every `sqlprobe check`. Annotations here must therefore name earlier classes.
from enum import Enum
from typing import NamedTuple


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


class FileKey(NamedTuple):
    """A file's identity: (device, inode), as the kernel prints it in /proc/locks."""

    dev: int
    ino: int


class ByteRange(NamedTuple):
    """An inclusive byte range; `end` None means to end of file (the kernel's `EOF`)."""

    start: int
    end: int | None

    def intersect(self, other: "ByteRange") -> "ByteRange | None":
        start = max(self.start, other.start)
        ends = [e for e in (self.end, other.end) if e is not None]
        end = min(ends) if ends else None
        if end is not None and end < start:
            return None
        return ByteRange(start, end)


class LockLine(NamedTuple):
    """One line of /proc/locks (or a `lock:` line of /proc/PID/fdinfo), undecoded."""

    lock_id: int
    waiter: bool  # a `->` line: `pid` is blocked waiting for the lock listed above it
    lock_class: str  # POSIX, OFDLCK, FLOCK, LEASE, ...
    exclusive: bool  # WRITE (True) or READ
    pid: int  # -1 for OFD locks; in the reader's pid namespace
    file: FileKey
    range: ByteRange


class LockName(str, Enum):
    """A lock's name in SQLite's terms (sqlite-locking.md §1-2): the JSON vocabulary.

    Compares and formats as its value (`"wal-write"`), so it reads as the string it replaces.
    """

    PENDING = "pending"
    RESERVED = "reserved"
    SHARED = "shared"
    EXCLUSIVE = "exclusive"  # WRITE on the shared range of the database
    WAL_WRITE = "wal-write"
    WAL_CHECKPOINT = "wal-checkpoint"
    WAL_RECOVER = "wal-recover"
    WAL_READ_0 = "wal-read-0"
    WAL_READ_1 = "wal-read-1"
    WAL_READ_2 = "wal-read-2"
    WAL_READ_3 = "wal-read-3"
    WAL_READ_4 = "wal-read-4"
    DMS = "dms"
    OTHER = "other"  # a POSIX or OFD lock on bytes that are not SQLite's
    FLOCK = "flock"  # a lock of a class SQLite never takes
    LEASE = "lease"

    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def read_mark(self) -> int | None:
        """The read-mark a `wal-read-N` lock is on, else None."""
        return int(self.value[-1]) if self.value.startswith("wal-read-") else None


class LockIdentity(NamedTuple):
    """What must stay the same for a lock to count as the same lock in two samples."""

    file: FileKind
    name: LockName
    mode: Mode
    pid: int | None
    waiter: bool


class Lock(NamedTuple):
    """A lock decoded into SQLite's terms (sqlite-locking.md §1-2)."""

    file: FileKind
    name: LockName
    mode: Mode
    range: ByteRange
    pid: int | None  # None: the holder is not visible (another pid namespace, or an OFD lock)
    lock_class: str
    waiter: bool = False
    # "proc-locks" when listed in /proc/locks; "getlk" when only F_GETLK saw it.
    source: str = "proc-locks"

    @property
    def identity(self) -> LockIdentity:
        return LockIdentity(self.file, self.name, self.mode, self.pid, self.waiter)


# ThreadSample.waiting: what a thread is known to wait for, as the backend tells it from where
# the thread sleeps in the kernel (Linux: its wchan).
WAIT_FILE_LOCK = "file-lock"  # blocked in the kernel on a file lock (F_SETLKW, flock)
WAIT_NANOSLEEP = "nanosleep"  # a timed sleep: SQLite's busy handler between two lock attempts


class ThreadSample(NamedTuple):
    """One look at one thread: /proc/PID/task/TID/{stat,schedstat,wchan}."""

    tid: int
    state: str
    cpu_ns: int  # CPU time from schedstat (tick precision where schedstat is missing)
    wchan: str = ""  # the kernel function it sleeps in ("futex_do_wait"); "" when running
    scheduled: int = 0  # times it was put on a CPU (schedstat's third field): its switches in
    # WAIT_FILE_LOCK, WAIT_NANOSLEEP, or "": neither, or the backend cannot tell.
    waiting: str = ""


class ProcSample(NamedTuple):
    """One look at a process: /proc/PID/stat, plus its threads when they were sampled."""

    pid: int
    start_ticks: int  # field 22 of stat: with the pid, the process's identity
    state: str  # R, S, D, T, t, Z, ...
    cpu_s: float  # utime + stime, in seconds (clock-tick precision)
    threads: tuple[ThreadSample, ...] = ()  # empty when threads were not sampled
    ppid: int | None = None
    zombies: tuple[int, ...] = ()  # children never reaped (state Z); sampled with the threads


class Observation(NamedTuple):
    """The locks on one database's files and its holders' process state, at one moment."""

    t: float  # monotonic seconds
    locks: tuple[Lock, ...]
    procs: tuple[ProcSample, ...]
    # (waiter pid, holder pid) from every `->` line of /proc/locks, on any file; None when
    # /proc/locks was not read for this observation (then its waiters are unknown too).
    waits: tuple[tuple[int, int], ...] | None = None
    # What a commit changes, read at this moment: the database header's change counter and the
    # -shm's index header (mxFrame, its change counter). None when not read.
    change: bytes | None = None

    def proc(self, pid: int | None) -> ProcSample | None:
        return next((p for p in self.procs if p.pid == pid), None)


class Holder(NamedTuple):
    """A process that has one of the database's files open, or holds a lock on one."""

    pid: int
    command: str  # decoded cmdline (NULs as spaces); not yet made safe for a terminal
    uid: int | None
    user: str | None
    files: tuple[FileKind, ...]  # what it has open; empty when its fds could not be read
    age_s: float | None
    fds_readable: bool = True


class SideFile(NamedTuple):
    """One of the database's files: its resolved path and identity; key None when absent."""

    kind: FileKind
    path: str
    key: FileKey | None
    # What it is when it exists but is not a regular file (files.file_type: "FIFO",
    # "directory", "dangling symbolic link", ...): never opened then.
    not_regular: str | None = None


class OtherName(NamedTuple):
    """The database open in a process under another path (a hard link, a bind mount of the
    file): SQLite names the -wal and -shm after the path it opened."""

    pid: int
    path: str  # the path the process has the database open by
    side_files: tuple[str, ...]  # that path's -wal and -shm it has open (not the database's)


class DbHeader(NamedTuple):
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


class WalHeader(NamedTuple):
    """The 32-byte header of a -wal file."""

    big_endian: bool  # which magic: the byte order of the frame checksums
    version: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum: tuple[int, int]


class WalScan(NamedTuple):
    """The result of walking a WAL's frames, as SQLite's recovery would."""

    frames: int  # valid frames up to and including the last commit frame
    uncommitted: int  # valid frames after it: a transaction being written, or torn by a crash
    verified: int  # of `frames`, those whose checksum was verified (the rest: salts only)
    db_pages: int | None  # the database size in pages that the last commit frame records


class ShmHeader(NamedTuple):
    """The validated header of a -shm file (the WAL index)."""

    change: int
    page_size: int
    mx_frame: int  # the last valid frame of the WAL
    db_pages: int
    salts: tuple[int, int]
    backfilled: int  # nBackfill: frames already copied into the database
    read_marks: tuple[int | None, ...]  # aReadMark[0..4]; None: unused
    backfill_attempted: int


class IndexState(str, Enum):
    """The state of the WAL index (-shm)."""

    VALID = "valid"  # a live process holds DMS and the header validates
    STALE = "stale"  # nobody holds DMS: the next opener rebuilds it from the WAL
    ABSENT = "absent"  # no -shm file
    INVALID = "invalid"  # a live process holds DMS but the header does not validate


class WalState(NamedTuple):
    """What the -wal and -shm files say: how much of the WAL is not yet in the database."""

    size: int  # bytes of the -wal file
    header: WalHeader | None
    problem: str | None  # why the -wal header is not valid (SQLite then ignores its contents)
    index: IndexState
    index_problem: str | None  # why the -shm header is not valid, or could not be read
    shm: ShmHeader | None  # the -shm header when it validates (even when stale)
    scan: WalScan | None  # the frame walk, done when the index is not valid

    @property
    def frames(self) -> int:
        """Committed frames in the WAL: the live index's mxFrame, else the frame walk's count."""
        if self.index is IndexState.VALID and self.shm:
            return self.shm.mx_frame
        return self.scan.frames if self.scan else 0

    @property
    def counted_from(self) -> str:
        return "shm" if self.index is IndexState.VALID and self.shm else "wal"

    @property
    def backfilled(self) -> int | None:
        """Frames already checkpointed into the database; None when the index is not live.

        The next opener of a stale index recovers it with nBackfill 0: every frame is pending.
        """
        if self.index is IndexState.VALID and self.shm:
            return min(self.shm.backfilled, self.frames)
        return None

    @property
    def lag_frames(self) -> int:
        return self.frames - (self.backfilled or 0)

    @property
    def page_size(self) -> int | None:
        if self.header:
            return self.header.page_size
        return self.shm.page_size if self.shm and self.shm.page_size else None


class ProbeResult(str, Enum):
    """How the read-only SQLite probe ended."""

    OK = "ok"
    SKIPPED = "skipped"
    TIMEOUT = "timeout"  # still inside SQLite when the deadline came
    BUSY = "busy"  # SQLITE_BUSY (and its extended codes): a lock in the way
    UNREADABLE = "unreadable"  # SQLITE_NOTADB, SQLITE_CORRUPT*: SQLite cannot read it at all
    FAILED = "failed"  # any other SQLite error (SQLITE_CANTOPEN, SQLITE_IOERR, ...)

    @classmethod
    def of_code(cls, code: str) -> "ProbeResult":
        """The result for one of SQLite's code names (`SQLITE_CORRUPT_VTAB`)."""
        if code.startswith("SQLITE_BUSY"):
            return cls.BUSY
        if code.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return cls.UNREADABLE
        return cls.FAILED


class Probe(NamedTuple):
    """The guarded read-only open of a database with SQLite (sqlite-locking.md §4)."""

    result: ProbeResult
    how: str | None  # "immutable" or "readonly_shm"; None when skipped
    detail: str  # why it was skipped, or SQLite's message
    elapsed_s: float = 0.0
    journal_mode: str | None = None
    page_count: int | None = None
    user_version: int | None = None
    code: str | None = None  # SQLite's code name when SQLite failed: SQLITE_BUSY, SQLITE_NOTADB

    @property
    def said(self) -> str:
        """The result as the JSON and the report say it: SQLite's code name, else the value."""
        return self.code or self.result.value


class LockEffect(NamedTuple):
    """What one observed lock on a database's files means for a new instance (verdict.decide).

    `outcome` names, as an `effects.Outcome`, what a new instance meets while the lock is held
    (None: nothing); a lock blocks when it has one and persisted across the window.
    """

    lock: Lock
    outcome: Enum | None
    persisted: bool  # held by the same process in every observation of the window

    @property
    def blocks(self) -> bool:
        return self.outcome is not None and self.persisted

    @property
    def transient(self) -> bool:
        """A lock that would block, seen at first but released within the window."""
        return self.outcome is not None and not self.persisted


class DatabaseEffects(NamedTuple):
    """The decision about one database's locks: the journal mode its holders use, and the
    effect of every lock seen at the first look."""

    mode: JournalMode  # the header's, else inferred from the locks
    locks: tuple[LockEffect, ...]

    @property
    def blocking(self) -> tuple[LockEffect, ...]:
        return tuple(e for e in self.locks if e.blocks)

    def of(self, lock: Lock) -> LockEffect:
        """The effect of `lock` (one of the first look's, or another sample's with its identity)."""
        for e in self.locks:
            if e.lock == lock:
                return e
        same = next((e for e in self.locks if e.lock.identity == lock.identity), None)
        return LockEffect(lock, same.outcome if same else None, same.persisted if same else False)


class ProblemKind(str, Enum):
    """Why a target or a database cannot be judged (an `error` verdict)."""

    EMPTY_PATH = "empty-path"  # PATH is ""
    NOT_STDIN = "not-stdin"  # PATH is "-"
    CANNOT_READ = "cannot-read"  # stat, listdir, open or read failed: detail is the OS's words
    NO_DIRECTORY = "no-directory"  # a PATH whose directory does not exist
    NOT_REGULAR = "not-regular"  # a device, FIFO, socket, dangling link...: detail says which
    NAMELESS = "nameless"  # a descriptor's file that no longer has a name
    NOT_SQLITE = "not-sqlite"  # the header is not a SQLite database's
    TIMED_OUT = "timed-out"  # the collection itself did not answer within the deadline


class Problem(NamedTuple):
    """Why something cannot be judged, as a record: the file it is about (None: no file) and
    what is wrong with it. The verdict's reason is `path: detail`, or `detail` alone."""

    kind: ProblemKind
    path: str | None
    detail: str


class FindingKind(str, Enum):
    """What a warning is about; render/findings.py words each kind."""

    # Found while collecting (collect/).
    OWN_FILE = "own-file"  # path: open in sqlprobe's own process (a SQLite connection?)
    SIDE_FILE_UNREADABLE = "side-file-unreadable"  # path, detail: why it was not read
    UNINSPECTED = (
        "uninspected"  # count: processes whose descriptors could not be read, detail: where
    )
    UNPARSED_LOCK_LINES = "unparsed-lock-lines"  # count: lines of /proc/locks
    INODE_ONLY_MATCH = "inode-only-match"  # path: the lock table's device number differs
    # What a database's files say (verdict.findings, from the snapshot's records).
    SIDE_WITHOUT_DATABASE = "side-without-database"  # path, detail: its FileKind value
    HOT_JOURNAL = "hot-journal"  # path
    WAL_IGNORED = "wal-ignored"  # path, detail: why SQLite ignores its contents
    PARTIAL_FRAME = "partial-frame"  # path, count: bytes of a frame cut short
    UNCOMMITTED_FRAMES = "uncommitted-frames"  # path, count
    CHECKSUMS_PARTLY = "checksums-partly"  # path, count: verified, total: frames
    INDEX_STALE = "index-stale"  # path, detail: why the -shm header does not validate
    INDEX_INVALID = "index-invalid"  # path, detail
    NOT_REGULAR_HARMLESS = "not-regular-harmless"  # path, detail: what it is, what SQLite does
    HARD_LINKS = "hard-links"  # path, count: st_nlink
    # opencode's state (verdict.opencode).
    INDEX_LOCK_HELD = "index-lock-held"  # path, pid (the first opener), detail: age words
    INDEX_LOCK_LEFT = "index-lock-left"  # path, detail: age words
    ZOMBIE_CHILD = "zombie-child"  # pid: the parent, count: the child's pid, detail: its command


class Finding(NamedTuple):
    """One warning, as a record: worded only when it is shown (render/findings.py)."""

    kind: FindingKind
    path: str | None = None
    pid: int | None = None
    detail: str | None = None
    count: int | None = None
    total: int | None = None
    pids: tuple[int, ...] = ()  # every pid it concerns, where there are several


class DatabaseSnapshot(NamedTuple):
    """Everything observed about one database: its files, holders and the sampled locks."""

    path: str
    exists: bool
    files: tuple[SideFile, ...] = ()
    header: DbHeader | None = None
    size: int | None = None
    error: Problem | None = None  # why it cannot be judged (not SQLite, not a regular file, ...)
    holders: tuple[Holder, ...] = ()
    observations: tuple[Observation, ...] = ()
    wal: WalState | None = None  # None when there is no -wal file
    journal_size: int | None = None  # bytes of the -journal; None when there is none
    journal_header_set: bool = False  # its first byte is not zero (SQLite's hot-journal test)
    # (pid, file) of descriptors on a file of this database that was deleted while held open.
    deleted_open: tuple[tuple[int, FileKind], ...] = ()
    probe: Probe | None = None
    links: int | None = None  # the database file's hard links (st_nlink); None when not opened
    other_names: tuple[OtherName, ...] = ()  # processes that have it open by another path

    @property
    def hot_journal(self) -> bool:
        """A -journal that the next opener must roll back (SQLite's hasHotJournal test).

        Hot when it exists with a non-zero header, the database is not empty, and nobody holds
        RESERVED (a live writer's journal is not hot).
        """
        if not (self.journal_header_set and self.size):
            return False
        locks = self.observations[0].locks if self.observations else ()
        return not any(lk.file is FileKind.DB and lk.name == "reserved" for lk in locks)

    @property
    def journal_mode(self) -> JournalMode:
        return self.header.journal_mode if self.header else JournalMode.UNKNOWN

    def holder(self, pid: int | None) -> Holder | None:
        return next((h for h in self.holders if h.pid == pid), None)


# -- opencode's own state (docs/opencode-state.md) -------------------------------------


class LockMeta(NamedTuple):
    """What an opencode lock's meta.json says."""

    token: str | None
    pid: int | None
    hostname: str | None
    created_at: float | None  # epoch seconds, from createdAt


class LockDir(NamedTuple):
    """One of opencode's lock directories, as read: mtimes are epoch seconds, None when absent."""

    path: str
    key: str | None  # the key it was recognised as, None when unrecognised
    meta: LockMeta | None
    problem: str | None  # why meta.json is not usable (missing, garbage, too large, a FIFO...)
    dir_mtime: float | None  # None: the directory itself is gone (a breaker alone)
    heartbeat_mtime: float | None
    meta_mtime: float | None
    breaker_mtime: float | None  # `<dir>.breaker`: an instance breaking it, or killed doing so
    searchable: bool = True  # False: its files could not be stat()ed (another user's 0700 dir)

    @property
    def fresh_since(self) -> float | None:
        """The mtime opencode's stale rule looks at: heartbeat, else meta.json, else the dir.

        None when it cannot be known here (the directory is not searchable, or gone).
        """
        if not self.searchable:
            return None
        for mtime in (self.heartbeat_mtime, self.meta_mtime, self.dir_mtime):
            if mtime is not None:
                return mtime
        return None


class LockOwner(NamedTuple):
    """The process named by a lock's meta.json, as this host sees it."""

    pid: int
    alive: bool  # that pid runs here, and it started no later than the lock was taken
    why: str | None  # when not alive: "no such process", "pid reused by a newer process"
    command: str = ""


class IndexLock(NamedTuple):
    """A git `index.lock` in one of opencode's snapshot repos."""

    path: str
    mtime: float | None
    openers: tuple[int, ...]  # pids that have it open


class ZombieChild(NamedTuple):
    """A child that exited and was never reaped (state Z), of a process sqlprobe looked at."""

    parent: int
    pid: int
    command: str


class OpencodeState(NamedTuple):
    """opencode's own coordination state, beside its database: lock directories and more."""

    state_dir: str
    locks_dir: str
    config_dir: str
    data_dir: str
    cache_dir: str
    home: str
    hostname: str  # this host's name, as opencode writes it into meta.json
    now: float  # epoch seconds when the lock directories were read
    locks: tuple[LockDir, ...] = ()
    owners: tuple[LockOwner, ...] = ()
    # The live owners' state across the window (locks empty, waits as /proc/locks said).
    observations: tuple[Observation, ...] = ()
    version: str | None = None  # of the opencode a new instance would run
    version_source: str | None = None  # where the version was read
    index_locks: tuple[IndexLock, ...] = ()
    zombies: tuple[ZombieChild, ...] = ()
    problems: tuple[str, ...] = ()

    def owner(self, pid: int | None) -> LockOwner | None:
        return next((o for o in self.owners if o.pid == pid), None)


class Snapshot(NamedTuple):
    """One inspection of a target (a data dir or a database file)."""

    target: str
    databases: tuple[DatabaseSnapshot, ...]
    window_s: float
    note: str | None = None  # why there is nothing to inspect (`:memory:`, empty data dir)
    error: Problem | None = None  # the target itself cannot be inspected
    uninspected_processes: int = 0
    # Processes of other users not scanned: the files' own modes let none of them open them.
    skipped_processes: int = 0
    thorough: bool = False  # every descriptor that is a path was stat()ed, nobody skipped
    warnings: tuple[Finding, ...] = ()  # what the collection met (worded by render)
    timeout_s: float | None = None  # the deadline the snapshot was taken under
    # What the deadline cut short ("the window", "the SQLite probe"), or None.
    cut_short: tuple[str, ...] = ()
    # opencode's own locks and signs of a stalled instance; None when the target is not
    # opencode's data (a PATH elsewhere), so nothing of opencode's was read.
    opencode: OpencodeState | None = None
    # Which OS backend answered (`linux`: /proc; `portable`: psutil and F_GETLK), as its `name`.
    backend: str = "linux"

    @property
    def samples(self) -> int:
        counts = [len(d.observations) for d in self.databases]
        if self.opencode is not None:
            counts.append(len(self.opencode.observations))
        return max(counts, default=0)
