"""F_GETLK queries: "is this byte range locked, and by whom?" without ever taking a lock.

F_GETLK works on an O_RDONLY descriptor, never reports the caller's own locks, and reports a
holder outside the caller's pid namespace with pid 0 (sqlite-locking.md §3-4). It returns one
conflicting lock per query, so /proc/locks stays the list and this is the check.
"""

from __future__ import annotations

import fcntl
import struct

from sqlprobe.model import ByteRange

# struct flock on Linux x86_64 and aarch64: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad).
_FLOCK = struct.Struct("hhxxxxqqixxxx")


def query(fd: int, rng: ByteRange, exclusive: bool = True) -> tuple[bool, ByteRange, int] | None:
    """The lock that a lock of this kind on `rng` would conflict with, or None.

    Asking as exclusive (the default) finds any lock; asking as shared finds only exclusive ones.
    Returns (holder's lock is exclusive, its range, its pid: 0 other namespace, -1 OFD lock).
    """
    length = 0 if rng.end is None else rng.end - rng.start + 1
    want = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    answer = fcntl.fcntl(fd, fcntl.F_GETLK, _FLOCK.pack(want, 0, rng.start, length, 0))
    lock_type, _whence, start, got_len, pid = _FLOCK.unpack(answer)
    if lock_type == fcntl.F_UNLCK:
        return None
    end = None if got_len == 0 else start + got_len - 1
    return lock_type == fcntl.F_WRLCK, ByteRange(start, end), pid
