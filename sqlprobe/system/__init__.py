"""The OS backend: processes, their descriptors, lock tables, F_GETLK, safe read-only file
access, and bounded time. Knows nothing of SQLite or opencode.

`backend()` is the one place that chooses the platform's implementation of `backend.Backend`;
nothing outside this package knows /proc or any other Linux fact.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from sqlprobe.errors import SqlprobeError

# Imported first, on purpose: importing a submodule sets it as an attribute of its package,
# so `backend` (the function below) must be defined after `system/backend.py` was loaded, or
# it would read as the module.
from sqlprobe.system.backend import Backend

BACKEND_VARIABLE = "SQLPROBE_BACKEND"
BACKENDS = ("linux", "portable")


class UnknownBackend(SqlprobeError):
    """SQLPROBE_BACKEND names no backend: a usage error (the CLI exits 2 with this line)."""

    def __init__(self, value: str) -> None:
        allowed = " or ".join(BACKENDS)
        super().__init__(f"{BACKEND_VARIABLE}={value!r} names no backend: use {allowed}")
        self.value = value

    def __reduce__(self) -> tuple[type[UnknownBackend], tuple[str]]:
        return UnknownBackend, (self.value,)  # pickled whole from a worker, not re-wrapped


def chosen(env: Mapping[str, str] | None = None) -> str:
    """The name of the backend to use: `SQLPROBE_BACKEND` (read now: tests set it per run)
    when set and not empty, else `linux` on Linux and `portable` everywhere else. Raises
    UnknownBackend for any other value."""
    value = (os.environ if env is None else env).get(BACKEND_VARIABLE, "")
    if not value:
        return "linux" if sys.platform.startswith("linux") else "portable"
    if value not in BACKENDS:
        raise UnknownBackend(value)
    return value


def backend(root: str | None = None) -> Backend:
    """The OS backend of this platform, as `chosen()` names it; `root` points the Linux one at
    another /proc tree (given a root, the Linux backend it is, whatever the variable says).

    Each backend's module is imported only when it is chosen: psutil (the portable backend's)
    is never loaded by a check on Linux.
    """
    if root is not None:
        from sqlprobe.system.linux import LinuxBackend

        return LinuxBackend(root)
    if chosen() == "portable":
        from sqlprobe.system.portable import PortableBackend

        return PortableBackend()
    from sqlprobe.system.linux import LinuxBackend  # imported when a backend is wanted

    return LinuxBackend()
