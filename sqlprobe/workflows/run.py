"""Running a command after the preflight: the queue lock, an isolated database, exec.

`run_command` is `sqlprobe run` as a library call: the queue (with `serialize`), the preflight
(workflows.preflight), then the command, in place of this process or as an isolated child. It
returns what refused it (`Refused`), or the command's exit status (`Ran`) when it comes back.

Nothing here is ever written next to the database: the queue's lock files live in the user's
runtime directory, and an isolated run's database in a private temporary directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from sqlprobe.collect.targets import MEMORY, default_target
from sqlprobe.options import DEFAULT_CHECK, CheckOptions
from sqlprobe.system.deadline import Handed, Overrun, within
from sqlprobe.system.files import file_type

if TYPE_CHECKING:  # the preflight's modules are imported only when a run needs them
    from sqlprobe.verdict.judge import Verdict
    from sqlprobe.workflows.preflight import Preflight

QUEUE_POLL = 0.05
ISOLATED_PREFIX = "sqlprobe-isolated-"
CLEANUP_S = 1.0  # what a clean-up after Ctrl-C may add to the exit
STEP_S = 3.0  # the longest a step that touches the filesystem may take (a preflight's timeout)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class QueueError(Exception):
    """The queue's directory or lock file is not safe to use; the message says which and why."""


class Queue(NamedTuple):
    """What take_queue got: the queue's lock file, and the descriptor that holds it."""

    lock_path: str
    fd: int | None  # None: still taken by another run when the wait was over


def queue_dir(env: Mapping[str, str], warn: Callable[[str], None] | None = None) -> str:
    """$XDG_RUNTIME_DIR/sqlprobe, else sqlprobe-<euid> in the temp dir (as tmux does).

    A $XDG_RUNTIME_DIR that is not the user's alone (the XDG spec: owned by them, no access
    for others) is passed over, with a warning to `warn`: another user could swap what is in
    it. The directory itself is only checked by take_queue, which opens it.
    """
    fallback = os.path.join(tempfile.gettempdir(), f"sqlprobe-{os.geteuid()}")
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if not runtime:
        return fallback
    problem = _runtime_dir_problem(runtime)
    if problem is None:
        return os.path.join(runtime, "sqlprobe")
    if warn:
        warn(
            f"not queueing in $XDG_RUNTIME_DIR ({runtime}): {problem}; queueing in {fallback}"
            " instead"
        )
    return fallback


def _runtime_dir_problem(runtime: str) -> str | None:
    """Why $XDG_RUNTIME_DIR cannot hold the queue, or None."""
    if not os.path.isabs(runtime):
        return "not an absolute path"
    try:
        st = os.stat(runtime)
    except OSError as err:
        return err.strerror or str(err)
    return _dir_problem(st, private=False)


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
    path: str | None,
    env: Mapping[str, str],
    timeout: float | None,
    on_wait: Callable[[float], None] | None = None,
    warn: Callable[[str], None] | None = None,
    step_s: float = STEP_S,
) -> Queue:
    """An exclusive flock on the queue's lock file for PATH's database, waiting up to `timeout`
    seconds (None: as long as it takes): Queue(the lock file, its descriptor or None). The
    descriptor is inheritable, so that the command keeps the queue.

    Raises QueueError when the directory or the lock file is not a plain one of the user's
    alone (see _open_queue_dir and _open_lock_file), and deadline.Overrun when a step that
    touches the filesystem (the data dir, $XDG_RUNTIME_DIR, the temp dir) takes longer than
    `step_s`: they run apart (deadline.within), the wait for the lock itself here.
    """
    started = time.monotonic()
    while True:
        (lock_path, warnings), (fd, dfd) = within(
            lambda: _open_queue(path, env), step_s, "opening the queue", hands_fds=True
        )
        for message in warnings:
            if warn:
                warn(message)
        warn = None  # said once
        directory, name = os.path.split(lock_path)
        try:
            locked = _flock(fd, started, timeout, on_wait)
            current = locked and within(
                functools.partial(_still_named, fd, dfd, directory, name),
                step_s,
                "checking the queue",
            )
        except BaseException:
            os.close(fd)
            raise
        finally:
            os.close(dfd)
        if current:
            os.set_inheritable(fd, True)
            return Queue(lock_path, fd)
        os.close(fd)
        if not locked:
            return Queue(lock_path, None)
        # The file we locked was renamed or removed while we waited (a cleaner of /tmp, a
        # `rm`): a run that came since holds the one under the name now. Queue on that one.


