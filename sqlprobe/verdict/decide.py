"""The decision: what every observed lock means for a new instance. Pure.

`decide(snapshot)` answers it for every lock of either kind, and nothing else in sqlprobe
re-derives it: SQLite's locks on a database's files (`database_effects`, on sqlite-locking.md
§6's table in sqlite/effects.py: the lock's outcome, and whether it persisted) and opencode's own
lock directories (`verdict.opencode.judge_opencode`: held, left behind or stale, needed by a
start-up, how long a new instance stalls). The collector is handed `database_effects` to decide
whether to sample a window and how to probe; the verdict, `wait`'s cheap polls and the report
read the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from sqlprobe.model import (
    DatabaseEffects,
    DatabaseSnapshot,
    LockEffect,
    LockIdentity,
    Observation,
    Snapshot,
)
from sqlprobe.sqlite.effects import effective_mode, outcome

if TYPE_CHECKING:
    from sqlprobe.verdict.opencode import OpencodeVerdict


class Decision(NamedTuple):
    """What every observed lock of a snapshot means for a new instance."""

    databases: tuple[DatabaseEffects, ...]  # one per Snapshot.databases, in that order
    opencode: OpencodeVerdict | None  # each of opencode's lock directories; None: not read


def decide(snapshot: Snapshot) -> Decision:
    """The effect of every lock of either kind in `snapshot`."""
    locks = None
    if snapshot.opencode is not None:
        # Only for opencode's own data; it uses the stuck rule, which imports this module.
        from sqlprobe.verdict.opencode import judge_opencode

        locks = judge_opencode(snapshot.opencode)
    return Decision(tuple(database_effects(db) for db in snapshot.databases), locks)


def database_effects(db: DatabaseSnapshot) -> DatabaseEffects:
    """The effect of each lock of the first observation, in the journal mode its holders use.

    A lock blocks a new instance when it would (`outcome`) and it persisted across the window
    (one observation: it persisted trivially). Waiter records (`->` lines) never block.
    """
    first = db.observations[0].locks if db.observations else ()
    mode = effective_mode(db.journal_mode, first)
    held = persisting(db.observations)
    return DatabaseEffects(
        mode, tuple(LockEffect(lk, outcome(lk, mode), lk.identity in held) for lk in first)
    )


def blocks_now(db: DatabaseSnapshot) -> bool:
    """Whether the last observation shows a lock that a new instance would meet: the
    collector's reason to sample a window, and `wait`'s to keep waiting without a full check."""
    effects = database_effects(db._replace(observations=db.observations[-1:]))
    return any(e.outcome is not None for e in effects.locks)


def persisting(observations: tuple[Observation, ...]) -> frozenset[LockIdentity]:
    """The identities of the locks present in every observation, held by the same process.

    A pid reused by a new process between two samples (psutil's rule) does not count as the same
    holder: its start time differs.
    """
    if not observations:
        return frozenset()
    common = {lock.identity for lock in observations[0].locks}
    for obs in observations[1:]:
        common &= {lock.identity for lock in obs.locks}
    starts: dict[int, set[int]] = {}
    for obs in observations:
        for proc in obs.procs:
            starts.setdefault(proc.pid, set()).add(proc.start_ticks)
    return frozenset(i for i in common if i.pid is None or len(starts.get(i.pid, ())) <= 1)
