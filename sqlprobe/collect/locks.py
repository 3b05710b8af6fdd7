"""The locks on a database's files: F_GETLK over the files, then the holders' fdinfo or
/proc/locks, decoded into SQLite's lock names (one observation per look); and the cheap look at
the lock table alone that `wait` polls. Only queries locks, never takes one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlprobe.collect.files import change
from sqlprobe.collect.working import Db
from sqlprobe.errors import AccessDenied, NoSuchProcess
from sqlprobe.model import (
    ByteRange,
    DatabaseSnapshot,
    FileKind,
    Finding,
    FindingKind,
    Lock,
    LockLine,
    LockName,
    Mode,
    Observation,
)
from sqlprobe.sqlite.locks import decode, lock_bytes
from sqlprobe.system import getlk
from sqlprobe.system.backend import Backend

WHOLE_FILE = ByteRange(0, None)


def observe(
    proc: Backend,
    dbs: list[Db],
    warnings: list[Finding],
    threads_of: set[int | None] | None,
    fdinfo: bool = False,
) -> None:
    """One observation of every database: its locks, and the holders' state.

    Threads are sampled for the pids in `threads_of` (None: every holder). With `fdinfo`, the
    locks are read from the holders' /proc/PID/fdinfo instead of /proc/locks (see _lock_lines).
    """
    lines, bad, complete = _lock_lines(proc, dbs, fdinfo)
    now = time.monotonic()
    source = "proc-locks" if complete else "fdinfo"
    found = [_locks_from_lines(db, lines, warnings, source) for db in dbs]
    hidden = [_hidden_locks(db, locks) for db, locks in zip(dbs, found, strict=True)]
    if not complete and any(lk.pid for more in hidden for lk in more):
        # F_GETLK saw a holder that the holders' fdinfo did not explain: ask /proc/locks
        # (where the platform has a lock table; else F_GETLK's answers are all there is).
        table = proc.locks()
        if table is not None:
            lines, bad = table
            complete = True
            found = [_locks_from_lines(db, lines, warnings) for db in dbs]
            hidden = [_hidden_locks(db, locks) for db, locks in zip(dbs, found, strict=True)]
    waits: tuple[tuple[int, int], ...] | None = None
    if complete:
        waits = wait_edges(lines)
    if bad:
        warnings.append(Finding(FindingKind.UNPARSED_LOCK_LINES, count=bad))
    for db, locks, more in zip(dbs, found, hidden, strict=True):
        # Another sqlprobe's lock (a probe's read) is a look, never a holder's.
        locks = [lk for lk in locks + more if not (lk.pid and proc.is_sqlprobe(lk.pid))]
        pids = set(db.openers) | {lk.pid for lk in locks if lk.pid}
        pids.discard(proc.self_pid)
        procs = []
        for pid in sorted(pids):
            try:
                threads = threads_of is None or pid in threads_of
                procs.append(proc.sample(pid, threads=threads))
            except (NoSuchProcess, AccessDenied):
                continue
        db.observations.append(Observation(now, tuple(locks), tuple(procs), waits, change(db)))


def _lock_lines(proc: Backend, dbs: list[Db], fdinfo: bool) -> tuple[list[LockLine], int, bool]:
    """The lock lines to decode, their count of unparsable lines, and whether they are the
    whole of /proc/locks (False: only the holders' own, from fdinfo).

    F_GETLK over whole files comes first: when nobody holds a lock on a database or its -shm,
    there is nothing to read. Else, when every process could be inspected, the openers'
    /proc/PID/fdinfo lists their locks: reading /proc/locks makes the kernel wait for an RCU
    grace period (~10 ms) the first time in a while, on every check. Neither lists flock locks
    once F_GETLK saw nothing, nor waiters (`->`), which only /proc/locks has: the window, where
    waiting matters, reads /proc/locks.
    """
    if not _any_lock(dbs):
        return [], 0, False
    if fdinfo:
        lines: dict[tuple, LockLine] = {}
        try:
            for db in dbs:
                for pid, fd, kind in db.opener_fds:
                    if kind in (FileKind.DB, FileKind.SHM) and pid != proc.self_pid:
                        for line in proc.fd_locks(pid, fd) or ():
                            same = (line.pid, line.file, line.range, line.exclusive)
                            lines[(*same, line.lock_class)] = line
            return list(lines.values()), 0, False
        except (NoSuchProcess, AccessDenied):
            pass  # gone or forbidden since the scan: /proc/locks it is
    table = proc.locks()
    if table is None:  # no lock table on this platform: F_GETLK's answers are all there is
        return [], 0, False
    lines_all, bad = table
    return lines_all, bad, True


def _any_lock(dbs: list[Db]) -> bool:
    """Whether another process may hold a lock on a database or its -shm (True when unsure)."""
    for db in dbs:
        for f in db.files:
            if f.key is None or f.kind not in (FileKind.DB, FileKind.SHM):
                continue
            fd = db.fds.get(f.kind)
            if fd is None:
                return True  # not opened (this process's own file, or not regular): cannot ask
            try:
                if getlk.query(fd, WHOLE_FILE) is not None:
                    return True
            except OSError:
                return True
    return False


def _locks_from_lines(
    db: Db, lines: Iterable[LockLine], warnings: list[Finding], source: str = "proc-locks"
) -> list[Lock]:
    locks: list[Lock] = []
    for line in lines:
        kind = db.kind_of(line.file) or _inode_fallback(db, line, warnings)
        if kind is not None:
            locks.extend(lk._replace(source=source) for lk in decode(kind, line))
    return locks


def _inode_fallback(db: Db, line: LockLine, warnings: list[Finding]) -> FileKind | None:
    """btrfs and overlayfs may print a device number other than st_dev (sqlite-locking.md §3):
    accept an inode-only match when that very process has that file open."""
    kind = next((f.kind for f in db.files if f.key and f.key.ino == line.file.ino), None)
    if kind is None or kind not in db.openers.get(line.pid, ()):
        return None
    warnings.append(Finding(FindingKind.INODE_ONLY_MATCH, db.path))
    return kind


def _hidden_locks(db: Db, seen: list[Lock]) -> list[Lock]:
    """Locks that F_GETLK reports but /proc/locks does not explain (another pid namespace), or
    every lock where the platform has no lock table (`locks()` and `fd_locks()` None: the
    portable backend). One query per lock byte, as exclusive, which any lock conflicts with:
    it names one holder, so several readers of one byte show as one (the first the kernel
    finds), and waiters are never seen."""
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
            if name is LockName.SHARED and exclusive:
                name = LockName.EXCLUSIVE
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


# -- the cheap look ----------------------------------------------------------------------------


def quick_locks(
    proc: Backend, databases: Iterable[DatabaseSnapshot]
) -> list[tuple[Lock, ...]] | None:
    """Per database, the locks on its database and -shm (and -journal) in the lock table alone,
    matched by the (device, inode) its snapshot found: `wait`'s cheap poll between full checks,
    one read of the table for them all. Another sqlprobe's and this process's own are left out.
    None when the table cannot be read."""
    try:
        table = proc.locks()
    except OSError:
        return None
    if table is None:  # no lock table on this platform
        return None
    lines, _bad = table
    ours = [line for line in lines if line.pid != proc.self_pid]
    found = []
    for db in databases:
        keys = {f.key: f.kind for f in db.files if f.key is not None and f.kind is not FileKind.WAL}
        found.append(
            tuple(
                lock
                for line in ours
                if line.file in keys and not proc.is_sqlprobe(line.pid)
                for lock in decode(keys[line.file], line)
            )
        )
    return found


def wait_edges(lines: Iterable[LockLine]) -> tuple[tuple[int, int], ...]:
    """(waiter pid, holder pid) for every `->` line of /proc/locks whose pids are known."""
    lines = list(lines)
    holders: dict[int, set[int]] = {}
    for line in lines:
        if not line.waiter and line.pid > 0:
            holders.setdefault(line.lock_id, set()).add(line.pid)
    edges = {
        (line.pid, holder)
        for line in lines
        if line.waiter and line.pid > 0
        for holder in holders.get(line.lock_id, ())
        if holder != line.pid
    }
    return tuple(sorted(edges))
