"""Which database files a target names: opencode's own resolution, a directory, or a file."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Container, Mapping
from typing import NamedTuple

from .dbfile import is_sqlite
from .errors import CannotInspect
from .files import describe, open_regular, pread_at_most
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
    path: str | None, env: Mapping[str, str], avoid: Container[FileKey] = frozenset()
) -> Target:
    """Turn the user's PATH (or opencode's default) into the databases to inspect.

    Files in `avoid` (open in this process already) are never opened to sniff their header.
    """
    label = default_target(env) if path is None else path
    if label == MEMORY and path is None:
        return Target(
            label="OPENCODE_DB=:memory:",
            note="OPENCODE_DB is :memory:: opencode keeps its database in memory, "
            "there is nothing on disk to check",
        )
    # SQLite follows symlinks to the real file and opens that (sqlite-locking.md §4).
    real = os.path.realpath(label)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        if path is None and not env.get("OPENCODE_DB"):
            real = os.path.join(real, OPENCODE_DB)  # a data dir not made yet
        return Target(label=label, databases=(real,))
    except OSError as err:
        return Target(label=label, error=f"{label}: {describe(err)}")
    if not stat.S_ISDIR(st.st_mode) or os.path.basename(real) == OPENCODE_DB:
        return Target(label=label, databases=(real,))
    return _directory(label, real, avoid)


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
