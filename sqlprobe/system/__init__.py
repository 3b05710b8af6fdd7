"""The OS backend: processes, their descriptors, lock tables, F_GETLK, safe read-only file
access, and bounded time. Knows nothing of SQLite or opencode.

`backend()` is the one place that chooses the platform's implementation of `backend.Backend`;
nothing outside this package knows /proc or any other Linux fact.
"""

from __future__ import annotations

# Imported first, on purpose: importing a submodule sets it as an attribute of its package,
# so `backend` (the function below) must be defined after `system/backend.py` was loaded, or
# it would read as the module.
from sqlprobe.system.backend import Backend


def backend(root: str | None = None) -> Backend:
    """The OS backend of this platform; `root` points the Linux one at another /proc tree.

    Linux only for now. Issue 16 adds the portable backend (psutil and F_GETLK), chosen here:
    by `SQLPROBE_BACKEND` (`linux` or `portable`) when set, else by the platform.
    """
    from sqlprobe.system.linux import LinuxBackend  # imported when a backend is wanted

    return LinuxBackend() if root is None else LinuxBackend(root)
