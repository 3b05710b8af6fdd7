"""What opencode's own locks mean for a new instance: a pure function of an OpencodeState.

Each lock directory is `stale` (opencode's rule: its heartbeat older than STALE_S; a waiter
breaks it at once), `held` (fresh, and its process runs on this host, or on another host where
its liveness cannot be checked), `left-behind` (fresh, its process gone: a waiter stalls until
it turns stale), or `unknown` (its files cannot be read here). It blocks a new instance when it
is held or left behind and its key is one that a start-up of that opencode version takes; a held
lock's holder is stuck by the same rule as a database holder's (verdict.stuck_clause). Anything
else is a warning line saying what an instance that needs the lock would meet.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlprobe.model import Finding, FindingKind, LockDir, OpencodeState, Snapshot
from sqlprobe.opencode import locks
from sqlprobe.opencode.paths import Dirs
from sqlprobe.text import duration, safe, shorten
from sqlprobe.verdict.judge import COMMAND_WIDTH, State, stuck_clause

# A heartbeat older than its refresh interval by this much is one that stopped being refreshed.
HEARTBEAT_SLACK_S = 5.0

HELD = "held"
LEFT_BEHIND = "left-behind"
STALE = "stale"
UNKNOWN = "unknown"


class LockVerdict(NamedTuple):
    lock: LockDir
    state: str  # held, left-behind, stale, unknown
    alive: bool | None  # its process runs here; None: another host, or no pid to look at
    held_s: float | None  # since createdAt (else the directory's mtime)
    heartbeat_age_s: float | None  # since the mtime opencode's stale rule looks at
    needed: bool  # a start-up of the opencode in question takes this key
    blocks: bool
    wait_s: float | None  # how long a new instance stalls; None: until it is released
    stuck: str | None  # the stuck clause that applied to its live holder
    verdict: State  # BUSY or STUCK when it blocks, else CLEAR
    reason: str  # the verdict's sentence when it blocks, else the warning line


class OpencodeVerdict(NamedTuple):
    locks: tuple[LockVerdict, ...]
    startup_keys: tuple[str, ...]  # the keys a new instance takes at start-up
    # What does not block but a person should know: sentences of the judge's (a lock that no
    # start-up takes, a problem reading one) and records worded by render (index.lock...).
    warnings: tuple[Finding | str, ...]

    @property
    def blockers(self) -> tuple[LockVerdict, ...]:
        return tuple(v for v in self.locks if v.blocks)


def judge_opencode(state: OpencodeState) -> OpencodeVerdict:
    dirs = Dirs(state.data_dir, state.state_dir, state.config_dir, state.cache_dir, state.home)
    startup = locks.startup_keys(state.version, dirs)
    verdicts = tuple(judge_lock(lock, state, startup) for lock in state.locks)
    warnings: list[Finding | str] = [v.reason for v in verdicts if not v.blocks]
    warnings += list(state.problems)
    if verdicts and (note := locks.version_note(state.version)):
        warnings.append(note)
    warnings += _index_lock_warnings(state)
    warnings += _zombie_warnings(state)
    return OpencodeVerdict(verdicts, startup, tuple(warnings))


def judge_lock(lock: LockDir, state: OpencodeState, startup: tuple[str, ...]) -> LockVerdict:
    now = state.now
    meta = lock.meta
    since = lock.fresh_since
    age = None if since is None else max(0.0, round(now - since, 1))
    created = meta.created_at if meta and meta.created_at else lock.dir_mtime
    held = None if created is None else max(0.0, round(now - created, 1))
    needed = lock.key is not None and lock.key in startup
    words = locks.key_words(lock.key, state.home)
    path = safe(lock.path)
    base = {"lock": lock, "held_s": held, "heartbeat_age_s": age, "needed": needed}
    remote = meta is not None and meta.hostname not in (None, state.hostname)
    found = state.owner(meta.pid if meta else None)
    alive = None if remote or found is None else found.alive

    if lock.dir_mtime is None:  # a breaker alone: an instance was killed while breaking it
        reason = (
            f"{path}{locks.BREAKER} is left without its lock: harmless, the next breaker removes it"
        )
        return LockVerdict(**base, state=STALE, alive=None, blocks=False, wait_s=None,
                           stuck=None, verdict=State.CLEAR, reason=reason)  # fmt: skip
    if since is None or age is None:
        reason = (
            f"{path}: {words}: {lock.problem or 'cannot be read'}; whether it blocks a new"
            " instance is unknown (run sqlprobe as its owner, or as root)"
        )
        return LockVerdict(**base, state=UNKNOWN, alive=alive, blocks=False, wait_s=None,
                           stuck=None, verdict=State.CLEAR, reason=reason)  # fmt: skip

    who = _who(lock, state, remote)
    if locks.is_stale(since, now):
        breaker = lock.breaker_mtime
        if breaker is not None and not locks.is_stale(breaker, now) and needed:
            breaker_age = max(0.0, now - breaker)
            wait = round(locks.STALE_S - breaker_age, 1)
            reason = (
                f"{words} is stale, but {path}{locks.BREAKER} (left {breaker_age:.0f} s ago by an"
                " instance that was breaking it) keeps others from breaking it: a new instance"
                f" would stall ~{wait:.0f} s until that is stale too, then break the lock"
            )
            return LockVerdict(**base, state=STALE, alive=alive, blocks=True, wait_s=wait,
                               stuck=None, verdict=State.BUSY, reason=reason)  # fmt: skip
        reason = f"{path}: {words} is stale (heartbeat {age:.0f} s ago; {who}): a new instance"
        reason += " that needs it breaks it at once and goes on"
        if alive:
            reason += (
                f"; pid {found.pid} still runs but stopped refreshing its heartbeat (its event"  # type: ignore[union-attr]
                " loop is blocked), and would not know its lock was taken over"
            )
        return LockVerdict(**base, state=STALE, alive=alive, blocks=False, wait_s=None,
                           stuck=None, verdict=State.CLEAR, reason=reason)  # fmt: skip

    until_stale = round(locks.STALE_S - age, 1)
    if alive is False:
        kind, wait = LEFT_BEHIND, until_stale
        meets = f"would stall ~{wait:.0f} s until it is stale, then break it"
    elif (lock.key or "").startswith(locks.FROZEN_HEARTBEAT):
        # opencode's install lock never refreshes its heartbeat: stale 60 s after it was taken.
        kind, wait = HELD, until_stale
        meets = (
            f"would stall ~{wait:.0f} s until it is stale (this lock's heartbeat is never"
            " refreshed), then break it while its holder still runs"
        )
    elif age > locks.HEARTBEAT_S + HEARTBEAT_SLACK_S or (alive is None and not remote):
        # A holder that stopped refreshing its heartbeat (measured with 1.18.34: a run whose
        # install hangs), or no pid to look at: the lock turns stale unless refreshed again.
        kind, wait = HELD, until_stale
        meets = f"would stall ~{wait:.0f} s until it is stale (unless refreshed), then break it"
    else:
        kind, wait = HELD, None
        meets = (
            f"waits for it while its heartbeat stays fresh, up to {locks.TIMEOUT_S / 60:.0f} min,"
            f' then fails "{locks.TIMEOUT_MESSAGE}: {lock.key or "…"}"'
        )
    # An install that waits on the network sleeps without CPU too: idleness counts only once the
    # lock has been held longer than a healthy start-up takes to install (STALE_S).
    idle = held is not None and held > locks.STALE_S
    stuck = stuck_clause(found.pid, state.observations, idle) if alive and found else None
    held_for = f" for {duration(held)}" if held is not None else ""
    if kind == LEFT_BEHIND:
        sentence = f"{words} was left behind by {who} (heartbeat {age:.0f} s ago)"
    else:
        sentence = f"{who} has held {words}{held_for} (heartbeat {age:.0f} s ago)"
        if remote:
            sentence += ", and its liveness cannot be checked from this host"
        if stuck:
            sentence += f" and {stuck}"
    if not needed:
        subject = "an unrecognised opencode lock" if lock.key is None else words
        version = f"opencode {state.version}" if state.version else "opencode"
        reason = (
            f"{path}: {sentence.replace(words, subject, 1)}: a start-up of {version} does not"
            f" take it; an instance that needs it {meets}"
        )
        return LockVerdict(**base, state=kind, alive=alive, blocks=False, wait_s=wait,
                           stuck=stuck, verdict=State.CLEAR, reason=reason)  # fmt: skip
    reason = f"{sentence}: a new instance {meets}"
    if stuck:
        reason += "; waiting will not help"
    verdict = State.STUCK if stuck else State.BUSY
    return LockVerdict(**base, state=kind, alive=alive, blocks=True, wait_s=wait,
                       stuck=stuck, verdict=verdict, reason=reason)  # fmt: skip


def _who(lock: LockDir, state: OpencodeState, remote: bool) -> str:
    meta = lock.meta
    if meta is None or meta.pid is None:
        return f"an unknown process ({lock.problem or 'no pid in meta.json'})"
    if remote:
        return f"pid {meta.pid} on host {safe(meta.hostname or '?')}"
    found = state.owner(meta.pid)
    if found is None:
        return f"pid {meta.pid}"
    if not found.alive:
        return f"pid {meta.pid}, now gone ({found.why})"
    if found.command:
        return f"pid {meta.pid} ({shorten(safe(found.command), COMMAND_WIDTH)})"
    return f"pid {meta.pid}"


def _index_lock_warnings(state: OpencodeState) -> list[Finding]:
    out = []
    for lock in state.index_locks:
        age = "" if lock.mtime is None else f" {duration(max(0.0, state.now - lock.mtime))} ago"
        if lock.openers:
            out.append(
                Finding(FindingKind.INDEX_LOCK_HELD, lock.path, lock.openers[0], detail=age,
                        pids=lock.openers)
            )  # fmt: skip
        else:
            out.append(Finding(FindingKind.INDEX_LOCK_LEFT, lock.path, detail=age))
    return out


def _zombie_warnings(state: OpencodeState) -> list[Finding]:
    return [
        Finding(FindingKind.ZOMBIE_CHILD, pid=z.parent, count=z.pid,
                detail=shorten(safe(z.command), 40))
        for z in state.zombies
    ]  # fmt: skip


# How long an opencode process must have run, holding none of its locks while one blocks, before
# it counts as likely waiting on that lock (a start-up normally takes its locks within seconds).
LIKELY_WAITING_AFTER_S = 5.0


def likely_lock_waiters(snapshot: Snapshot, ov: OpencodeVerdict | None) -> dict[int, LockVerdict]:
    """An inference: opencode processes (database holders) that hold none of opencode's locks
    and have run for a while, while a lock that every start-up takes is held or left behind by
    another: each is likely waiting on that lock. opencode waits in its own event loop, so the
    kernel shows no wait-for edge to prove it."""
    if ov is None or not ov.blockers:
        return {}
    owners = {v.lock.meta.pid for v in ov.locks if v.lock.meta and v.lock.meta.pid}
    found: dict[int, LockVerdict] = {}
    for db in snapshot.databases:
        for h in db.holders:
            if h.pid in owners or h.pid in found or not is_opencode(h.command):
                continue
            if h.age_s is None or h.age_s < LIKELY_WAITING_AFTER_S:
                continue
            found[h.pid] = ov.blockers[0]
    return found


def is_opencode(command: str) -> bool:
    """Whether a command line runs opencode (its binary, or the npm wrapper through node)."""
    words = command.split()[:2]
    return any(w.rsplit("/", 1)[-1] == "opencode" for w in words)
