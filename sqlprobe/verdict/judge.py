"""The verdict: a pure function of a Snapshot. No I/O, no clock, no exit.

Per database: `error` when it could not be judged; `busy` when a lock that a new instance needs
(effects.py) was held in every observation of the window; `stuck` when, besides, its holder made
no progress; `shared` when other processes have it open without such a lock; else `clear`.
The worst database decides for the whole target.
"""

from __future__ import annotations

import itertools
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, NamedTuple

from sqlprobe.model import (
    DatabaseEffects,
    DatabaseSnapshot,
    FileKind,
    Finding,
    FindingKind,
    JournalMode,
    Lock,
    LockEffect,
    LockName,
    Observation,
    OtherName,
    ProbeResult,
    Problem,
    Snapshot,
)
from sqlprobe.sqlite.effects import Outcome, describe
from sqlprobe.text import is_a, safe, seconds, short_command
from sqlprobe.verdict.decide import database_effects, decide
from sqlprobe.verdict.findings import state_findings
from sqlprobe.verdict.sidefiles import non_regular_effect

if TYPE_CHECKING:
    from sqlprobe.verdict.health import Health
    from sqlprobe.verdict.opencode import OpencodeVerdict


class State(str, Enum):
    CLEAR = "clear"
    SHARED = "shared"
    BUSY = "busy"
    STUCK = "stuck"
    ERROR = "error"


class ExitCode(IntEnum):
    """sqlprobe's exit codes; one per verdict, plus click's usage error and a crash."""

    CLEAR = 0
    CRASH = 1  # an unexpected error inside sqlprobe: a bug
    USAGE = 2  # click's usage error: bad options or arguments
    SHARED = 3
    BUSY = 4
    STUCK = 5
    ERROR = 6
    OUTPUT = 7  # the report could not be written (a full disk): not a verdict, not a bug


EXIT_CODES = {state: ExitCode[state.name] for state in State}

# Which database decides for the whole target: a definite block outranks "cannot judge".
SEVERITY = {State.CLEAR: 0, State.SHARED: 1, State.ERROR: 2, State.BUSY: 3, State.STUCK: 4}

NAMING_ORDER = {
    LockName.EXCLUSIVE: 0,
    LockName.WAL_WRITE: 0,
    LockName.PENDING: 1,
    LockName.RESERVED: 2,
    LockName.SHARED: 3,
}
ASLEEP = frozenset("SDI")  # thread states that are waiting, not running
STOPPED = {"T": "is stopped (state T)", "t": "is stopped by a tracer (state t)"}
COMMAND_WIDTH = 60
AS_ONE_OF_SEVERAL = {
    State.SHARED: "is shared",
    State.BUSY: "is busy",
    State.STUCK: "is stuck",
    State.ERROR: "cannot be judged",
}


class Blocker(NamedTuple):
    """A lock that persisted across the window and that a new instance would run into."""

    lock: Lock
    outcome: Outcome
    stuck: str | None  # the clause of the stuck rule that applied, or None: busy, not stuck


class HolderState(NamedTuple):
    """What one holder of a database did across the window, and what it waits on."""

    pid: int
    locks: tuple[LockEffect, ...]  # its locks at the first look (waiter records apart)
    # Locks it waits for (`->` lines), from the last observation that read /proc/locks: only
    # there are waiters listed. Empty when none, or none was read.
    waiting_for: tuple[Lock, ...]
    waiting_on: tuple[int, ...]  # pids it waits on in the kernel all window (wait-for edges)
    likely_waiting_on: tuple[int, ...]  # blockers it is likely waiting on (an inference)
    health: Health | None  # None: never sampled
    stuck: str | None  # the stuck clause, when it holds a blocking lock and is stuck


