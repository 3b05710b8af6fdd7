"""Opening and reading one database's files: lstat each, open the regular ones read-only, and
read what they say (the database header; the -wal, -shm and -journal state; what a commit
changes). Opens through system/files.py, which refuses anything but a regular file.
"""

from __future__ import annotations

import errno
import os

from sqlprobe.collect.targets import cannot_read
from sqlprobe.collect.working import Db
from sqlprobe.errors import CannotInspect, HeaderError, OpenInThisProcess
from sqlprobe.model import (
    ByteRange,
    FileKey,
    FileKind,
    Finding,
    FindingKind,
    Problem,
    ProblemKind,
    SideFile,
)
from sqlprobe.sqlite.dbheader import parse_header
from sqlprobe.sqlite.filestate import journal_header_set, read_wal_state
from sqlprobe.sqlite.locks import DB_HEADER_SIZE, RESERVED_BYTE
from sqlprobe.system import getlk
from sqlprobe.system.deadline import Deadline
from sqlprobe.system.files import (
    DANGLING,
    describe,
    file_type,
    gate,
    is_a,
    open_regular,
    pread_at_most,
)

RESERVED = ByteRange(RESERVED_BYTE, RESERVED_BYTE)


def open_db(path: str, own: frozenset[FileKey], warnings: list[Finding]) -> Db:
    """Stat the database and its side files; open them read-only (db and -shm for F_GETLK too).

    A file that this process has open already (`own`: a SQLite connection of the program that
    calls sqlprobe as a library) is not opened: see system.files.open_regular.
    """
    db = Db(path)
    for kind in FileKind:
        side = path + kind.suffix
        try:
            st = os.lstat(side)
        except FileNotFoundError:
            db.files.append(SideFile(kind, side, None))
            continue
        except OSError as err:
            if kind is FileKind.DB:
                db.error = cannot_read(path, err)
            db.files.append(SideFile(kind, side, None))
            continue
        what = file_type(st.st_mode)
        if what == "symbolic link" and not os.path.exists(side):
            what = DANGLING  # SQLite cannot create the file there (O_NOFOLLOW): worse
        db.files.append(SideFile(kind, side, FileKey(st.st_dev, st.st_ino), what))
        if what is not None:
            # Never opened. The verdict says what a new instance meets with it (SQLite's own
            # open of a FIFO -journal blocks for ever: sidefiles.non_regular_effect).
            if kind is FileKind.DB:
                why = is_a(what)
                if what == DANGLING:  # or a symlink loop, said as for a PATH that is one
                    try:
                        os.stat(side)
                    except OSError as err:
                        why = describe(err) if err.errno == errno.ELOOP else why
                db.error = Problem(ProblemKind.NOT_REGULAR, side, why)
            continue
        try:
            fd, st = open_regular(side, own)
        except OpenInThisProcess:
            db.own = True
            warnings.append(Finding(FindingKind.OWN_FILE, side))
            continue
        except CannotInspect as err:
            if kind is FileKind.DB:
                db.error = Problem(ProblemKind.CANNOT_READ, err.path, err.problem)
            else:
                warnings.append(Finding(FindingKind.SIDE_FILE_UNREADABLE, side, detail=err.problem))
            continue
        db.fds[kind] = fd
        db.sizes[kind] = st.st_size
        db.gates[kind] = gate(fd, st)
        if kind is FileKind.DB:
            db.size = st.st_size
            db.links = st.st_nlink
            _read_header(db, fd)
    db.exists = db.files[0].key is not None or db.error is not None
    return db


def _read_header(db: Db, fd: int) -> None:
    """Parse the db header; an empty file (a database not yet written) has none."""
    if not db.size:
        return
    try:
        db.header = parse_header(pread_at_most(fd, DB_HEADER_SIZE))
    except HeaderError as err:
        db.error = Problem(ProblemKind.NOT_SQLITE, db.path, str(err))
    except OSError as err:
        db.error = cannot_read(db.path, err)


def read_state(db: Db, deadline: Deadline) -> None:
    """The -wal, -shm and -journal headers, read right after the first look at the locks."""
    locks = db.observations[0].locks
    wal_fd = db.fds.get(FileKind.WAL)
    if wal_fd is not None:
        dms = any(lk.file is FileKind.SHM and lk.name == "dms" for lk in locks)
        db.wal = read_wal_state(
            wal_fd, db.sizes[FileKind.WAL], db.fds.get(FileKind.SHM), dms, deadline.end
        )
    if FileKind.JOURNAL in db.fds:
        db.journal_header_set = _journal_left_set(db)


def _journal_left_set(db: Db) -> bool:
    """Whether the -journal holds a transaction that no live writer owns (a hot journal).

    The lock look that came first is older than the header read: a writer that began in
    between has a journal with a header, and RESERVED held since the look. So, by path (a
    writer that commits in DELETE mode unlinks the file our descriptor still reads): header
    set, then nobody holds RESERVED, then the header still set (a writer that finished in
    between zeroed or unlinked it), then nobody holds RESERVED; a writer seen at any step
    means a live transaction, not a hot journal.
    """
    path = db.files[list(FileKind).index(FileKind.JOURNAL)].path
    db_fd = db.fds.get(FileKind.DB)
    for _ in range(2):
        if not _header_set_at(path):
            return False
        if db_fd is None:
            return True  # the database was not opened here: RESERVED cannot be asked
        try:
            if getlk.query(db_fd, RESERVED) is not None:
                return False
        except OSError:
            return True
    return True


def _header_set_at(path: str) -> bool:
    try:
        fd, _st = open_regular(path)
    except CannotInspect:
        return False  # gone: committed (or never a journal at all)
    try:
        return journal_header_set(fd)
    except OSError:
        return False
    finally:
        os.close(fd)


def change(db: Db) -> bytes | None:
    """What a commit changes (Observation.change): 4 bytes of the database header, 48 of -shm."""
    try:
        out = os.pread(db.fds[FileKind.DB], 4, 24) if FileKind.DB in db.fds else b""
        if FileKind.SHM in db.fds:
            out += os.pread(db.fds[FileKind.SHM], 48, 0)
    except OSError:
        return None
    return out or None
