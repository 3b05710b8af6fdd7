"""A holder process for the tests: opens a database with Python's sqlite3 and holds a state.

    python holder.py DB STATE [--spin]

Prints `ready <pid>` once the state is held, then holds it until stdin closes (so it never
outlives the test that started it). With --spin the main thread burns CPU while holding, like a
working writer; without it the process sleeps, like a stuck one; with --futex its main thread
blocks on a lock that is never released (parked on a futex, as in the opencode hang). With
--log FILE it also keeps FILE open after writing a few opencode-like log lines to it.

States: wal-idle, wal-read, wal-write, wal-exclusive, rollback-read, rollback-reserved,
rollback-exclusive, wal-commit-loop (short write transactions, back to back), wal-lagging (a
WAL that a passive checkpoint could only partly copy, because a reader holds an old snapshot:
the ready line then ends with that checkpoint's `busy log checkpointed`), rollback-commit-loop
(the same in rollback mode: a -journal comes and goes), wal-tight-loop (longer transactions
with no pause between them: the write lock is free only for an instant), wal-truncate-loop
(commits, each followed by `pragma wal_checkpoint(TRUNCATE)`, as opencode's writer may do).
A line `report` on stdin makes a loop print `stats COMMITS BUSY_CHECKPOINTS FAILED_WRITES`.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time


def hold(db: str, state: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, timeout=5)
    if state == "wal-exclusive":
        # Before anything reads the WAL: in exclusive locking mode SQLite then uses no -shm.
        conn.execute("pragma locking_mode=exclusive")
    if state.startswith("wal"):
        conn.execute("pragma journal_mode=wal")
    else:
        conn.execute("pragma journal_mode=delete")
    if state == "wal-idle":
        conn.execute("select count(*) from t").fetchall()  # takes SHARED on db and DMS on shm
    elif state in ("wal-read", "rollback-read"):
        conn.execute("begin")
        conn.execute("select count(*) from t").fetchall()
    elif state == "wal-write":
        conn.execute("begin immediate")
        conn.execute("insert into t values (1)")
    elif state == "wal-exclusive":
        conn.execute("begin exclusive")
        conn.execute("insert into t values (1)")
        conn.execute("commit")
    elif state == "rollback-reserved":
        conn.execute("begin immediate")
    elif state == "rollback-exclusive":
        conn.execute("begin exclusive")
    elif state == "wal-lagging":
        return lagging(db, conn)
    elif state not in LOOPS:
        raise SystemExit(f"unknown state {state}")
    return conn


LOOPS = ("wal-commit-loop", "wal-tight-loop", "rollback-commit-loop", "wal-truncate-loop")
STATS = {"commits": 0, "busy": 0, "failed": 0}
KEEP: list[object] = []
LOG_LINES = [
    "INFO  2026-11-25T10:00:00 +0ms service=default version=1.15.10 args=run opencode",
    "INFO  2026-11-25T10:00:00 +2ms service=db path=opencode.db opening database",
    "INFO  2026-11-25T10:00:01 +480ms service=plugin name=auth loading internal plugin",
]
CHECKPOINT: list[int] = []


def lagging(db: str, writer: sqlite3.Connection) -> sqlite3.Connection:
    """Writes, a reader pinning a snapshot, more writes, then a passive checkpoint."""
    writer.execute("pragma wal_autocheckpoint=0")
    for i in range(5):
        writer.execute("insert into t values (?)", (f"first {i}",))
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("begin")
    reader.execute("select count(*) from t").fetchall()
    for i in range(5):
        writer.execute("insert into t values (?)", (f"second {i}",))
    checkpointer = sqlite3.connect(db, isolation_level=None)
    CHECKPOINT.extend(checkpointer.execute("pragma wal_checkpoint(passive)").fetchone())
    KEEP.extend([reader, checkpointer])
    return writer


def commands() -> None:
    """`report` prints the loop's counts; the end of stdin ends the process."""
    for line in sys.stdin:
        if line.strip() == "report":
            print("stats", STATS["commits"], STATS["busy"], STATS["failed"], flush=True)
    os._exit(0)


def loop(conn: sqlite3.Connection, truncate: bool, pause: bool) -> None:
    """Short write transactions back to back; with `truncate`, a TRUNCATE checkpoint after each,
    with no busy timeout: any reader in the WAL at that moment makes it report busy."""
    if truncate:
        conn.execute("pragma busy_timeout=0")
    while True:
        try:
            conn.execute("begin immediate")
            conn.execute("insert into t values (2)")
            if not pause:  # a longer transaction, back to back: the lock is free only between
                conn.executemany("insert into t values (?)", ((i,) for i in range(2000)))
            conn.execute("commit")
            STATS["commits"] += 1
        except sqlite3.OperationalError:
            STATS["failed"] += 1
            if conn.in_transaction:
                conn.execute("rollback")
        if truncate:
            busy, _log, _done = conn.execute("pragma wal_checkpoint(truncate)").fetchone()
            STATS["busy"] += busy
        if pause:
            time.sleep(0.002)  # the behaviour: a gap in which the write lock is free


def main() -> None:
    db, state = sys.argv[1], sys.argv[2]
    spin = "--spin" in sys.argv[3:]
    conn = hold(db, state)
    if "--log" in sys.argv:
        log = open(sys.argv[sys.argv.index("--log") + 1], "a")  # noqa: SIM115 (kept open)
        for line in LOG_LINES:
            log.write(line + "\n")
        log.flush()
        KEEP.append(log)
    # Exit as soon as the test closes our stdin (or dies).
    threading.Thread(target=commands, daemon=True).start()
    print("ready", os.getpid(), *CHECKPOINT, flush=True)
    if state in LOOPS:
        loop(conn, truncate=state == "wal-truncate-loop", pause=state != "wal-tight-loop")
    if "--futex" in sys.argv[3:]:
        parked = threading.Lock()
        parked.acquire()
        parked.acquire()  # never returns: the thread waits on a futex
    while True:
        if spin:
            sum(range(10_000))
        else:
            time.sleep(3600)


if __name__ == "__main__":
    main()
