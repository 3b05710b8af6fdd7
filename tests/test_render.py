"""The report and the JSON as views of one row model, on synthetic snapshots: no process."""

from __future__ import annotations

from sqlprobe.model import (
    ByteRange,
    DatabaseSnapshot,
    DbHeader,
    FileKind,
    Holder,
    Lock,
    LockName,
    Mode,
    Observation,
    ProcSample,
    Snapshot,
    ThreadSample,
)
from sqlprobe.render.document import to_json
from sqlprobe.render.report import human
from sqlprobe.render.rows import all_rows
from sqlprobe.verdict.judge import judge

WAL = DbHeader(4096, 2, 2, 1, 2, 1, 0)
WRITER, WAITER = 100, 200


def plain(text: str, **_: object) -> str:
    return text


def shm_lock(name: LockName, pid: int, excl: bool = True, waiter: bool = False) -> Lock:
    mode = Mode.EXCLUSIVE if excl else Mode.SHARED
    return Lock(FileKind.SHM, name, mode, ByteRange(120, 120), pid, "POSIX", waiter)


def proc(pid: int, cpu: float = 1.0) -> ProcSample:
    return ProcSample(pid, 1000 + pid, "S", cpu, (ThreadSample(pid, "S", 5, "futex_do_wait"),))


def holder(pid: int, command: str) -> Holder:
    return Holder(pid, command, 1000, "dev", (FileKind.DB, FileKind.SHM), 30.0)


def db_snapshot(*observations: Observation) -> Snapshot:
    db = DatabaseSnapshot(
        "/d/opencode.db",
        True,
        header=WAL,
        holders=(holder(WRITER, "python3 writer.py"), holder(WAITER, "python3 waiter.py")),
        observations=observations,
    )
    return Snapshot("/d", (db,), 0.3)


def waiter_window() -> Snapshot:
    """A writer holding the WAL write lock all window; a waiter listed (a `->` line) only from
    the second look on, the first having read the holders' fdinfo, which lists no waiters."""
    write = shm_lock(LockName.WAL_WRITE, WRITER)
    waits = shm_lock(LockName.WAL_WRITE, WAITER, waiter=True)
    procs = (proc(WRITER), proc(WAITER))
    return db_snapshot(
        Observation(0.0, (write,), procs, waits=None),
        Observation(0.05, (write, waits), procs, waits=((WAITER, WRITER),)),
        Observation(0.3, (write, waits), procs, waits=((WAITER, WRITER),)),
    )


def holder_json(doc: dict, pid: int) -> dict:
    return next(h for h in doc["databases"][0]["holders"] if h["pid"] == pid)


def table_row(report: str, pid: int) -> str:
    return next(line for line in report.splitlines() if line.split()[:1] == [str(pid)])


def test_a_waiter_listed_after_the_first_look_shows_in_the_table_as_in_the_json():
    snapshot = waiter_window()
    verdict = judge(snapshot)
    doc = to_json(snapshot, verdict)
    waiting = holder_json(doc, WAITER)["waiting_for"]
    assert [(w["lock"], w["mode"]) for w in waiting] == [("wal-write", "exclusive")]
    row = table_row(human(snapshot, verdict, plain, None), WAITER)
    assert "waits:wal-write:EX" in row.split()


def test_json_and_table_show_the_same_locks_per_holder():
    snapshot = waiter_window()
    verdict = judge(snapshot)
    doc = to_json(snapshot, verdict)
    report = human(snapshot, verdict, plain, None)
    for h in all_rows(snapshot, verdict)[0].holders:
        cells = {r.cell_in(windowed=True) for r in (*h.locks, *h.waiting_for)}
        assert cells <= set(table_row(report, h.pid).split())
        listed = holder_json(doc, h.pid)
        assert [x["lock"] for x in listed["locks"]] == [r.lock for r in h.locks]
        assert [x["lock"] for x in listed["waiting_for"]] == [r.lock for r in h.waiting_for]


def test_a_blocking_lock_held_all_window_is_starred_and_one_released_is_tilded():
    write = shm_lock(LockName.WAL_WRITE, WRITER)
    procs = (proc(WRITER), proc(WAITER))
    held = db_snapshot(
        Observation(0.0, (write,), procs, waits=()), Observation(0.3, (write,), procs, waits=())
    )
    gone = db_snapshot(
        Observation(0.0, (write,), procs, waits=()), Observation(0.3, (), procs, waits=())
    )
    held_row = table_row(human(held, judge(held), plain, None), WRITER)
    gone_verdict = judge(gone)
    gone_row = table_row(human(gone, gone_verdict, plain, None), WRITER)
    assert "wal-write:EX*" in held_row.split()
    assert "wal-write:EX~" in gone_row.split()
    lock = holder_json(to_json(gone, gone_verdict), WRITER)["locks"][0]
    assert lock["blocks"] is True and lock["persisted"] is False


def test_the_judges_decision_is_what_both_views_say_blocks():
    snapshot = waiter_window()
    verdict = judge(snapshot)
    (effect,) = verdict.databases[0].effects.blocking
    assert effect.lock.pid == WRITER and effect.lock.name is LockName.WAL_WRITE
    doc = to_json(snapshot, verdict)
    assert [b["pid"] for b in doc["databases"][0]["blockers"]] == [WRITER]
    assert holder_json(doc, WRITER)["locks"][0]["blocks"] is True
    assert holder_json(doc, WAITER)["waiting_on"] == [WRITER]


def test_a_narrow_terminal_hides_columns_and_says_so():
    snapshot = waiter_window()
    report = human(snapshot, judge(snapshot), plain, None, width=50)
    assert "--wide shows all" in report
    assert all(len(line) <= 50 or "/" in line for line in report.splitlines())


def test_lock_names_read_as_their_strings():
    assert LockName.WAL_WRITE == "wal-write"
    assert f"{LockName.WAL_READ_3}" == "wal-read-3" and str(LockName.DMS) == "dms"
    assert LockName.WAL_READ_3.read_mark == 3 and LockName.DMS.read_mark is None
