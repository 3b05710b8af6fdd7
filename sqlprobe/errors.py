"""Typed errors. Each carries the path or pid it is about; none knows about click or exit codes."""

from __future__ import annotations


class SqlprobeError(Exception):
    """Base class: something sqlprobe could not do, with a one-line message for the user."""


class NoSuchProcess(SqlprobeError):
    """A process vanished while it was being read (a normal race, not a failure)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} is gone")
        self.pid = pid


class AccessDenied(SqlprobeError):
    """A process's /proc entries, or a file, could not be read for lack of permission."""

    def __init__(self, what: str, pid: int | None = None) -> None:
        super().__init__(f"{what}: permission denied")
        self.what = what
        self.pid = pid


class CannotInspect(SqlprobeError):
    """A path cannot be inspected as a database: not a regular file, not SQLite, unreadable."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class OpenInThisProcess(CannotInspect):
    """The calling process already has this file open, maybe through a SQLite connection.

    sqlprobe must not open and close a descriptor of its own on it: closing any descriptor of a
    file drops all of the process's POSIX locks on that file, the connection's included.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, "is already open in this process")


class HeaderError(SqlprobeError):
    """Bytes that were meant to be a SQLite, WAL or shm header are not one."""
