"""Who has a database's files open: the scan of every process's /proc/PID/fd (by name, then by
(device, inode)), the files deleted while held, the other paths a database is open by, and the
holders as the snapshot lists them. Goes through the backend; opens none of their files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping

from sqlprobe.collect.working import Db
from sqlprobe.errors import AccessDenied, NoSuchProcess
from sqlprobe.model import FileKey, FileKind, Holder, OpencodeState, OtherName
from sqlprobe.system.access import Gate, rules_out_others
from sqlprobe.system.backend import Backend, Descriptor, quietly, user_name


def find_openers(
    proc: Backend, dbs: list[Db], thorough: bool, watch: Mapping[FileKey, str]
) -> tuple[int, int, dict[FileKey, set[int]]]:
    """Record, per database, which processes have which of its files open.

    Candidates are found by the link text's basename (cheap), then confirmed by (device, inode),
    so that a data dir reached through a symlink or a bind mount still matches. A link that reads
    `<one of the files> (deleted)` is a file deleted while held open: recorded apart. Processes
    of other users are skipped when the files' own modes let none of them open any file
    (access.py). `thorough` skips nobody and also stats every descriptor that is a path, for a
    database open under another name (renamed, or a hard link). `watch` are other files to
    find the openers of (git index.lock files), by (device, inode). Returns the counts of
    processes whose descriptors could not be read, and of processes skipped, and the openers
    of the watched files.
    """
    names = {os.path.basename(f.path) for db in dbs for f in db.files}
    names |= {os.path.basename(path) for path in watch.values()}
    paths = {f.path: (db, f.kind) for db in dbs for f in db.files}
    keys = {f.key for db in dbs for f in db.files if f.key} if thorough else set()
    # Nobody may be skipped when other files are watched: their modes were not looked at.
    gates = () if thorough or watch else _skippable(dbs)
    scan = proc.find_fds(names, keys, gates)
    for db in dbs:
        for kind, fd in db.fds.items():
            with contextlib.suppress(NoSuchProcess, AccessDenied):
                db.aliases[proc.fd_key(proc.self_pid, fd)] = kind
    ours = {pid for pid in {d.pid for d in scan.found} if proc.is_sqlprobe(pid)}
    watched: dict[FileKey, set[int]] = {}
    for pid, fd, target, deleted in scan.found:
        if pid in ours:
            continue  # another sqlprobe looking (its read-only descriptors hold nothing)
        if deleted:
            found = paths.get(target)
            if found:
                found[0].deleted[(pid, fd)] = found[1]
                found[0].openers.setdefault(pid, set()).add(found[1])
                continue
        try:
            key = proc.fd_key(pid, fd)
        except (NoSuchProcess, AccessDenied, OSError):
            # Closed since the listing (a -journal, say), the process exited, or (an old
            # kernel's stat) a file on a filesystem that is gone.
            continue
        if key in watch:
            watched.setdefault(key, set()).add(pid)
        for db in dbs:
            kind = db.kind_of(key)
            if kind is not None:
                db.openers.setdefault(pid, set()).add(kind)
                db.opener_fds.append((pid, fd, kind))
    for db in dbs:
        db.unreadable = scan.denied
    return len(scan.denied), len(scan.skipped), watched


def _skippable(dbs: list[Db]) -> tuple[Gate, ...]:
    """The gates of every file, when they keep other users out; else () and nobody is skipped.

    Every database must exist and every existing file must have been opened (so its mode is
    known): a database deleted while held, or a file not readable here, tells nothing.
    """
    gates = []
    for db in dbs:
        present = {f.kind for f in db.files if f.key is not None}
        if FileKind.DB not in present or not present <= db.gates.keys():
            return ()
        gates += db.gates.values()
    return tuple(gates) if rules_out_others(tuple(gates)) else ()


def index_lock_keys(oc: OpencodeState) -> dict[FileKey, str]:
    """(device, inode) -> path of each git index.lock in opencode's snapshot repos."""
    keys = {}
    for lock in oc.index_locks:
        try:
            st = os.lstat(lock.path)
        except OSError:
            continue  # git finished since
        keys[FileKey(st.st_dev, st.st_ino)] = lock.path
    return keys


