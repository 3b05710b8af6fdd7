"""The OS backend seam: `struct flock` per platform, the Linux backend on a /proc tree of the
test's own (its root is injectable), and the Protocol that backend satisfies."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import NOBODY, is_root

from sqlprobe import system
from sqlprobe.errors import AccessDenied, NoSuchProcess
from sqlprobe.model import (
    WAIT_FILE_LOCK,
    WAIT_NANOSLEEP,
    ByteRange,
    FileKey,
    LockLine,
    Observation,
)
from sqlprobe.system import getlk, linux
from sqlprobe.system.backend import Backend, Descriptor, FdScan, Mount
from sqlprobe.system.getlk import BSD, FREEBSD, LINUX, Flock, layout_for
from sqlprobe.system.linux import UNKNOWN_DEVICE, LinuxBackend
from sqlprobe.verdict.health import kernel_lock_wait, likely_waiting

# -- struct flock ------------------------------------------------------------------------------

F_WRLCK, F_RDLCK = 1, 0  # Linux's values; the layouts do not care what the numbers mean
SAMPLE = Flock(l_type=F_WRLCK, l_whence=0, l_start=1073741824, l_len=510, l_pid=4242)


def native(value: int, size: int) -> bytes:
    return value.to_bytes(size, sys.byteorder, signed=True)


@pytest.mark.parametrize("layout", [LINUX, BSD, FREEBSD], ids=["linux", "bsd", "freebsd"])
def test_flock_layout_round_trips(layout):
    assert layout.unpack(layout.pack(SAMPLE)) == SAMPLE
    everything_else = Flock(F_RDLCK, 1, 0, 0, -1)  # SEEK_CUR, whole file, an OFD lock's pid
    assert layout.unpack(layout.pack(everything_else)) == everything_else


def test_linux_x86_64_flock_is_type_whence_pad_start_len_pid_pad_32_bytes():
    data = LINUX.pack(SAMPLE)
    assert LINUX.size == len(data) == 32
    assert data[0:2] == native(F_WRLCK, 2) and data[2:4] == native(0, 2)
    assert data[4:8] == bytes(4)  # padding: l_start is 8-aligned
    assert data[8:16] == native(1073741824, 8)
    assert data[16:24] == native(510, 8)
    assert data[24:28] == native(4242, 4)
    assert data[28:32] == bytes(4)


def test_macos_flock_is_start_len_pid_type_whence_24_bytes():
    data = BSD.pack(SAMPLE)
    assert BSD.size == len(data) == 24
    assert data[0:8] == native(1073741824, 8)
    assert data[8:16] == native(510, 8)
    assert data[16:20] == native(4242, 4)
    assert data[20:22] == native(F_WRLCK, 2) and data[22:24] == native(0, 2)


def test_freebsd_flock_adds_a_zero_sysid_to_the_bsd_fields():
    data = FREEBSD.pack(SAMPLE)
    assert FREEBSD.size == 32 and data[:24] == BSD.pack(SAMPLE) and data[24:] == bytes(8)


def test_flock_layout_is_chosen_by_platform():
    assert layout_for("linux") is LINUX
    assert layout_for("darwin") is BSD
    assert layout_for("openbsd7") is BSD and layout_for("netbsd10") is BSD
    assert layout_for("freebsd14") is FREEBSD
    assert getlk.FLOCK is layout_for(sys.platform)


# -- the Linux backend on a /proc tree of our own ------------------------------------------------

HOLDER = 4000001  # pids no real process has (pid_max is at most 2**22)
SELF = 4000000  # what `self` points at
GONE = 4000002  # listed, but its files are gone: it exited during the scan
DENIED = 4000003  # its fd directory cannot be read
PROBE = 4000004  # another sqlprobe
ZOMBIE = 4000009  # HOLDER's child, never reaped
MOUNT_ID, MOUNT_DEV = 42, os.makedev(8, 1)
UPTIME, START_S, BTIME = 5000.25, 1000, 1700000000
NAMES = ("opencode.db", "opencode.db-wal", "opencode.db-shm")


def stat_line(pid: int, comm: str, state: str, ppid: int, ticks: tuple[int, int], start: int):
    """A /proc/PID/stat line: proc(5) fields 1 to 24 (utime, stime 14-15; starttime 22)."""
    rest = [state, ppid, pid, pid, 0, -1, 4194304, 0, 0, 0, 0, *ticks, 0, 0, 20, 0, 3, 0, start]
    return f"{pid} ({comm}) " + " ".join(map(str, [*rest, 0, 0])) + "\n"


class Tree(NamedTuple):
    root: str
    db: Path
    other: Path
    hz: int


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def link(path: Path, target: str | Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def build(base: Path) -> Tree:
    """The files LinuxBackend reads, laid out as /proc lays them out, around real files."""
    hz = os.sysconf("SC_CLK_TCK")
    data = base / "data"
    data.mkdir()
    db, other = data / "opencode.db", data / "notes.txt"
    db.write_bytes(b"")
    other.write_bytes(b"")
    (data / "hardlink.db").hardlink_to(db)
    ino = db.stat().st_ino
    proc = base / "proc"
    write(proc / "uptime", f"{UPTIME} 9000.00\n")
    write(proc / "stat", f"cpu  1 2 3 4\nbtime {BTIME}\nprocesses 99\n")
    write(proc / "version", "Linux version 6.1.0-test (gcc) #1 SMP\n")
    write(
        proc / "locks",
        f"1: POSIX  ADVISORY  READ {HOLDER} 08:01:{ino} 1073741826 1073742335\n"
        f"2: POSIX  ADVISORY  WRITE {HOLDER} 08:01:{ino + 1} 120 120\n"
        f"2: -> POSIX  ADVISORY  WRITE 4000007 08:01:{ino + 1} 120 120\n"
        "3: FLOCK  ADVISORY  WRITE 4000008 <none>:0 0 EOF\n"
        "garbage\n",
    )
    mountinfo = f"{MOUNT_ID} 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
    # This process's own descriptors, and its mounts.
    me = proc / str(SELF)
    link(me / "fd" / "0", other)
    write(me / "mountinfo", mountinfo)
    write(me / "stat", stat_line(SELF, "python3", "R", 1, (1, 1), 1))
    link(proc / "self", str(SELF))
    # The holder: the database, a -wal deleted while open, a pipe, a hard link, another file.
    holder = proc / str(HOLDER)
    link(holder / "fd" / "3", db)
    link(holder / "fd" / "4", f"{data}/opencode.db-wal (deleted)")
    link(holder / "fd" / "5", "pipe:[1234]")
    link(holder / "fd" / "6", other)
    link(holder / "fd" / "7", data / "hardlink.db")
    lock = f"lock:\t1: POSIX  ADVISORY  READ {HOLDER} 08:01:{ino} 1073741826 1073742335\n"
    write(holder / "fdinfo" / "3", f"pos:\t0\nflags:\t0100002\nmnt_id:\t{MOUNT_ID}\nino:\t{ino}\n")
    write(holder / "fdinfo" / "3", (holder / "fdinfo" / "3").read_text() + lock)
    write(holder / "fdinfo" / "6", "pos:\t0\nflags:\t0100000\nmnt_id:\t99\nino:\t77\n")
    write(holder / "fdinfo" / "7", "pos:\t0\nflags:\t0100000\n")  # a kernel before 5.14
    write(holder / "mountinfo", mountinfo)
    write(holder / "stat", stat_line(HOLDER, "opencode (x)", "S", 1, (150, 50), START_S * hz))
    write(holder / "status", "Name:\topencode\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t100\n")
    write(holder / "cmdline", b"opencode\0run\0--password\0hunter2\0")
    write(holder / "comm", "opencode\n")
    write(holder / "environ", b"HOME=/home/me\0OPENCODE_DB=/tmp/x.db\0")
    write(holder / "stack", "[<0>] do_nanosleep+0x1/0x2\n")
    link(holder / "exe", "/usr/lib/opencode/bin/opencode (deleted)")
    link(holder / "cwd", "/home/me/project")
    threads = {HOLDER: "do_nanosleep", HOLDER + 10: "locks_lock_inode_wait", HOLDER + 11: "0"}
    for tid, wchan in threads.items():
        task = holder / "task" / str(tid)
        write(task / "stat", stat_line(tid, "opencode", "S", 1, (10, 5), START_S * hz))
        write(task / "wchan", wchan)
        write(task / "schedstat", f"{tid * 1000} 0 {tid % 100}\n")
        write(task / "children", f"{ZOMBIE} " if tid == HOLDER else "")
    write(proc / str(ZOMBIE) / "stat", stat_line(ZOMBIE, "git", "Z", HOLDER, (0, 0), 1))
    write(proc / str(ZOMBIE) / "cmdline", b"")
    (proc / str(GONE)).mkdir()  # its /proc entry is listed, and empty: it has exited
    link(proc / str(DENIED) / "fd" / "3", db)
    write(proc / str(PROBE) / "comm", "sqlprobe\n")
    link(proc / str(PROBE) / "fd" / "3", db)
    return Tree(str(proc), db, other, hz)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return build(tmp_path)


@pytest.fixture
def backend(tree: Tree) -> LinuxBackend:
    return LinuxBackend(tree.root)


def test_descriptor_scan_finds_the_opener_and_a_deleted_file_as_deleted(tree, backend):
    scan = backend.find_fds(NAMES)
    found = sorted(d for d in scan.found if d.pid == HOLDER)
    assert found == [
        Descriptor(HOLDER, 3, str(tree.db)),
        Descriptor(HOLDER, 4, f"{tree.db}-wal", deleted=True),
    ]
    assert found[1].shown == f"{tree.db}-wal (deleted)"
    assert {d.pid for d in scan.found} == {HOLDER, PROBE, DENIED}  # callers leave out sqlprobe


def test_thorough_scan_finds_the_database_under_another_name(tree, backend):
    st = tree.db.stat()
    scan = backend.find_fds(NAMES, keys=[FileKey(st.st_dev, st.st_ino)])
    assert (HOLDER, 7) in {(d.pid, d.fd) for d in scan.found}
    assert (HOLDER, 6) not in {(d.pid, d.fd) for d in scan.found}  # another file


def test_a_process_gone_during_the_scan_is_passed_over(backend):
    scan = backend.find_fds(NAMES)
    assert GONE not in {d.pid for d in scan.found} | scan.denied | scan.skipped
    with pytest.raises(NoSuchProcess):
        backend.sample(GONE)
    with pytest.raises(NoSuchProcess):
        backend.fds(GONE)


def unprivileged_scan(root: str) -> FdScan:
    """find_fds as a user who may not read root's 0700 directories (root reads anything)."""
    if not is_root():
        return LinuxBackend(root).find_fds(NAMES)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's coverage is not collected)
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            linux._write_scan(write_end, LinuxBackend(root).find_fds(NAMES))
        finally:
            os._exit(0)
    os.close(write_end)
    scan = linux._read_scan(read_end)
    _, status = os.waitpid(child, 0)
    assert status == 0
    return scan


