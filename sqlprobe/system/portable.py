"""The portable backend: what macOS (and any POSIX system psutil supports) has, and no /proc.

`PortableBackend` implements the Protocol of backend.py with psutil (the process table, each
process's open files, state, CPU time, threads), os.stat of the paths psutil reports, /dev/fd
for this process's own descriptors, and `psutil.disk_partitions` for the mounts. There is no
lock table: `locks()` and `fd_locks()` answer None, and the collector finds each SQLite lock
byte's holder with F_GETLK (collect/locks.py `_hidden_locks`; one holder per query).

What it cannot see, said as such (never made up):
- waiters: no `->` lines, so no wait-for edges and no "itself waiting" clause;
- where a thread sleeps: psutil gives each thread's CPU time but no state and no kernel
  function, so every thread carries the process's state letter, `wchan` "" and `waiting` "":
  the stuck rule works from process state and CPU time only. On macOS psutil reads the state
  from `kinfo_proc.p_stat`, which says "running" for nearly every process (psutil issues 1754,
  2675): an idle holder there is never "asleep", and the no-CPU clause does not fire;
- the kernel stack (`stack()` None), supplementary groups and capabilities (so no process is
  skipped by the files' modes: one that cannot be read is counted as denied);
- descriptors that are not regular files (psutil lists none: no pipes, sockets);
- files deleted while held open: psutil on Linux drops a `path (deleted)` link (it keeps only
  paths that stat as regular files), and macOS gives such a vnode no path or its last one. A
  candidate whose reported path no longer exists is taken as deleted (`Descriptor.deleted`);
  one whose path now names another file is keyed as that file, and so matches no database it
  is not. Deleted files held open are found by the Linux backend only.

Keys of other processes' files are the stat() of the path psutil reports, taken when asked
(`fd_key`), so a file renamed since is keyed by whatever its old path names now; the device is
st_dev (the Linux backend's is the mount's, from mountinfo: the callers compare each backend's
keys with the same backend's keys of their own descriptors). Note that psutil's open_files
stats every path of the process it reads on Linux: a hung mount holds that read up (the
collector's deadline bounds the check).

psutil's errors map to sqlprobe.errors: NoSuchProcess when the process is gone, AccessDenied
when it forbids. A zombie (psutil.ZombieProcess: it exists, but its files cannot be read) is
read as gone: exit closed every descriptor and released every lock before it became one, so
it holds nothing; `exists` still says True for it, and `sample` gives its state Z where the
platform lets its state be read.

psutil is imported here only, and this module only when the portable backend is chosen
(system/__init__.py): the Linux check never loads it.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import psutil

from sqlprobe.errors import AccessDenied, NoSuchProcess
from sqlprobe.model import FileKey, ProcSample, ThreadSample
from sqlprobe.system.access import Gate
from sqlprobe.system.backend import Descriptor, FdScan, Mount
from sqlprobe.text import redact_command

# psutil's status (its STATUS_* values, spelt out: psutil 7 dropped some of the constants) ->
# the state letter of ps(1) and /proc/PID/stat, which verdict.judge reads.
STATE_LETTERS = {
    "running": "R",
    "sleeping": "S",
    "disk-sleep": "D",
    "stopped": "T",
    "tracing-stop": "t",
    "zombie": "Z",
    "dead": "X",
    "wake-kill": "K",
    "waking": "W",
    "parked": "P",
    "idle": "I",  # Linux: an idle kernel thread; macOS and the BSDs: being created (SIDL)
    "locked": "L",  # FreeBSD: blocked on a kernel lock (ps shows L)
    "waiting": "S",  # FreeBSD: waiting for an interrupt
    "suspended": "T",  # NetBSD
}
# ProcSample.start_ticks of this backend: the start time in milliseconds since the epoch (with
# the pid, the process's identity; psutil's create_time is the same float at every read).
START_UNITS_PER_S = 1000
SQLPROBE_NAME = "sqlprobe"  # the process name of sqlprobe's processes (deadline.py names them)
DEV_FD = "/dev/fd"
# The paths that name this process's standard streams.
STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def state_letter(status: str) -> str:
    """The state letter of a psutil status ("?" for one it does not know)."""
    return STATE_LETTERS.get(status, "?")


def _text(value: str) -> str:
    """psutil's text (surrogate-escaped bytes that were not UTF-8) as /proc's parsers give it:
    those bytes backslash-escaped."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class PortableBackend:
    """The Backend (backend.py) of psutil and POSIX calls: no /proc, no lock table."""

    name = "portable"
    descriptors_source = "their open files (psutil)"

    @property
    def self_pid(self) -> int:
        """This process: read each time, as a forked worker is another process."""
        return os.getpid()

    # -- errors ------------------------------------------------------------------------------

    @contextmanager
    def _reading(self, pid: int, what: str) -> Iterator[None]:
        """Map psutil's errors to NoSuchProcess / AccessDenied (a zombie reads as gone)."""
        try:
            yield
        except psutil.NoSuchProcess as err:  # ZombieProcess included: it holds nothing
            raise NoSuchProcess(pid) from err
        except psutil.AccessDenied as err:
            raise AccessDenied(f"pid {pid} {what}", pid) from err
        except ProcessLookupError as err:
            raise NoSuchProcess(pid) from err
        except PermissionError as err:
            raise AccessDenied(f"pid {pid} {what}", pid) from err

    def _process(self, pid: int) -> psutil.Process:
        with self._reading(pid, "process"):
            return psutil.Process(pid)

    def _open_files(self, pid: int) -> list[tuple[int, str]]:
        """(fd, path) of every regular file `pid` has open, as psutil reports them."""
        with self._reading(pid, "open files"):
            files = psutil.Process(pid).open_files()
        return [(f.fd, _text(f.path)) for f in files if f.fd >= 0]

    # -- system-wide -------------------------------------------------------------------------

    def locks(self) -> None:
        """None: no lock table on this platform (F_GETLK per lock byte is asked instead)."""
        return None

    def pids(self) -> Iterator[int]:
        """Every pid psutil lists, sqlprobe's own excluded."""
        me = self.self_pid
        for pid in psutil.pids():
            if pid != me:
                yield pid

    # -- descriptors -------------------------------------------------------------------------

    def find_fds(
        self,
        names: Iterable[str],
        keys: Iterable[FileKey] = (),
        gates: tuple[Gate, ...] = (),
    ) -> FdScan:
        """Every open regular file whose path's basename is one of `names`, across all
        processes (psutil's open_files of each). With `keys` (thorough), every other path is
        also stat()ed and taken when it is one of those files. `gates` are not used: psutil
        gives no supplementary groups or capabilities, so no process can be ruled out by the
        files' modes, and `skipped` stays empty (one that cannot be read is in `denied`).

        A candidate whose path names no file any more is a file deleted (or renamed) while
        held open: a Descriptor with `deleted` (see the module's note on deleted files).
        """
        wanted = frozenset(names)
        keys = frozenset(keys)
        scan = FdScan([], set(), set())
        for pid in self.pids():
            try:
                files = self._open_files(pid)
            except NoSuchProcess:
                continue  # exited during the scan (or a zombie): it holds nothing
            except AccessDenied:
                scan.denied.add(pid)
                continue
            for fd, path in files:
                if os.path.basename(path) in wanted:
                    scan.found.append(Descriptor(pid, fd, path, not os.path.lexists(path)))
                elif keys and path.startswith("/"):
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) in keys:
                        scan.found.append(Descriptor(pid, fd, path))
        return scan

    def fds(self, pid: int) -> list[Descriptor]:
        """Every regular file `pid` has open, in fd order (psutil lists no pipes or sockets)."""
        return sorted(
            Descriptor(pid, fd, path, not os.path.lexists(path))
            for fd, path in self._open_files(pid)
        )

    def descriptor(self, pid: int, fd: int) -> Descriptor:
        """What one descriptor of `pid` refers to now (its process's open files read again);
        NoSuchProcess when it is closed or is no regular file."""
        for got, path in self._open_files(pid):
            if got == fd:
                return Descriptor(pid, fd, path, not os.path.lexists(path))
        raise NoSuchProcess(pid)

    def own_files(self) -> frozenset[FileKey]:
        """(device, inode) of every file this process has open, by fstat of each descriptor
        that /dev/fd lists (read before opening any)."""
        keys = set()
        try:
            listed = os.listdir(DEV_FD)
        except OSError:
            return frozenset()
        for name in listed:
            try:
                st = os.fstat(int(name))
            except (OSError, ValueError):
                continue  # the descriptor of the listing itself, closed since
            keys.add(FileKey(st.st_dev, st.st_ino))
        return frozenset(keys)

    def fd_stat(self, pid: int, fd: int) -> os.stat_result:
        """stat() of the file behind one descriptor: fstat for this process's own, else a stat
        of the path psutil reports for it (raises OSError when it names no file now)."""
        if pid == self.self_pid:
            return os.fstat(fd)
        return os.stat(self.descriptor(pid, fd).target)

    def fd_key(self, pid: int, fd: int) -> FileKey:
        """(device, inode) of the file behind one descriptor, from `fd_stat` (st_dev)."""
        st = self.fd_stat(pid, fd)
        return FileKey(st.st_dev, st.st_ino)

    def fd_locks(self, pid: int, fd: int) -> None:
        """None: no platform call lists one descriptor's locks (F_GETLK is asked instead)."""
        return None

    # -- one process -------------------------------------------------------------------------

    def sample(self, pid: int, threads: bool = False) -> ProcSample:
        """State and CPU time of `pid`; with `threads`, each thread's CPU time, with the
        process's state letter (psutil has no per-thread state), `wchan` and `waiting` "" (it
        cannot tell where a thread sleeps), and the children that exited and were never
        reaped."""
        p = self._process(pid)
        with self._reading(pid, "state"), p.oneshot():
            state = state_letter(p.status())
            cpu = p.cpu_times()
            start = round(p.create_time() * START_UNITS_PER_S)
            ppid = p.ppid()
            per_thread: tuple[ThreadSample, ...] = ()
            if threads:
                per_thread = tuple(
                    ThreadSample(t.id, state, round((t.user_time + t.system_time) * 1e9))
                    for t in p.threads()
                )
        zombies = tuple(self.zombie_children(pid)) if threads else ()
        return ProcSample(pid, start, state, cpu.user + cpu.system, per_thread, ppid, zombies)

    def age(self, sample: ProcSample) -> float | None:
        """Seconds since the sampled process started (psutil's create_time to now)."""
        return max(0.0, round(time.time() - sample.start_ticks / START_UNITS_PER_S, 2))

    def started_at(self, sample: ProcSample) -> float | None:
        """When the sampled process started, in epoch seconds (psutil's create_time)."""
        return sample.start_ticks / START_UNITS_PER_S

    def exists(self, pid: int) -> bool:
        """Whether a process `pid` exists (a zombie does, until it is reaped)."""
        return psutil.pid_exists(pid)

    def is_sqlprobe(self, pid: int) -> bool:
        """Whether `pid`'s process name is sqlprobe (its console script, or a worker, which
        names itself so where the platform lets it: deadline.py writes /proc/self/comm, which
        macOS has not, so a worker there keeps its interpreter's name and is not recognised)."""
        try:
            with self._reading(pid, "name"):
                return psutil.Process(pid).name() == SQLPROBE_NAME
        except (NoSuchProcess, AccessDenied):
            return False

    def cmdline(self, pid: int) -> str:
        """The command line, redacted; `[name]` when it has none (a kernel thread, a zombie)."""
        p = self._process(pid)
        try:
            with self._reading(pid, "cmdline"):
                args = p.cmdline()
        except NoSuchProcess:
            if not psutil.pid_exists(pid):
                raise
            args = []  # a zombie: no command line, its name as ps shows it
        command = redact_command(_text(" ".join(args)))
        if not command:
            with self._reading(pid, "name"):
                command = f"[{_text(p.name())}]"
        return command

    def uid(self, pid: int) -> int:
        """The effective uid."""
        p = self._process(pid)
        with self._reading(pid, "uids"):
            return int(p.uids().effective)

    def exe(self, pid: int) -> str:
        """The executable's path, as psutil reports it."""
        p = self._process(pid)
        with self._reading(pid, "exe"):
            path = p.exe()
        return _text(path).removesuffix(" (deleted)")

    def cwd(self, pid: int) -> str:
        p = self._process(pid)
        with self._reading(pid, "cwd"):
            return _text(p.cwd())

    def environ(self, pid: int) -> dict[str, str]:
        """The environment the process started with; AccessDenied when unreadable."""
        p = self._process(pid)
        with self._reading(pid, "environ"):
            env = p.environ()
        return {_text(k): _text(v) for k, v in env.items()}

    def children(self, pid: int) -> list[int]:
        """The pids of `pid`'s children (psutil: by parent pid over the process table)."""
        p = self._process(pid)
        with self._reading(pid, "children"):
            return sorted(c.pid for c in p.children())

    def zombie_children(self, pid: int) -> list[int]:
        """The children of `pid` that exited and were never reaped (state Z)."""
        p = self._process(pid)
        with self._reading(pid, "children"):
            kids = p.children()
        zombies = []
        for child in kids:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    zombies.append(child.pid)
            except psutil.ZombieProcess:
                zombies.append(child.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # reaped since the listing, or not readable
        return sorted(zombies)

    def stack(self, pid: int) -> None:
        """None: no kernel stack is shown on this platform."""
        return None

    def mounts(self) -> list[Mount]:
        """Every mount (psutil.disk_partitions with all=True); OSError when unreadable."""
        try:
            parts = psutil.disk_partitions(all=True)
        except psutil.Error as err:
            raise OSError(f"mounts: {err}") from err
        return [Mount(p.mountpoint, p.fstype, p.device) for p in parts]

    def kernel_version(self) -> str:
        """The kernel's release (platform.release(): `6.1.0-18-amd64`, `23.1.0` on macOS)."""
        return platform.release()

    # -- PATHs that name descriptors ---------------------------------------------------------

    def pinned(self, path: str, caller: int | None) -> str:
        """`path` unchanged: no path names another process's descriptor here. In a forked
        worker, /dev/stdin and /dev/fd/N are the worker's own (its standard streams are
        /dev/null), a limit of this backend."""
        return path

    def names_descriptor(self, path: str) -> bool:
        """Whether `path` is /dev/fd/N (or /dev/stdin, /dev/stdout, /dev/stderr)."""
        if path in STREAMS:
            return True
        head, _, tail = path.rpartition("/")
        return head == DEV_FD and tail.isdigit()

    def descriptor_link(self, path: str) -> str | None:
        """What /dev/fd/N leads to, where it is a link (Linux); None where /dev/fd's entries
        are no links (macOS), for a closed descriptor, and for other paths."""
        if not self.names_descriptor(path):
            return None
        try:
            return os.readlink(f"{DEV_FD}/{STREAMS[path]}" if path in STREAMS else path)
        except OSError:
            return None
