"""`sqlprobe diagnose`: what a person would otherwise gather by hand about each holder.

Given a snapshot, collects per holder: every open descriptor, the kernel stack where readable,
the cwd, the parent chain, the environment variables that decide where opencode keeps its data
(secrets redacted as they are read), and for an opencode holder the log file it has open under
`<data dir>/log/` with its last lines. Also the filesystem the database lives on, with a warning
where POSIX locks are unreliable. Reads only what the OS backend tells (system.backend) and,
read-only, the holders' log files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

from sqlprobe import system
from sqlprobe.diagnosis import Diagnosis, Filesystem, HolderDetails, LogFile, OpenFile
from sqlprobe.errors import AccessDenied, CannotInspect, NoSuchProcess
from sqlprobe.model import Snapshot
from sqlprobe.options import DEFAULT_CHECK, CheckOptions
from sqlprobe.system.backend import Backend, Mount
from sqlprobe.system.deadline import run_until
from sqlprobe.system.files import describe, open_regular, pread_at_most
from sqlprobe.text import looks_secret, seconds
from sqlprobe.verdict.judge import Verdict
from sqlprobe.verdict.opencode import LockVerdict, likely_lock_waiters
from sqlprobe.workflows.check import inspect

T = TypeVar("T")

ENV_PREFIXES = ("OPENCODE_",)
# opencode's data, state, config and cache dirs (xdg-basedir), and the home they default under.
ENV_NAMES = ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "HOME")
# Of those, the ones whose value is a path, shown as it is: every ENV_NAMES, OPENCODE_DB and
# OPENCODE_CONFIG, and an OPENCODE_* named like a path (OPENCODE_CONFIG_DIR,
# OPENCODE_GIT_BASH_PATH, OPENCODE_MODELS_PATH).
ENV_PATHS = (*ENV_NAMES, "OPENCODE_DB", "OPENCODE_CONFIG")
ENV_PATH_SUFFIXES = ("_DIR", "_PATH", "_HOME", "_FILE")
# A flag as opencode's `truthy` reads it (flag.ts: "true" or "1"), and its opposite.
ENV_FLAG_VALUES = ("1", "0", "true", "false")
ENV_REDACTED = "(set, redacted)"  # a secret: never shown
ENV_HIDDEN = "(set)"  # any other value that is neither a path nor a flag
LOG_LINES = 5
LOG_TAIL_BYTES = 16384
PARENT_DEPTH = 8

# Filesystems on which POSIX advisory locks do not protect SQLite (sqlite.org/faq.html#q5,
# "How To Corrupt An SQLite Database File" §2.1): network and FUSE filesystems.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre"}


def diagnose(snapshot: Snapshot, proc: Backend | None = None) -> Diagnosis:
    """Details of every database holder and every live owner of one of opencode's locks."""
    proc = proc or system.backend()
    dirs = list(dict.fromkeys(os.path.dirname(db.path) for db in snapshot.databases))
    oc = snapshot.opencode
    if oc is not None:  # its logs are in <data dir>/log/, with or without a database there
        dirs = list(dict.fromkeys([*dirs, oc.data_dir]))
    try:
        mounts = proc.mounts()
        wsl1 = is_wsl1(proc.kernel_version())
    except OSError:
        mounts, wsl1 = [], False
    filesystems = tuple(_filesystem(d, mounts, wsl1) for d in dirs)
    pids = {h.pid for db in snapshot.databases for h in db.holders}
    if oc is not None:
        pids |= {o.pid for o in oc.owners if o.alive}
    return Diagnosis(tuple(_holder(proc, pid, dirs) for pid in sorted(pids)), filesystems)


