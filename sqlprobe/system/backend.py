"""What sqlprobe needs from the OS, as one Protocol: processes, their descriptors, lock tables.

The collector and the workflows call only these methods, so a platform is one class
(`linux.LinuxBackend` reads /proc; issue 16 adds a portable one). What a platform cannot see
(waiters, a descriptor's own locks, a thread's kernel wait) is said as None or empty, never
made up. Reads of one process raise `NoSuchProcess` when it is gone and `AccessDenied` when it
forbids, as psutil does; the caller decides whether to skip or to count.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol, TypeVar

from sqlprobe.errors import AccessDenied, NoSuchProcess
from sqlprobe.model import FileKey, LockLine, ProcSample
from sqlprobe.system.access import Gate


class Descriptor(NamedTuple):
    """One open descriptor of a process, and what it refers to."""

    pid: int
    fd: int
    # The file's path (without any mark of deletion), or what the OS calls a descriptor that is
    # no file (Linux: `pipe:[1234]`, `socket:[5678]`, `anon_inode:[eventpoll]`).
    target: str
    deleted: bool = False  # the file was deleted while held open: `target` was its last path

    @property
    def shown(self) -> str:
        """The target as lsof and /proc show it: `path (deleted)` for a deleted file."""
        return f"{self.target} (deleted)" if self.deleted else self.target


class FdScan(NamedTuple):
    """What `Backend.find_fds` found: each candidate descriptor, the pids whose descriptors could
    not be read, and the pids skipped because they could not open the files."""

    found: list[Descriptor]
    denied: set[int]
    skipped: set[int]

    def merge(self, other: FdScan) -> FdScan:
        return FdScan(
            self.found + other.found, self.denied | other.denied, self.skipped | other.skipped
        )


class Mount(NamedTuple):
    mount_point: str
    fstype: str
    source: str


class Backend(Protocol):
    """The OS as sqlprobe sees it. Per-process reads raise NoSuchProcess / AccessDenied.

    Not runtime_checkable: that costs ~0.3 ms at import, on every check (tests/test_backend.py
    checks the implementations structurally instead)."""

    # Which backend this is: "linux" (/proc) or "portable" (psutil and F_GETLK; portable.py).
    name: str
    # Where a process's open files are read, for a message about those it could not read
    # ("/proc/PID/fd" on Linux).
    descriptors_source: str

    @property
    def self_pid(self) -> int:
        """This process's pid (read each time: a forked worker is another process)."""
        ...

    def own_files(self) -> frozenset[FileKey]:
        """(device, inode) of every file this process has open; empty when it cannot tell."""
        ...

    def find_fds(
        self,
        names: Iterable[str],
        keys: Iterable[FileKey] = (),
        gates: tuple[Gate, ...] = (),
    ) -> FdScan:
        """Every process's descriptors on a file whose basename is one of `names` (with `keys`,
        also any on one of those files by another name; with `gates`, processes that could open
        none of them are skipped). A process that cannot be read is in `denied`, never left out
        silently; one that exits meanwhile is passed over."""
        ...

    def fds(self, pid: int) -> list[Descriptor]:
        """Every descriptor of `pid`, in fd order; raises AccessDenied when they cannot be
        listed."""
        ...

    def descriptor(self, pid: int, fd: int) -> Descriptor:
        """What one descriptor of `pid` refers to now; NoSuchProcess when it is closed."""
        ...

    def fd_key(self, pid: int, fd: int) -> FileKey:
        """(device, inode) of the file behind one descriptor, as the lock table keys it; raises
        (NoSuchProcess, AccessDenied, OSError) when it cannot tell."""
        ...

    def fd_stat(self, pid: int, fd: int) -> os.stat_result:
        """stat() of the file behind one descriptor; raises when it cannot tell."""
        ...

    def fd_locks(self, pid: int, fd: int) -> list[LockLine] | None:
        """The locks held through one descriptor; None when the platform cannot list a
        descriptor's locks (then `locks` or F_GETLK must be asked; the portable backend)."""
        ...

    def locks(self) -> tuple[list[LockLine], int] | None:
        """Every line of the system's lock table, waiters included, and the count of lines that
        could not be parsed; None when the platform has no such table (the portable backend:
        then F_GETLK per lock byte names one holder per byte, and waiters are unknown)."""
        ...

    def sample(self, pid: int, threads: bool = False) -> ProcSample:
        """State and CPU time of `pid`; with `threads`, its threads and unreaped children too.
        Threads stay empty when the platform cannot sample them, and a thread's `wchan` and
        `waiting` stay "" when it cannot tell where the thread sleeps (the portable backend:
        each thread has its CPU time and the process's state letter only)."""
        ...

    def age(self, sample: ProcSample) -> float | None:
        """Seconds since the sampled process started; None when the platform cannot tell."""
        ...

    def started_at(self, sample: ProcSample) -> float | None:
        """When the sampled process started, in epoch seconds (to the second); None when the
        platform cannot tell."""
        ...

    def exists(self, pid: int) -> bool:
        """Whether a process `pid` exists now (a zombie does); False when it cannot tell."""
        ...

    def is_sqlprobe(self, pid: int) -> bool:
        """Whether `pid` is a sqlprobe process or worker; False when it cannot tell."""
        ...

    def cmdline(self, pid: int) -> str:
        """The command line, redacted (`--password X`), `[name]` for a kernel thread."""
        ...

    def uid(self, pid: int) -> int:
        """The effective uid."""
        ...

    def exe(self, pid: int) -> str:
        """The executable's path (its last one, when it was deleted or replaced since)."""
        ...

    def cwd(self, pid: int) -> str:
        """The working directory."""
        ...

    def environ(self, pid: int) -> dict[str, str]:
        """The environment the process started with; raises AccessDenied when unreadable."""
        ...

    def children(self, pid: int) -> list[int]:
        """The pids of `pid`'s children; empty when the platform cannot list them."""
        ...

    def zombie_children(self, pid: int) -> list[int]:
        """The children of `pid` that exited and were never reaped; empty when it cannot tell."""
        ...

    def stack(self, pid: int) -> str | None:
        """The kernel stack of the main thread; None when the platform shows none."""
        ...

    def mounts(self) -> list[Mount]:
        """Every mount this process sees; raises OSError when they cannot be read."""
        ...

    def kernel_version(self) -> str:
        """The kernel's version text; "" when the platform cannot tell."""
        ...

    def pinned(self, path: str, caller: int | None) -> str:
        """A PATH that names the calling process's own descriptors or streams (/dev/stdin,
        /dev/fd/N, and wherever the platform has them) made to name process `caller`'s: the
        work may run in a forked worker whose streams are not the user's. Others unchanged."""
        ...

    def names_descriptor(self, path: str) -> bool:
        """Whether a PATH names one descriptor of one process (open or not)."""
        ...

    def descriptor_link(self, path: str) -> str | None:
        """What a PATH that names a process's descriptor leads to (`pipe:[1234]`, a path);
        None when it names no descriptor, or its link cannot be read."""
        ...


T = TypeVar("T")


def quietly(read: Callable[[int], T], pid: int) -> T | None:
    """`read(pid)`, or None when the process is gone or forbids it (the caller shows `?`)."""
    try:
        return read(pid)
    except (NoSuchProcess, AccessDenied, OSError):
        return None


_USERS: dict[int, str] = {}


def user_name(uid: int | None) -> str | None:
    """The user name of `uid` (its number when it has none), cached for the process."""
    if uid is None:
        return None
    if uid not in _USERS:
        try:
            _USERS[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _USERS[uid] = str(uid)
    return _USERS[uid]
