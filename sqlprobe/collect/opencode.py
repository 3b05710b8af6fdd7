"""One look at opencode's own state beside its database (opencode-state.md §2-4).

Its lock directories and the process each one names (alive on this host, and the same process:
started no later than the lock was taken), which opencode a new instance would run (for the
start-up keys of its version), git `index.lock` files left in its snapshot repos, and zombie
children of the processes looked at. Read-only: lists, lstat()s, and reads meta.json and
package.json files capped in size; decides nothing (verdict_opencode.py does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping

from sqlprobe.collect.targets import MEMORY, OPENCODE_DB, default_target
from sqlprobe.errors import AccessDenied, NoSuchProcess
from sqlprobe.model import (
    FileKey,
    IndexLock,
    LockDir,
    LockOwner,
    Observation,
    OpencodeState,
    ZombieChild,
)
from sqlprobe.opencode import install, lockdirs
from sqlprobe.opencode.locks import BREAKER, is_stale
from sqlprobe.opencode.paths import Dirs, dirs
from sqlprobe.system.backend import Backend, quietly

INDEX_LOCK = "index.lock"
MAX_SNAPSHOT_DIRS = 2048  # project and worktree directories looked into, in all
# A process's start time is known to the second (Linux: btime has whole seconds).
START_SLACK_S = 1.0
START_UNKNOWN = "the start time of a lock's process is unknown: a reused pid cannot be told apart"


def scope(path: str | None, env: Mapping[str, str]) -> Dirs | None:
    """opencode's directories when the target is opencode's own data, else None.

    No PATH is opencode's data by definition; a PATH is when it names opencode's data dir or
    its database as `env` places them (through symlinks too).
    """
    found = dirs(env)
    if path is None:
        return found
    real = os.path.realpath(path)
    default = default_target(env)
    ours = {found.data, os.path.join(found.data, OPENCODE_DB)}
    if default != MEMORY:
        ours.add(default)
    return found if real in {os.path.realpath(p) for p in ours} else None


def read(proc: Backend, where: Dirs) -> OpencodeState:
    """The first look: lock directories and their owners, snapshot index locks."""
    hostname = os.uname().nodename
    read_locks = lockdirs.read_locks(where.locks, lambda: lockdirs.candidate_keys(where))
    now = time.time()
    problems = list(read_locks.problems)
    owners: dict[int, LockOwner] = {}
    for lock in read_locks.locks:
        meta = lock.meta
        if meta and meta.pid and meta.hostname in (None, hostname) and meta.pid not in owners:
            owners[meta.pid] = owner(proc, meta.pid, meta.created_at, problems)
    return OpencodeState(
        state_dir=where.state,
        locks_dir=where.locks,
        config_dir=where.config,
        data_dir=where.data,
        cache_dir=where.cache,
        home=where.home,
        hostname=hostname,
        now=now,
        locks=read_locks.locks,
        owners=tuple(owners.values()),
        index_locks=tuple(IndexLock(p, m, ()) for p, m in index_locks(where.snapshots)),
        problems=tuple(problems),
    )


def with_openers(
    state: OpencodeState, watch: Mapping[FileKey, str], openers: Mapping[FileKey, set[int]]
) -> OpencodeState:
    """The index locks with the pids that have them open (from the descriptor scan)."""
    by_path = {path: tuple(sorted(openers.get(key, ()))) for key, path in watch.items()}
    locks = tuple(lk._replace(openers=by_path.get(lk.path, ())) for lk in state.index_locks)
    return state._replace(index_locks=locks)


def finish(
    proc: Backend,
    state: OpencodeState,
    env: Mapping[str, str],
    holders: Iterable[int],
    observations: tuple[Observation, ...],
) -> OpencodeState:
    """After the window: the owners' samples, zombie children, the version a new instance runs."""
    holders = list(holders)
    looked_at = [*holders, *(o.pid for o in state.owners if o.alive)]
    version = source = None
    if state.locks:  # the version only decides what a lock means
        version, source = which_opencode(proc, env, [*(o.pid for o in state.owners), *holders])
    return state._replace(
        observations=observations,
        zombies=zombies(proc, looked_at),
        version=version,
        version_source=source,
    )


