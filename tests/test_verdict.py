"""The verdict as a pure function of synthetic snapshots: no process, no clock."""

from __future__ import annotations

import pytest

from sqlprobe.model import (
    ByteRange,
    DatabaseSnapshot,
    DbHeader,
    FileKind,
    Holder,
    JournalMode,
    Lock,
    Mode,
    Observation,
    Problem,
    ProblemKind,
    ProcSample,
    Snapshot,
    ThreadSample,
)
from sqlprobe.sqlite.effects import Outcome, outcome
from sqlprobe.verdict.judge import ExitCode, State, judge

WAL = DbHeader(4096, 2, 2, 1, 2, 1, 0)
ROLLBACK = DbHeader(4096, 1, 1, 1, 2, 1, 0)
PID = 4242


def lock(name: str, excl: bool, pid: int | None = PID, waiter: bool = False) -> Lock:
    kind = FileKind.SHM if name.startswith("wal-") or name == "dms" else FileKind.DB
    mode = Mode.EXCLUSIVE if excl else Mode.SHARED
    return Lock(kind, name, mode, ByteRange(0, 0), pid, "POSIX", waiter)


IDLE_WAL = (lock("shared", False), lock("dms", False))


def proc(state: str = "R", cpu: float = 1.0, threads=((1, "R", 10),), start: int = 100):
    return ProcSample(PID, start, state, cpu, tuple(ThreadSample(*t) for t in threads))


def snap(
    *observations: tuple[tuple[Lock, ...], ProcSample | None],
    header: DbHeader | None = WAL,
    command: str = "opencode run review",
    uninspected: int = 0,
) -> Snapshot:
    obs = tuple(
        Observation(i * 0.05, locks, (p,) if p else (), waits=())  # as read from /proc/locks
        for i, (locks, p) in enumerate(observations)
    )
    holder = Holder(PID, command, 1000, "dev", (FileKind.DB,), 60.0)
    db = DatabaseSnapshot(
        "/d/opencode.db", True, header=header, holders=(holder,), observations=obs
    )
    return Snapshot("/d", (db,), 0.3, uninspected_processes=uninspected)


def window(locks: tuple[Lock, ...], *samples: ProcSample) -> Snapshot:
    return snap(*((locks, s) for s in samples))


def test_no_holder_is_clear():
    db = DatabaseSnapshot(
        "/d/opencode.db", True, header=WAL, observations=(Observation(0, (), ()),)
    )
    verdict = judge(Snapshot("/d", (db,), 0.3))
    assert (verdict.state, verdict.exit_code) == (State.CLEAR, ExitCode.CLEAR)


def test_missing_database_is_clear_and_says_it_would_be_created():
    verdict = judge(Snapshot("/d", (DatabaseSnapshot("/d/opencode.db", False),), 0.3))
    assert verdict.state is State.CLEAR
    assert "would create it" in verdict.reason


def test_note_without_databases_is_clear():
    verdict = judge(Snapshot("OPENCODE_DB=:memory:", (), 0.3, note="in memory"))
    assert (verdict.state, verdict.reason) == (State.CLEAR, "in memory")


def test_error_is_exit_6():
    fifo = Problem(ProblemKind.NOT_REGULAR, "/x", "is a FIFO, not a regular file")
    verdict = judge(Snapshot("/x", (), 0.3, error=fifo))
    assert (verdict.state, int(verdict.exit_code)) == (State.ERROR, 6)


def test_idle_wal_holder_is_shared():
    verdict = judge(snap((IDLE_WAL, proc())))
    assert (verdict.state, verdict.exit_code) == (State.SHARED, ExitCode.SHARED)
    assert f"pid {PID} has it open" in verdict.reason


def test_uninspected_processes_are_admitted_in_the_reason():
    verdict = judge(snap((IDLE_WAL, proc()), uninspected=3))
    assert "3 processes could not be inspected" in verdict.reason


def test_persisting_write_lock_of_a_working_holder_is_busy():
    locks = (*IDLE_WAL, lock("wal-write", True))
    verdict = judge(window(locks, proc(cpu=1.0), proc(cpu=1.05, threads=((1, "R", 20),))))
    assert verdict.state is State.BUSY
    assert verdict.reason == (
        f"pid {PID} (opencode run review) has held the WAL write lock for the whole 0.3 s"
        " window: a new instance would wait its busy timeout (5 s in opencode) and fail with"
        ' "database is locked"'
    )


def test_lock_released_within_window_is_shared():
    verdict = judge(snap(((*IDLE_WAL, lock("wal-write", True)), proc()), (IDLE_WAL, proc())))
    assert verdict.state is State.SHARED
    assert "released within the window" in verdict.reason


def test_pid_reused_within_window_is_not_the_same_holder():
    locks = (*IDLE_WAL, lock("wal-write", True))
    verdict = judge(window(locks, proc(start=100), proc(start=999)))
    assert verdict.state is State.SHARED


@pytest.mark.parametrize("state", ["T", "t"])
def test_stopped_holder_is_stuck(state):
    locks = (lock("wal-write", True),)
    verdict = judge(window(locks, proc(state), proc(state), proc(state)))
    assert verdict.state is State.STUCK
    assert f"(state {state})" in verdict.reason
    assert verdict.reason.endswith("waiting will not help")


def test_holder_using_no_cpu_with_threads_asleep_is_stuck():
    asleep = ((1, "S", 500), (2, "S", 700))
    locks = (lock("wal-write", True),)
    verdict = judge(
        window(locks, proc("S", 2.0, ()), proc("S", 2.0, asleep), proc("S", 2.0, asleep))
    )
    assert verdict.state is State.STUCK
    assert "used no CPU, all 2 threads asleep" in verdict.reason


