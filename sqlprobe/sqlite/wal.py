"""Parse a `-wal` file: its 32-byte header and its frames (sqlite-locking.md §5; wal.c).

Pure: the frame walk reads through a `read(offset, size)` callable that the caller supplies, so
that this module never opens a file. The walk mirrors SQLite's own recovery (walIndexRecover):
frames count while their salts match the header's and their cumulative checksums hold, and only
up to the last commit frame.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from sqlprobe.errors import HeaderError
from sqlprobe.model import WalHeader, WalScan
from sqlprobe.sqlite.locks import (
    WAL_FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    WAL_MAGIC_BE,
    WAL_MAGIC_LE,
    WAL_VERSION,
)

_MASK = 0xFFFFFFFF
_HEADER = struct.Struct(">8I")
_FRAME = struct.Struct(">6I")


def checksum(data: bytes, s1: int, s2: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum (walChecksumBytes) of `data`, continuing from (s1, s2).

    `data` is a multiple of 8 bytes, read as 32-bit words in the given byte order.
    """
    if len(data) % 8:
        raise ValueError("WAL checksums cover a multiple of 8 bytes")
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    it = iter(words)
    for x0, x1 in zip(it, it, strict=True):
        s1 = (s1 + x0 + s2) & _MASK
        s2 = (s2 + x1 + s1) & _MASK
    return s1, s2


def valid_page_size(size: int) -> bool:
    """A power of two from 512 to 65536, as SQLite requires of a page size."""
    return 512 <= size <= 65536 and size & (size - 1) == 0


def parse_header(data: bytes) -> WalHeader:
    """Parse the 32-byte WAL header; raises HeaderError when SQLite would not accept it.

    SQLite ignores the contents of a WAL whose header is invalid (and resets it on the next write).
    """
    if len(data) < WAL_HEADER_SIZE:
        if not data:
            raise HeaderError("WAL file is empty")
        raise HeaderError(f"WAL header is {len(data)} bytes, shorter than {WAL_HEADER_SIZE}")
    magic, version, page_size, seq, salt1, salt2, ck1, ck2 = _HEADER.unpack_from(data)
    if magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE):
        raise HeaderError(f"not a WAL file (magic {magic:#010x})")
    if version != WAL_VERSION:
        raise HeaderError(f"unknown WAL format version {version}")
    if not valid_page_size(page_size):
        raise HeaderError(f"invalid page size {page_size} in the WAL header")
    big_endian = magic == WAL_MAGIC_BE
    if checksum(data[:24], 0, 0, big_endian) != (ck1, ck2):
        raise HeaderError("WAL header checksum does not match")
    return WalHeader(big_endian, version, page_size, seq, salt1, salt2, (ck1, ck2))


def frame_offset(header: WalHeader, index: int) -> int:
    """Byte offset of frame `index` (1-based)."""
    return WAL_HEADER_SIZE + (index - 1) * (header.page_size + WAL_FRAME_HEADER_SIZE)


# Past this many unverified frames still to read one by one, find the end by bisection instead.
SEQUENTIAL_LIMIT = 1024


def scan(
    header: WalHeader,
    size: int,
    read: Callable[[int, int], bytes],
    verify_until: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> WalScan:
    """Walk the frames of a WAL of `size` bytes whose header is `header`.

    `read(offset, n)` returns up to n bytes at offset. Checksums need each frame's page as well
    as its header, so they are verified only while `clock()` is before `verify_until` (None:
    always); past it frames are counted by their salts and commit markers alone, and the result
    says how many were verified. When many frames remain unverified, the end of the frames
    carrying the header's salts is found by bisection (a WAL restart rewrites from frame 1 with
    new salts, so they form a prefix), then the last commit frame by reading back from there:
    the cost no longer grows with the WAL.
    """
    frame_size = header.page_size + WAL_FRAME_HEADER_SIZE
    last = max(0, (size - WAL_HEADER_SIZE) // frame_size)
    s1, s2 = header.checksum
    seen = committed = last_db_size = 0
    out_of_time = False
    while seen < last:
        if verify_until is not None and clock() >= verify_until:
            out_of_time = True
            break
        frame = read(frame_offset(header, seen + 1), frame_size)
        fields = _frame(header, frame)
        if fields is None or len(frame) < frame_size:
            break
        db_size, ck1, ck2 = fields
        s1, s2 = checksum(frame[:8], s1, s2, header.big_endian)
        s1, s2 = checksum(frame[WAL_FRAME_HEADER_SIZE:], s1, s2, header.big_endian)
        if (s1, s2) != (ck1, ck2):
            break  # torn or corrupt: SQLite's recovery stops here too
        seen += 1
        if db_size:
            committed, last_db_size = seen, db_size
    verified = committed
    if out_of_time:
        # The rest by salts and commit markers only, one by one or, when many, by bisection.
        end = _salted_end(header, read, seen, last)
        for i in range(end, seen, -1):
            fields = _frame(header, read(frame_offset(header, i), WAL_FRAME_HEADER_SIZE))
            if fields and fields[0]:
                committed, last_db_size = i, fields[0]
                break
        seen = end
    return WalScan(committed, seen - committed, verified, last_db_size or None)


def _salted_end(header: WalHeader, read: Callable[[int, int], bytes], known: int, last: int) -> int:
    """The last frame carrying the header's salts, knowing that frames 1..known do.

    Those frames form a prefix (a WAL restart rewrites from frame 1 with new salts), so beyond
    SEQUENTIAL_LIMIT frames the end is found by bisection in O(log n) reads.
    """

    def salted(i: int) -> bool:
        return _frame(header, read(frame_offset(header, i), WAL_FRAME_HEADER_SIZE)) is not None

    if last - known <= SEQUENTIAL_LIMIT:
        while known < last and salted(known + 1):
            known += 1
        return known
    lo, hi = known, last
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if salted(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _frame(header: WalHeader, frame: bytes) -> tuple[int, int, int] | None:
    """(commit db size or 0, checksum-1, checksum-2) of a frame whose salts are the header's."""
    if len(frame) < WAL_FRAME_HEADER_SIZE:
        return None  # the file shrank under us
    pgno, db_size, salt1, salt2, ck1, ck2 = _FRAME.unpack_from(frame)
    if pgno == 0 or (salt1, salt2) != (header.salt1, header.salt2):
        return None  # a frame of an earlier generation of the WAL, or never written
    return db_size, ck1, ck2
