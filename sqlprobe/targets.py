"""Which database files a target names: opencode's own resolution, a directory, or a file."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Container, Mapping
from typing import NamedTuple

from .dbfile import is_sqlite
from .errors import CannotInspect
from .files import describe, not_regular, open_regular, pread_at_most
from .layout import DB_MAGIC
from .model import FileKey

OPENCODE_DB = "opencode.db"
CHANNEL_DB_PATTERN = "opencode-*.db"  # opencode's per-channel databases
MEMORY = ":memory:"


class Target(NamedTuple):
    """What to inspect: resolved database paths, or a note/error saying why there are none."""

    label: str  # the target as the user would recognise it
    databases: tuple[str, ...] = ()
    note: str | None = None
    error: str | None = None


def opencode_data_dir(env: Mapping[str, str]) -> str:
    """opencode's data dir: `$XDG_DATA_HOME/opencode`, else `~/.local/share/opencode`.

    As the XDG spec says, a relative XDG_DATA_HOME is invalid and ignored.
    """
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "opencode")
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".local", "share", "opencode")


def default_target(env: Mapping[str, str]) -> str:
    """The path opencode would use: `$OPENCODE_DB` (relative to the data dir), else the data dir.

    Returns MEMORY when OPENCODE_DB is `:memory:`.
    """
    data_dir = opencode_data_dir(env)
    db = env.get("OPENCODE_DB", "")
    if db == MEMORY:
        return MEMORY
    if db:
        return os.path.join(data_dir, db)  # join keeps an absolute OPENCODE_DB as it is
    return data_dir


def resolve(
    path: str | None,
    env: Mapping[str, str],
    avoid: Container[FileKey] = frozenset(),
    caller: int | None = None,
) -> Target:
    """Turn the user's PATH (or opencode's default) into the databases to inspect.

    Files in `avoid` (open in this process already) are never opened to sniff their header.
    `/proc/self/...`, `/dev/fd/N` and `/dev/stdin` mean process `caller`'s (the one the user
    started: the work runs in a forked worker whose standard streams are /dev/null). A PATH
    that is neither a directory nor a regular file (a device, a FIFO, a socket; a pipe or a
    terminal through /proc/self/fd/N) is an error, and no process is scanned for it.
    An empty PATH is an error: the system calls would take it for the current directory.
    """
    if path == "":
        return Target(label="", error="an empty path names no file")
    label = default_target(env) if path is None else path
    if label == MEMORY and path is None:
        return Target(
            label="OPENCODE_DB=:memory:",
            note="OPENCODE_DB is :memory:: opencode keeps its database in memory, "
            "there is nothing on disk to check",
        )
    where = _pinned(label, caller)
    # SQLite follows symlinks to the real file and opens that (sqlite-locking.md §4).
    real = os.path.realpath(where)
    try:
        # `where`, not `real`: a /proc/PID/fd/N link to a pipe or a deleted file has no path.
        st = os.stat(where)
    except FileNotFoundError as err:
        if _is_fd(where):  # a descriptor that is not open: nothing a new instance creates
            return Target(label=label, error=f"{label}: {describe(err)}")
        if path is None and not env.get("OPENCODE_DB"):
            real = os.path.join(real, OPENCODE_DB)  # a data dir not made yet
        return Target(label=label, databases=(real,))
    except OSError as err:
        return Target(label=label, error=f"{label}: {describe(err)}")
    if stat.S_ISDIR(st.st_mode) and os.path.basename(real) != OPENCODE_DB:
        return _directory(label, real, avoid)
    why = not_regular(st.st_mode)
    if why:
        return Target(label=label, error=f"{label}: {why}{_leads_to(label, where, real)}")
    try:
        named = os.stat(real)
    except OSError:
        named = None
    if named is None or (named.st_dev, named.st_ino) != (st.st_dev, st.st_ino):
        # A descriptor of a file deleted since (its link reads "PATH (deleted)"), or renamed.
        return Target(
            label=label,
            error=f"{label}: names {_link(where) or real}, a file that no longer has a name",
        )
    return Target(label=label, databases=(real,))


_STREAMS = {"/dev/stdin": "fd/0", "/dev/stdout": "fd/1", "/dev/stderr": "fd/2"}
_SELF = (("/dev/fd/", "fd/"), ("/proc/self/", ""), ("/proc/thread-self/", ""))


def _pinned(path: str, caller: int | None) -> str:
    """`path` with /proc/self, /dev/fd and /dev/stdin (stdout, stderr) made `caller`'s."""
    if caller is None:
        return path
    if path in _STREAMS:
        return f"/proc/{caller}/{_STREAMS[path]}"
    for prefix, into in _SELF:
        if path.startswith(prefix):
            return f"/proc/{caller}/{into}{path[len(prefix) :]}"
    return path


def _is_fd(path: str) -> bool:
    """Whether `path` is /proc/PID/fd/N."""
    parts = path.split("/")
    return len(parts) == 5 and parts[:2] == ["", "proc"] and parts[3] == "fd"


def _link(path: str) -> str | None:
    """The text of /proc/PID/fd/N: a path, `pipe:[1234]`, `/dev/pts/0`; None for other paths."""
    if not _is_fd(path):
        return None
    try:
        return os.readlink(path)
    except OSError:
        return None


def _leads_to(label: str, where: str, real: str) -> str:
    """What a PATH that is a link leads to, for the message: ` (pipe:[1234])`, ` (/dev/null)`."""
    link = _link(where)
    if link is not None:
        return f" ({link})"
    return f" ({real})" if os.path.islink(where) and real != label else ""


def _directory(label: str, real: str, avoid: Container[FileKey]) -> Target:
    """A data dir: its opencode.db and opencode-*.db, else every SQLite file in it (flat)."""
    try:
        names = sorted(os.listdir(real))
    except OSError as err:
        return Target(label=label, error=f"{label}: {describe(err)}")
    chosen = [n for n in names if n == OPENCODE_DB or fnmatch.fnmatchcase(n, CHANNEL_DB_PATTERN)]
    if not chosen:
        chosen = [n for n in names if _looks_like_sqlite(os.path.join(real, n), avoid)]
    if not chosen:
        return Target(
            label=label,
            note=f"no database in {label}: a new opencode instance would create {OPENCODE_DB}",
        )
    return Target(label=label, databases=tuple(os.path.join(real, n) for n in chosen))


def _looks_like_sqlite(path: str, avoid: Container[FileKey]) -> bool:
    """Whether a directory entry is a regular file starting with the SQLite magic header."""
    try:
        fd, _ = open_regular(path, avoid)
    except CannotInspect:
        return False
    try:
        return is_sqlite(pread_at_most(fd, len(DB_MAGIC)))
    except OSError:
        return False
    finally:
        os.close(fd)
