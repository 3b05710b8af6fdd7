"""A FUSE filesystem that answers until it is told to hang, in pure Python on raw /dev/fuse.

    python fusehang.py MOUNTPOINT NAME...

Mounts a read-only filesystem on MOUNTPOINT (root only) whose root holds each NAME as a small
regular file and a directory `sub` holding the same files. Attributes and entries are valid for
0 s, so every stat and every path walk below it is a request to this process. Prints `ready` once
mounted and INIT is answered (`error: ...` and exit 2 when it cannot mount). A line `hang` on
stdin makes it go on reading requests but never answer them, and print `hung`: a request read
and not answered leaves its caller in an uninterruptible wait (even SIGKILL waits), as a dead
NFS or FUSE server does. On EOF of stdin or SIGTERM it closes /dev/fuse, which aborts the
connection (every waiter gets ENOTCONN), and detaches the mount.

`FuseHang` runs it for a test; tests/test_hangs.py wraps it in the `fuse_hang` fixture. The
protocol is the kernel's include/uapi/linux/fuse.h; only what a read-only tree needs is answered.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

MS_NOSUID, MS_NODEV = 0x2, 0x4
MNT_DETACH = 0x2
FSTYPE = "fuse.sqlprobehang"
SOURCE = "sqlprobe-hang"
SUBDIR = "sub"
CONTENT = b"sqlprobe fusehang file\n"
READY_TIMEOUT = 15.0

# Opcodes (fuse.h, enum fuse_opcode).
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR = 17, 18, 20, 21, 22, 23, 24
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, ACCESS = 25, 26, 27, 28, 29, 30, 34
CREATE, INTERRUPT, BATCH_FORGET, FALLOCATE, RENAME2, TMPFILE = 35, 36, 42, 43, 45, 51
NO_REPLY = frozenset({FORGET, INTERRUPT, BATCH_FORGET})
WRITES = frozenset(
    {SETATTR, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, WRITE, SETXATTR}
    | {REMOVEXATTR, CREATE, FALLOCATE, RENAME2, TMPFILE}
)

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
OUT_HEADER = struct.Struct("<IiQ")  # len, error (negative errno), unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr, 88 bytes
ENTRY_VALID = struct.Struct("<QQQQII")  # fuse_entry_out before its attr: 40 bytes
ATTR_VALID = struct.Struct("<QII")  # fuse_attr_out before its attr: 16 bytes
OPEN_OUT = struct.Struct("<QII")  # fh, open_flags, padding
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags
INIT_OUT = struct.Struct("<IIIIHHIIHHII6I")  # fuse_init_out, 64 bytes
STATFS_OUT = struct.Struct("<QQQQQIIII6I")  # fuse_kstatfs, 80 bytes
DIRENT = struct.Struct("<QQII")  # ino, off, namelen, type; then the name, padded to 8
READ_IN = struct.Struct("<QQI")  # fh, offset, size (the rest of fuse_read_in unused)
OPEN_IN = struct.Struct("<I")  # flags
ACCESS_IN = struct.Struct("<I")  # mask
assert (ATTR.size, ENTRY_VALID.size + ATTR.size, INIT_OUT.size, STATFS_OUT.size) == (
    88,
    128,
    64,
    80,
)

KERNEL_MAJOR = 7
MAX_MINOR = 31  # every struct above has had this layout since 7.23; the kernel adapts down
MAX_WRITE = 128 * 1024
READ_BUFFER = MAX_WRITE + 64 * 1024  # the kernel wants at least max_write + the headers
ROOT_ID = 1


class Node(NamedTuple):
    ino: int
    mode: int
    data: bytes
    children: dict[bytes, int]  # name -> ino, for a directory
    parent: int


def build_tree(names: Sequence[str]) -> dict[int, Node]:
    """Root (inode 1) with each NAME as a file and `sub/` holding the same files."""
    nodes: dict[int, Node] = {}

    def add(mode: int, parent: int, data: bytes = b"") -> Node:
        node = Node(len(nodes) + 1, mode, data, {}, parent)
        nodes[node.ino] = node
        return node

    root = add(stat.S_IFDIR | 0o755, ROOT_ID)
    sub = add(stat.S_IFDIR | 0o755, ROOT_ID)
    root.children[SUBDIR.encode()] = sub.ino
    for directory in (root, sub):
        for name in names:
            directory.children[os.fsencode(name)] = add(
                stat.S_IFREG | 0o644, directory.ino, CONTENT
            ).ino
    return nodes


class FileSystem:
    """Turns one request into one reply (None: the opcode takes no reply)."""

    def __init__(self, nodes: dict[int, Node]) -> None:
        self.nodes = nodes
        self.initialised = False
        self.announced = False

    def handle(self, request: bytes) -> bytes | None:
        _len, opcode, unique, nodeid, _uid, _gid, _pid, _ext, _pad = IN_HEADER.unpack_from(request)
        body = request[IN_HEADER.size :]
        if opcode in NO_REPLY:
            return None
        try:
            payload = self.answer(opcode, nodeid, body)
        except OSError as err:
            return OUT_HEADER.pack(OUT_HEADER.size, -(err.errno or errno.EIO), unique)
        return OUT_HEADER.pack(OUT_HEADER.size + len(payload), 0, unique) + payload

    def answer(self, opcode: int, nodeid: int, body: bytes) -> bytes:
        if opcode == INIT:
            return self.init(body)
        if opcode in WRITES:
            raise OSError(errno.EROFS, "read-only")
        if opcode == STATFS:
            return STATFS_OUT.pack(1024, 0, 0, len(self.nodes), 0, 4096, 255, 4096, 0, *[0] * 6)
        node = self.nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ENOENT, "no such node")
        if opcode == LOOKUP:
            child = node.children.get(body.split(b"\0", 1)[0])
            if child is None:
                raise OSError(errno.ENOENT, "no such entry")
            return ENTRY_VALID.pack(child, 0, 0, 0, 0, 0) + self.attr(self.nodes[child])
        if opcode == GETATTR:
            return ATTR_VALID.pack(0, 0, 0) + self.attr(node)
        if opcode == OPEN:
            if stat.S_ISDIR(node.mode):
                raise OSError(errno.EISDIR, "a directory")
            if OPEN_IN.unpack_from(body)[0] & os.O_ACCMODE != os.O_RDONLY:
                raise OSError(errno.EROFS, "read-only")
            return OPEN_OUT.pack(0, 0, 0)
        if opcode == OPENDIR:
            return OPEN_OUT.pack(0, 0, 0)
        if opcode == READ:
            _fh, offset, size = READ_IN.unpack_from(body)
            return node.data[offset : offset + size]
        if opcode == READDIR:
            _fh, offset, size = READ_IN.unpack_from(body)
            return self.readdir(node, offset, size)
        if opcode == ACCESS:
            if ACCESS_IN.unpack_from(body)[0] & os.W_OK:
                raise OSError(errno.EROFS, "read-only")
            return b""
        if opcode in (FLUSH, RELEASE, RELEASEDIR, FSYNC, FSYNCDIR):
            return b""
        if opcode == GETXATTR:
            raise OSError(errno.ENODATA, "no extended attributes")
        raise OSError(errno.ENOSYS, "not implemented")  # LISTXATTR, READLINK, STATX, ...

    def init(self, body: bytes) -> bytes:
        major, minor, max_readahead, _flags = INIT_IN.unpack_from(body)
        if major != KERNEL_MAJOR:
            raise OSError(errno.EPROTO, f"kernel speaks FUSE {major}")
        self.initialised = True
        return INIT_OUT.pack(
            KERNEL_MAJOR, min(minor, MAX_MINOR), max_readahead, 0, 0, 0, MAX_WRITE, 0, 0, 0, 0, 0,
            *[0] * 6,
        )  # fmt: skip

    @staticmethod
    def attr(node: Node) -> bytes:
        nlink = 2 if stat.S_ISDIR(node.mode) else 1
        size = len(node.data)
        return ATTR.pack(
            node.ino, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, node.mode, nlink, 0, 0, 0,
            4096, 0,
        )  # fmt: skip

    def readdir(self, node: Node, offset: int, size: int) -> bytes:
        entries = [(b".", node.ino), (b"..", node.parent), *node.children.items()]
        out = b""
        for index in range(offset, len(entries)):
            name, ino = entries[index]
            kind = stat.S_IFMT(self.nodes[ino].mode) >> 12  # DT_DIR, DT_REG
            entry = DIRENT.pack(ino, index + 1, len(name), kind) + name
            entry += b"\0" * (-len(entry) % 8)
            if len(out) + len(entry) > size:
                break
            out += entry
        return out


def mount(mountpoint: str) -> int:
    """Open /dev/fuse and mount it on `mountpoint`; returns the descriptor."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    libc = ctypes.CDLL(None, use_errno=True)
    data = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    flags = MS_NOSUID | MS_NODEV
    if libc.mount(SOURCE.encode(), os.fsencode(mountpoint), FSTYPE.encode(), flags, data):
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount(2) of {FSTYPE}: {os.strerror(err)}")
    return fd


