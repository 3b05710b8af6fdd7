"""One snapshot of a target: the library entry point that the CLI calls.

Finds the files, reads /proc/locks and F_GETLK, finds the holders through /proc/PID/fd, and, when
the first look shows a lock that a new instance needs, samples again over a short window so that
the verdict can tell a persisting lock from a microsecond-long step. Decides nothing itself.

Harmless by construction: files are opened read-only (files.py), locks are only queried (getlk.py)
and every descriptor is closed before returning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable, Mapping

from sqlprobe import system
from sqlprobe.collect import opencode as collect_opencode
from sqlprobe.collect.targets import Target, default_target, resolve
from sqlprobe.errors import (
    AccessDenied,
    CannotInspect,
    HeaderError,
    NoSuchProcess,
    OpenInThisProcess,
)
from sqlprobe.model import (
    ByteRange,
    DatabaseEffects,
    DatabaseSnapshot,
    DbHeader,
    FileKey,
    FileKind,
    Finding,
    FindingKind,
    Holder,
    Lock,
    LockLine,
    LockName,
    Mode,
    Observation,
    OpencodeState,
    OtherName,
    Probe,
    ProbeResult,
    SideFile,
    Snapshot,
    WalState,
)
from sqlprobe.opencode.paths import Dirs
from sqlprobe.options import DEFAULT_BUSY_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_WINDOW
from sqlprobe.sqlite import probe
from sqlprobe.sqlite.dbheader import parse_header
from sqlprobe.sqlite.filestate import journal_header_set, read_wal_state
from sqlprobe.sqlite.locks import (
    DB_HEADER_SIZE,
    RESERVED_BYTE,
    decode,
    lock_bytes,
)
from sqlprobe.system import getlk
from sqlprobe.system.access import Gate, rules_out_others
from sqlprobe.system.backend import Backend, Descriptor, quietly, user_name
from sqlprobe.system.deadline import Deadline, run_until
from sqlprobe.system.files import (
    DANGLING,
    describe,
    file_type,
    gate,
    is_a,
    open_regular,
    pread_at_most,
)
from sqlprobe.text import seconds

SAMPLE_INTERVAL = 0.05
# The judge's decision about one database's locks (verdict.decide.database_effects), handed in by
# the caller: the collector knows SQLite's lock bytes, not what they mean to a new instance.
Decide = Callable[[DatabaseSnapshot], DatabaseEffects]
WHOLE_FILE = ByteRange(0, None)
RESERVED = ByteRange(RESERVED_BYTE, RESERVED_BYTE)
# Time kept back from the window for what follows it: holders, the probe, the output.
AFTER_WINDOW_S = 0.15


class _Db:
    """Working state for one database while the snapshot is being taken."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.exists = True
        self.files: list[SideFile] = []
        self.fds: dict[FileKind, int] = {}  # raw read-only descriptors
        self.sizes: dict[FileKind, int] = {}
        self.gates: dict[FileKind, Gate] = {}  # who may open each file, by its own mode
        self.header: DbHeader | None = None
        self.size: int | None = None
        self.links: int | None = None  # st_nlink of the database file
        self.error: str | None = None
        self.own = False  # this very process has one of its files open
        self.openers: dict[int, set[FileKind]] = {}  # pid -> the files it has open
        self.opener_fds: list[tuple[int, int, FileKind]] = []  # (pid, fd, file) of the openers
        self.unreadable: set[int] = set()  # pids whose descriptors could not be read
        self.deleted: dict[tuple[int, int], FileKind] = {}  # (pid, fd) -> file deleted
        self.observations: list[Observation] = []
        self.wal: WalState | None = None
        self.journal_header_set = False
        # The kernel's (mount device, inode) of each file opened here, where it differs from
        # lstat's (a btrfs subvolume): what fdinfo and /proc/locks give for it.
        self.aliases: dict[FileKey, FileKind] = {}

    def kind_of(self, key: FileKey) -> FileKind | None:
        return next((f.kind for f in self.files if f.key == key), None) or self.aliases.get(key)