def _open_queue(path: str | None, env: Mapping[str, str]) -> Handed:
    """The queue's lock file for PATH's database, opened with its directory: Handed((lock
    file, warnings), (its descriptor, the directory's)). Touches the filesystem: run apart."""
    warnings: list[str] = []
    directory = queue_dir(env, warn=warnings.append)
    lock_path = os.path.join(directory, queue_name(queue_database(path, env)))
    dfd = _open_queue_dir(directory)
    try:
        fd = _open_lock_file(dfd, lock_path)
    except BaseException:
        os.close(dfd)
        raise
    return Handed((lock_path, tuple(warnings)), (fd, dfd))


def _flock(
    fd: int, started: float, timeout: float | None, on_wait: Callable[[float], None] | None
) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                return False
            if on_wait:
                on_wait(waited)
            time.sleep(QUEUE_POLL)


def _open_queue_dir(directory: str) -> int:
    """A descriptor on the queue directory, made 0700 if missing; QueueError unless it is a real
    directory (not a symlink), owned by the effective uid, with no access for anyone else.

    Checked by lstat and again by fstat of what was opened (O_NOFOLLOW), so that nothing
    swapped in between is used. As tmux, ssh-agent and systemd do with their /tmp directories.
    """
    parent, base = os.path.split(directory)

    def refuse(problem: str) -> QueueError:
        hint = "remove it or set XDG_RUNTIME_DIR"
        return QueueError(f"refusing the queue directory {directory}: {problem}; {hint}")

    try:
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise QueueError(f"cannot use the queue directory {directory}: {err.strerror}") from err
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o700, dir_fd=pfd)  # the umask can only take bits away
        seen = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        problem = _dir_problem(seen)
        if problem:
            raise refuse(problem)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        dfd = os.open(base, flags, dir_fd=pfd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped since the lstat
            raise refuse("it changed while being opened") from err
        raise QueueError(f"cannot use the queue directory {directory}: {err.strerror}") from err
    finally:
        os.close(pfd)
    opened = os.fstat(dfd)
    problem = _dir_problem(opened)
    if problem is None and (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
        problem = "it changed while being opened"
    if problem:
        os.close(dfd)
        raise refuse(problem)
    return dfd


def _dir_problem(st: os.stat_result, private: bool = True) -> str | None:
    """Why a directory is not the user's own (`private`: nobody else may even enter it; else
    nobody else may write to it, as the XDG spec asks of $XDG_RUNTIME_DIR), or None."""
    if not stat.S_ISDIR(st.st_mode):
        return f"{_kind(st.st_mode)}, not a directory"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not you"
    if private and st.st_mode & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):04o}: others have access to it"
    if st.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _open_lock_file(dfd: int, lock_path: str) -> int:
    """The lock file, opened (made 0600 if missing) relative to the checked directory; QueueError
    unless it is a regular file of the effective uid, writable by nobody else, with one name.

    O_NOFOLLOW: never through a symlink; O_NONBLOCK: a FIFO cannot hang the open (it has no
    effect on a regular file); O_NOCTTY: a terminal would not become ours. Left non-inheritable
    until it is locked.
    """
    name = os.path.basename(lock_path)

    def refuse(problem: str) -> QueueError:
        return QueueError(f"refusing the queue lock file {lock_path}: {problem}; remove it")

    try:
        # Look before opening, so that a FIFO or a device is never opened at all.
        problem = _lock_problem(os.stat(name, dir_fd=dfd, follow_symlinks=False))
    except FileNotFoundError:
        problem = None
    except OSError as err:
        raise QueueError(f"cannot use the queue lock file {lock_path}: {err.strerror}") from err
    if problem:
        raise refuse(problem)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dfd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise refuse("a symlink") from err
        raise QueueError(f"cannot use the queue lock file {lock_path}: {err.strerror}") from err
    problem = _lock_problem(os.fstat(fd))
    if problem:
        os.close(fd)
        raise refuse(problem)
    return fd


