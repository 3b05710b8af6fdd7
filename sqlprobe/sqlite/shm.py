"""Parse the header of a `-shm` file, the WAL index (sqlite-locking.md §5; wal.c).

Pure: bytes in, values out. The header is in the byte order of the machine that wrote it, which
for a live index is this one. A header that fails validation may be one a writer is updating
right now: the caller reads again a few times before it believes the failure.
"""

from __future__ import annotations

import struct
import sys

from sqlprobe.errors import HeaderError
from sqlprobe.model import ShmHeader
from sqlprobe.sqlite.locks import (
    READ_MARK_UNUSED,
    SHM_CKPT_INFO,
    SHM_HEADER_SIZE,
    SHM_INDEX_HEADER_SIZE,
    SHM_VERSION,
)
from sqlprobe.sqlite.wal import checksum

# iVersion, unused, iChange, isInit, bigEndCksum, szPage, mxFrame, nPage, aFrameCksum[2],
# aSalt[2], aCksum[2]: 48 bytes, no padding.
_INDEX = "3I2BH8I"
# nBackfill, aReadMark[5], aLock[8], nBackfillAttempted.
_CKPT = "6I8xI"
_CKSUM_BYTES = 40  # the index header's checksum covers everything before aCksum


def parse_header(data: bytes, byteorder: str = sys.byteorder) -> ShmHeader:
    """Parse and validate the first SHM_HEADER_SIZE bytes of a -shm file.

    Valid, as SQLite's walIndexTryHdr has it, when both copies of the index header are identical,
    isInit is set and the checksum matches. Raises HeaderError saying which test failed.
    """
    if len(data) < SHM_HEADER_SIZE:
        if not data:
            raise HeaderError("the WAL index is empty")
        raise HeaderError(f"the WAL index is {len(data)} bytes, shorter than its header")
    order = "<" if byteorder == "little" else ">"
    first = data[:SHM_INDEX_HEADER_SIZE]
    if first != data[SHM_INDEX_HEADER_SIZE:SHM_CKPT_INFO]:
        raise HeaderError("the two copies of the WAL index header differ")
    (version, _, change, is_init, _big, sz_page, mx_frame, n_page, *rest) = struct.unpack(
        order + _INDEX, first
    )
    _fck1, _fck2, _salt1, _salt2, ck1, ck2 = rest
    if not is_init:
        raise HeaderError("the WAL index header is not initialised")
    if version != SHM_VERSION:
        raise HeaderError(f"unknown WAL index version {version}")
    # walChecksumBytes with nativeCksum=1: over the words in the writer's own byte order.
    if checksum(first[:_CKSUM_BYTES], 0, 0, big_endian=order == ">") != (ck1, ck2):
        raise HeaderError("the WAL index header checksum does not match")
    backfill, *marks, attempted = struct.unpack_from(order + _CKPT, data, SHM_CKPT_INFO)
    return ShmHeader(
        change=change,
        page_size=(sz_page & 0xFE00) + ((sz_page & 1) << 16),
        mx_frame=mx_frame,
        db_pages=n_page,
        # SQLite copies the salts' bytes from the WAL header: big-endian, whatever the machine.
        salts=struct.unpack_from(">2I", first, 32),
        backfilled=backfill,
        read_marks=tuple(None if m == READ_MARK_UNUSED else m for m in marks),
        backfill_attempted=attempted,
    )