def test_holder_whose_thread_ran_is_busy_not_stuck():
    locks = (lock("wal-write", True),)
    a, b = ((1, "S", 500),), ((1, "S", 501),)
    verdict = judge(window(locks, proc("S", 2.0, ()), proc("S", 2.0, a), proc("S", 2.0, b)))
    assert verdict.state is State.BUSY


def test_holder_waiting_on_a_lock_itself_is_stuck():
    locks = (lock("wal-write", True), lock("dms", True, waiter=True))
    verdict = judge(window(locks, proc(), proc(threads=((1, "R", 99),))))
    assert verdict.state is State.STUCK
    assert "is itself waiting on the DMS lock exclusively" in verdict.reason


def test_unseen_holder_blocks_with_namespace_explanation():
    locks = (
        Lock(
            FileKind.SHM,
            "wal-write",
            Mode.EXCLUSIVE,
            ByteRange(120, 120),
            None,
            "POSIX",
            source="getlk",
        ),
    )
    verdict = judge(snap((locks, None), (locks, None)))
    assert verdict.state is State.BUSY
    assert verdict.reason.startswith("a process outside this pid namespace")


def test_command_is_made_safe_and_short_in_the_reason():
    locks = (lock("wal-write", True),)
    evil = "opencode \x1b[31mrun\x1b[0m " + "x" * 200
    verdict = judge(snap((locks, proc()), (locks, proc(threads=((1, "R", 5),))), command=evil))
    assert "\x1b" not in verdict.reason and "\\x1b[31m" in verdict.reason
    assert "…)" in verdict.reason


def test_worst_database_wins_and_is_named():
    writer = (lock("wal-write", True),)
    busy = snap((writer, proc()), (writer, proc())).databases[0]
    clear = DatabaseSnapshot("/d/opencode-a.db", True, header=WAL)
    verdict = judge(Snapshot("/d", (clear, busy), 0.3))
    assert [d.state for d in verdict.databases] == [State.CLEAR, State.BUSY]
    assert verdict.state is State.BUSY
    assert verdict.reason.startswith("/d/opencode.db: pid 4242")


def test_error_database_does_not_hide_a_busy_one():
    writer = (lock("wal-write", True),)
    busy = snap((writer, proc()), (writer, proc())).databases[0]
    not_sqlite = Problem(ProblemKind.NOT_SQLITE, "/d/opencode-b.db", "not SQLite")
    broken = DatabaseSnapshot("/d/opencode-b.db", True, error=not_sqlite)
    assert judge(Snapshot("/d", (broken, busy), 0.3)).state is State.BUSY
    assert judge(Snapshot("/d", (broken,), 0.3)).state is State.ERROR


# -- what a new instance meets (sqlite-locking.md §6) ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "excl", "mode", "expected"),
    [
        ("shared", False, JournalMode.WAL, None),
        ("dms", False, JournalMode.WAL, None),
        ("wal-read-1", False, JournalMode.WAL, None),
        ("wal-checkpoint", True, JournalMode.WAL, None),
        ("wal-write", True, JournalMode.WAL, Outcome.LOCKED),
        ("wal-recover", True, JournalMode.WAL, Outcome.RECOVERY),
        ("dms", True, JournalMode.WAL, Outcome.PROTOCOL),
        ("wal-read-3", True, JournalMode.WAL, Outcome.PROTOCOL),
        ("exclusive", True, JournalMode.WAL, Outcome.LOCKED),
        ("reserved", True, JournalMode.WAL, None),
        ("shared", False, JournalMode.ROLLBACK, Outcome.SWITCH_WAITS),
        ("reserved", True, JournalMode.ROLLBACK, Outcome.SWITCH_FAILS),
        ("pending", True, JournalMode.ROLLBACK, Outcome.LOCKED),
        ("exclusive", True, JournalMode.ROLLBACK, Outcome.LOCKED),
    ],
)
def test_outcome_table(name, excl, mode, expected):
    assert outcome(lock(name, excl), mode) is expected


def test_flock_and_waiters_never_block():
    flock = Lock(FileKind.DB, "flock", Mode.EXCLUSIVE, ByteRange(0, None), 1, "FLOCK")
    assert outcome(flock, JournalMode.WAL) is None
    assert outcome(lock("wal-write", True, waiter=True), JournalMode.WAL) is None


def test_unknown_header_with_dms_holder_is_judged_as_wal():
    verdict = judge(snap((IDLE_WAL, proc()), header=None))
    assert verdict.databases[0].journal_mode is JournalMode.WAL
    assert verdict.state is State.SHARED


def test_a_problem_record_is_the_error_verdicts_reason_and_the_jsons_error():
    from sqlprobe.render.document import to_json

    bad = Problem(ProblemKind.NOT_SQLITE, "/d/opencode.db", "not a SQLite database (bad magic)")
    db = DatabaseSnapshot("/d/opencode.db", True, error=bad)
    snapshot = Snapshot("/d", (db,), 0.3)
    verdict = judge(snapshot)
    assert verdict.state is State.ERROR
    assert verdict.reason == "/d/opencode.db: not a SQLite database (bad magic)"
    doc = to_json(snapshot, verdict)
    assert doc["databases"][0]["error"] == {
        "kind": "not-sqlite",
        "path": "/d/opencode.db",
        "detail": "not a SQLite database (bad magic)",
    }
    assert doc["error"] is None
    gone = judge(Snapshot("/x", (), 0.3, error=Problem(ProblemKind.TIMED_OUT, None, "no answer")))
    assert (gone.state, gone.reason) == (State.ERROR, "no answer")