@pytest.mark.process
def test_a_process_whose_descriptors_cannot_be_read_is_counted_as_denied(public_dir):
    tree = build(public_dir)
    (Path(tree.root) / str(DENIED) / "fd").chmod(0o000)
    try:
        scan = unprivileged_scan(tree.root)
    finally:
        (Path(tree.root) / str(DENIED) / "fd").chmod(0o755)
    assert scan.denied == {DENIED}
    assert DENIED not in {d.pid for d in scan.found}
    assert Descriptor(HOLDER, 4, f"{tree.db}-wal", True) in scan.found  # the rest still read


def test_a_scan_sent_through_a_pipe_keeps_the_deleted_flag():
    scan = FdScan(
        [Descriptor(1, 3, "/d/opencode.db"), Descriptor(2, 4, "/d/a b-wal", True)], {5}, {6}
    )
    read_end, write_end = os.pipe()
    linux._write_scan(write_end, scan)
    os.close(write_end)
    assert linux._read_scan(read_end) == scan


def test_one_descriptor_and_all_of_them(tree, backend):
    assert backend.descriptor(HOLDER, 4) == Descriptor(HOLDER, 4, f"{tree.db}-wal", True)
    fds = backend.fds(HOLDER)
    assert [d.fd for d in fds] == [3, 4, 5, 6, 7]
    assert fds[2] == Descriptor(HOLDER, 5, "pipe:[1234]")
    with pytest.raises(NoSuchProcess):
        backend.descriptor(HOLDER, 99)  # closed