class DatabaseVerdict(NamedTuple):
    path: str
    state: State
    reason: str
    journal_mode: JournalMode  # effective: the header's, or inferred from the locks
    blockers: tuple[Blocker, ...] = ()
    effects: DatabaseEffects | None = None  # every lock of the first look and its effect
    warnings: tuple[Finding, ...] = ()  # what its files say that a new instance copes with
    holders: tuple[HolderState, ...] = ()  # one per DatabaseSnapshot.holders, in that order

    def effect(self, lock: Lock) -> LockEffect:
        """The decision about `lock` (judge.decide); nothing blocks without one."""
        if self.effects is None:
            return LockEffect(lock, None, False)
        return self.effects.of(lock)

    def holder(self, pid: int) -> HolderState | None:
        return next((h for h in self.holders if h.pid == pid), None)


class Verdict(NamedTuple):
    state: State
    reason: str
    databases: tuple[DatabaseVerdict, ...] = ()
    opencode: OpencodeVerdict | None = None  # None when opencode's state was not read

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.state]


def judge(snapshot: Snapshot) -> Verdict:
    """The verdict for a whole target: the worst of its databases and of opencode's locks."""
    # Reasons are printed as one line: paths in them may hold newlines or escape sequences.
    if snapshot.error:
        return Verdict(State.ERROR, safe(problem_reason(snapshot.error)))
    decided = decide(snapshot)
    locks = decided.opencode
    blocking = sorted(locks.blockers, key=lambda v: -SEVERITY[v.verdict]) if locks else []
    if not snapshot.databases and not blocking:
        return Verdict(State.CLEAR, safe(snapshot.note or "nothing to check"), (), locks)
    verdicts = tuple(
        judge_database(db, snapshot.window_s, snapshot.thorough, effects)
        for db, effects in zip(snapshot.databases, decided.databases, strict=True)
    )
    worst = max(verdicts, key=lambda v: SEVERITY[v.state], default=None)
    if blocking and (worst is None or SEVERITY[blocking[0].verdict] >= SEVERITY[worst.state]):
        # A lock of opencode's own: a start-up waits minutes on it, a database lock seconds.
        state, reason = blocking[0].verdict, blocking[0].reason
    else:
        assert worst is not None
        state, reason = worst.state, worst.reason
        if len(verdicts) > 1 and worst.state is not State.CLEAR:
            # Every database that is not clear is named, the worst first.
            reason = f"{safe(worst.path)}: {reason}"
            others = [v for v in verdicts if v is not worst and v.state is not State.CLEAR]
            for other in sorted(others, key=lambda v: -SEVERITY[v.state]):
                reason += (
                    f"; and {safe(other.path)} {AS_ONE_OF_SEVERAL[other.state]}: {other.reason}"
                )
        elif state is State.CLEAR and snapshot.note:
            reason = safe(snapshot.note)  # a data dir not made yet
    if snapshot.cut_short:
        cut = " and ".join(snapshot.cut_short)
        reason += f" (the {seconds(snapshot.timeout_s or 0)} s timeout cut short {cut})"
    if state in (State.CLEAR, State.SHARED) and snapshot.uninspected_processes:
        n = snapshot.uninspected_processes
        reason += (
            f" ({n} process{'es' if n != 1 else ''} could not be inspected: their open files are"
            " unknown, though any lock they hold would have been seen)"
        )
    if state in (State.CLEAR, State.SHARED) and snapshot.skipped_processes:
        n = snapshot.skipped_processes
        reason += f" ({n} {skipped_caveat(n)})"
    return Verdict(state, reason, verdicts, locks)


def problem_reason(problem: Problem) -> str:
    """The reason of an `error` verdict: `path: what is wrong`, or what is wrong alone."""
    return f"{problem.path}: {problem.detail}" if problem.path is not None else problem.detail


def skipped_caveat(n: int) -> str:
    """Why `n` processes of other users went unscanned, and what that can miss (the text report
    and the JSON reason say the same)."""
    return (
        f"process{'' if n == 1 else 'es'} of other users not scanned, whom the files' own modes"
        " keep out: one that opened the database before a chmod, or was handed a descriptor,"
        " would be missed; --thorough scans them"
    )