def confirm_deleted(proc: Backend, dbs: list[Db]) -> None:
    """Keep only the deleted files still held at the end: the last connection to close a WAL
    database unlinks -wal and -shm a moment before it closes them, a step, not a state."""
    for db in dbs:
        for (pid, fd), _kind in list(db.deleted.items()):
            try:
                still = proc.descriptor(pid, fd).deleted
            except (NoSuchProcess, AccessDenied):
                still = False
            if not still:
                del db.deleted[(pid, fd)]


def other_names(proc: Backend, db: Db) -> tuple[OtherName, ...]:
    """The paths other than the database's own by which processes have it open, each with the
    -wal and -shm of that path that the process has open and that are not the database's:
    SQLite names them after the path it opened, so a process using a hard link (or a bind
    mount of the file) keeps a WAL of its own.

    The openers are the descriptor scan's (by name; by (device, inode) too with --thorough).
    A process that holds a lock on the database but was found with none of its files open
    (every WAL connection holds SHARED on it while open) has its descriptors read here: few
    processes, so the default check finds a hard link in use without --thorough. Only link
    texts and fdinfo are read, never a file of theirs (a hung mount cannot hold this up).
    Called before `holders_of`, which then lists such a process with the database open.
    """
    fds_of: dict[int, list[Descriptor]] = {}

    def fds(pid: int) -> list[Descriptor]:
        if pid not in fds_of:
            try:
                fds_of[pid] = proc.fds(pid)
            except (NoSuchProcess, AccessDenied, OSError):
                fds_of[pid] = []
        return fds_of[pid]

    def key(pid: int, fd: int) -> FileKey | None:
        try:
            return proc.fd_key(pid, fd)
        except (NoSuchProcess, AccessDenied, OSError):
            return None  # closed since, or (an old kernel's stat) a mount that is gone

    first = db.observations[0]
    for pid in sorted({lk.pid for lk in first.locks if lk.file is FileKind.DB and lk.pid}):
        if pid in db.openers or pid in db.unreadable or pid == proc.self_pid:
            continue
        for _pid, fd, target, _deleted in fds(pid):
            if target.startswith("/") and (k := key(pid, fd)) and db.kind_of(k) is FileKind.DB:
                db.openers.setdefault(pid, set()).add(FileKind.DB)
                db.opener_fds.append((pid, fd, FileKind.DB))
    found: dict[tuple[int, str], OtherName] = {}
    for pid, fd, what in db.opener_fds:
        if what is not FileKind.DB:
            continue
        try:
            now = proc.descriptor(pid, fd)
        except (NoSuchProcess, AccessDenied, OSError):
            continue  # closed since
        link = now.target
        if link == db.path or now.deleted or (pid, link) in found:
            continue
        sides = {link + k.suffix: k for k in (FileKind.WAL, FileKind.SHM)}
        theirs = [
            (d.target, k)
            for d in fds(pid)
            if not d.deleted and d.target in sides and (k := key(pid, d.fd))
        ]
        own = [name for name, k in theirs if db.kind_of(k) is None]
        if theirs and not own:
            continue  # the database's own -wal and -shm: its directory by another path
        own.sort(key=list(sides).index)
        found[(pid, link)] = OtherName(pid, link, tuple(dict.fromkeys(own)))
    return tuple(found.values())


def holders_of(proc: Backend, db: Db) -> Iterable[Holder]:
    first = db.observations[0]
    pids = set(db.openers) | {lk.pid for lk in first.locks if lk.pid}
    pids.discard(proc.self_pid)
    for pid in sorted(pids):
        sample = first.proc(pid)
        yield Holder(
            pid=pid,
            command=quietly(proc.cmdline, pid) or "",
            uid=(uid := quietly(proc.uid, pid)),
            user=user_name(uid),
            files=tuple(k for k in FileKind if k in db.openers.get(pid, ())),
            age_s=None if sample is None else proc.age(sample),
            fds_readable=pid not in db.unreadable,
        )