def test_descriptor_keys_come_from_fdinfo_and_mountinfo(tree, backend):
    ino = tree.db.stat().st_ino
    assert backend.fd_key(HOLDER, 3) == FileKey(MOUNT_DEV, ino)
    assert backend.fd_key(HOLDER, 6) == FileKey(UNKNOWN_DEVICE, 77)  # a mount in no mountinfo
    st = tree.db.stat()  # fd 7 (a hard link of the database): no ino line, so stat()
    assert backend.fd_key(HOLDER, 7) == FileKey(st.st_dev, st.st_ino)


def test_own_files_are_those_of_self(tree, backend):
    st = tree.other.stat()
    assert backend.own_files() == frozenset({FileKey(st.st_dev, st.st_ino)})


def test_lock_lines_parse_with_waiters_and_garbage_counted(tree, backend):
    ino = tree.db.stat().st_ino
    lines, bad = backend.locks()
    assert bad == 1
    assert lines[0] == LockLine(
        1, False, "POSIX", False, HOLDER, FileKey(MOUNT_DEV, ino), ByteRange(1073741826, 1073742335)
    )
    assert [(ln.waiter, ln.pid) for ln in lines[1:]] == [(False, HOLDER), (True, 4000007)]
    # A descriptor's own locks, from its fdinfo.
    assert backend.fd_locks(HOLDER, 3) == [lines[0]]
    assert backend.fd_locks(HOLDER, 6) == []


