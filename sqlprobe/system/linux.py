"""The Linux backend: everything sqlprobe reads from /proc, in one place (`LinuxBackend`).

Follows psutil's `_pslinux.py`: reads are small and binary; a process that vanishes mid-read
raises `NoSuchProcess`, one that forbids raises `AccessDenied`, and the caller decides whether to
skip or to count. The text of /proc is parsed by procparse.py (pure, tested on fixtures); the
Linux facts the other layers must not know (the ` (deleted)` of a link, clock ticks, wchan
names, mountinfo) stay here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import ClassVar, NamedTuple

from sqlprobe.errors import AccessDenied, NoSuchProcess
from sqlprobe.model import (
    WAIT_FILE_LOCK,
    WAIT_NANOSLEEP,
    FileKey,
    LockLine,
    ProcSample,
    ThreadSample,
)
from sqlprobe.system.access import Gate, ruled_out
from sqlprobe.system.backend import Descriptor, FdScan, Mount
from sqlprobe.system.procparse import (
    parse_cmdline,
    parse_environ,
    parse_fdinfo_file,
    parse_fdinfo_locks,
    parse_locks,
    parse_mount_devs,
    parse_mountinfo,
    parse_stat,
    parse_stat_name,
    parse_status,
)
from sqlprobe.text import redact_command

# What readlink of /proc/PID/fd/N (or exe) appends for a file deleted while held open.
DELETED_SUFFIX = " (deleted)"
# wchan of a thread sleeping in nanosleep: SQLite's busy handler between two lock attempts.
NANOSLEEP = frozenset({"hrtimer_nanosleep", "do_nanosleep", "clock_nanosleep"})
# wchan of a thread blocked in the kernel on a file lock (F_SETLKW, flock).
LOCK_WAIT = frozenset(
    {"fcntl_setlk", "flock_lock_inode_wait", "locks_lock_inode_wait", "do_lock_file_wait"}
)
# The descriptor scan is split across this many processes (at most one per CPU) once there are
# this many processes to scan.
SCAN_WORKERS = 4
PARALLEL_FROM = 256


def waiting_in(wchan: str) -> str:
    """ThreadSample.waiting for a thread sleeping in kernel function `wchan`."""
    if wchan in LOCK_WAIT:
        return WAIT_FILE_LOCK
    if wchan in NANOSLEEP:
        return WAIT_NANOSLEEP
    return ""


def descriptor(pid: int, fd: int, link: str) -> Descriptor:
    """A descriptor from its link text: `path (deleted)` is a file deleted while held open."""
    if link.endswith(DELETED_SUFFIX):
        return Descriptor(pid, fd, link.removesuffix(DELETED_SUFFIX), True)
    return Descriptor(pid, fd, link)


class FdQuery(NamedTuple):
    """What `LinuxBackend.find_fds` looks for."""

    suffixes: tuple[str, ...]  # a link ending in one of these is a candidate
    # Thorough: stat every descriptor whose link is a path, and take it when it is one of these.
    keys: frozenset[FileKey] = frozenset()
    # Skip a process that could open none of the files (empty: scan every process).
    gates: tuple[Gate, ...] = ()


def _write_scan(pipe: int, scan: FdScan) -> None:
    """Send a scan through a pipe: NUL-separated records of four fields (F: a descriptor, X: a
    deleted file's, D: a denied pid, S: a skipped one)."""
    out = bytearray()
    for d in scan.found:
        out += b"X" if d.deleted else b"F"
        out += b"\0%d\0%d\0" % (d.pid, d.fd) + os.fsencode(d.target) + b"\0"
    for kind, pids in ((b"D", scan.denied), (b"S", scan.skipped)):
        for pid in pids:
            out += kind + b"\0%d\0\0\0" % pid
    view = memoryview(out)
    while view:
        view = view[os.write(pipe, view) :]


def _read_scan(pipe: int) -> FdScan:
    """Read what a scanning child wrote with `_write_scan`."""
    chunks = []
    while chunk := os.read(pipe, 1 << 16):
        chunks.append(chunk)
    os.close(pipe)
    fields = b"".join(chunks).split(b"\0")
    scan = FdScan([], set(), set())
    for i in range(0, len(fields) - 3, 4):
        kind, pid, fd, target = fields[i : i + 4]
        if kind in (b"F", b"X"):
            scan.found.append(Descriptor(int(pid), int(fd), os.fsdecode(target), kind == b"X"))
        else:
            (scan.denied if kind == b"D" else scan.skipped).add(int(pid))
    return scan


UNKNOWN_DEVICE = -1  # fd_key's device for a file on a mount no mountinfo lists
SQLPROBE_COMM = b"sqlprobe"  # /proc/PID/comm of sqlprobe's processes (deadline.py names them)


class LinuxBackend:
    """The Backend (backend.py) of one /proc tree (root injectable, so that tests can point it
    at a tree of their own)."""

    name = "linux"
    descriptors_source = "/proc/PID/fd"

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self.clock_ticks = os.sysconf("SC_CLK_TCK")
        self._mount_devs: dict[int, int] = {}  # mount id -> its device (mountinfo)
        self._mountinfo_read: set[int | str] = set()
        self._boot: float | None = None

    @property
    def self_pid(self) -> int:
        """This process: read each time, as a forked worker is another process."""
        return os.getpid()

    # -- system-wide -------------------------------------------------------------------------

    def locks(self) -> tuple[list[LockLine], int]:
        """All lines of /proc/locks (readable by every user), and the count of unparsable ones."""
        with open(f"{self.root}/locks", "rb") as f:
            return parse_locks(f.read().decode("ascii", "replace"))

    def pids(self) -> Iterator[int]:
        """Every pid in this pid namespace, sqlprobe's own excluded."""
        for name in os.listdir(self.root):
            if name.isdigit() and int(name) != self.self_pid:
                yield int(name)

    def boot_time(self) -> float:
        """When the system booted, in epoch seconds (`btime` of /proc/stat; it never changes)."""
        if self._boot is None:
            with open(f"{self.root}/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        self._boot = float(line.split()[1])
                        break
                else:
                    raise OSError(f"no btime in {self.root}/stat")
        return self._boot

    def uptime(self) -> float:
        with open(f"{self.root}/uptime", "rb") as f:
            return float(f.read().split()[0])

    # -- one process -------------------------------------------------------------------------

    @contextmanager
    def _reading(self, pid: int, what: str) -> Iterator[None]:
        """Map the errors of a /proc/PID read to NoSuchProcess / AccessDenied."""
        try:
            yield
        except (FileNotFoundError, ProcessLookupError) as err:
            raise NoSuchProcess(pid) from err
        except PermissionError as err:
            raise AccessDenied(f"{self.root}/{pid}/{what}", pid) from err

    def _read(self, pid: int, what: str) -> bytes:
        with self._reading(pid, what), open(f"{self.root}/{pid}/{what}", "rb") as f:
            return f.read()

    def find_fds(
        self,
        names: Iterable[str],
        keys: Iterable[FileKey] = (),
        gates: tuple[Gate, ...] = (),
    ) -> FdScan:
        """Every descriptor whose link's basename is one of `names`, across all processes.

        One readlink per descriptor, through a directory descriptor; the caller confirms a match
        by (device, inode) with `fd_key`. A file deleted while open reads as `path (deleted)`
        and still matches (a Descriptor with `deleted`). With `keys` (thorough), every
        descriptor whose link is a path is also stat()ed and taken when it is one of those
        files (a hard link, a bind mount). With `gates`, a process that could open none of the
        files is skipped (access.py).

        The kernel's readlink dominates, so with many processes the scan is split across CPUs:
        forked children scan their share and send it back through a pipe (threads would
        contend for the GIL at every syscall).
        """
        names = list(names)
        query = FdQuery(
            tuple(f"/{n}" for n in names) + tuple(f"/{n}{DELETED_SUFFIX}" for n in names),
            frozenset(keys),
            gates,
        )
        pids = list(self.pids())
        workers = min(SCAN_WORKERS, len(os.sched_getaffinity(0)))
        if len(pids) < PARALLEL_FROM or workers < 2:
            return self._scan(pids, query)
        shares = [pids[i::workers] for i in range(workers)]
        children = [self._scan_in_child(share, query) for share in shares[1:]]
        scan = self._scan(shares[0], query)
        for child, pipe in children:
            scan = scan.merge(_read_scan(pipe))
            os.waitpid(child, 0)
        return scan

    def _scan(self, pids: Iterable[int], query: FdQuery) -> FdScan:
        scan = FdScan([], set(), set())
        for pid in pids:
            try:
                if query.gates and self._cannot_open(pid, query.gates):
                    scan.skipped.add(pid)
                    continue
                found = self._matching(pid, query)
                scan.found.extend(descriptor(pid, fd, link) for fd, link in found)
            except NoSuchProcess:
                continue  # exited during the scan: it holds nothing any more
            except AccessDenied:
                scan.denied.add(pid)
        return scan

    def _scan_in_child(self, pids: list[int], query: FdQuery) -> tuple[int, int]:
        """Fork a child that scans `pids` and writes its findings to a pipe: (pid, read end).

        The child only makes syscalls and writes; it leaves with os._exit, running no cleanup
        of the parent's (it holds no lock: POSIX locks are not inherited across fork).
        """
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's coverage is not collected)
            try:
                os.close(read_end)
                _write_scan(write_end, self._scan(pids, query))
            finally:
                os._exit(0)
        os.close(write_end)
        return child, read_end

    def _cannot_open(self, pid: int, gates: tuple[Gate, ...]) -> bool:
        """Whether `pid` could open none of the files whose `gates` are given.

        /proc/PID/fd is owned by the process's effective uid, or by root when the process is
        not dumpable, as after a change of user without exec (one that may have opened the file
        first): root, or an owner of one of the files, is scanned without reading more. Anyone
        else is judged on /proc/PID/status (readable by all users).
        """
        with self._reading(pid, "fd"):
            uid = os.stat(f"{self.root}/{pid}/fd").st_uid
        if uid == 0 or any(uid == g.uid for g in gates):
            return False
        try:
            return ruled_out(parse_status(self._read(pid, "status")), gates)
        except ValueError:
            return False  # an unexpected status: scan it

    def _listing(self, pid: int, dir_fd: int) -> list[str]:
        """The names in an open /proc/PID/fd: NoSuchProcess when the process exited since it was
        opened (the listing then fails with ENOENT, as short-lived processes often do)."""
        with self._reading(pid, "fd"):
            return os.listdir(dir_fd)

    def _matching(self, pid: int, query: FdQuery) -> list[tuple[int, str]]:
        with self._reading(pid, "fd"):
            dir_fd = os.open(f"{self.root}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        found = []
        readlink, suffixes, keys = os.readlink, query.suffixes, query.keys
        try:
            for fd in self._listing(pid, dir_fd):
                try:
                    link = readlink(fd, dir_fd=dir_fd)
                    if link.endswith(suffixes):
                        found.append((int(fd), link))
                    elif keys and link.startswith("/"):
                        st = os.stat(fd, dir_fd=dir_fd)
                        if (st.st_dev, st.st_ino) in keys:
                            found.append((int(fd), link))
                except OSError:
                    continue  # closed since the listing
        finally:
            os.close(dir_fd)
        return found

    def descriptor(self, pid: int, fd: int) -> Descriptor:
        """What one descriptor of `pid` refers to now, from its link text."""
        with self._reading(pid, f"fd/{fd}"):
            return descriptor(pid, fd, os.readlink(f"{self.root}/{pid}/fd/{fd}"))

    def own_files(self) -> frozenset[FileKey]:
        """(device, inode) of every file this process has open (read before opening any)."""
        keys = set()
        for fd in os.listdir(f"{self.root}/self/fd"):
            try:
                st = os.stat(f"{self.root}/self/fd/{fd}")
            except OSError:
                continue  # the directory descriptor of the listing itself, or closed since
            keys.add(FileKey(st.st_dev, st.st_ino))
        return frozenset(keys)

    def fd_key(self, pid: int, fd: int) -> FileKey:
        """(device, inode) of the file behind one descriptor of `pid`, from /proc/PID/fdinfo.

        fdinfo is the kernel's record of the open file (its mount and inode): the file's
        filesystem is never asked, where a stat of /proc/PID/fd/N asks it, and a hung FUSE or
        NFS mount never answers, leaving the asking thread in an uninterruptible sleep. The
        device is the mount's, as /proc/PID/mountinfo and /proc/locks give it (a btrfs
        subvolume's st_dev differs: the caller compares with the same key of its own open
        descriptors); UNKNOWN_DEVICE for a detached mount. Kernels before 5.14 print no inode
        there: then the file is stat()ed.
        """
        mount, ino = parse_fdinfo_file(self._read(pid, f"fdinfo/{fd}"))
        if ino is None or mount is None:
            st = self.fd_stat(pid, fd)
            return FileKey(st.st_dev, st.st_ino)
        dev = self.mount_dev(mount, pid)
        # A mount in no mountinfo is detached (umount -l): not where the database is.
        return FileKey(UNKNOWN_DEVICE if dev is None else dev, ino)

    def mount_dev(self, mount: int, pid: int) -> int | None:
        """The device of mount `mount` (ids are unique across mount namespaces): from this
        process's mountinfo, else from `pid`'s (a process in another mount namespace)."""
        for where in ("self", pid):
            if mount in self._mount_devs:
                break
            if where in self._mountinfo_read:
                continue
            self._mountinfo_read.add(where)
            try:
                with (
                    self._reading(pid, "mountinfo"),
                    open(f"{self.root}/{where}/mountinfo", "rb") as f,
                ):
                    text = f.read()
            except (NoSuchProcess, AccessDenied):
                continue
            self._mount_devs.update(parse_mount_devs(text))
        return self._mount_devs.get(mount)

    def is_sqlprobe(self, pid: int) -> bool:
        """Whether `pid` is a sqlprobe process (its console script, or one of its workers,
        which name themselves so): its descriptors and locks are never a holder's."""
        try:
            return self._read(pid, "comm").rstrip(b"\n") == SQLPROBE_COMM
        except (NoSuchProcess, AccessDenied):
            return False

    def exists(self, pid: int) -> bool:
        """Whether /proc/PID is there (a zombie's is, until it is reaped)."""
        return os.path.exists(f"{self.root}/{pid}")

    def fd_locks(self, pid: int, fd: int) -> list[LockLine]:
        """The locks that /proc/PID/fdinfo/FD lists for this descriptor (same uid or root)."""
        return parse_fdinfo_locks(self._read(pid, f"fdinfo/{fd}").decode("ascii", "replace"))

    def sample(self, pid: int, threads: bool = False) -> ProcSample:
        """State and CPU time of `pid`; with `threads`, each thread's state, CPU, wchan too, and
        its children that exited and were never reaped."""
        st = parse_stat(self._read(pid, "stat"))
        per_thread: tuple[ThreadSample, ...] = ()
        zombies: tuple[int, ...] = ()
        if threads:
            per_thread = tuple(self._threads(pid))
            zombies = tuple(self.zombie_children(pid))
        return ProcSample(
            pid,
            st.start_ticks,
            st.state,
            st.cpu_ticks / self.clock_ticks,
            per_thread,
            st.ppid,
            zombies,
        )

    def age(self, sample: ProcSample) -> float | None:
        """Seconds since the sampled process started: uptime less its start (clock ticks after
        boot, field 22 of stat); None when /proc/uptime cannot be read."""
        try:
            uptime = self.uptime()
        except OSError:
            return None
        return max(0.0, round(uptime - sample.start_ticks / self.clock_ticks, 2))

    def started_at(self, sample: ProcSample) -> float | None:
        """When the sampled process started, in epoch seconds: the boot time (whole seconds)
        plus its start; None when /proc/stat has no boot time."""
        try:
            return self.boot_time() + sample.start_ticks / self.clock_ticks
        except OSError:
            return None

    def _threads(self, pid: int) -> Iterator[ThreadSample]:
        with self._reading(pid, "task"):
            tids = os.listdir(f"{self.root}/{pid}/task")
        for tid in tids:
            task = f"task/{tid}"
            try:
                st = parse_stat(self._read(pid, f"{task}/stat"))
                try:
                    ns, _wait, scheduled = map(int, self._read(pid, f"{task}/schedstat").split())
                except (AccessDenied, NoSuchProcess, ValueError):
                    # No schedstat: tick precision, switches unknown.
                    ns, scheduled = st.cpu_ticks * 1_000_000_000 // self.clock_ticks, 0
                try:
                    wchan = self._read(pid, f"{task}/wchan").decode("ascii", "replace")
                except AccessDenied:
                    wchan = "?"
            except NoSuchProcess:
                continue  # the thread exited between the listing and the read
            wchan = "" if wchan == "0" else wchan
            yield ThreadSample(int(tid), st.state, ns, wchan, scheduled, waiting_in(wchan))

    def children(self, pid: int) -> list[int]:
        """The pids of `pid`'s children, from every thread's `task/TID/children`."""
        with self._reading(pid, "task"):
            tids = os.listdir(f"{self.root}/{pid}/task")
        found: set[int] = set()
        for tid in tids:
            try:
                found.update(int(c) for c in self._read(pid, f"task/{tid}/children").split())
            except (NoSuchProcess, AccessDenied):
                continue  # the thread exited, or children are not readable (another user)
        return sorted(found)

    def zombie_children(self, pid: int) -> list[int]:
        """The children of `pid` that exited and were never reaped (state Z)."""
        zombies = []
        for child in self.children(pid):
            try:
                if parse_stat(self._read(child, "stat")).state == "Z":
                    zombies.append(child)
            except (NoSuchProcess, AccessDenied):
                continue  # reaped since the listing
        return zombies

    def exe(self, pid: int) -> str:
        """The executable's path (same user, or root), without the ` (deleted)` of a binary
        replaced or removed since it was started."""
        with self._reading(pid, "exe"):
            return os.readlink(f"{self.root}/{pid}/exe").removesuffix(DELETED_SUFFIX)

    # -- for `diagnose`: everything about one process -----------------------------------------

    def fds(self, pid: int) -> list[Descriptor]:
        """Every descriptor of `pid`, in fd order."""
        with self._reading(pid, "fd"):
            dir_fd = os.open(f"{self.root}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        found = []
        try:
            for fd in self._listing(pid, dir_fd):
                try:
                    found.append(descriptor(pid, int(fd), os.readlink(fd, dir_fd=dir_fd)))
                except OSError:
                    continue  # closed since the listing
        finally:
            os.close(dir_fd)
        return sorted(found)

    def fd_stat(self, pid: int, fd: int) -> os.stat_result:
        """stat() of the file behind one descriptor (follows the magic link)."""
        with self._reading(pid, f"fd/{fd}"):
            return os.stat(f"{self.root}/{pid}/fd/{fd}")

    def stack(self, pid: int) -> str:
        """/proc/PID/stack: the kernel stack of the main thread (root only)."""
        return self._read(pid, "stack").decode("ascii", "replace")

    def cwd(self, pid: int) -> str:
        with self._reading(pid, "cwd"):
            return os.readlink(f"{self.root}/{pid}/cwd")

    def environ(self, pid: int) -> dict[str, str]:
        """The environment the process started with (same user, or root)."""
        return parse_environ(self._read(pid, "environ"))

    def mounts(self) -> list[Mount]:
        with open(f"{self.root}/self/mountinfo", encoding="utf-8", errors="replace") as f:
            return parse_mountinfo(f.read())

    def kernel_version(self) -> str:
        with open(f"{self.root}/version", encoding="ascii", errors="replace") as f:
            return f.read()

    # -- PATHs that name descriptors (the user's, resolved in collect/targets.py) -------------

    _STREAMS: ClassVar[dict[str, str]] = {
        "/dev/stdin": "fd/0",
        "/dev/stdout": "fd/1",
        "/dev/stderr": "fd/2",
    }
    _SELF: ClassVar[tuple[tuple[str, str], ...]] = (
        ("/dev/fd/", "fd/"),
        ("/proc/self/", ""),
        ("/proc/thread-self/", ""),
    )

    def pinned(self, path: str, caller: int | None) -> str:
        """`path` with /proc/self, /dev/fd and /dev/stdin (stdout, stderr) made `caller`'s."""
        if caller is None:
            return path
        if path in self._STREAMS:
            return f"{self.root}/{caller}/{self._STREAMS[path]}"
        for prefix, into in self._SELF:
            if path.startswith(prefix):
                return f"{self.root}/{caller}/{into}{path[len(prefix) :]}"
        return path

    def names_descriptor(self, path: str) -> bool:
        """Whether `path` is /proc/PID/fd/N."""
        if not path.startswith(self.root + "/"):
            return False
        parts = path[len(self.root) :].split("/")
        return len(parts) == 4 and parts[2] == "fd"

    def descriptor_link(self, path: str) -> str | None:
        """The text of /proc/PID/fd/N: a path, `pipe:[1234]`, `/dev/pts/0`; None for others."""
        if not self.names_descriptor(path):
            return None
        try:
            return os.readlink(path)
        except OSError:
            return None

    def cmdline(self, pid: int) -> str:
        # Redacted as it is read (`--password X`): no report, text or JSON, carries it.
        command = redact_command(parse_cmdline(self._read(pid, "cmdline")))
        if not command:  # kernel thread or zombie: fall back to the name in stat, as ps does
            command = f"[{parse_stat_name(self._read(pid, 'stat'))}]"
        return command

    def uid(self, pid: int) -> int:
        """The effective uid (what ps shows as USER)."""
        for line in self._read(pid, "status").splitlines():
            if line.startswith(b"Uid:"):
                return int(line.split()[2])
        raise NoSuchProcess(pid)
