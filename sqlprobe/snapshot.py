"""One snapshot of a target: the library entry point that the CLI calls.

Finds the files, reads /proc/locks and F_GETLK, finds the holders through /proc/PID/fd, and, when
the first look shows a lock that a new instance needs, samples again over a short window so that
the verdict can tell a persisting lock from a microsecond-long step. Decides nothing itself.

Harmless by construction: files are opened read-only (files.py), locks are only queried (getlk.py)
and every descriptor is closed before returning.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from . import getlk
from .dbfile import parse_header
from .effects import effective_mode, outcome
from .errors import AccessDenied, CannotInspect, HeaderError, NoSuchProcess, OpenInThisProcess
from .files import describe, open_regular, pread_at_most
from .layout import DB_HEADER_SIZE, decode, lock_bytes
from .model import (
    DatabaseSnapshot,
    DbHeader,
    FileKey,
    FileKind,
    Holder,
    JournalMode,
    Lock,
    LockLine,
    Mode,
    Observation,
    ProcSample,
    SideFile,
    Snapshot,
)
from .procfs import ProcFS
from .targets import Target, resolve

DEFAULT_WINDOW = 0.3
SAMPLE_INTERVAL = 0.05


@dataclass
class _Db:
    """Working state for one database while the snapshot is being taken."""

    path: str
    exists: bool = True
    files: list[SideFile] = field(default_factory=list)
    fds: dict[FileKind, int] = field(default_factory=dict)  # db and shm, for F_GETLK
    header: DbHeader | None = None
    size: int | None = None
    error: str | None = None
    openers: dict[int, set[FileKind]] = field(default_factory=dict)  # pid -> files it has open
    unreadable: set[int] = field(default_factory=set)  # pids whose descriptors could not be read
    observations: list[Observation] = field(default_factory=list)

    def kind_of(self, key: FileKey) -> FileKind | None:
        return next((f.kind for f in self.files if f.key == key), None)


def check(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    window: float = DEFAULT_WINDOW,
    procfs: ProcFS | None = None,
) -> Snapshot:
    """Resolve `path` (None: opencode's default database) and take one snapshot of it."""
    proc = procfs or ProcFS()
    own = proc.own_files()  # before sqlprobe opens anything itself
    target = resolve(path, os.environ if env is None else env, own)
    return take(target, window=window, procfs=proc, own=own)


def take(
    target: Target,
    window: float = DEFAULT_WINDOW,
    procfs: ProcFS | None = None,
    own: frozenset[FileKey] | None = None,
) -> Snapshot:
    """Take a snapshot of the databases of `target`.

    `own` is what this process has open already (ProcFS.own_files); read here when not given.
    """
    if target.error or not target.databases:
        return Snapshot(target.label, (), window, note=target.note, error=target.error)
    proc = procfs or ProcFS()
    warnings: list[str] = []
    own = proc.own_files() if own is None else own
    dbs = [_open(path, own, warnings) for path in target.databases]
    try:
        uninspected = _find_openers(proc, dbs)
        _observe(proc, dbs, warnings, threads_of=set())
        blocking = _blocking_pids(dbs)
        if blocking is not None and window > 0:
            start = dbs[0].observations[0].t
            for i in range(1, max(1, round(window / SAMPLE_INTERVAL)) + 1):
                time.sleep(max(0.0, start + min(i * SAMPLE_INTERVAL, window) - time.monotonic()))
                _observe(proc, dbs, warnings, threads_of=blocking)
    finally:
        for db in dbs:
            for fd in db.fds.values():
                os.close(fd)
    if uninspected:
        warnings.append(
            f"{uninspected} process{'es' if uninspected != 1 else ''} could not be inspected "
            "(permission denied on /proc/PID/fd): run as their user or as root to see their files"
        )
    databases = tuple(_finish(proc, db) for db in dbs)
    return Snapshot(
        target.label,
        databases,
        window,
        uninspected_processes=uninspected,
        warnings=tuple(dict.fromkeys(warnings)),
    )


# -- files ------------------------------------------------------------------------------------


def _open(path: str, own: frozenset[FileKey], warnings: list[str]) -> _Db:
    """Stat the database and its side files; open db and -shm read-only for F_GETLK.

    A file that this process has open already (`own`: a SQLite connection of the program that
    calls sqlprobe as a library) is not opened: see files.open_regular.
    """
    db = _Db(path)
    for kind in FileKind:
        side = path + kind.suffix
        try:
            st = os.lstat(side)
        except FileNotFoundError:
            db.files.append(SideFile(kind, side, None))
            continue
        except OSError as err:
            if kind is FileKind.DB:
                db.error = f"{path}: {describe(err)}"
            db.files.append(SideFile(kind, side, None))
            continue
        db.files.append(SideFile(kind, side, FileKey(st.st_dev, st.st_ino)))
        if kind in (FileKind.DB, FileKind.SHM):
            try:
                fd, st = open_regular(side, own)
            except OpenInThisProcess:
                warnings.append(
                    f"{side} is open in sqlprobe's own process (a SQLite connection?): not "
                    "queried with F_GETLK, whose close would drop that connection's locks; "
                    "its own locks are not reported"
                )
                continue
            except CannotInspect as err:
                if kind is FileKind.DB:
                    db.error = str(err)
                continue
            db.fds[kind] = fd
            if kind is FileKind.DB:
                db.size = st.st_size
                _read_header(db, fd)
    db.exists = db.files[0].key is not None or db.error is not None
    return db


def _read_header(db: _Db, fd: int) -> None:
    """Parse the db header; an empty file (a database not yet written) has none."""
    if not db.size:
        return
    try:
        db.header = parse_header(pread_at_most(fd, DB_HEADER_SIZE))
    except HeaderError as err:
        db.error = f"{db.path}: {err}"
    except OSError as err:
        db.error = f"{db.path}: {describe(err)}"


# -- holders ----------------------------------------------------------------------------------


def _find_openers(proc: ProcFS, dbs: list[_Db]) -> int:
    """Record, per database, which processes have which of its files open.

    Candidates are found by the link text's basename (cheap), then confirmed by (device, inode),
    so that a data dir reached through a symlink or a bind mount still matches. Returns the count
    of processes whose descriptors could not be read.
    """
    names = {os.path.basename(f.path) for db in dbs for f in db.files if f.key}
    if not names:
        return 0
    unreadable = set()
    for pid in proc.pids():
        try:
            for fd, _link in proc.fd_targets(pid, names):
                key = proc.fd_key(pid, fd)
                for db in dbs:
                    kind = db.kind_of(key)
                    if kind is not None:
                        db.openers.setdefault(pid, set()).add(kind)
        except NoSuchProcess:
            continue  # exited during the scan: it holds nothing any more
        except AccessDenied:
            unreadable.add(pid)
    for db in dbs:
        db.unreadable = unreadable
    return len(unreadable)


def _blocking_pids(dbs: list[_Db]) -> set[int | None] | None:
    """The pids holding a lock a new instance needs at the first look; None when there is none."""
    pids: set[int | None] = set()
    found = False
    for db in dbs:
        locks = db.observations[-1].locks
        mode = effective_mode(db.header.journal_mode if db.header else JournalMode.UNKNOWN, locks)
        for lock in locks:
            if outcome(lock, mode) is not None:
                found = True
                pids.add(lock.pid)
    return pids if found else None


# -- observing --------------------------------------------------------------------------------


def _observe(
    proc: ProcFS, dbs: list[_Db], warnings: list[str], threads_of: set[int | None]
) -> None:
    """One observation of every database: /proc/locks, F_GETLK, and the holders' state."""
    lines, bad = proc.locks()
    now = time.monotonic()
    if bad:
        warnings.append(f"{bad} line(s) of /proc/locks could not be parsed")
    for db in dbs:
        locks = _locks_from_lines(db, lines, warnings)
        locks += _hidden_locks(db, locks)
        pids = set(db.openers) | {lk.pid for lk in locks if lk.pid}
        pids.discard(proc.self_pid)
        procs = []
        for pid in sorted(pids):
            try:
                procs.append(proc.sample(pid, threads=pid in threads_of))
            except (NoSuchProcess, AccessDenied):
                continue
        db.observations.append(Observation(now, tuple(locks), tuple(procs)))


def _locks_from_lines(db: _Db, lines: Iterable[LockLine], warnings: list[str]) -> list[Lock]:
    locks: list[Lock] = []
    for line in lines:
        kind = db.kind_of(line.file) or _inode_fallback(db, line, warnings)
        if kind is not None:
            locks.extend(decode(kind, line))
    return locks


def _inode_fallback(db: _Db, line: LockLine, warnings: list[str]) -> FileKind | None:
    """btrfs and overlayfs may print a device number other than st_dev (sqlite-locking.md §3):
    accept an inode-only match when that very process has that file open."""
    kind = next((f.kind for f in db.files if f.key and f.key.ino == line.file.ino), None)
    if kind is None or kind not in db.openers.get(line.pid, ()):
        return None
    warnings.append(
        f"{db.path}: /proc/locks shows another device number for the database's files"
        " (btrfs or overlayfs?); matched by inode and open descriptors"
    )
    return kind


def _hidden_locks(db: _Db, seen: list[Lock]) -> list[Lock]:
    """Locks that F_GETLK reports but /proc/locks does not explain (another pid namespace)."""
    hidden = []
    for kind, fd in db.fds.items():
        for name, rng in lock_bytes(kind):
            try:
                answer = getlk.query(fd, rng)
            except OSError:
                continue
            if answer is None:
                continue
            exclusive, got, pid = answer
            if name == "shared" and exclusive:
                name = "exclusive"
            mode = Mode.EXCLUSIVE if exclusive else Mode.SHARED
            explained = pid != 0 and any(
                lk.file is kind
                and lk.name == name
                and (lk.pid == pid or (pid < 0 and lk.lock_class == "OFDLCK"))
                for lk in seen
            )
            if not explained:
                klass = "OFDLCK" if pid < 0 else "POSIX"
                overlap = got.intersect(rng) or rng
                hidden.append(
                    Lock(kind, name, mode, overlap, pid if pid > 0 else None, klass, source="getlk")
                )
    return hidden


# -- finishing ----------------------------------------------------------------------------------


def _finish(proc: ProcFS, db: _Db) -> DatabaseSnapshot:
    return DatabaseSnapshot(
        path=db.path,
        exists=db.exists,
        files=tuple(db.files),
        header=db.header,
        size=db.size,
        error=db.error,
        holders=tuple(_holders(proc, db)) if db.observations else (),
        observations=tuple(db.observations),
    )


def _holders(proc: ProcFS, db: _Db) -> Iterable[Holder]:
    first = db.observations[0]
    pids = set(db.openers) | {lk.pid for lk in first.locks if lk.pid}
    pids.discard(proc.self_pid)
    try:
        uptime = proc.uptime()
    except OSError:
        uptime = None
    for pid in sorted(pids):
        sample = first.proc(pid)
        yield Holder(
            pid=pid,
            command=_quietly(proc.cmdline, pid) or "",
            uid=(uid := _quietly(proc.uid, pid)),
            user=_user_name(uid),
            files=tuple(k for k in FileKind if k in db.openers.get(pid, ())),
            age_s=_age(sample, uptime, proc.clock_ticks),
            fds_readable=pid not in db.unreadable,
        )


def _age(sample: ProcSample | None, uptime: float | None, hz: int) -> float | None:
    if sample is None or uptime is None:
        return None
    return max(0.0, round(uptime - sample.start_ticks / hz, 2))


def _quietly(read: Callable[[int], object], pid: int):
    try:
        return read(pid)
    except (NoSuchProcess, AccessDenied):
        return None


_USERS: dict[int, str] = {}


def _user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    if uid not in _USERS:
        try:
            _USERS[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _USERS[uid] = str(uid)
    return _USERS[uid]