def check(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    window: float = DEFAULT_WINDOW,
    proc: Backend | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    use_probe: bool = True,
    thorough: bool = False,
    databases: bool = True,
    probe_live: bool = False,
    decide: Decide | None = None,
) -> Snapshot:
    """Resolve `path` (None: opencode's default database) and take one snapshot of it.

    `decide` is the judge's decision about a database's locks (verdict.decide.database_effects,
    which `sqlprobe.check` passes): it says whether the first look shows a lock worth a window
    and how the probe may open the database. Without it every lock counts (a window whenever
    another process holds one) and the probe treats every holder as blocking.

    When the target is opencode's own data (no PATH, or PATH is its data dir or database as
    `env` places them), opencode's lock directories are read too. With `databases` False only
    they are (an isolated run has a database of its own, but not a lock directory).

    Returns within `timeout` seconds (None: no limit) whatever the filesystem or the holders do.
    When the collection itself overruns (a hung filesystem), the snapshot is an error naming what
    it was doing; the work is left running in a daemon thread.
    """
    env = os.environ if env is None else env
    proc = proc or system.backend()
    deadline = Deadline(timeout)
    caller = os.getpid()  # whose /proc/self a PATH names: not the worker's (targets.resolve)

    def work() -> Snapshot:
        deadline.stage = "listing this process's own open files"
        own = proc.own_files()  # before sqlprobe opens anything itself
        deadline.stage = f"resolving {path or default_target(env)}"
        where = collect_opencode.scope(path, env)
        if databases:
            target = resolve(path, env, own, caller, proc)
        else:
            target = Target(label=where.state if where else (path or default_target(env)))
        return take(
            target,
            window,
            proc,
            own,
            deadline,
            busy_timeout,
            use_probe,
            thorough,
            where,
            env,
            probe_live,
            decide,
        )

    if timeout is None:
        return work()
    job = run_until(work, deadline.remaining(), deadline=deadline)
    if job.done.is_set():
        return job.get()
    label = path if path is not None else default_target(env)
    return Snapshot(
        label,
        (),
        window,
        error=f"no answer within the {seconds(timeout)} s timeout: stuck {deadline.stage}"
        " (a hung filesystem, or a file that blocks when read?)",
        timeout_s=timeout,
        cut_short=("everything",),
    )


def take(
    target: Target,
    window: float = DEFAULT_WINDOW,
    proc: Backend | None = None,
    own: frozenset[FileKey] | None = None,
    deadline: Deadline | None = None,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    use_probe: bool = True,
    thorough: bool = False,
    opencode: Dirs | None = None,
    env: Mapping[str, str] | None = None,
    probe_live: bool = False,
    decide: Decide | None = None,
) -> Snapshot:
    """Take a snapshot of the databases of `target`, and of opencode's state in `opencode`.

    `own` is what this process has open already (Backend.own_files); read here when not given.
    The window is shortened to keep within `deadline`, and the snapshot says so. `thorough`
    stats every open file of every process (see `_find_openers`).
    """
    deadline = deadline or Deadline(None)
    env = os.environ if env is None else env
    if target.error or (not target.databases and opencode is None):
        return Snapshot(
            target.label,
            (),
            window,
            note=target.note,
            error=target.error,
            timeout_s=deadline.seconds,
        )
    proc = proc or system.backend()
    warnings: list[Finding] = []
    cut: list[str] = []
    own = proc.own_files() if own is None else own
    dbs = []
    oc = None
    owner_looks: list[Observation] = []
    uninspected = skipped = 0
    try:
        for path in target.databases:
            deadline.stage = f"opening {path}"
            dbs.append(_open(path, own, warnings))
        watch: dict[FileKey, str] = {}
        if opencode is not None:
            deadline.stage = f"reading opencode's lock directories in {opencode.locks}"
            oc = collect_opencode.read(proc, opencode)
            watch = _index_lock_keys(oc)
        if dbs or watch:
            deadline.stage = "reading the open files of every process (/proc/PID/fd)"
            uninspected, skipped, openers = _find_openers(proc, dbs, thorough, watch)
            if oc is not None:
                oc = collect_opencode.with_openers(oc, watch, openers)
        deadline.stage = "reading the locks (F_GETLK, fdinfo, /proc/locks)"
        # fdinfo is read only for the holders found: anyone not looked at sends us to /proc/locks.
        _observe(proc, dbs, warnings, threads_of=set(), fdinfo=not (uninspected or skipped))
        owners = collect_opencode.live_owners(oc) if oc else []
        if owners:
            owner_looks.append(_look_at(proc, owners, threads=False))
        deadline.stage = "reading the -wal, -shm and -journal headers"
        for db in dbs:
            _read_state(db, deadline)
        blocking = _worth_a_window(dbs, decide)
        used = window
        if (blocking or owners) and window > 0:
            used = _sample_window(proc, dbs, warnings, window, deadline, owners, owner_looks)
            if used < window:
                cut.append(f"the window ({seconds(used)} s of {seconds(window)} s)")
    finally:
        for db in dbs:
            for fd in db.fds.values():
                os.close(fd)
            db.fds.clear()
    _confirm_deleted(proc, dbs)
    if uninspected:
        warnings.append(Finding(FindingKind.UNINSPECTED, count=uninspected))
    databases = []
    for db in dbs:
        snap = _finish(proc, db)
        if use_probe and snap.exists and not snap.error:
            deadline.stage = f"probing {db.path} with SQLite"
            snap = snap._replace(
                probe=_probe(snap, db.own, busy_timeout, deadline, probe_live, decide)
            )
            if snap.probe and snap.probe.result is ProbeResult.TIMEOUT:
                cut.append("the SQLite probe")
        databases.append(snap)
    if oc is not None:
        deadline.stage = "looking at opencode's lock owners"
        holders = [h.pid for d in databases for h in d.holders]
        oc = collect_opencode.finish(proc, oc, env, holders, tuple(owner_looks))
    return Snapshot(
        target.label,
        tuple(databases),
        used,
        note=target.note,
        uninspected_processes=uninspected,
        skipped_processes=skipped,
        thorough=thorough,
        warnings=tuple(dict.fromkeys(warnings)),
        timeout_s=deadline.seconds,
        cut_short=tuple(cut),
        opencode=oc,
    )