def owner(
    proc: Backend, pid: int, created_at: float | None, problems: list[str] | None = None
) -> LockOwner:
    """The process `pid` of a lock's meta.json: alive, and the one that took the lock?

    When its start time is unknown, says so once in `problems`."""
    try:
        sample = proc.sample(pid)
    except NoSuchProcess:
        return LockOwner(pid, False, "no such process")
    except AccessDenied:
        return LockOwner(pid, True, None)  # /proc/PID/stat is world-readable: not expected
    if sample.state in ("Z", "X"):
        return LockOwner(pid, False, "it has exited (a zombie, not yet reaped)")
    started = proc.started_at(sample)
    if started is None and problems is not None and START_UNKNOWN not in problems:
        problems.append(START_UNKNOWN)
    if started is not None and created_at is not None and started > created_at + START_SLACK_S:
        return LockOwner(pid, False, "pid reused: that process started after the lock was taken")
    return LockOwner(pid, True, None, command=quietly(proc.cmdline, pid) or "")


def which_opencode(
    proc: Backend, env: Mapping[str, str], pids: Iterable[int]
) -> tuple[str | None, str | None]:
    """(version, where it was read) of the opencode a new instance would run.

    The `opencode` on PATH; else the executable of a lock owner or a database holder that is
    opencode. Never executed: the version comes from its npm package's package.json.
    """
    candidates = []
    if found := install.on_path(env):
        candidates.append(found)
    for pid in pids:
        exe = quietly(proc.exe, pid)
        if exe and os.path.basename(exe) == install.NAME:
            candidates.append(exe)
    for executable in dict.fromkeys(candidates):
        got = install.inspect(executable)
        if got.version:
            return got.version, got.package_json
    return None, None


def index_locks(snapshots: str) -> list[tuple[str, float | None]]:
    """(path, mtime) of each `snapshot/<project>/<worktree>/index.lock` (git's O_EXCL lock)."""
    found = []
    looked = 0
    for project in lockdirs.listdir(snapshots):
        for worktree in lockdirs.listdir(os.path.join(snapshots, project)):
            looked += 1
            if looked > MAX_SNAPSHOT_DIRS:
                return found
            path = os.path.join(snapshots, project, worktree, INDEX_LOCK)
            try:
                found.append((path, os.lstat(path).st_mtime))
            except OSError:
                continue
    return found


def zombies(proc: Backend, pids: Iterable[int]) -> tuple[ZombieChild, ...]:
    """The children of `pids` that exited and were never reaped."""
    found = []
    for pid in sorted(set(pids)):
        try:
            children = proc.zombie_children(pid)
            found.extend(ZombieChild(pid, c, quietly(proc.cmdline, c) or "?") for c in children)
        except (NoSuchProcess, AccessDenied):
            continue
    return tuple(found)


def live_owners(state: OpencodeState) -> list[int]:
    """The pids of live owners of fresh locks: the ones whose health the window samples."""
    pids = []
    for lock in state.locks:
        found = state.owner(lock.meta.pid if lock.meta else None)
        since = lock.fresh_since
        if found and found.alive and (since is None or not is_stale(since, state.now)):
            pids.append(found.pid)
    return sorted(set(pids))


def still_blocks(proc: Backend, lock: LockDir, state: str) -> bool:
    """A cheap second look at a lock that blocked (`state` held or left-behind, or a stale one
    kept by its breaker): True while it certainly still does; False means "look properly"."""
    now = time.time()
    if state == "stale":
        breaker = lockdirs.mtime(lock.path + BREAKER)
        return breaker is not None and breaker == lock.breaker_mtime and not is_stale(breaker, now)
    if lockdirs.mtime(os.path.join(lock.path, "meta.json")) != lock.meta_mtime:
        return False  # gone, or taken anew
    again = lock._replace(heartbeat_mtime=lockdirs.mtime(os.path.join(lock.path, "heartbeat")))
    since = again.fresh_since
    if since is None or is_stale(since, now):
        return False
    if state == "held" and lock.meta and lock.meta.pid:
        return proc.exists(lock.meta.pid)
    return True