def test_a_sample_gives_threads_their_wait_from_wchan(tree, backend):
    sample = backend.sample(HOLDER, threads=True)
    assert (sample.state, sample.ppid, sample.start_ticks) == ("S", 1, START_S * tree.hz)
    assert sample.cpu_s == 200 / tree.hz
    by_tid = {t.tid: t for t in sample.threads}
    assert by_tid[HOLDER].wchan == "do_nanosleep"
    assert by_tid[HOLDER].waiting == WAIT_NANOSLEEP
    assert by_tid[HOLDER + 10].waiting == WAIT_FILE_LOCK
    assert (by_tid[HOLDER + 11].wchan, by_tid[HOLDER + 11].waiting) == ("", "")  # running
    assert by_tid[HOLDER].cpu_ns == HOLDER * 1000 and by_tid[HOLDER].scheduled == HOLDER % 100
    assert sample.zombies == (ZOMBIE,)
    assert backend.sample(HOLDER).threads == ()  # threads only when asked


def test_the_judge_reads_the_wait_the_backend_set(backend):
    looks = [Observation(t, (), (backend.sample(HOLDER, threads=True),)) for t in (0.0, 0.1)]
    assert kernel_lock_wait(HOLDER, looks) and likely_waiting(HOLDER, looks)


def test_age_and_start_time_come_from_the_backend(backend):
    sample = backend.sample(HOLDER)
    assert backend.age(sample) == round(UPTIME - START_S, 2)
    assert backend.started_at(sample) == BTIME + START_S


def test_age_and_start_time_are_unknown_without_uptime_and_btime(tree, backend):
    sample = backend.sample(HOLDER)
    os.unlink(f"{tree.root}/uptime")
    Path(f"{tree.root}/stat").write_text("cpu  1 2 3 4\n")
    assert backend.age(sample) is None and backend.started_at(sample) is None


