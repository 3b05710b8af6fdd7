"""Waiting until a database reaches a state (clear, or unblocked), cheaply.

Each poll reads /proc/locks first and keeps only the lines on the database's files: while a
blocking lock (or, waiting for `clear`, any lock) is there, the answer is known without the full
snapshot. Only when the cheap look says "maybe" does a full check run (the /proc/PID/fd scan,
F_GETLK, the window), and only its verdict ends the wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from .collect_opencode import still_blocks
from .deadline import run_until
from .effects import effective_mode, outcome
from .layout import decode
from .model import FileKind, Snapshot
from .procfs import ProcFS
from .snapshot import DEFAULT_TIMEOUT, DEFAULT_WINDOW, check
from .verdict import State, Verdict, judge

POLL_INTERVAL = 0.1
UNTIL = {
    "clear": frozenset({State.CLEAR}),
    "unblocked": frozenset({State.CLEAR, State.SHARED}),
}


class WaitResult(NamedTuple):
    reached: bool
    snapshot: Snapshot
    verdict: Verdict
    waited_s: float
    full_checks: int  # how many full snapshots the wait took (the rest were cheap polls)


def wait(
    path: str | None,
    until: str = "unblocked",
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    window: float = DEFAULT_WINDOW,
    poll: float = POLL_INTERVAL,
    on_status: Callable[[Verdict, float], None] | None = None,
    procfs: ProcFS | None = None,
    **check_options: object,
) -> WaitResult:
    """Poll until the verdict is in UNTIL[until], or `timeout` seconds have passed."""
    accept = UNTIL[until]
    proc = procfs or ProcFS()
    started = time.monotonic()
    end = started + timeout
    full = 0
    while True:
        budget = max(0.1, min(DEFAULT_TIMEOUT, end - time.monotonic()))
        snapshot = check(path, env, window=window, procfs=proc, timeout=budget, **check_options)
        verdict = judge(snapshot)
        full += 1
        waited = time.monotonic() - started
        if verdict.state in accept or time.monotonic() >= end:
            return WaitResult(verdict.state in accept, snapshot, verdict, waited, full)
        if on_status:
            on_status(verdict, waited)
        # Cheap polls until something may have changed (or the time is up).
        while time.monotonic() < end:
            time.sleep(min(poll, max(0.0, end - time.monotonic())))
            budget = min(POLL_INTERVAL * 10, max(0.0, end - time.monotonic()))
            if not _still_held(proc, snapshot, until) and not _locks_still_block(
                proc, verdict, budget
            ):
                break
            if on_status:
                on_status(verdict, time.monotonic() - started)


def _still_held(proc: ProcFS, snapshot: Snapshot, until: str) -> bool:
    """From /proc/locks alone: is the database certainly still not in the wanted state?

    True only when a lock on its files rules the state out; False means "look properly".
    """
    try:
        lines, _bad = proc.locks()
    except OSError:
        return False
    for db in snapshot.databases:
        keys = {f.key: f.kind for f in db.files if f.key is not None and f.kind is not FileKind.WAL}
        locks = [
            lock
            for line in lines
            if line.file in keys and line.pid != proc.self_pid and not proc.is_sqlprobe(line.pid)
            for lock in decode(keys[line.file], line)
        ]
        if until == "clear" and locks:
            return True
        mode = effective_mode(db.journal_mode, locks)
        if any(outcome(lock, mode) is not None for lock in locks):
            return True
    return False


def _locks_still_block(proc: ProcFS, verdict: Verdict, seconds: float) -> bool:
    """Whether an opencode lock that blocked still certainly does: the same lock directory (the
    same meta.json), still fresh by opencode's stale rule, and a held one's process still there.
    A lock left behind stops blocking the moment it turns stale; nothing is deleted.

    The lstat()s run in a thread given `seconds` (the state dir may be on a hung filesystem);
    no answer in time means "look properly", and the full check has its own deadline.
    """
    blockers = verdict.opencode.blockers if verdict.opencode else ()
    if not blockers:
        return False
    job = run_until(lambda: any(still_blocks(proc, v.lock, v.state) for v in blockers), seconds)
    return job.done.is_set() and job.error is None and bool(job.value)
