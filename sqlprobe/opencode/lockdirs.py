"""Reading opencode's lock directories under `<state>/locks/` (the rules are in locks.py).

Reading them here is harmless: directories are listed and stat()ed, `meta.json` is opened
read-only (regular files only, never a FIFO) and read up to META_MAX bytes. Nothing is created,
touched or removed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from sqlprobe.errors import CannotInspect
from sqlprobe.model import LockDir
from sqlprobe.opencode.locks import BREAKER, MAX_LOCKS, META_MAX, SUFFIX, dir_name, parse_meta
from sqlprobe.opencode.paths import Dirs
from sqlprobe.system.files import describe, open_regular, pread_at_most


def candidate_keys(dirs: Dirs) -> dict[str, str]:
    """Directory name -> key, for the keys opencode builds from these directories.

    `npm-install:<config dir>` (plugins of opencode.json), `npm-install:<cache>/packages/<spec>`
    for every package cache entry (a scoped spec is one more level deep), and
    `plug-config:<config dir>/opencode` and `.../tui` (`opencode plugin` patching the global
    config), `models-dev:<cache>/models.json` (refreshing the models.dev catalogue). Listing
    the package cache is bounded by MAX_LOCKS entries.
    """
    keys = [
        f"npm-install:{dirs.config}",
        f"models-dev:{os.path.join(dirs.cache, 'models.json')}",
        f"plug-config:{os.path.join(dirs.config, 'opencode')}",
        f"plug-config:{os.path.join(dirs.config, 'tui')}",
    ]
    packages = os.path.join(dirs.cache, "packages")
    for entry in listdir(packages)[:MAX_LOCKS]:
        path = os.path.join(packages, entry)
        keys.append(f"npm-install:{path}")
        if entry.startswith("@"):
            keys.extend(f"npm-install:{path}/{sub}" for sub in listdir(path)[:MAX_LOCKS])
    return {dir_name(key): key for key in keys}


def listdir(path: str) -> list[str]:
    """The sorted entries of a directory; none when it cannot be listed."""
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


class LocksRead(NamedTuple):
    locks: tuple[LockDir, ...]
    problems: tuple[str, ...]  # what could not be read, one line each


def read_locks(locks_dir: str, known_keys: Callable[[], dict[str, str]]) -> LocksRead:
    """Every `<hex>.lock` directory under `locks_dir`, with its files' mtimes and meta.json.

    A missing locks directory holds no lock. `known_keys()` maps directory names to the keys
    they may be (candidate_keys); asked only when there is a lock to name.
    """
    try:
        names = sorted(os.listdir(locks_dir))
    except FileNotFoundError:
        return LocksRead((), ())
    except OSError as err:
        return LocksRead((), (f"{locks_dir}: {describe(err)}: opencode's locks are unknown",))
    if not names:
        return LocksRead((), ())
    keys = known_keys()
    problems = []
    lock_names = [n for n in names if n.endswith(SUFFIX)]
    if len(lock_names) > MAX_LOCKS:
        problems.append(
            f"{locks_dir}: {len(lock_names)} lock directories, only the first {MAX_LOCKS} read"
        )
    breakers = {n.removesuffix(BREAKER) for n in names if n.endswith(SUFFIX + BREAKER)}
    for orphan in sorted(breakers - set(lock_names)):
        # A breaker without its lock: an instance was killed while breaking a stale lock.
        lock_names.append(orphan)
    found = [_read_one(locks_dir, name, keys, name in breakers) for name in lock_names[:MAX_LOCKS]]
    return LocksRead(tuple(found), tuple(problems))


def mtime(path: str) -> float | None:
    """lstat()'s mtime of `path`, or None when it cannot be had (gone, or not searchable)."""
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return None


def _read_one(locks_dir: str, name: str, keys: dict[str, str], breaker: bool) -> LockDir:
    path = os.path.join(locks_dir, name)
    key = keys.get(name)
    breaker_mtime = mtime(path + BREAKER) if breaker else None
    try:
        st = os.lstat(path)
    except OSError:
        return LockDir(path, key, None, "no lock directory", None, None, None, breaker_mtime)
    if not stat.S_ISDIR(st.st_mode):
        return LockDir(path, key, None, "not a directory", None, None, None, breaker_mtime)
    heartbeat = os.path.join(path, "heartbeat")
    meta_path = os.path.join(path, "meta.json")
    meta, problem = None, None
    try:
        os.lstat(meta_path)  # a directory we may not search says so here, not as "no meta.json"
        meta = parse_meta(_read_capped(meta_path))
    except FileNotFoundError:
        problem = "no meta.json (being taken, or its holder died right after taking it)"
    except PermissionError:
        problem = "permission denied (its files cannot be read)"
    except CannotInspect as err:
        problem = f"meta.json {err.problem}"
    except OSError as err:
        problem = f"meta.json: {describe(err)}"
    except ValueError as err:
        problem = f"meta.json is not opencode's ({_short(err)})"
    return LockDir(
        path=path,
        key=key,
        meta=meta,
        problem=problem,
        dir_mtime=st.st_mtime,
        heartbeat_mtime=mtime(heartbeat),
        meta_mtime=mtime(meta_path),
        breaker_mtime=breaker_mtime,
        searchable=problem is None or not problem.startswith("permission"),
    )


def _read_capped(path: str) -> bytes:
    fd, st = open_regular(path)
    try:
        if st.st_size > META_MAX:
            raise ValueError(f"{st.st_size} bytes, more than {META_MAX}")
        data = pread_at_most(fd, META_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > META_MAX:
        raise ValueError(f"more than {META_MAX} bytes")
    return data


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) <= 80 else text[:79] + "…"
