"""Reading the state of a database's side files: the WAL, its index and the rollback journal.

Only `pread` on read-only descriptors that the snapshot opened (files.py); the parsing is in
wal.py and shm.py. The cost is a few small reads, except when the WAL index is not live: then the
WAL's frames must be walked, as SQLite's own recovery does, and that walk grows with the WAL.
"""

from __future__ import annotations

import time

from sqlprobe.errors import HeaderError
from sqlprobe.model import IndexState, ShmHeader, WalState
from sqlprobe.sqlite import shm, wal
from sqlprobe.sqlite.locks import SHM_HEADER_SIZE, WAL_HEADER_SIZE
from sqlprobe.system.files import describe, pread_at_most

SHM_READ_ATTEMPTS = 5  # a writer may be updating the header: read again before believing it
# Checksums need every page of the WAL, at ~0.1 ms per 4 KiB page in Python: they are verified
# for this long, and the rest is counted by salts and commit markers (the result says how many
# were verified). A preflight must not pay for a large WAL (issue 6: within 10 % of a small one).
VERIFY_BUDGET_S = 0.002


def read_wal_state(
    wal_fd: int,
    wal_size: int,
    shm_fd: int | None,
    dms_held: bool,
    deadline_end: float,
) -> WalState:
    """The WAL's header, its committed frames, and the index's state.

    `dms_held`: whether any process holds the DMS byte of the -shm (then the index is live).
    `deadline_end` (monotonic) bounds the frame walk's checksum verification.
    """
    header, problem = None, None
    if wal_size:  # an empty WAL is normal: nothing written since it was created or truncated
        try:
            header = wal.parse_header(pread_at_most(wal_fd, WAL_HEADER_SIZE))
        except HeaderError as err:
            problem = str(err)
        except OSError as err:
            problem = describe(err)
    shm_header, index_problem = None, None
    if shm_fd is None:
        index = IndexState.ABSENT
    else:
        shm_header, index_problem = _read_shm(shm_fd, retries=SHM_READ_ATTEMPTS if dms_held else 1)
        if not dms_held:
            index = IndexState.STALE
        else:
            index = IndexState.VALID if shm_header else IndexState.INVALID
    scan = None
    if header and (index is not IndexState.VALID or not shm_header):

        def read(offset: int, size: int) -> bytes:
            return pread_at_most(wal_fd, size, offset)

        verify_until = min(time.monotonic() + VERIFY_BUDGET_S, deadline_end)
        try:
            scan = wal.scan(header, wal_size, read, verify_until=verify_until)
        except OSError as err:
            problem = f"frames could not be read: {describe(err)}"
    return WalState(wal_size, header, problem, index, index_problem, shm_header, scan)


def _read_shm(fd: int, retries: int) -> tuple[ShmHeader | None, str | None]:
    problem = "not read"
    for attempt in range(retries):
        try:
            return shm.parse_header(pread_at_most(fd, SHM_HEADER_SIZE)), None
        except HeaderError as err:
            problem = str(err)
        except OSError as err:
            return None, describe(err)
        if attempt:
            time.sleep(0.001)
    return None, problem


def journal_header_set(fd: int) -> bool:
    """SQLite's hot-journal test reads the first byte: zero means no transaction to roll back."""
    first = pread_at_most(fd, 1)
    return bool(first) and first != b"\x00"
