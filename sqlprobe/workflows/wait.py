"""Waiting until a database reaches a state (clear, or unblocked), cheaply.

Each poll reads /proc/locks first and keeps only the lines on the database's files: while a
blocking lock (or, waiting for `clear`, any lock) is there, the answer is known without the full
snapshot. Only when the cheap look says "maybe" does a full check run (the /proc/PID/fd scan,
F_GETLK, the window), and only its verdict ends the wait; and every RECHECK_INTERVAL all the
same, since a holder that keeps its lock may have stopped. A stuck verdict ends the wait at once:
waiting will not help.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from sqlprobe import system
from sqlprobe.collect.locks import quick_locks
from sqlprobe.collect.opencode import still_blocks
from sqlprobe.collect.snapshot import AFTER_WINDOW_S
from sqlprobe.model import Observation, Snapshot
from sqlprobe.options import DEFAULT_TIMEOUT, DEFAULT_WAIT, DEFAULT_WINDOW
from sqlprobe.system.backend import Backend
from sqlprobe.system.deadline import run_until
from sqlprobe.verdict.decide import blocks_now
from sqlprobe.verdict.judge import State, Verdict, judge
from sqlprobe.workflows.check import take_snapshot

POLL_INTERVAL = 0.1
# While the cheap polls see the same lock held, a full check every so often still: a holder that
# was working may have stopped (stuck: waiting will not help) or handed the lock on.
RECHECK_INTERVAL = 3.0
# What a full check needs besides its window to finish it: the scan before it, and the margin
# the snapshot keeps after it (snapshot.AFTER_WINDOW_S). A check with less is cut short.
SCAN_ALLOWANCE = 0.25
UNTIL = {
    "clear": frozenset({State.CLEAR}),
    "unblocked": frozenset({State.CLEAR, State.SHARED}),
}


class WaitResult(NamedTuple):
    reached: bool  # False: the time ran out, or the state is stuck (waiting will not help)
    snapshot: Snapshot
    verdict: Verdict
    waited_s: float
    full_checks: int  # how many full snapshots the wait took (the rest were cheap polls)


def wait(
    path: str | None,
    until: str = "unblocked",
    timeout: float = DEFAULT_WAIT,
    env: Mapping[str, str] | None = None,
    window: float = DEFAULT_WINDOW,
    poll: float = POLL_INTERVAL,
    on_status: Callable[[Verdict, float], None] | None = None,
    proc: Backend | None = None,
    check_timeout: float = DEFAULT_TIMEOUT,
    **check_options: object,
) -> WaitResult:
    """Poll until the verdict is in UNTIL[until], or `timeout` seconds have passed, or the state
    is stuck (a holder making no progress: waiting will not help).

    Each full check is given `check_timeout`, or what is left of `timeout` if less. A check
    that would have too little left to finish its window is still taken, for its chance to
    find the state reached, but a verdict it cut short is not the answer: the last complete
    one is (only a first check has none before it: a `timeout` shorter than a check).
    """
    accept = UNTIL[until]
    proc = proc or system.backend()
    started = time.monotonic()
    end = started + timeout
    full = 0
    complete: tuple[Snapshot, Verdict] | None = None
    while True:
        budget = min(check_timeout, end - time.monotonic())
        if complete is None:
            budget = max(0.1, min(check_timeout, timeout))
        elif budget <= 0:
            return WaitResult(False, *complete, time.monotonic() - started, full)
        snapshot = take_snapshot(
            path, env, window=window, proc=proc, timeout=budget, **check_options
        )
        verdict = judge(snapshot)
        full += 1
        waited = time.monotonic() - started
        if verdict.state in accept:
            return WaitResult(True, snapshot, verdict, waited, full)
        if not snapshot.cut_short or complete is None:
            complete = snapshot, verdict
        snapshot, verdict = complete
        if verdict.state is State.STUCK or time.monotonic() >= end:
            return WaitResult(False, snapshot, verdict, waited, full)
        if on_status:
            on_status(verdict, waited)
        # Cheap polls until something may have changed (or the time is up), with a full check
        # every RECHECK_INTERVAL all the same.
        recheck = time.monotonic() + RECHECK_INTERVAL
        while time.monotonic() < end:
            time.sleep(min(poll, max(0.0, end - time.monotonic())))
            now = time.monotonic()
            if now >= recheck and end - now >= window + AFTER_WINDOW_S + SCAN_ALLOWANCE:
                break
            budget = min(POLL_INTERVAL * 10, max(0.0, end - now))
            if not _still_held(proc, snapshot, until) and not _locks_still_block(
                proc, verdict, budget
            ):
                break
            if on_status:
                on_status(verdict, time.monotonic() - started)
        if time.monotonic() >= end:
            return WaitResult(False, snapshot, verdict, time.monotonic() - started, full)


def _still_held(proc: Backend, snapshot: Snapshot, until: str) -> bool:
    """From /proc/locks alone: is the database certainly still not in the wanted state?

    True only when a lock on its files rules the state out; False means "look properly".
    """
    looked = quick_locks(proc, snapshot.databases)
    if looked is None:
        return False
    for db, locks in zip(snapshot.databases, looked, strict=True):
        if until == "clear" and locks:
            return True
        if blocks_now(db._replace(observations=(Observation(time.monotonic(), locks, ()),))):
            return True
    return False


def _locks_still_block(proc: Backend, verdict: Verdict, seconds: float) -> bool:
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
