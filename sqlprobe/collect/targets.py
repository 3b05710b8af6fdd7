"""Which database files a target names: opencode's own resolution, a directory, or a file."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Container, Mapping
from typing import NamedTuple

from sqlprobe import system
from sqlprobe.errors import CannotInspect
from sqlprobe.model import FileKey, FileKind, Problem, ProblemKind
from sqlprobe.sqlite.dbheader import is_sqlite
from sqlprobe.sqlite.locks import DB_MAGIC
from sqlprobe.system.backend import Backend
from sqlprobe.system.files import describe, not_regular, open_regular, pread_at_most

OPENCODE_DB = "opencode.db"
CHANNEL_DB_PATTERN = "opencode-*.db"  # opencode's per-channel databases
MEMORY = ":memory:"
SIDE_SUFFIXES = tuple(kind.suffix for kind in FileKind if kind is not FileKind.DB)


class Target(NamedTuple):
    """What to inspect: resolved database paths, or a note/error saying why there are none."""

    label: str  # the target as the user would recognise it
    databases: tuple[str, ...] = ()
    note: str | None = None
    error: Problem | None = None


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
    proc: Backend | None = None,
) -> Target:
    """Turn the user's PATH (or opencode's default) into the databases to inspect.

    Files in `avoid` (open in this process already) are never opened to sniff their header.
    `/proc/self/...`, `/dev/fd/N` and `/dev/stdin` mean process `caller`'s (the one the user
    started: the work runs in a forked worker whose standard streams are /dev/null). A PATH
    that is neither a directory nor a regular file (a device, a FIFO, a socket; a pipe or a
    terminal through /proc/self/fd/N) is an error, and no process is scanned for it.
    An empty PATH is an error: the system calls would take it for the current directory, and
    so is `-`, which is no standard input here. A PATH that does not exist is a database not
    created yet, unless its directory does not exist either (a typo): an error.
    """
    if path == "":
        return Target(
            label="", error=Problem(ProblemKind.EMPTY_PATH, None, "an empty path names no file")
        )
    if path == "-":
        return Target(
            label=path,
            error=Problem(
                ProblemKind.NOT_STDIN,
                path,
                "not standard input here: name /dev/stdin for that"
                " (sqlprobe check /dev/stdin < opencode.db), or ./- for a file named -",
            ),
        )
    label = default_target(env) if path is None else path
    if label == MEMORY and path is None:
        return Target(
            label="OPENCODE_DB=:memory:",
            note="OPENCODE_DB is :memory: (opencode keeps its database in memory): "
            "there is nothing on disk to check",
        )
    proc = proc or system.backend()
    where = proc.pinned(label, caller)
    # SQLite follows symlinks to the real file and opens that (sqlite-locking.md §4).
    real = os.path.realpath(where)
    try:
        # `where`, not `real`: a /proc/PID/fd/N link to a pipe or a deleted file has no path.
        st = os.stat(where)
    except FileNotFoundError as err:
        if proc.names_descriptor(where):  # not open: nothing a new instance creates
            return Target(label=label, error=cannot_read(label, err))
        if path is None and not env.get("OPENCODE_DB"):
            # A data dir not made yet: opencode makes it.
            return Target(
                label=label,
                databases=(os.path.join(real, OPENCODE_DB),),
                note=f"{label} does not exist: a new opencode instance would create it,"
                f" and {OPENCODE_DB} in it",
            )
        if path is not None and not _exists(os.path.dirname(real)):
            # Nothing would create it there (SQLite makes no directory): a mistyped PATH.
            parent = os.path.dirname(real)
            problem = Problem(
                ProblemKind.NO_DIRECTORY, label, f"its directory {parent} does not exist"
            )
            return Target(label=label, error=problem)
        return Target(label=label, databases=(real,))
    except OSError as err:
        return Target(label=label, error=cannot_read(label, err))
    if stat.S_ISDIR(st.st_mode) and os.path.basename(real) != OPENCODE_DB:
        return _directory(label, real, avoid)
    why = not_regular(st.st_mode)
    if why:
        problem = Problem(ProblemKind.NOT_REGULAR, label, why + _leads_to(proc, label, where, real))
        return Target(label=label, error=problem)
    try:
        named = os.stat(real)
    except OSError:
        named = None
    if named is None or (named.st_dev, named.st_ino) != (st.st_dev, st.st_ino):
        # A descriptor of a file deleted since (its link reads "PATH (deleted)"), or renamed.
        return Target(
            label=label,
            error=Problem(
                ProblemKind.NAMELESS,
                label,
                f"names {proc.descriptor_link(where) or real}, a file that no longer has a name",
            ),
        )
    return Target(label=label, databases=(real,))


def _leads_to(proc: Backend, label: str, where: str, real: str) -> str:
    """What a PATH that is a link leads to, for the message: ` (pipe:[1234])`, ` (/dev/null)`."""
    link = proc.descriptor_link(where)
    if link is not None:
        return f" ({link})"
    return f" ({real})" if os.path.islink(where) and real != label else ""


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # there, but not usable: the check of the file says why
    return True


def _directory(label: str, real: str, avoid: Container[FileKey]) -> Target:
    """A data dir: its opencode.db and opencode-*.db, else every SQLite file in it (flat).

    An opencode database that is missing but has a side file (a `-wal` left behind) is named
    too, so that the side file is reported. A database that is a symlink is its real file, as
    SQLite opens it (its side files are beside the real file), as for a PATH that is the link.
    """
    try:
        names = sorted(os.listdir(real))
    except OSError as err:
        return Target(label=label, error=cannot_read(label, err))
    chosen = sorted({b for b in map(_database_of, names) if _is_opencode_db(b)})
    if not chosen:
        chosen = [n for n in names if _looks_like_sqlite(os.path.join(real, n), avoid)]
    if not chosen:
        return Target(
            label=label,
            note=f"no database in {label}: a new opencode instance would create {OPENCODE_DB}",
        )
    paths = (_followed(os.path.join(real, n)) for n in chosen)
    return Target(label=label, databases=tuple(dict.fromkeys(paths)))


def _is_opencode_db(name: str) -> bool:
    return name == OPENCODE_DB or fnmatch.fnmatchcase(name, CHANNEL_DB_PATTERN)


def _database_of(name: str) -> str:
    """The database a directory entry belongs to: `opencode.db` for `opencode.db-wal`."""
    for suffix in SIDE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _followed(path: str) -> str:
    """A database path with its symlinks resolved, as SQLite resolves them (sqlite-locking.md
    §4); a symlink loop is left as it is, for the check of the file to say so."""
    if not os.path.islink(path):
        return path
    try:
        return os.path.realpath(path, strict=True)
    except FileNotFoundError:
        return os.path.realpath(path)  # dangling: SQLite would create the file it names
    except OSError:
        return path


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


def cannot_read(path: str, err: OSError) -> Problem:
    """A file that could not be stat()ed, listed, opened or read: the OS's words for why."""
    return Problem(ProblemKind.CANNOT_READ, path, describe(err))