def detach(mountpoint: str) -> None:
    """umount2(MNT_DETACH); quiet when it is no longer mounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(os.fsencode(mountpoint), MNT_DETACH)


def serve(fd: int, fs: FileSystem) -> None:
    """Answer requests until stdin closes or the connection goes; after `hang`, read only."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(0, select.POLLIN)
    pending = b""
    hung = False
    while True:
        for ready, events in poller.poll():
            if ready == 0:
                chunk = os.read(0, 4096)
                if not chunk:
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if b"hang" in (line.strip() for line in lines) and not hung:
                    hung = True
                    print("hung", flush=True)
                continue
            if events & (select.POLLERR | select.POLLHUP):
                return  # the connection was aborted or the filesystem unmounted
            try:
                request = os.read(fd, READ_BUFFER)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as err:
                if err.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                return  # ENODEV: unmounted
            if hung:
                continue  # read, and never answered: its caller waits in D state
            reply = fs.handle(request)
            if reply is not None:
                with contextlib.suppress(OSError):  # ENOENT: its caller was interrupted
                    os.write(fd, reply)
            if fs.initialised and not fs.announced:
                fs.announced = True
                print("ready", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or SUBDIR in argv[1:]:
        print(f"usage: fusehang.py MOUNTPOINT NAME... (no NAME {SUBDIR!r})", file=sys.stderr)
        return 2
    mountpoint, names = argv[0], argv[1:]
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    try:
        fd = mount(mountpoint)
    except OSError as err:
        print(f"error: {err.strerror}", flush=True)
        return 2
    try:
        serve(fd, FileSystem(build_tree(names)))
    finally:
        os.close(fd)  # aborts the connection: whoever waits on it gets ENOTCONN
        detach(mountpoint)
    return 0


# -- the test side ---------------------------------------------------------------------------


class MountUnavailable(Exception):
    """This machine cannot mount the filesystem (not root, no /dev/fuse, mount(2) refused)."""


def end_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGKILL `proc` (its whole session when it leads one), reap it, close its pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getsid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            with contextlib.suppress(OSError):
                stream.close()


class FuseHang:
    """The daemon on a fresh directory, and the processes a test started around it.

    `close()` kills the daemon first (so that whatever is stuck on the mount wakes with
    ENOTCONN), then every process given to `track`, then detaches the mount and removes the
    directory.
    """

    def __init__(self, names: Sequence[str] = ("opencode.db",)) -> None:
        if os.geteuid() != 0:
            raise MountUnavailable("mounting a FUSE filesystem needs root")
        if not os.path.exists("/dev/fuse"):
            raise MountUnavailable("no /dev/fuse on this machine")
        self.mnt = Path(tempfile.mkdtemp(prefix="sqlprobe-fuse-"))
        self.started: list[subprocess.Popen[str]] = []
        self.daemon = subprocess.Popen(
            [sys.executable, __file__, str(self.mnt), *names],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._line()
        if line != "ready":
            self.close()
            raise MountUnavailable(f"the FUSE daemon did not start: {line or 'no answer'}")

    def _line(self) -> str:
        ready, _, _ = select.select([self.daemon.stdout], [], [], READY_TIMEOUT)
        return self.daemon.stdout.readline().strip() if ready else ""  # type: ignore[union-attr]

    def hang(self) -> None:
        """From now on every request is read and never answered."""
        self.daemon.stdin.write("hang\n")  # type: ignore[union-attr]
        self.daemon.stdin.flush()  # type: ignore[union-attr]
        line = self._line()
        assert line == "hung", f"the FUSE daemon did not hang: {line!r}"

    def track(self, proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
        self.started.append(proc)
        return proc

    def abort(self) -> None:
        """End the daemon: the connection aborts and every process stuck on it wakes."""
        if self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        end_process(self.daemon)

    def close(self) -> None:
        self.abort()
        for proc in self.started:
            end_process(proc)
        detach(str(self.mnt))
        with contextlib.suppress(OSError):
            os.rmdir(self.mnt)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