def _holder(proc: Backend, pid: int, data_dirs: list[str]) -> HolderDetails:
    problems: list[str] = []

    def attempt(what: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except (AccessDenied, NoSuchProcess, OSError) as err:
            problems.append(f"{what}: {_why(err)}")
            return None

    links = attempt("open files", lambda: proc.fds(pid))
    fds = (
        tuple(OpenFile(d.fd, fd_kind(d.target, d.deleted), d.shown) for d in links)
        if links is not None  # none open is an answer too (the portable backend lists files only)
        else None
    )
    env = attempt("environment", lambda: proc.environ(pid))
    logs = tuple(
        _log(proc, pid, f.fd, f.target)
        for f in fds or ()
        if f.kind == "file" and any(is_log_of(f.target, d) for d in data_dirs)
    )
    return HolderDetails(
        pid=pid,
        fds=fds,
        stack=attempt("kernel stack", lambda: proc.stack(pid)),
        cwd=attempt("cwd", lambda: proc.cwd(pid)),
        parents=tuple(_parents(proc, pid)),
        environment=opencode_environment(env) if env is not None else None,
        logs=logs,
        problems=tuple(problems),
    )


def _why(err: Exception) -> str:
    if isinstance(err, AccessDenied):
        return "permission denied"
    if isinstance(err, NoSuchProcess):
        return "the process is gone"
    return describe(err) if isinstance(err, OSError) else str(err)


def fd_kind(link: str, deleted: bool = False) -> str:
    """What a descriptor is, from what it refers to (Descriptor.target) and whether that file
    was deleted."""
    if deleted:
        return "deleted"
    if link.startswith("/dev/"):
        return "device"
    if link.startswith("/"):
        return "file"
    for prefix in ("socket", "pipe", "anon_inode"):
        if link.startswith(prefix + ":"):
            return prefix
    return "other"


def is_log_of(path: str, data_dir: str) -> bool:
    """opencode writes its logs to `<data dir>/log/*.log`."""
    return os.path.dirname(path) == os.path.join(data_dir, "log") and path.endswith(".log")


def opencode_environment(env: dict[str, str]) -> dict[str, str]:
    """The variables that decide where opencode keeps its data and how it runs, name -> what
    may be shown of the value: a path, a flag, else `(set)`; a secret is `(set, redacted)`.

    Redacted here, not when printing: a holder's secrets never reach the report's records.
    """
    return {
        k: _shown(k, v)
        for k, v in sorted(env.items())
        if k in ENV_NAMES or k.startswith(ENV_PREFIXES)
    }


def _shown(name: str, value: str) -> str:
    if looks_secret(name):  # before the path rule: OPENCODE_AUTH_PATH is redacted
        return ENV_REDACTED
    if name in ENV_PATHS or name.endswith(ENV_PATH_SUFFIXES):
        return value if looks_like_path(value) else ENV_HIDDEN
    return value if value.lower() in ENV_FLAG_VALUES else ENV_HIDDEN


def looks_like_path(value: str) -> bool:
    """Not inline content put where a path goes (`OPENCODE_CONFIG='{"apiKey": …}'`), nor a URL,
    which can carry a password."""
    return (
        "\n" not in value
        and "://" not in value
        and not value.lstrip().startswith(("{", "["))
        and len(value) <= 4096  # PATH_MAX
    )


def _log(proc: Backend, pid: int, fd: int, path: str) -> LogFile:
    try:
        st = proc.fd_stat(pid, fd)
        age = max(0.0, round(time.time() - st.st_mtime, 1))
    except (AccessDenied, NoSuchProcess):
        return LogFile(path, 0, 0.0, (), "not readable")
    try:
        handle, st = open_regular(path)
    except CannotInspect as err:
        return LogFile(path, st.st_size, age, (), err.problem)
    try:
        size = st.st_size
        start = max(0, size - LOG_TAIL_BYTES)
        tail = pread_at_most(handle, size - start, start)
    except OSError as err:
        return LogFile(path, st.st_size, age, (), describe(err))
    finally:
        os.close(handle)
    lines = tail.decode("utf-8", "backslashreplace").splitlines()
    if start:
        lines = lines[1:]  # the first one is cut
    return LogFile(path, size, age, tuple(lines[-LOG_LINES:]))


def _parents(proc: Backend, pid: int) -> list[tuple[int, str]]:
    chain = []
    current = pid
    for _ in range(PARENT_DEPTH):
        try:
            parent = proc.sample(current).ppid
            if not parent:
                break
            chain.append((parent, proc.cmdline(parent)))
        except (AccessDenied, NoSuchProcess):
            break
        current = parent
    return chain


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that `path` is on: the longest mount point that contains it (the last wins)."""
    best = None
    for mount in mounts:
        mp = mount.mount_point.rstrip("/") or "/"
        inside = path == mp or path.startswith(mp + "/") or mp == "/"
        if inside and (best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    return best


def fs_warning(fstype: str, wsl1: bool) -> str | None:
    """Why SQLite's locking may not hold on this filesystem, or None."""
    if wsl1:
        return "WSL1: its POSIX locks are emulated and do not protect SQLite reliably"
    base = fstype.split(".", 1)[0]
    if base in NETWORK_FS:
        return (
            f"{fstype} is a network filesystem: POSIX locks may not reach other machines or may"
            " be lost, and SQLite's WAL needs shared memory on one host"
        )
    if base in ("fuse", "fuseblk"):
        return f"{fstype} is a FUSE filesystem: whether it honours POSIX locks is up to its daemon"
    return None


def is_wsl1(version: str) -> bool:
    """WSL1's kernel version says `Microsoft`; WSL2's says `microsoft-standard`."""
    return "Microsoft" in version and "microsoft-standard" not in version.lower()


def _filesystem(directory: str, mounts: list[Mount], wsl1: bool) -> Filesystem:
    # `directory` is already resolved (targets.py): no realpath here, which could hang.
    mount = mount_of(directory, mounts)
    if mount is None:
        return Filesystem(directory, "?", "?", "?", "its mount could not be found")
    return Filesystem(
        directory, mount.mount_point, mount.fstype, mount.source, fs_warning(mount.fstype, wsl1)
    )


class DiagnoseResult(NamedTuple):
    """What `sqlprobe diagnose` renders: check's snapshot and verdict, and the diagnosis
    gathered within what the check left of its timeout."""

    snapshot: Snapshot
    verdict: Verdict
    diagnosis: Diagnosis | None  # None: the timeout came first (`missing` says so)
    missing: str | None  # why there is no diagnosis, as the report says it
    likely_waiters: dict[int, LockVerdict]  # holders that likely wait for one of opencode's locks


def diagnose_target(
    path: str | None, env: Mapping[str, str] | None = None, options: CheckOptions = DEFAULT_CHECK
) -> DiagnoseResult:
    """`sqlprobe diagnose` as a call: check `path` (workflows.check.inspect), then gather the
    diagnosis of what it found, all within `options.timeout` (None: no limit). What the check
    leaves of it is the gathering's; past it, no diagnosis (`missing` says why)."""
    started = time.monotonic()
    snapshot, verdict = inspect(path, env, options)
    likely = likely_lock_waiters(snapshot, verdict.opencode)
    if options.timeout is None:
        return DiagnoseResult(snapshot, verdict, diagnose(snapshot), None, likely)
    job = run_until(lambda: diagnose(snapshot), options.timeout - (time.monotonic() - started))
    if job.done.is_set():
        return DiagnoseResult(snapshot, verdict, job.get(), None, likely)
    missing = f"no diagnosis: the {seconds(options.timeout)} s timeout came first"
    return DiagnoseResult(snapshot, verdict, None, missing, likely)