def test_process_facts(tree, backend):
    assert backend.cmdline(HOLDER) == "opencode run --password (redacted)"
    assert backend.cmdline(ZOMBIE) == "[git]"  # no command line: the name in stat, as ps does
    assert backend.uid(HOLDER) == 1001  # the effective one
    assert backend.exe(HOLDER) == "/usr/lib/opencode/bin/opencode"  # replaced since it started
    assert backend.cwd(HOLDER) == "/home/me/project"
    assert backend.environ(HOLDER) == {"HOME": "/home/me", "OPENCODE_DB": "/tmp/x.db"}
    assert backend.children(HOLDER) == [ZOMBIE] == backend.zombie_children(HOLDER)
    assert backend.stack(HOLDER).startswith("[<0>] do_nanosleep")
    assert backend.mounts() == [Mount("/", "ext4", "/dev/sda1")]
    assert backend.kernel_version().startswith("Linux version 6.1.0")
    assert backend.is_sqlprobe(PROBE) and not backend.is_sqlprobe(HOLDER)
    assert not backend.is_sqlprobe(GONE)  # cannot tell: not one
    assert backend.exists(HOLDER) and not backend.exists(4000099)
    with pytest.raises(NoSuchProcess):
        backend.cmdline(4000099)


@pytest.mark.skipif(is_root(), reason="root reads anything")
def test_an_unreadable_file_of_a_process_is_access_denied(tree, backend):
    Path(f"{tree.root}/{HOLDER}/environ").chmod(0o000)
    with pytest.raises(AccessDenied):
        backend.environ(HOLDER)


# -- the Protocol ------------------------------------------------------------------------------


def protocol_members() -> list[str]:
    return sorted(name for name in vars(Backend) if not name.startswith("_"))


@pytest.mark.parametrize("name", ["linux", "portable"])
def test_each_backend_satisfies_the_protocol(name):
    from sqlprobe.system.portable import PortableBackend

    impl = {"linux": LinuxBackend, "portable": PortableBackend}[name]
    for member in protocol_members():
        wanted = getattr(Backend, member)
        got = getattr(impl, member, None)
        assert got is not None, f"{impl.__name__} has no {member}"
        if isinstance(wanted, property):
            assert isinstance(got, property), member
            continue
        assert list(inspect.signature(got).parameters) == list(
            inspect.signature(wanted).parameters
        ), member
    for attribute in Backend.__annotations__:  # name, descriptors_source
        assert isinstance(getattr(impl, attribute, None), str), attribute
    assert impl.name == name


def test_the_protocol_has_what_callers_use():
    assert "self_pid" in protocol_members() and "fd_link" not in protocol_members()
    assert {"find_fds", "locks", "fd_locks", "sample", "age", "started_at"} <= set(
        protocol_members()
    )


def test_one_place_chooses_the_backend():
    import sqlprobe.system.backend  # noqa: F401 (a submodule import must not hide the function)

    assert callable(system.backend) and not inspect.ismodule(system.backend)
    assert isinstance(system.backend(), LinuxBackend)
    assert system.backend("/elsewhere").root == "/elsewhere"


def test_a_path_naming_the_callers_descriptors_is_made_the_callers(tmp_path):
    proc = LinuxBackend(str(tmp_path))
    assert proc.pinned("/dev/stdin", 42) == f"{tmp_path}/42/fd/0"
    assert proc.pinned("/proc/self/fd/3", 42) == f"{tmp_path}/42/fd/3"
    assert proc.pinned("/dev/fd/5", 42) == f"{tmp_path}/42/fd/5"
    assert proc.pinned("/dev/stdin", None) == "/dev/stdin"
    assert proc.pinned("/srv/opencode.db", 42) == "/srv/opencode.db"
    (tmp_path / "42" / "fd").mkdir(parents=True)
    os.symlink("pipe:[77]", tmp_path / "42" / "fd" / "0")
    assert proc.names_descriptor(f"{tmp_path}/42/fd/0")
    assert proc.descriptor_link(f"{tmp_path}/42/fd/0") == "pipe:[77]"
    assert proc.names_descriptor(f"{tmp_path}/42/fd/9")  # not open: still a descriptor's name
    assert proc.descriptor_link(f"{tmp_path}/42/fd/9") is None
    assert not proc.names_descriptor("/srv/opencode.db")
    assert proc.descriptor_link("/srv/opencode.db") is None
