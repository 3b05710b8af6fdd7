"""The records of `sqlprobe diagnose` (gathered in workflows/diagnose.py, shown by
render/diagnose.py): apart from model.py, so that a check that gathers no diagnosis does not
pay for creating them."""

from typing import NamedTuple


class OpenFile(NamedTuple):
    """One open descriptor of a holder, as `sqlprobe diagnose` lists it."""

    fd: int
    kind: str  # file, deleted, socket, pipe, anon_inode, device, other
    target: str  # the link text


class LogFile(NamedTuple):
    path: str
    size: int
    age_s: float  # since its last write (mtime)
    last_lines: tuple[str, ...]
    error: str | None = None


class HolderDetails(NamedTuple):
    pid: int
    fds: tuple[OpenFile, ...] | None  # None: not readable (`problems` says why)
    stack: str | None
    cwd: str | None
    parents: tuple[tuple[int, str], ...]  # (pid, command), nearest first
    environment: dict[str, str] | None
    logs: tuple[LogFile, ...]
    problems: tuple[str, ...]  # what could not be read, one line each


class Filesystem(NamedTuple):
    path: str  # the directory whose mount was looked up
    mount_point: str
    fstype: str
    source: str
    warning: str | None


class Diagnosis(NamedTuple):
    holders: tuple[HolderDetails, ...]
    filesystems: tuple[Filesystem, ...]