def _index_lock_keys(oc: OpencodeState) -> dict[FileKey, str]:
    """(device, inode) -> path of each git index.lock in opencode's snapshot repos."""
    keys = {}
    for lock in oc.index_locks:
        try:
            st = os.lstat(lock.path)
        except OSError:
            continue  # git finished since
        keys[FileKey(st.st_dev, st.st_ino)] = lock.path
    return keys


def _look_at(proc: Backend, pids: Iterable[int], threads: bool) -> Observation:
    """The state of some processes (opencode's lock owners) at one moment: no locks."""
    procs = []
    for pid in pids:
        try:
            procs.append(proc.sample(pid, threads=threads))
        except (NoSuchProcess, AccessDenied):
            continue
    return Observation(time.monotonic(), (), tuple(procs))


def _sample_window(
    proc: Backend,
    dbs: list[_Db],
    warnings: list[Finding],
    window: float,
    deadline: Deadline,
    owners: list[int],
    owner_looks: list[Observation],
) -> float:
    """Sample every SAMPLE_INTERVAL until `window` has passed, or the deadline nears: the
    databases' locks and holders, and the `owners` of opencode's locks (into `owner_looks`).

    Returns the window actually covered.
    """
    looks = dbs[0].observations if dbs else owner_looks
    start = looks[0].t
    end = min(start + window, deadline.end - AFTER_WINDOW_S)
    deadline.stage = "sampling the observation window"
    for i in range(1, max(1, round(window / SAMPLE_INTERVAL)) + 1):
        t = start + min(i * SAMPLE_INTERVAL, window)
        if t > end:
            break
        time.sleep(max(0.0, t - time.monotonic()))
        _observe(proc, dbs, warnings, threads_of=None)  # every holder: health, waiting
        if owners:
            owner_looks.append(_look_at(proc, owners, threads=True))
    covered = looks[-1].t - start
    return window if covered >= window - 1e-3 else round(covered, 3)


def _probe(
    snap: DatabaseSnapshot,
    own: bool,
    busy_timeout: float,
    deadline: Deadline,
    live: bool,
    decide: Decide | None,
) -> Probe:
    if own:
        return probe.skipped(
            "this process has the database open (a SQLite connection?): a second connection"
            " in the same process would share its locks"
        )
    how, why = probe.plan(snap, live, decide(snap) if decide else None)
    if how is None:
        return probe.skipped(why)
    if odd := next((f for f in snap.files if f.not_regular), None):
        # SQLite would open it (a FIFO -journal: blocking); nothing opens a database beside it.
        return probe.skipped(f"{odd.path} {is_a(odd.not_regular)}: not opened beside it")
    budget = deadline.remaining() - 0.05  # room to print the answer
    return probe.run(snap.path, how, busy_timeout, min(budget, 30.0))


# -- files ------------------------------------------------------------------------------------


