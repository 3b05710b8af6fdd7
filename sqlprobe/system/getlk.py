"""F_GETLK queries: "is this byte range locked, and by whom?" without ever taking a lock.

F_GETLK works on an O_RDONLY descriptor, never reports the caller's own locks, and reports a
holder outside the caller's pid namespace with pid 0 (sqlite-locking.md §3-4). It returns one
conflicting lock per query, so /proc/locks stays the list and this is the check.

`struct flock` differs per platform; both layouts are importable (and tested) on any machine,
and `FLOCK` is this platform's.
"""

from __future__ import annotations

import fcntl
import struct
import sys
from typing import NamedTuple

from sqlprobe.model import ByteRange


class Flock(NamedTuple):
    """The fields of a `struct flock`, whatever their order in memory."""

    l_type: int
    l_whence: int
    l_start: int
    l_len: int
    l_pid: int


class FlockLayout:
    """One platform's `struct flock`: a struct format (native byte order, standard sizes, the
    padding spelt out) and the order of the fields in it."""

    def __init__(self, fmt: str, fields: tuple[str, ...]) -> None:
        self.struct = struct.Struct(fmt)
        self.fields = fields
        self.size = self.struct.size
        self._to_struct = tuple(Flock._fields.index(name) for name in fields)
        self._to_flock = tuple(fields.index(name) for name in Flock._fields)

    def pack(self, lock: Flock) -> bytes:
        return self.struct.pack(*(lock[i] for i in self._to_struct))

    def unpack(self, data: bytes) -> Flock:
        values = self.struct.unpack(data)
        return Flock(*(values[i] for i in self._to_flock))


# Linux x86_64, aarch64 and the other 64-bit ports (asm-generic/fcntl.h): short l_type,
# short l_whence, (4 bytes pad), off_t l_start, off_t l_len, pid_t l_pid, (4 bytes pad): 32.
LINUX = FlockLayout("=hhxxxxqqixxxx", ("l_type", "l_whence", "l_start", "l_len", "l_pid"))
# macOS and the BSDs (sys/fcntl.h): off_t l_start, off_t l_len, pid_t l_pid, short l_type,
# short l_whence: 24.
BSD = FlockLayout("=qqihh", ("l_start", "l_len", "l_pid", "l_type", "l_whence"))
# FreeBSD appends int l_sysid (a remote lock's system id: zero bytes here), padded to 32.
FREEBSD = FlockLayout("=qqihhxxxxxxxx", ("l_start", "l_len", "l_pid", "l_type", "l_whence"))


def layout_for(platform: str) -> FlockLayout:
    """The `struct flock` of a `sys.platform` value."""
    if platform.startswith("freebsd"):
        return FREEBSD
    if platform == "darwin" or "bsd" in platform or platform.startswith("dragonfly"):
        return BSD
    return LINUX


FLOCK = layout_for(sys.platform)


def query(fd: int, rng: ByteRange, exclusive: bool = True) -> tuple[bool, ByteRange, int] | None:
    """The lock that a lock of this kind on `rng` would conflict with, or None.

    Asking as exclusive (the default) finds any lock; asking as shared finds only exclusive ones.
    Returns (holder's lock is exclusive, its range, its pid: 0 other namespace, -1 OFD lock).
    """
    length = 0 if rng.end is None else rng.end - rng.start + 1
    want = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    asked = FLOCK.pack(Flock(want, 0, rng.start, length, 0))
    got = FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, asked))
    if got.l_type == fcntl.F_UNLCK:
        return None
    end = None if got.l_len == 0 else got.l_start + got.l_len - 1
    return got.l_type == fcntl.F_WRLCK, ByteRange(got.l_start, end), got.l_pid