def judge_database(
    db: DatabaseSnapshot,
    window_s: float,
    thorough: bool = False,
    effects: DatabaseEffects | None = None,
) -> DatabaseVerdict:
    """One database's verdict; `thorough`: every open file of every process was stat()ed.
    `effects`: the decision about its locks (decide.database_effects; made here when None)."""
    effects = effects or database_effects(db)
    verdict = _judge_database(db, window_s, effects)
    return verdict._replace(
        effects=effects,
        warnings=_file_warnings(db, thorough),
        holders=holder_states(db, verdict.blockers, effects),
    )


def holder_states(
    db: DatabaseSnapshot, blockers: tuple[Blocker, ...], effects: DatabaseEffects
) -> tuple[HolderState, ...]:
    """Per holder: its locks' effects, what it waits on, its health across the window."""
    if not db.holders:
        return ()
    from sqlprobe.verdict.health import health, likely_waiting, persistent_edges, waits_on

    observations = db.observations
    edges = persistent_edges(observations)
    listed = next((o for o in reversed(observations) if o.waits is not None), None)
    waiting = [lk for lk in (listed.locks if listed else ()) if lk.waiter]
    blocking = sorted({b.lock.pid for b in blockers if b.lock.pid})
    out = []
    for h in db.holders:
        likely = [p for p in blocking if p != h.pid]
        out.append(
            HolderState(
                pid=h.pid,
                locks=tuple(e for e in effects.locks if e.lock.pid == h.pid and not e.lock.waiter),
                waiting_for=tuple(lk for lk in waiting if lk.pid == h.pid),
                waiting_on=tuple(waits_on(h.pid, edges)),
                likely_waiting_on=tuple(likely)
                if likely and likely_waiting(h.pid, observations)
                else (),
                health=health(h.pid, observations),
                stuck=next((b.stuck for b in blockers if b.lock.pid == h.pid and b.stuck), None),
            )
        )
    return tuple(out)


def _judge_database(
    db: DatabaseSnapshot, window_s: float, effects: DatabaseEffects
) -> DatabaseVerdict:
    mode = db.journal_mode
    if db.error:
        return DatabaseVerdict(db.path, State.ERROR, safe(problem_reason(db.error)), mode)
    for side in db.files:
        if side.not_regular and side.kind is not FileKind.DB:
            fails, meets = non_regular_effect(side, db)
            if fails:
                reason = f"{safe(side.path)} {is_a(side.not_regular)}: {meets}"
                return DatabaseVerdict(db.path, State.ERROR, reason, mode)
    if own_wal := [o for o in db.other_names if o.side_files]:
        return DatabaseVerdict(db.path, State.ERROR, _other_name_reason(db, own_wal), mode)
    if db.deleted_open:
        return DatabaseVerdict(db.path, State.ERROR, _deleted_reason(db), mode)
    if db.probe and db.probe.result is ProbeResult.UNREADABLE:
        reason = f"SQLite cannot read {safe(db.path)}: {safe(db.probe.detail)} ({db.probe.said})"
        return DatabaseVerdict(db.path, State.ERROR, reason, mode)
    if not db.exists:
        reason = f"{safe(db.path)} does not exist: a new instance would create it"
        return DatabaseVerdict(db.path, State.CLEAR, reason, mode)
    observations = db.observations
    first = observations[0].locks if observations else ()
    mode = effects.mode
    blockers = [
        Blocker(e.lock, e.outcome, stuck_clause(e.lock.pid, observations))  # type: ignore[arg-type]
        for e in effects.blocking
    ]
    if blockers:
        # Name a stuck holder first, then the lock that says most (EXCLUSIVE over the PENDING
        # taken on the way to it), whatever order the kernel listed them in.
        blockers.sort(key=lambda b: (b.stuck is None, NAMING_ORDER.get(b.lock.name, 9)))
        top = blockers[0]
        state = State.STUCK if top.stuck else State.BUSY
        reason = _blocked_reason(db, top, len(observations), window_s)
        return DatabaseVerdict(db.path, state, reason, mode, tuple(blockers))
    if db.holders or first:
        pids = sorted({h.pid for h in db.holders} | {lk.pid for lk in first if lk.pid})
        who = _pid_list(pids) if pids else "a process sqlprobe cannot see"
        reason = (
            f"{who} {'has' if len(pids) == 1 else 'have'} it open, but no lock that a new instance"
            " needs: it would start alongside"
        )
        transient = [e.lock for e in effects.locks if e.transient]
        if transient:
            reason += (
                f" ({describe(transient[0])} was taken by {_who(db, transient[0])} but released"
                " within the window)"
            )
        return DatabaseVerdict(db.path, State.SHARED, reason, mode)
    reason = f"no other process holds {safe(db.path)} or its side files"
    return DatabaseVerdict(db.path, State.CLEAR, reason, mode)


