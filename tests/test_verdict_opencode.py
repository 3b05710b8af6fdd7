"""The opencode lock judge on values (pure): what each state means, and the waiting inference."""

from __future__ import annotations

from sqlprobe.model import (
    DatabaseSnapshot,
    Holder,
    LockDir,
    LockMeta,
    LockOwner,
    OpencodeState,
    Snapshot,
)
from sqlprobe.opencode.locks import dir_name, startup_keys
from sqlprobe.opencode.paths import Dirs
from sqlprobe.verdict.judge import State, judge
from sqlprobe.verdict.opencode import judge_opencode, likely_lock_waiters

NOW = 1_800_000_000.0
CONFIG = "/home/me/.config/opencode"
KEY = f"npm-install:{CONFIG}"


def state(*locks: LockDir, owners: tuple[LockOwner, ...] = (), version: str | None = None):
    return OpencodeState(
        state_dir="/home/me/.local/state/opencode",
        locks_dir="/home/me/.local/state/opencode/locks",
        config_dir=CONFIG,
        data_dir="/home/me/.local/share/opencode",
        cache_dir="/home/me/.cache/opencode",
        home="/home/me",
        hostname="here",
        now=NOW,
        locks=locks,
        owners=owners,
        version=version,
    )


def lock(age: float, pid: int | None = 42, key: str | None = KEY, host: str = "here") -> LockDir:
    meta = LockMeta("t", pid, host, NOW - age) if pid else None
    path = f"/home/me/.local/state/opencode/locks/{dir_name(key or 'x')}"
    return LockDir(path, key, meta, None, NOW - age, NOW - age, NOW - age, None)


def test_versions_before_the_lock_directories_take_no_key_at_start_up():
    dirs = Dirs("", "", CONFIG, "/c", "/home/me")
    assert startup_keys("1.3.2", dirs) == ()
    assert startup_keys("1.14.34", dirs) == startup_keys("1.18.34", dirs) == (KEY,)
    assert startup_keys(None, dirs) == (KEY,), "unknown: assume the newest checked"


def test_left_behind_lock_blocks_for_the_time_until_stale():
    v = judge_opencode(state(lock(19), owners=(LockOwner(42, False, "no such process"),)))
    (got,) = v.locks
    assert (got.state, got.blocks, got.wait_s, got.verdict) == (
        "left-behind",
        True,
        41.0,
        State.BUSY,
    )


def test_the_same_held_lock_does_not_block_a_version_that_never_takes_it():
    owners = (LockOwner(42, True, None, command="opencode run"),)
    v = judge_opencode(state(lock(3), owners=owners, version="1.3.2"))
    (got,) = v.locks
    assert got.state == "held" and not got.blocks and got.reason in v.warnings


def test_lock_outranks_a_shared_database_and_names_the_reason():
    owners = (LockOwner(42, True, None, command="opencode run"),)
    db = DatabaseSnapshot(
        "/d/opencode.db", True, holders=(Holder(7, "opencode", 0, "me", (), 9.0),)
    )
    snap = Snapshot("/d", (db,), 0.3, opencode=state(lock(3), owners=owners))
    verdict = judge(snap)
    assert verdict.state is State.BUSY and verdict.reason.startswith("pid 42 (opencode run)")


def test_an_opencode_process_without_a_lock_is_likely_waiting_on_it():
    owners = (LockOwner(42, True, None, command="opencode run"),)
    waiting = Holder(7, "/usr/bin/opencode run hi", 0, "me", (), 30.0)
    young = Holder(8, "opencode run", 0, "me", (), 1.0)
    other = Holder(9, "python app.py", 0, "me", (), 30.0)
    db = DatabaseSnapshot("/d/opencode.db", True, holders=(waiting, young, other))
    oc = state(lock(3), owners=owners)
    snap = Snapshot("/d", (db,), 0.3, opencode=oc)
    likely = likely_lock_waiters(snap, judge_opencode(oc))
    assert set(likely) == {7}


def test_one_decision_covers_both_kinds_of_lock_and_the_verdict_is_built_on_it():
    from sqlprobe.model import ByteRange, FileKind, Lock, LockName, Mode, Observation
    from sqlprobe.verdict.decide import decide

    write = Lock(FileKind.SHM, LockName.WAL_WRITE, Mode.EXCLUSIVE, ByteRange(120, 120), 7, "POSIX")
    db = DatabaseSnapshot(
        "/d/opencode.db", True, holders=(Holder(7, "w", 0, "me", (FileKind.SHM,), 1.0),),
        observations=(Observation(0.0, (write,), ()),),
    )  # fmt: skip
    left = state(lock(19), owners=(LockOwner(42, False, "no such process"),))
    snapshot = Snapshot("/d", (db,), 0.0, opencode=left)
    decision = decide(snapshot)
    (effects,) = decision.databases
    assert [(e.lock.pid, e.blocks) for e in effects.locks] == [(7, True)]
    assert decision.opencode is not None and decision.opencode.blockers[0].state == "left-behind"
    verdict = judge(snapshot)
    assert verdict.databases[0].effects == effects and verdict.opencode == decision.opencode
