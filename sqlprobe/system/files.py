"""Opening a database's files without harm: read-only, existing files only, never a FIFO.

sqlite-locking.md §4: open only existing files, O_RDONLY|O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK, and
fstat before reading, so that a FIFO or device named opencode.db cannot hang the tool. Nothing
here creates a file or takes a lock.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container

from sqlprobe.errors import CannotInspect, OpenInThisProcess
from sqlprobe.model import FileKey
from sqlprobe.system.access import Gate
from sqlprobe.text import DANGLING, is_a  # noqa: F401 (callers import them from here too)

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

_TYPES = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISLNK, "symbolic link"),
)


def file_type(mode: int) -> str | None:
    """What a file of this st_mode is ("FIFO", "directory", ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _TYPES if test(mode)), "special file")


def not_regular(mode: int) -> str | None:
    """Why a file of this st_mode is not a regular file, or None when it is one."""
    kind = file_type(mode)
    return None if kind is None else is_a(kind)


def describe(err: OSError) -> str:
    """A short lower-case problem text for an OSError (no path: the caller names the file)."""
    if err.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop?)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.ENOENT:
        return "no such file"
    return (err.strerror or str(err)).lower()


def open_regular(path: str, avoid: Container[FileKey] = frozenset()) -> tuple[int, os.stat_result]:
    """Open an existing regular file read-only and return (fd, fstat); the caller closes fd.

    Raises CannotInspect for anything else. `path` must already be resolved: O_NOFOLLOW makes a
    symlink fail, as SQLite's own open does after it resolved the name. Files in `avoid` (those
    the calling process has open already) raise OpenInThisProcess and are never opened: closing
    our descriptor would drop the process's own locks on them (sqlite-locking.md §4).
    """
    # stat first: even opening a device can act on it (a tape rewinds); fstat below closes the race.
    try:
        st = os.lstat(path)
    except OSError as err:
        raise CannotInspect(path, describe(err)) from err
    # Not a regular file comes first: such a file is an error even when this process has it
    # open (its stdin, /dev/null), and is never opened.
    why = not_regular(st.st_mode)
    if why:
        raise CannotInspect(path, why)
    if FileKey(st.st_dev, st.st_ino) in avoid:
        raise OpenInThisProcess(path)
    try:
        fd = os.open(path, _FLAGS)
    except OSError as err:
        if err.errno == errno.ELOOP and os.path.islink(path):
            raise CannotInspect(path, "is a symbolic link") from err
        if err.errno == errno.EISDIR:
            raise CannotInspect(path, "is a directory") from err
        raise CannotInspect(path, describe(err)) from err
    st = os.fstat(fd)
    why = not_regular(st.st_mode)
    if why:
        os.close(fd)
        raise CannotInspect(path, why)
    return fd, st


def gate(fd: int, st: os.stat_result) -> Gate:
    """Owner, group and mode of an open file, and whether a POSIX access ACL is set on it."""
    try:
        os.getxattr(fd, "system.posix_acl_access")
        acl = True
    except OSError as err:
        # No such attribute, or a filesystem without xattrs: the mode bits are the whole story.
        # Any other failure: assume an ACL, which lets everybody through (access.py).
        acl = err.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return Gate(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), acl)


def pread_at_most(fd: int, size: int, offset: int = 0) -> bytes:
    """Read up to `size` bytes at `offset`, fewer only at end of file."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)
