"""The row model (lslocks' habit): holder rows, lock rows and opencode lock rows, built once from
a snapshot and its verdict. The table's columns and the JSON's fields are views of these rows,
so the two cannot disagree. Pure: no I/O, no decision (the verdict has made them all).
"""

from __future__ import annotations

from typing import NamedTuple

from sqlprobe.model import DatabaseSnapshot, FileKind, Lock, Mode, OpencodeState, Snapshot
from sqlprobe.opencode.locks import key_words
from sqlprobe.verdict.health import Health
from sqlprobe.verdict.judge import DatabaseVerdict, HolderState, Verdict
from sqlprobe.verdict.opencode import LockVerdict


class LockRow(NamedTuple):
    """One lock, as the JSON lists it and the LOCKS column shows it."""

    file: str  # db, shm, journal
    lock: str  # its name in SQLite's terms (LockName's value)
    mode: str  # shared, exclusive
    start: int
    end: int | None
    lock_class: str  # POSIX, OFDLCK, FLOCK...
    source: str  # proc-locks, fdinfo, getlk
    persisted: bool  # held all window by the same process
    blocks: bool  # a new instance would meet it (whether or not it persisted)
    waiter: bool  # a `->` record: its process waits for this lock
    pid: int | None

    def cell_in(self, windowed: bool) -> str:
        """`wal-write:EX*`: name, :EX when exclusive, * when it blocks, ~ when it did not persist
        (shown for a lock that does not block only when there was a window)."""
        text = f"{self.file}:{self.lock}" if self.file != FileKind.SHM.value else self.lock
        if self.mode == Mode.EXCLUSIVE.value and self.lock != "exclusive":
            text += ":EX"
        if self.waiter:
            return "waits:" + text
        if self.blocks:
            return text + ("*" if self.persisted else "~")
        return text + ("~" if windowed and not self.persisted else "")


class HolderRow(NamedTuple):
    """One holder of a database: what the table's row and the JSON's holder object show."""

    pid: int
    command: str
    user: str | None
    uid: int | None
    state: str | None  # at the last observation; None when it was not sampled
    age_s: float | None
    cpu_s: float | None  # its CPU time at the last observation
    files: tuple[str, ...]
    fds_readable: bool
    locks: tuple[LockRow, ...]  # held at the first look
    waiting_for: tuple[LockRow, ...]  # waited for, where /proc/locks listed waiters
    waiting_on: tuple[int, ...]
    likely_waiting_on: tuple[int, ...]
    health: Health | None
    stuck: str | None


class DatabaseRows(NamedTuple):
    holders: tuple[HolderRow, ...]
    unattributed: tuple[LockRow, ...]  # locks whose holder sqlprobe cannot see


class OpencodeLockRow(NamedTuple):
    """One of opencode's lock directories, as its table row and its JSON object show it."""

    path: str
    key: str | None
    description: str  # the key in words
    pid: int | None
    hostname: str | None
    alive: bool | None
    command: str | None  # its live owner's command line
    held_s: float | None
    heartbeat_age_s: float | None
    state: str  # held, left-behind, stale, unknown
    needed: bool
    blocks: bool
    wait_s: float | None
    stuck: str | None
    breaker_age_s: float | None
    problem: str | None
    reason: str
    verdict: str  # the state it gives the verdict: clear, busy, stuck


def lock_row(lock: Lock, dv: DatabaseVerdict) -> LockRow:
    effect = dv.effect(lock)
    return LockRow(
        file=lock.file.value,
        lock=str(lock.name),
        mode=lock.mode.value,
        start=lock.range.start,
        end=lock.range.end,
        lock_class=lock.lock_class,
        source=lock.source,
        persisted=effect.persisted,
        blocks=effect.outcome is not None,
        waiter=lock.waiter,
        pid=lock.pid,
    )


def database_rows(db: DatabaseSnapshot, dv: DatabaseVerdict) -> DatabaseRows:
    """The holder rows and the unattributed lock rows of one database."""
    last = db.observations[-1] if db.observations else None
    first = db.observations[0].locks if db.observations else ()
    holders = []
    for h in db.holders:
        sample = last.proc(h.pid) if last else None
        state = dv.holder(h.pid) or HolderState(h.pid, (), (), (), (), None, None)
        holders.append(
            HolderRow(
                pid=h.pid,
                command=h.command,
                user=h.user,
                uid=h.uid,
                state=sample.state if sample else None,
                age_s=h.age_s,
                cpu_s=round(sample.cpu_s, 2) if sample else None,
                files=tuple(k.value for k in h.files),
                fds_readable=h.fds_readable,
                locks=tuple(lock_row(e.lock, dv) for e in state.locks),
                waiting_for=tuple(lock_row(lk, dv) for lk in state.waiting_for),
                waiting_on=state.waiting_on,
                likely_waiting_on=state.likely_waiting_on,
                health=state.health,
                stuck=state.stuck,
            )
        )
    unattributed = tuple(lock_row(lk, dv) for lk in first if not lk.pid)
    return DatabaseRows(tuple(holders), unattributed)


def opencode_rows(verdict: Verdict, state: OpencodeState | None) -> tuple[OpencodeLockRow, ...]:
    """One row per lock directory the verdict judged."""
    verdicts: tuple[LockVerdict, ...] = verdict.opencode.locks if verdict.opencode else ()
    rows = []
    for v in verdicts:
        meta = v.lock.meta
        found = state.owner(meta.pid if meta else None) if state else None
        breaker = v.lock.breaker_mtime
        rows.append(
            OpencodeLockRow(
                path=v.lock.path,
                key=v.lock.key,
                description=key_words(v.lock.key, state.home if state else ""),
                pid=meta.pid if meta else None,
                hostname=meta.hostname if meta else None,
                alive=v.alive,
                command=found.command if found and found.alive else None,
                held_s=v.held_s,
                heartbeat_age_s=v.heartbeat_age_s,
                state=v.state,
                needed=v.needed,
                blocks=v.blocks,
                wait_s=v.wait_s,
                stuck=v.stuck,
                breaker_age_s=None
                if breaker is None or state is None
                else round(max(0.0, state.now - breaker), 1),
                problem=v.lock.problem,
                reason=v.reason,
                verdict=v.verdict.value,
            )
        )
    return tuple(rows)


def all_rows(snapshot: Snapshot, verdict: Verdict) -> tuple[DatabaseRows, ...]:
    """The rows of every database, in the snapshot's order."""
    return tuple(
        database_rows(db, dv) for db, dv in zip(snapshot.databases, verdict.databases, strict=True)
    )
