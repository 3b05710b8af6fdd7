"""A deadline for a whole check, and running work that may never return under it.

A stat on a hung NFS or FUSE mount, an open() of a FIFO inside SQLite (with the GIL held), or a
SQLite call inside its ~10 s SQLITE_PROTOCOL retry loop cannot be interrupted from Python. So
such work runs apart, and the caller stops waiting when the deadline comes:

- in a library caller, in a daemon thread, abandoned at the deadline (the caller keeps a parked
  thread until the kernel or SQLite lets it go);
- under the command line (`use_processes`), in a forked child that is killed at the deadline.
  A thread cannot do there: a thread blocked on a FUSE request that the daemon has read but
  never answers sleeps uninterruptibly, and the kernel does not let a process exit while one of
  its threads does. A stuck child is left to init, with /dev/null for its stdin, stdout and
  stderr, so that whoever reads sqlprobe's output sees the end of it as sqlprobe exits.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Deadline:
    """When the work must be done by, and what it is doing now (named when it overruns)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.end = math.inf if seconds is None else clock() + seconds
        self._stage = "starting"
        self.report: Callable[[str], None] | None = None  # a worker's: tells its parent

    @property
    def stage(self) -> str:
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        self._stage = value
        if self.report is not None:
            self.report(value)

    def remaining(self) -> float:
        return max(0.0, self.end - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.end


class Handed(NamedTuple):
    """What work returns to hand open descriptors to the caller: in a child, they travel over
    a Unix socket (SCM_RIGHTS) and arrive as new descriptors of the caller's (run_until with
    `hands_fds`); the child's own copies close with it."""

    value: Any
    fds: tuple[int, ...]


class Job(Generic[T]):
    """What `run_until` hands back: the value, the exception the work raised, or neither."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class Overrun(Exception):
    """Work that had not finished by its deadline (`within`)."""

    def __init__(self, what: str, seconds: float) -> None:
        from sqlprobe.text import seconds as shown

        super().__init__(f"no answer within {shown(seconds)} s {what} (a hung filesystem?)")
        self.what = what
        self.seconds = seconds


def within(work: Callable[[], T], seconds: float, what: str, hands_fds: bool = False) -> T:
    """`work`'s value, run apart as `run_until` does; Overrun when it takes longer than
    `seconds` (`what` names the step: "making the queue directory")."""
    job = run_until(work, seconds, hands_fds=hands_fds)
    if not job.done.is_set():
        raise Overrun(what, seconds)
    return job.get()


_processes = False
_children: list[int] = []  # workers not reaped yet
_FRAME = struct.Struct(">cI")  # kind (b"s" stage, b"v" value, b"e" error), payload length


def use_processes(on: bool) -> None:
    """Run `run_until`'s work in forked children (the command line) or in threads (a library)."""
    global _processes
    _processes = on


def run_until(
    work: Callable[[], T],
    seconds: float,
    name: str = "sqlprobe-work",
    deadline: Deadline | None = None,
    hands_fds: bool = False,
) -> Job[T]:
    """Run `work` apart (see the module's docstring) and wait at most `seconds` for it.

    Check `job.done.is_set()`: when it is not, the work was abandoned (a thread) or killed (a
    child). A child's `deadline.stage` reaches `deadline` in this process as it changes; its
    value or exception comes back pickled. With `hands_fds`, work may return `Handed`.
    """
    if _processes:
        return _in_child(work, seconds, deadline, hands_fds)
    job: Job[T] = Job()

    def target() -> None:
        try:
            job.value = work()
        except BaseException as err:  # handed to the caller, who re-raises it with get()
            job.error = err
        finally:
            job.done.set()

    threading.Thread(target=target, name=name, daemon=True).start()
    job.done.wait(max(0.0, seconds))
    return job


def _in_child(
    work: Callable[[], T], seconds: float, deadline: Deadline | None, hands_fds: bool
) -> Job[T]:
    job: Job[T] = Job()
    if hands_fds:
        import socket  # only for descriptors: a pipe is cheaper to set up

        read_sock, write_sock = socket.socketpair()
        read_end, write_end = read_sock.detach(), write_sock.detach()
    else:
        read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child's coverage is not collected)
        try:
            os.close(read_end)
            _become_worker()
            if deadline is not None:
                deadline.report = lambda stage: _send(
                    write_end, b"s", stage.encode(errors="replace")
                )
            fds: tuple[int, ...] = ()
            try:
                value = work()
                if isinstance(value, Handed):
                    value, fds = Handed(value.value, ()), value.fds
                payload = b"v" + pickle.dumps(value)
            except BaseException as err:
                payload = b"e" + _pickled_error(err)
            _send(write_end, payload[:1], payload[1:], fds)
        finally:
            os._exit(0)
    os.close(write_end)
    _children.append(pid)
    end = time.monotonic() + max(0.0, seconds)
    buf = b""
    received: list[int] = []
    try:
        while not job.done.is_set():
            left = end - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                break
            chunk = _receive(read_end, received) if hands_fds else os.read(read_end, 1 << 16)
            if not chunk:
                job.error = RuntimeError("the worker process died without an answer")
                job.done.set()
                break
            buf = _take_frames(buf + chunk, job, deadline)
    finally:
        os.close(read_end)
        if not job.done.is_set():
            os.kill(pid, signal.SIGKILL)
        _reap(pid, wait=job.done.is_set())
    if isinstance(job.value, Handed):
        job.value = Handed(job.value.value, tuple(received))  # type: ignore[assignment]
    else:
        for fd in received:
            os.close(fd)
    return job


def _receive(sock_fd: int, received: list[int]) -> bytes:
    import socket

    sock = socket.socket(fileno=sock_fd)
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 8)
    finally:
        sock.detach()
    received.extend(fds)
    return data