def stuck_clause(
    pid: int | None, observations: tuple[Observation, ...], idle: bool = True
) -> str | None:
    """Which clause of the stuck rule holds for `pid` across the window, or None.

    Stuck: stopped or traced all window; or on a wait-for cycle (deadlocked); or itself waiting
    on a lock all window (a `->` line, or a thread asleep in a file-lock wait); or with a child
    that exited and was never reaped all window (opencode #41806: it never finishes starting);
    or, unless `idle` is False, no CPU used while every thread slept in every sample. Needs at
    least two observations of the process.
    """
    if pid is None or len(observations) < 2:
        return None
    samples = [obs.proc(pid) for obs in observations]
    if any(s is None for s in samples):
        return None  # gone or unreadable in some sample: no evidence either way
    states = {s.state for s in samples if s}
    if len(states) == 1 and (clause := STOPPED.get(next(iter(states)))):
        return clause
    # Only a blocking lock gets here: keep the wait-for graph off the clear path's imports.
    from sqlprobe.verdict.health import cycle_through, kernel_lock_wait, persistent_edges, waits_on

    edges = persistent_edges(observations)
    if cycle := cycle_through(pid, edges):
        steps = ", which waits on ".join(f"pid {p}" for p in [*cycle, pid])
        return f"is deadlocked: {steps}"
    listed = [obs for obs in observations if obs.waits is not None]  # waiters are known there
    if listed and all(any(lk.waiter and lk.pid == pid for lk in obs.locks) for obs in listed):
        waited = next(lk for lk in listed[-1].locks if lk.waiter and lk.pid == pid)
        return f"is itself waiting on {describe(waited)} held by another process"
    if others := waits_on(pid, edges):
        return f"is itself waiting on a lock held by {_pid_list(others)}"
    if kernel_lock_wait(pid, observations):
        return "is itself waiting on a file lock in the kernel (its holder is not visible)"
    # Threads (and children) are sampled from the second look on, once a blocking lock was seen.
    threaded = [s for s in samples if s and s.threads]
    if len(threaded) < 2:
        return None  # no evidence of sleep
    never_reaped = set.intersection(*(set(s.zombies) for s in threaded))
    if never_reaped:
        child = min(never_reaped)
        return f"has a child that exited and was never reaped all window (pid {child})"
    if not idle or samples[0].cpu_s != samples[-1].cpu_s:  # type: ignore[union-attr]
        return None
    first, last = threaded[0], threaded[-1]
    if {t.tid for t in first.threads} != {t.tid for t in last.threads}:
        return None  # threads came or went: something is happening
    if sum(t.cpu_ns for t in last.threads) != sum(t.cpu_ns for t in first.threads):
        return None
    if all(t.state in ASLEEP for s in threaded for t in s.threads):
        n = len(last.threads)
        threads = "its only thread" if n == 1 else f"all {n} threads"
        return f"used no CPU, {threads} asleep"
    return None