def _lock_problem(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "a symlink"
    if not stat.S_ISREG(st.st_mode):
        return f"{_kind(st.st_mode)}, not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not you"
    if st.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_nlink != 1:
        # Another name for it may be anywhere on the filesystem, beside a database too.
        return f"it has {st.st_nlink} names (hard links)"
    return None


def _still_named(fd: int, dfd: int, directory: str, name: str) -> bool:
    """Whether the locked file is still `name` in the queue directory, and the directory still
    at its path: a run that opens the path now meets the same lock."""
    held, opened = os.fstat(fd), os.fstat(dfd)
    try:
        named = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        placed = os.stat(directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    same_file = (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
    same_dir = (placed.st_dev, placed.st_ino) == (opened.st_dev, opened.st_ino)
    return same_file and same_dir


def _kind(mode: int) -> str:
    """ "a FIFO", "a symlink", "a regular file": what a file of this st_mode is."""
    kind = file_type(mode)
    return "a regular file" if kind is None else f"a {kind.replace('symbolic link', 'symlink')}"


def isolated_dir(step_s: float = STEP_S) -> str:
    """A fresh private directory for an isolated run's database (deadline.Overrun when the
    temp dir does not answer within `step_s`).

    A worker makes it, so this process learns its name only from the worker's answer; a
    Ctrl-C (or the deadline) in between would leave it behind. Its name carries this process's
    pid and a random token, so that `remove_isolated_dirs` finds it all the same, and nothing
    else: an earlier run's directory kept with --keep, by a process with the same pid, is not
    this run's.
    """
    prefix = f"{ISOLATED_PREFIX}{os.getpid()}-{os.urandom(4).hex()}-"
    try:
        return within(
            lambda: tempfile.mkdtemp(prefix=prefix), step_s, "making the isolated run's directory"
        )
    except Overrun:
        raise  # the temp dir does not answer: a removal would not either
    except BaseException:  # Ctrl-C while the worker answered
        remove_isolated_dirs(prefix, CLEANUP_S)
        raise


def remove_isolated_dirs(prefix: str, step_s: float = STEP_S) -> None:
    """Remove the directories named `prefix*` in the temp dir: this process's own, made by a
    worker whose answer never came. Given up after `step_s`."""

    def remove() -> None:
        base = tempfile.gettempdir()
        for name in os.listdir(base):
            if name.startswith(prefix):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)

    with contextlib.suppress(OSError, Overrun):
        within(remove, step_s, "removing the isolated run's directory")


def shown(name: str) -> str:
    """A command's name for a message, quoted as a shell would need it (`''` for an empty
    one, `$'\\xff'` for a byte that is not UTF-8): text.shell_quote."""
    from sqlprobe.text import shell_quote

    return shell_quote(name)


def _cannot_run(name: str, err: OSError | None) -> int:
    """Say why `name` cannot run, as a shell would; 127 not found, 126 not executable."""
    found = err is not None and err.errno != errno.ENOENT
    why = err.strerror if err is not None and (found or "/" in name) else "command not found"
    print(f"sqlprobe: cannot run {shown(name)}: {why}", file=sys.stderr)
    return 126 if found else 127


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a full disk, a closed stream
            stream.flush()


def exec_command(command: Sequence[str]) -> int:
    """Replace this process with `command`; returns only on failure (126/127, as a shell)."""
    _flush()
    if not command[0]:
        return _cannot_run("", None)  # execvp would raise ValueError; a shell: not found
    try:
        os.execvp(command[0], list(command))
    except OSError as err:
        return _cannot_run(command[0], err)
    raise AssertionError("unreachable")


def run_child(command: Sequence[str], env: Mapping[str, str], cleanup: Callable[[], None]) -> int:
    """Run `command` as a child with `env`, forwarding signals; `cleanup` runs after it.

    Returns the child's exit status; a child killed by a signal is re-raised on this process
    (after the cleanup) so that the caller's shell sees the same signal.
    """
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        if child is None:
            pending.append(sig)  # it is being started: it gets the signal once it is
        else:
            child.send_signal(sig)

    # Installed before the child starts, so that no signal falls in between (a Ctrl-C there
    # would leave the child running and the cleanup undone); a signal the caller ignores
    # (nohup's SIGHUP) stays ignored, by sqlprobe and by the command.
    previous = {
        sig: signal.signal(sig, forward)
        for sig in FORWARDED
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        if not command[0]:
            return _cannot_run("", None)
        try:
            child = subprocess.Popen(list(command), env=dict(env))
        except OSError as err:
            return _cannot_run(command[0], err)
        for sig in pending:
            child.send_signal(sig)
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        cleanup()
    if status < 0:
        _flush()
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status if status >= 0 else 128 - status


def remove_tree(path: str, step_s: float = STEP_S) -> Callable[[], None]:
    """A cleanup that removes `path`, given up after `step_s` (a hung temp dir)."""

    def remove() -> None:
        with contextlib.suppress(OSError, Overrun):
            within(lambda: shutil.rmtree(path, ignore_errors=True), step_s, f"removing {path}")

    return remove


def run_isolated(
    command: Sequence[str],
    keep: bool = False,
    env: Mapping[str, str] | None = None,
    on_start: Callable[[str, bool], None] | None = None,
) -> int:
    """Run `command` as a child with its own database: OPENCODE_DB in a fresh private directory
    (isolated_dir), removed after the run unless `keep`. `on_start(database, keep)` hears where
    before the command starts. Returns the command's exit status (run_child).

    deadline.Overrun when the temp dir does not answer (isolated_dir).
    """
    env = os.environ if env is None else env
    directory = isolated_dir()
    cleanup = (lambda: None) if keep else remove_tree(directory)
    try:
        database = os.path.join(directory, "opencode.db")
        if on_start:
            on_start(database, keep)
        return run_child(command, {**env, "OPENCODE_DB": database}, cleanup)
    except BaseException:
        cleanup()  # Ctrl-C before the command started (run_child cleans up once it has)
        raise


class Progress(Protocol):
    """What a run says while it gets ready, to whoever shows it (the CLI: a status line, and
    lines on stderr). `Silent` says nothing."""

    def queued(self, waited: float) -> None:
        """Waiting for the queue (`serialize`), `waited` seconds so far."""

    def waiting(self, verdict: Verdict, waited: float) -> None:
        """Waiting for the database (`wait_s`), on what `verdict` says."""

    def waited(self) -> None:
        """A wait for the queue or for the database is over."""

    def warn(self, message: str) -> None:
        """Something to know that refuses nothing (a $XDG_RUNTIME_DIR passed over)."""

    def isolated(self, database: str, keep: bool) -> None:
        """An isolated run is about to start, on `database` (kept after it: `keep`)."""


class Silent:
    """The Progress of a library caller that wants nothing said."""

    def queued(self, waited: float) -> None:
        pass

    def waiting(self, verdict: Verdict, waited: float) -> None:
        pass

    def waited(self) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def isolated(self, database: str, keep: bool) -> None:
        pass


class Refused(NamedTuple):
    """The command was not run: the exit code to leave with, and what said no."""

    exit_code: int
    preflight: Preflight | None = None  # the state was not one to run in: its verdict says why
    queue: Queue | None = None  # the queue was still taken when the wait was over (busy)


class Ran(NamedTuple):
    """The command ran and came back (an isolated run), or could not be executed at all."""

    exit_code: int  # its exit status; 126/127 as a shell says them when it could not run


def run_command(
    command: Sequence[str],
    path: str | None = None,
    until: str = "unblocked",
    wait_s: float | None = None,
    options: CheckOptions = DEFAULT_CHECK,
    serialize: bool = False,
    isolate: bool = False,
    keep: bool = False,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Refused | Ran:
    """`sqlprobe run` as a call: the queue (`serialize`), the preflight (`until` within
    `wait_s`, each check as `options` say), then `command`.

    It runs in place of this process (exec: this call returns only when it cannot be executed),
    or with `isolate` as a child with a database of its own (run_isolated; only opencode's own
    locks are judged: they still apply). The queue is held by the command until it exits.
    Raises QueueError when the queue is not safe to use, and deadline.Overrun when a step that
    touches the filesystem does not answer within STEP_S.
    """
    from sqlprobe.verdict.judge import ExitCode
    from sqlprobe.workflows.preflight import preflight

    env = os.environ if env is None else env
    said: Progress = progress or Silent()
    if isolate:
        # Its own database, but not its own lock directory: opencode's locks still apply.
        options = options._replace(databases=False)
        answer = preflight(path, until, wait_s, options, env, said.waiting, said.waited)
        if not answer.ok:
            return Refused(int(answer.verdict.exit_code), answer)
        return Ran(run_isolated(command, keep, env, said.isolated))
    queue = None
    if serialize:
        queue = take_queue(path, env, wait_s, on_wait=said.queued, warn=said.warn)
        said.waited()
        if queue.fd is None:
            return Refused(int(ExitCode.BUSY), queue=queue)
    try:
        answer = preflight(path, until, wait_s, options, env, said.waiting, said.waited)
        if not answer.ok:
            return Refused(int(answer.verdict.exit_code), answer)
        return Ran(exec_command(command))
    finally:  # reached only when the command did not replace this process: the queue is free
        if queue is not None and queue.fd is not None:
            os.close(queue.fd)
