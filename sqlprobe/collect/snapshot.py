"""One snapshot of a target: the library entry point that the CLI calls.

Runs the steps in order within the deadline: opens the files (files.py), finds who has them
open (holders.py), takes the first look at the locks (locks.py) and, when that look shows a
lock that a new instance needs, samples again over a short window so that the verdict can tell
a persisting lock from a microsecond-long step; then the guarded SQLite probe. Decides nothing
itself.

Harmless by construction: files are opened read-only (system/files.py), locks are only queried
(getlk.py) and every descriptor is closed before returning.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping

from sqlprobe import system
from sqlprobe.collect import opencode as collect_opencode
from sqlprobe.collect.files import open_db, read_state
from sqlprobe.collect.holders import (
    confirm_deleted,
    find_openers,
    holders_of,
    index_lock_keys,
    other_names,
)
from sqlprobe.collect.locks import observe
from sqlprobe.collect.targets import Target, default_target, resolve
from sqlprobe.collect.working import Db
from sqlprobe.errors import AccessDenied, NoSuchProcess
from sqlprobe.model import (
    DatabaseEffects,
    DatabaseSnapshot,
    FileKey,
    FileKind,
    Finding,
    FindingKind,
    Observation,
    Probe,
    ProbeResult,
    Problem,
    ProblemKind,
    Snapshot,
)
from sqlprobe.opencode.paths import Dirs
from sqlprobe.options import DEFAULT_BUSY_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_WINDOW
from sqlprobe.sqlite import probe
from sqlprobe.system.backend import Backend
from sqlprobe.system.deadline import Deadline, run_until
from sqlprobe.system.files import is_a
from sqlprobe.text import seconds

SAMPLE_INTERVAL = 0.05
# The judge's decision about one database's locks (verdict.decide.database_effects), handed in by
# the caller: the collector knows SQLite's lock bytes, not what they mean to a new instance.
Decide = Callable[[DatabaseSnapshot], DatabaseEffects]
# Time kept back from the window for what follows it: holders, the probe, the output.
AFTER_WINDOW_S = 0.15


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
        error=Problem(
            ProblemKind.TIMED_OUT,
            None,
            f"no answer within the {seconds(timeout)} s timeout: stuck {deadline.stage}"
            " (a hung filesystem, or a file that blocks when read?)",
        ),
        timeout_s=timeout,
        cut_short=("everything",),
        backend=backend_name(proc),
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
    stats every open file of every process (see holders.find_openers).
    """
    deadline = deadline or Deadline(None)
    env = os.environ if env is None else env
    proc = proc or system.backend()
    if target.error or (not target.databases and opencode is None):
        return Snapshot(
            target.label,
            (),
            window,
            note=target.note,
            error=target.error,
            timeout_s=deadline.seconds,
            backend=backend_name(proc),
        )
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
            dbs.append(open_db(path, own, warnings))
        watch: dict[FileKey, str] = {}
        if opencode is not None:
            deadline.stage = f"reading opencode's lock directories in {opencode.locks}"
            oc = collect_opencode.read(proc, opencode)
            watch = index_lock_keys(oc)
        if dbs or watch:
            deadline.stage = "reading the open files of every process (/proc/PID/fd)"
            uninspected, skipped, openers = find_openers(proc, dbs, thorough, watch)
            if oc is not None:
                oc = collect_opencode.with_openers(oc, watch, openers)
        deadline.stage = "reading the locks (F_GETLK, fdinfo, /proc/locks)"
        # fdinfo is read only for the holders found: anyone not looked at sends us to /proc/locks.
        observe(proc, dbs, warnings, threads_of=set(), fdinfo=not (uninspected or skipped))
        owners = collect_opencode.live_owners(oc) if oc else []
        if owners:
            owner_looks.append(_look_at(proc, owners, threads=False))
        deadline.stage = "reading the -wal, -shm and -journal headers"
        for db in dbs:
            read_state(db, deadline)
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
    confirm_deleted(proc, dbs)
    if uninspected:
        where = proc.descriptors_source
        warnings.append(Finding(FindingKind.UNINSPECTED, detail=where, count=uninspected))
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
        backend=backend_name(proc),
    )


def backend_name(proc: Backend) -> str:
    """Which backend answered, for the JSON: its `name` (one without a name is the Linux one,
    as a test's stand-in backend may be)."""
    return getattr(proc, "name", "linux")


def _worth_a_window(dbs: list[Db], decide: Decide | None) -> bool:
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


def _so_far(db: Db) -> DatabaseSnapshot:
    """What has been seen of `db` until now, for the judge's decision: files, header, looks."""
    return DatabaseSnapshot(
        db.path, db.exists, tuple(db.files), db.header, db.size, db.error,
        observations=tuple(db.observations),
    )  # fmt: skip


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
    dbs: list[Db],
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
        observe(proc, dbs, warnings, threads_of=None)  # every holder: health, waiting
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


# -- finishing ----------------------------------------------------------------------------------


def _finish(proc: Backend, db: Db) -> DatabaseSnapshot:
    others = other_names(proc, db) if db.observations else ()  # may add openers: first
    return DatabaseSnapshot(
        path=db.path,
        exists=db.exists,
        files=tuple(db.files),
        header=db.header,
        size=db.size,
        error=db.error,
        holders=tuple(holders_of(proc, db)) if db.observations else (),
        observations=tuple(db.observations),
        wal=db.wal,
        journal_size=db.sizes.get(FileKind.JOURNAL),
        journal_header_set=db.journal_header_set,
        deleted_open=tuple(sorted(set((pid, kind) for (pid, _fd), kind in db.deleted.items()))),
        links=db.links,
        other_names=others,
    )