def _open(path: str, own: frozenset[FileKey], warnings: list[Finding]) -> _Db:
    """Stat the database and its side files; open them read-only (db and -shm for F_GETLK too).

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
        what = file_type(st.st_mode)
        if what == "symbolic link" and not os.path.exists(side):
            what = DANGLING  # SQLite cannot create the file there (O_NOFOLLOW): worse
        db.files.append(SideFile(kind, side, FileKey(st.st_dev, st.st_ino), what))
        if what is not None:
            # Never opened. The verdict says what a new instance meets with it (SQLite's own
            # open of a FIFO -journal blocks for ever: non_regular_effect).
            if kind is FileKind.DB:
                why = is_a(what)
                if what == DANGLING:  # or a symlink loop, said as for a PATH that is one
                    try:
                        os.stat(side)
                    except OSError as err:
                        why = describe(err) if err.errno == errno.ELOOP else why
                db.error = f"{side}: {why}"
            continue
        try:
            fd, st = open_regular(side, own)
        except OpenInThisProcess:
            db.own = True
            warnings.append(Finding(FindingKind.OWN_FILE, side))
            continue
        except CannotInspect as err:
            if kind is FileKind.DB:
                db.error = str(err)
            else:
                warnings.append(Finding(FindingKind.SIDE_FILE_UNREADABLE, side, detail=err.problem))
            continue
        db.fds[kind] = fd
        db.sizes[kind] = st.st_size
        db.gates[kind] = gate(fd, st)
        if kind is FileKind.DB:
            db.size = st.st_size
            db.links = st.st_nlink
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


def _read_state(db: _Db, deadline: Deadline) -> None:
    """The -wal, -shm and -journal headers, read right after the first look at the locks."""
    locks = db.observations[0].locks
    wal_fd = db.fds.get(FileKind.WAL)
    if wal_fd is not None:
        dms = any(lk.file is FileKind.SHM and lk.name == "dms" for lk in locks)
        db.wal = read_wal_state(
            wal_fd, db.sizes[FileKind.WAL], db.fds.get(FileKind.SHM), dms, deadline.end
        )
    if FileKind.JOURNAL in db.fds:
        db.journal_header_set = _journal_left_set(db)


def _journal_left_set(db: _Db) -> bool:
    """Whether the -journal holds a transaction that no live writer owns (a hot journal).

    The lock look that came first is older than the header read: a writer that began in
    between has a journal with a header, and RESERVED held since the look. So, by path (a
    writer that commits in DELETE mode unlinks the file our descriptor still reads): header
    set, then nobody holds RESERVED, then the header still set (a writer that finished in
    between zeroed or unlinked it), then nobody holds RESERVED; a writer seen at any step
    means a live transaction, not a hot journal.
    """
    path = db.files[list(FileKind).index(FileKind.JOURNAL)].path
    db_fd = db.fds.get(FileKind.DB)
    for _ in range(2):
        if not _header_set_at(path):
            return False
        if db_fd is None:
            return True  # the database was not opened here: RESERVED cannot be asked
        try:
            if getlk.query(db_fd, RESERVED) is not None:
                return False
        except OSError:
            return True
    return True


def _header_set_at(path: str) -> bool:
    try:
        fd, _st = open_regular(path)
    except CannotInspect:
        return False  # gone: committed (or never a journal at all)
    try:
        return journal_header_set(fd)
    except OSError:
        return False
    finally:
        os.close(fd)


# -- holders ----------------------------------------------------------------------------------


def _find_openers(
    proc: Backend, dbs: list[_Db], thorough: bool, watch: Mapping[FileKey, str]
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


def _skippable(dbs: list[_Db]) -> tuple[Gate, ...]:
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


def _confirm_deleted(proc: Backend, dbs: list[_Db]) -> None:
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


def _worth_a_window(dbs: list[_Db], decide: Decide | None) -> bool:
    """Whether the first look shows a lock that the window must tell from a passing step: one
    that `decide` says a new instance would meet (without it, any lock)."""
    for db in dbs:
        if not db.observations or not db.observations[-1].locks:
            continue
        if decide is None:
            return True
        if any(e.outcome is not None for e in decide(_so_far(db)).locks):
            return True
    return False


def _so_far(db: _Db) -> DatabaseSnapshot:
    """What has been seen of `db` until now, for the judge's decision: files, header, looks."""
    return DatabaseSnapshot(
        db.path, db.exists, tuple(db.files), db.header, db.size, db.error,
        observations=tuple(db.observations),
    )  # fmt: skip


