"""Running a command after the preflight: the queue lock, an isolated database, exec.

Nothing here is ever written next to the database: the queue's lock files live in the user's
runtime directory, and an isolated run's database in a private temporary directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

from .targets import MEMORY, default_target

QUEUE_POLL = 0.05
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def queue_dir(env: Mapping[str, str]) -> str:
    """$XDG_RUNTIME_DIR/sqlprobe, else a per-user directory under the system temp dir."""
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return os.path.join(runtime, "sqlprobe")
    return os.path.join(tempfile.gettempdir(), f"sqlprobe-{os.getuid()}")


def queue_name(database: str) -> str:
    """The queue's lock file name for a database, the same before and after it is created.

    From the device and inode of its directory (so every path to it, through symlinks or bind
    mounts, shares one queue) and a hash of its name; a hash of the whole path when even the
    directory does not exist yet.
    """
    real = os.path.realpath(database)
    directory, name = os.path.split(real)
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    try:
        st = os.stat(directory)
    except OSError:
        return f"path-{hashlib.sha256(os.fsencode(real)).hexdigest()[:16]}.lock"
    return f"{st.st_dev:x}-{st.st_ino}-{digest}.lock"


def queue_database(path: str | None, env: Mapping[str, str]) -> str:
    """The database a run queues on: PATH's opencode.db for a directory, else PATH itself."""
    target = path if path is not None else default_target(env)
    if target == MEMORY:
        return MEMORY
    real = os.path.realpath(target)
    return os.path.join(real, "opencode.db") if os.path.isdir(real) else real


def take_queue(
    lock_path: str,
    timeout: float | None,
    on_wait: Callable[[float], None] | None = None,
) -> int | None:
    """An exclusive flock on `lock_path`, waiting up to `timeout` seconds (None: as long as it
    takes). Returns the descriptor, inheritable so that the command keeps the queue, or None."""
    os.makedirs(os.path.dirname(lock_path), mode=0o700, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    started = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.set_inheritable(fd, True)
            return fd
        except BlockingIOError:
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                os.close(fd)
                return None
            if on_wait:
                on_wait(waited)
            time.sleep(QUEUE_POLL)


def isolated_dir() -> str:
    """A fresh private directory for an isolated run's database."""
    return tempfile.mkdtemp(prefix="sqlprobe-isolated-")


def exec_command(command: Sequence[str]) -> int:
    """Replace this process with `command`; returns only on failure (126/127, as a shell)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], list(command))
    except OSError as err:
        print(f"sqlprobe: cannot run {command[0]}: {err.strerror}", file=sys.stderr)
        return 127 if err.errno == errno.ENOENT else 126
    raise AssertionError("unreachable")


def run_child(command: Sequence[str], env: Mapping[str, str], cleanup: Callable[[], None]) -> int:
    """Run `command` as a child with `env`, forwarding signals; `cleanup` runs after it.

    Returns the child's exit status; a child killed by a signal is re-raised on this process
    (after the cleanup) so that the caller's shell sees the same signal.
    """
    try:
        child = subprocess.Popen(list(command), env=dict(env))
    except OSError as err:
        cleanup()
        print(f"sqlprobe: cannot run {command[0]}: {err.strerror}", file=sys.stderr)
        return 127 if err.errno == errno.ENOENT else 126
    previous = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s)) for sig in FORWARDED}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        cleanup()
    if status < 0:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status if status >= 0 else 128 - status


def remove_tree(path: str) -> Callable[[], None]:
    def remove() -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(path)

    return remove