def _file_warnings(db: DatabaseSnapshot, thorough: bool) -> tuple[Finding, ...]:
    """What the side files say (judge.findings); side files that are not regular but that a
    new instance copes with; a hard-linked database that nobody was seen using by another
    name (without --thorough)."""
    out = list(state_findings(db))
    for side in db.files:
        if side.not_regular and side.kind is not FileKind.DB and not db.error:
            fails, meets = non_regular_effect(side, db)
            if not fails:
                detail = f"{is_a(side.not_regular)}: {meets}"
                out.append(Finding(FindingKind.NOT_REGULAR_HARMLESS, side.path, detail=detail))
    if db.links and db.links > 1 and not db.other_names and not thorough:
        out.append(Finding(FindingKind.HARD_LINKS, db.path, count=db.links))
    return tuple(out)


def _other_name_reason(db: DatabaseSnapshot, others: list[OtherName]) -> str:
    first = others[0]
    who = _pid_named(db, first.pid)
    path = safe(db.path)
    pids = sorted({o.pid for o in others})
    return (
        f"{who} has {path} open as {safe(first.path)} (a hard link, or a bind mount of the"
        f" file), with a WAL of its own ({', '.join(safe(p) for p in first.side_files)}): a new"
        f" instance would write to {path}-wal, and two processes would commit to two WALs of"
        f" one database (a way to corrupt it); stop {_pid_list(pids)} first"
    )


def _deleted_reason(db: DatabaseSnapshot) -> str:
    pid, kind = db.deleted_open[0]
    pids = sorted({p for p, _ in db.deleted_open})
    name = safe(db.path + kind.suffix)
    who = _pid_named(db, pid)
    if kind is FileKind.DB:
        risk = (
            "its writes go to a file that no longer has a name, and a new instance would start"
            " on another database"
        )
    else:
        risk = (
            "a new instance would make a new one beside it, and the two processes would not see"
            " each other's writes (a way to corrupt the database)"
        )
    return f"{name} was deleted while {who} still has it open: {risk}; stop {_pid_list(pids)} first"


def _who(db: DatabaseSnapshot, lock: Lock) -> str:
    if lock.pid is None:
        if lock.lock_class == "OFDLCK":
            return "a process sqlprobe cannot name (an open-file-description lock)"
        return "a process outside this pid namespace (seen only through F_GETLK)"
    return _pid_named(db, lock.pid)


def _pid_named(db: DatabaseSnapshot, pid: int) -> str:
    """`pid 4242 (opencode run …)`: the pid, and its command as the table shows it."""
    holder = db.holder(pid)
    if holder is None or not holder.command:
        return f"pid {pid}"
    return f"pid {pid} ({short_command(safe(holder.command), COMMAND_WIDTH)})"


def _blocked_reason(db: DatabaseSnapshot, blocker: Blocker, samples: int, window_s: float) -> str:
    lock = blocker.lock
    held = (
        f"has held {describe(lock)} for the whole {seconds(window_s)} s window"
        if samples > 1
        else f"holds {describe(lock)} (seen once: no observation window)"
    )
    reason = f"{_who(db, lock)} {held}"
    if blocker.stuck:
        reason += f" and {blocker.stuck}"
    commits = commits_seen(db.observations)
    if blocker.outcome is Outcome.LOCKED and commits and not blocker.stuck:
        # The lock was there at every sample, yet released between them: a new instance's
        # busy handler retries, and gets in at a gap.
        reason += (
            f", but it committed {commits} time{'s' if commits > 1 else ''} in the window (the"
            " lock is released between its transactions): a new instance may wait up to its"
            ' busy timeout (5 s in opencode), failing with "database is locked" only if it'
            " never finds the lock free"
        )
        return reason
    reason += f": a new instance would {blocker.outcome.value}"
    if blocker.stuck:
        reason += "; waiting will not help"
    return reason


def commits_seen(observations: tuple[Observation, ...]) -> int:
    """How many times what a commit changes changed between observations (0: none seen)."""
    marks = [o.change for o in observations if o.change is not None]
    return sum(1 for a, b in itertools.pairwise(marks) if a != b)


def _pid_list(pids: list[int]) -> str:
    shown = ", ".join(str(p) for p in pids[:5])
    more = f" and {len(pids) - 5} more" if len(pids) > 5 else ""
    return f"pid{'s' if len(pids) > 1 else ''} {shown}{more}"