# -- observing --------------------------------------------------------------------------------


def _observe(
    proc: Backend,
    dbs: list[_Db],
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
        db.observations.append(Observation(now, tuple(locks), tuple(procs), waits, _change(db)))


def _change(db: _Db) -> bytes | None:
    """What a commit changes (Observation.change): 4 bytes of the database header, 48 of -shm."""
    try:
        out = os.pread(db.fds[FileKind.DB], 4, 24) if FileKind.DB in db.fds else b""
        if FileKind.SHM in db.fds:
            out += os.pread(db.fds[FileKind.SHM], 48, 0)
    except OSError:
        return None
    return out or None


def _lock_lines(proc: Backend, dbs: list[_Db], fdinfo: bool) -> tuple[list[LockLine], int, bool]:
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


def _any_lock(dbs: list[_Db]) -> bool:
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
    db: _Db, lines: Iterable[LockLine], warnings: list[Finding], source: str = "proc-locks"
) -> list[Lock]:
    locks: list[Lock] = []
    for line in lines:
        kind = db.kind_of(line.file) or _inode_fallback(db, line, warnings)
        if kind is not None:
            locks.extend(lk._replace(source=source) for lk in decode(kind, line))
    return locks


def _inode_fallback(db: _Db, line: LockLine, warnings: list[Finding]) -> FileKind | None:
    """btrfs and overlayfs may print a device number other than st_dev (sqlite-locking.md §3):
    accept an inode-only match when that very process has that file open."""
    kind = next((f.kind for f in db.files if f.key and f.key.ino == line.file.ino), None)
    if kind is None or kind not in db.openers.get(line.pid, ()):
        return None
    warnings.append(Finding(FindingKind.INODE_ONLY_MATCH, db.path))
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


# -- finishing ----------------------------------------------------------------------------------


def _finish(proc: Backend, db: _Db) -> DatabaseSnapshot:
    others = _other_names(proc, db) if db.observations else ()  # may add openers: first
    return DatabaseSnapshot(
        path=db.path,
        exists=db.exists,
        files=tuple(db.files),
        header=db.header,
        size=db.size,
        error=db.error,
        holders=tuple(_holders(proc, db)) if db.observations else (),
        observations=tuple(db.observations),
        wal=db.wal,
        journal_size=db.sizes.get(FileKind.JOURNAL),
        journal_header_set=db.journal_header_set,
        deleted_open=tuple(sorted(set((pid, kind) for (pid, _fd), kind in db.deleted.items()))),
        links=db.links,
        other_names=others,
    )


def _other_names(proc: Backend, db: _Db) -> tuple[OtherName, ...]:
    """The paths other than the database's own by which processes have it open, each with the
    -wal and -shm of that path that the process has open and that are not the database's:
    SQLite names them after the path it opened, so a process using a hard link (or a bind
    mount of the file) keeps a WAL of its own.

    The openers are the descriptor scan's (by name; by (device, inode) too with --thorough).
    A process that holds a lock on the database but was found with none of its files open
    (every WAL connection holds SHARED on it while open) has its descriptors read here: few
    processes, so the default check finds a hard link in use without --thorough. Only link
    texts and fdinfo are read, never a file of theirs (a hung mount cannot hold this up).
    Called before `_holders`, which then lists such a process with the database open.
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


def _holders(proc: Backend, db: _Db) -> Iterable[Holder]:
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


# -- the cheap look ----------------------------------------------------------------------------


def quick_locks(proc: Backend, db: DatabaseSnapshot) -> tuple[Lock, ...] | None:
    """The locks on `db`'s database and -shm (and -journal) in the lock table alone, matched by
    the (device, inode) its snapshot found: `wait`'s cheap poll between full checks. Another
    sqlprobe's and this process's own are left out. None when the table cannot be read."""
    try:
        table = proc.locks()
    except OSError:
        return None
    if table is None:  # no lock table on this platform
        return None
    lines, _bad = table
    keys = {f.key: f.kind for f in db.files if f.key is not None and f.kind is not FileKind.WAL}
    return tuple(
        lock
        for line in lines
        if line.file in keys and line.pid != proc.self_pid and not proc.is_sqlprobe(line.pid)
        for lock in decode(keys[line.file], line)
    )


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