def _become_worker() -> None:  # pragma: no cover (runs in the child)
    """What a worker child must not share with the caller: the terminal's SIGINT (its parent
    decides, and kills it) and the standard streams (a reader waits for their end).

    Within it, work runs in threads: the worker is itself killed at the deadline, and a fork
    per step (the probe) would cost an import of SQLite each time. A thread stuck in the
    kernel keeps only the worker from exiting, after its answer has gone up.
    """
    global _processes
    _processes = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # the name other sqlprobe processes know it by (LinuxBackend.is_sqlprobe)
        with open("/proc/self/comm", "w") as comm:
            comm.write("sqlprobe")
    except OSError:
        pass
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _send(
    fd: int, kind: bytes, payload: bytes, fds: tuple[int, ...] = ()
) -> None:  # pragma: no cover (the child's)
    data = _FRAME.pack(kind, len(payload)) + payload
    if fds:  # with the first byte of the frame, over the socket
        import socket

        sock = socket.socket(fileno=fd)
        try:
            data = data[socket.send_fds(sock, [data], list(fds)) :]
        finally:
            sock.detach()
    while data:
        data = data[os.write(fd, data) :]


def _pickled_error(err: BaseException) -> bytes:  # pragma: no cover (the child's)
    try:
        return pickle.dumps(err)
    except Exception:  # an exception that cannot travel: its type and message can
        return pickle.dumps(RuntimeError(f"{type(err).__name__}: {err}"))


def _take_frames(buf: bytes, job: Job[T], deadline: Deadline | None) -> bytes:
    """Apply the whole frames at the start of `buf`; return the rest."""
    while len(buf) >= _FRAME.size:
        kind, size = _FRAME.unpack_from(buf)
        if len(buf) < _FRAME.size + size:
            break
        payload, buf = buf[_FRAME.size : _FRAME.size + size], buf[_FRAME.size + size :]
        if kind == b"s":
            if deadline is not None:
                deadline._stage = payload.decode(errors="replace")
        elif kind == b"v":
            job.value = pickle.loads(payload)
            job.done.set()
        else:
            job.error = pickle.loads(payload)
            job.done.set()
    return buf


REAP_S = 0.1  # how long to wait for a worker that answered (or was killed) to be gone


def _reap(pid: int, wait: bool) -> None:
    """Collect worker `pid` once it is gone, within REAP_S when it answered (it is exiting);
    and any earlier one that has gone since. One that was killed is not waited for (one blocked
    in the kernel never goes): it stays listed, and becomes init's when sqlprobe exits."""
    try:
        pidfd = os.pidfd_open(pid) if wait else None
    except OSError:
        pidfd = None
    if pidfd is not None:
        try:
            select.select([pidfd], [], [], REAP_S)  # readable once the process has exited
        finally:
            os.close(pidfd)
    for pid in list(_children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _children.remove(pid)
