"""A deadline for a whole check, and running work that may never return under it.

A stat on a hung NFS or FUSE mount, or a SQLite call inside its ~10 s SQLITE_PROTOCOL retry loop,
cannot be interrupted from Python. So such work runs in a daemon thread, and the caller stops
waiting when the deadline comes; the thread is abandoned (a command-line run exits right after;
a library caller keeps a parked thread until the kernel or SQLite lets it go).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Deadline:
    """When the work must be done by, and what it is doing now (named when it overruns)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.end = math.inf if seconds is None else clock() + seconds
        self.stage = "starting"

    def remaining(self) -> float:
        return max(0.0, self.end - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.end


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


def run_until(work: Callable[[], T], seconds: float, name: str = "sqlprobe-work") -> Job[T]:
    """Run `work` in a daemon thread and wait at most `seconds` for it.

    Check `job.done.is_set()`: when it is not, the work is still running and is abandoned.
    """
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
