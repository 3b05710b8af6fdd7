"""The human report: the verdict line, a table per database, warnings, what to do.

The tables are views of the row model (rows.py), as the JSON document is (document.py). Text
from other processes (command lines, paths) goes through `text.safe` before it reaches a
terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlprobe.model import (
    DatabaseSnapshot,
    IndexState,
    JournalMode,
    OpencodeState,
    Probe,
    ProbeResult,
    Snapshot,
    WalState,
)
from sqlprobe.opencode.paths import tildify
from sqlprobe.render.document import all_warnings, lag_bytes
from sqlprobe.render.rows import DatabaseRows, LockRow, all_rows, opencode_rows
from sqlprobe.render.table import fitted
from sqlprobe.text import duration, safe, shell_quote, short_command, wrap
from sqlprobe.verdict.judge import Blocker, State, Verdict, skipped_caveat
from sqlprobe.verdict.opencode import LockVerdict

COLOURS = {
    State.CLEAR: "green",
    State.SHARED: "cyan",
    State.BUSY: "yellow",
    State.STUCK: "red",
    State.ERROR: "red",
}


# -- human ----------------------------------------------------------------------------------------


def human(
    snapshot: Snapshot,
    verdict: Verdict,
    style: Any,
    auth: str | None,
    width: int | None = None,
    wide: bool = False,
) -> str:
    """The human report: the verdict line, a table per database, warnings, what to do.

    `style(text, fg=..., bold=...)` colours text (click.style, or a no-op without colour);
    `auth` is opencode's auth.json when it exists (the advice on isolating a run names it),
    else None: render reads no file itself. `width` is the
    terminal's: prose is wrapped to it and the tables narrowed; None (a pipe) keeps every
    line whole. `wide` shows every column and the full command lines, unwrapped.
    """
    if wide:
        width = None
    word = verdict.state.value
    out = wrap(f"{word}: {verdict.reason}", width, hang="  ")
    out[0] = style(word, fg=COLOURS[verdict.state], bold=True) + out[0][len(word) :]
    windowed = snapshot.samples > 1
    rows = all_rows(snapshot, verdict)
    for db, dv, dr in zip(snapshot.databases, verdict.databases, rows, strict=True):
        if not db.exists or (db.error and len(snapshot.databases) == 1):
            continue  # the verdict line already says all there is
        out.append("")
        head = f"{safe(db.path)}  [{dv.journal_mode.value}]  "
        if width is not None and len(head + dv.state.value) > width:
            out.append(safe(db.path))  # whole, to copy; what it is on the next line
            head = f"  [{dv.journal_mode.value}]  "
        out.append(head + style(dv.state.value, fg=COLOURS[dv.state]))
        if len(snapshot.databases) > 1 and dv.state is not State.CLEAR:
            out.extend(wrap(dv.reason, width, "  ", "    "))
        for line in state_lines(db):
            out.extend(wrap(line, width, "  ", "    "))
        if dr.holders:
            out.extend(_holder_table(dr, windowed, width, wide))
            if windowed:
                for line in health_lines(dr):
                    out.extend(wrap(line, width, "  ", "    "))
        if dr.unattributed:
            cells = ", ".join(r.cell_in(windowed) for r in dr.unattributed)
            out.extend(
                wrap(f"locks whose holder sqlprobe cannot see: {cells}", width, "  ", "    ")
            )
    if snapshot.opencode is not None and verdict.opencode is not None:
        out.append("")
        out.extend(opencode_lines(snapshot.opencode, verdict, width, wide))
    legend = _legend(rows, windowed)
    if legend:
        out.append("")
        for line in legend:  # said as `  * what it means`, wrapped under its words
            out.extend(wrap(line.strip(), width, "  ", "    "))
    if snapshot.skipped_processes:
        n = snapshot.skipped_processes
        out.extend(wrap(f"not scanned: {n} {skipped_caveat(n)}", width, hang="  "))
    for warning in all_warnings(snapshot, verdict):
        lines = wrap(f"warning: {safe(warning)}", width, hang="  ")
        out.extend(style(line, fg="yellow") for line in lines)
    advice = _advice(snapshot, verdict, auth)
    if advice:
        out.append("")
        out.append("What you can do:")
        for line in advice:
            out.extend(wrap(line, width, "  - ", "    "))
    return "\n".join(out)


def opencode_lines(
    state: OpencodeState, verdict: Verdict, width: int | None = None, wide: bool = False
) -> list[str]:
    """opencode's lock directories: one row each, and which opencode the verdict assumed."""
    where = safe(tildify(state.locks_dir, state.home))
    version = f"opencode {state.version}" if state.version else "opencode (version unknown)"
    locks = opencode_rows(verdict, state)
    if not locks:
        return [f"opencode's locks: none in {where}"]
    rows = []
    for r in locks:
        blocks = "no"
        if r.blocks:
            blocks = f"~{r.wait_s:.0f}s" if r.wait_s is not None else r.verdict
        rows.append(
            [
                r.state,
                r.pid if r.pid else "?",
                duration(r.held_s),
                duration(r.heartbeat_age_s),
                blocks,
                r.description.removeprefix("opencode's "),
                _command(r.command, wide) if r.command is not None else "-",
            ]
        )
    headers = ["STATE", "PID", "HELD", "HEARTBEAT", "BLOCKS", "LOCK", "COMMAND"]
    steps = [("wrap", "LOCK"), ("drop", "HEARTBEAT"), ("drop", "HELD")]
    head = wrap(f"opencode's locks in {where} (judged for {version}):", width, hang="  ")
    return [*head, *fitted(headers, rows, width, steps)]


def state_lines(db: DatabaseSnapshot) -> list[str]:
    """The database's file state in words: header, WAL and index, journal, probe."""
    lines = []
    if db.header:
        h = db.header
        lines.append(
            f"database: {_size(db.size)}, {_plural(h.page_count, 'page')} of {h.page_size} bytes,"
            f" change counter {h.change_counter}, user_version {h.user_version}"
        )
    elif db.size == 0:
        lines.append("database: empty (0 bytes): a new instance initialises it")
    wal = db.wal
    if wal is not None:
        lines.append("wal: " + _wal_words(wal))
    elif db.journal_mode is JournalMode.WAL:
        lines.append("wal: none (nothing written since the last checkpoint and close)")
    if db.hot_journal:
        lines.append(f"journal: hot ({_size(db.journal_size)}): the next opener rolls it back")
    elif db.journal_size is not None:
        lines.append(f"journal: {_size(db.journal_size)}, not hot")
    if db.probe:
        lines.append("probe: " + _probe_words(db.probe))
    return lines


def health_lines(rows: DatabaseRows) -> list[str]:
    """Per holder, what it did in the window; who waits on whom."""
    lines = []
    for h in rows.holders:
        got = h.health
        if got is None:
            continue
        words = [got.thread_summary or f"state {got.states}"]
        if got.cpu_s is not None:
            words.append(f"{got.cpu_s:.2f} s CPU in the window")
        if got.switches is not None:
            words.append(f"scheduled {got.switches} times")
        line = f"pid {h.pid}: " + "; ".join(words)
        if h.waiting_on:
            line += f"; waits in the kernel on {', '.join(f'pid {p}' for p in h.waiting_on)}"
        if h.likely_waiting_on:
            line += (
                f"; likely waiting on {', '.join(f'pid {p}' for p in h.likely_waiting_on)}"
                " (inferred: its threads sleep in nanosleep, as SQLite's busy handler does)"
            )
        lines.append(line)
    return lines


def _wal_words(wal: WalState) -> str:
    if wal.problem:
        words = f"{_size(wal.size)}, ignored by SQLite ({wal.problem})"
    elif not wal.size:
        words = "empty"
    else:
        frames = _plural(wal.frames, "frame")
        if wal.backfilled is None:
            words = f"{frames}, none known checkpointed ({_size(lag_bytes(wal))})"
        else:
            words = (
                f"{frames}, {wal.backfilled} checkpointed, {wal.lag_frames} to go"
                f" ({_size(lag_bytes(wal))})"
            )
        if wal.header:
            words += f"; checkpoint seq {wal.header.checkpoint_seq}"
    index = {
        IndexState.VALID: "index valid (frames from the -shm)",
        IndexState.STALE: "index stale: nobody has it open, the next opener rebuilds it"
        " (frames counted in the WAL)",
        IndexState.ABSENT: "no -shm (frames counted in the WAL)",
        IndexState.INVALID: f"index invalid: {wal.index_problem} (frames counted in the WAL)",
    }[wal.index]
    return f"{words}; {index}"


def _probe_words(probe: Probe) -> str:
    if probe.result is ProbeResult.SKIPPED:
        return f"skipped: {safe(probe.detail)}"
    words = f"{probe.said} ({probe.how}, {probe.elapsed_s * 1000:.1f} ms)"
    if probe.result is ProbeResult.OK:
        found = [f"journal_mode {probe.journal_mode}"] if probe.journal_mode else []
        found += [_plural(probe.page_count or 0, "page"), f"user_version {probe.user_version}"]
        return f"{words}: {', '.join(found)}"
    return f"{words}: {safe(probe.detail)}"


def _size(n: int | None) -> str:
    if n is None:
        return "? bytes"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return _plural(n, "byte")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _holder_table(rows: DatabaseRows, windowed: bool, width: int | None, wide: bool) -> list[str]:
    cells = []
    for h in rows.holders:
        cells.append(
            [
                h.pid,
                h.user or "?",
                h.state or "?",
                duration(h.age_s),
                f"{h.cpu_s:.2f}s" if h.cpu_s is not None else "?",
                ",".join(h.files) if h.fds_readable else "?",
                " ".join(r.cell_in(windowed) for r in (*h.locks, *h.waiting_for)) or "-",
                _command(h.command, wide) or "?",
            ]
        )
    headers = ["PID", "USER", "STATE", "AGE", "CPU", "FILES", "LOCKS", "COMMAND"]
    steps = [("drop", "FILES"), ("wrap", "LOCKS"), ("drop", "USER"), ("drop", "CPU")]
    return fitted(headers, cells, width, steps)


def _command(command: str, wide: bool) -> str:
    """A command line as a table shows it: whole with --wide, else from its program's name."""
    return safe(command) if wide else short_command(safe(command))


def _legend(rows: tuple[DatabaseRows, ...], windowed: bool) -> list[str]:
    locks: list[LockRow] = [
        r for dr in rows for h in dr.holders for r in (*h.locks, *h.waiting_for)
    ]
    locks += [r for dr in rows for r in dr.unattributed]
    cells = " ".join(r.cell_in(windowed) for r in locks)
    lines = []
    if "*" in cells:
        lines.append("  * a lock a new instance needs, held for the whole window")
    if "~" in cells:
        lines.append("  ~ seen at first, released within the window")
    if ":EX" in cells:
        lines.append("  :EX held exclusively (the others are shared)")
    return lines


def _advice(snapshot: Snapshot, verdict: Verdict, auth: str | None) -> list[str]:
    state = verdict.state
    if state in (State.CLEAR, State.ERROR):
        return []
    target = shell_quote(snapshot.target)
    locks = verdict.opencode.blockers if verdict.opencode else ()
    if locks:
        return _lock_advice(locks, snapshot, target)
    blockers = [b for dv in verdict.databases for b in dv.blockers]
    if state is State.SHARED:  # two short lines: the verdict line has said why
        return [
            f"if a holder writes, runs wait: sqlprobe run --wait 60 {target} -- opencode run ...",
            "or queue runs: sqlprobe run --serialize -- ..., or isolate one: sqlprobe run"
            " --isolate -- ...",
        ]
    isolate = (
        "isolate the run: sqlprobe run --isolate -- opencode run ... gives it its own database"
        " while credentials stay shared (its session is not in the shared history)"
    )
    if auth:  # a per-run data dir has no credentials unless they are copied in
        isolate += f"; a per-run XDG_DATA_HOME also works but needs {safe(auth)} copied in"
    lines = []
    stuck = [b for b in blockers if b.stuck]
    pids = sorted({b.lock.pid for b in (stuck or blockers) if b.lock.pid})
    if state is State.STUCK:
        lines.append("waiting will not help: the holder is making no progress")
        stopped = sorted({b.lock.pid for b in stuck if b.lock.pid and "stopped" in b.stuck})
        parked = [pid for pid in pids if pid not in stopped]
        if stopped:
            lines.append(f"resume a stopped holder with kill -CONT {' '.join(map(str, stopped))}")
        if parked:
            # SQLite rolls back what a killed process had not committed: in WAL mode its
            # frames are ignored, in rollback mode the next opener plays back the hot journal.
            lines.append(
                f"end the stuck holder: kill {' '.join(map(str, parked))} (kill -9 if it stays);"
                " what it had not committed is rolled back, what it committed is kept"
            )
    else:
        lines.append(
            "wait: a working holder releases its lock when its transaction ends:"
            f" sqlprobe wait {target} && opencode run ..., or sqlprobe run --wait 60 {target} --"
            " opencode run ..."
        )
    if pids:
        pid_args = ",".join(map(str, pids))
        lines.append(
            f"look at the holder: sqlprobe diagnose {target} (its open files, stack, log tail),"
            f" or ps -o pid,stat,etime,time,args -p {pid_args}"
        )
    else:
        lines.append(_unnamed_holder(blockers))
    lines.append(isolate)
    return lines


def _unnamed_holder(blockers: Iterable[Blocker]) -> str:
    """Advice when no blocking lock names its process."""
    if any(b.lock.lock_class == "OFDLCK" for b in blockers):
        return (
            "the lock is an open-file-description lock, which names no process: its holder is"
            " one of the processes that have the file open (sqlprobe diagnose lists their files;"
            " --thorough also finds it open under another name)"
        )
    return "the holder runs outside this pid namespace: run sqlprobe on the host"


def _lock_advice(locks: tuple[LockVerdict, ...], snapshot: Snapshot, target: str) -> list[str]:
    """What helps against one of opencode's own locks (never --isolate: it is not in the db)."""
    top = locks[0]
    meta = top.lock.meta
    pid = meta.pid if meta else None
    remove = f"rm -r {shell_quote(top.lock.path)}"
    lines = []
    if top.state == "left-behind":
        lines.append(
            f"wait ~{top.wait_s:.0f} s: the lock turns stale and the next instance breaks it;"
            f" sqlprobe wait {target} && opencode run ... returns then (it deletes nothing)"
        )
        lines.append(
            f"or remove it now, since its holder{f' pid {pid}' if pid else ''} is gone: {remove}"
        )
    elif top.state == "stale":  # a breaker left behind keeps it from being broken
        breaker = shell_quote(top.lock.path + ".breaker")
        lines.append(f"wait ~{top.wait_s:.0f} s (sqlprobe wait {target}), or remove the breaker"
                     f" left behind: rm -r {breaker}")  # fmt: skip
    elif top.stuck:
        lines.append("waiting will not help: the holder is making no progress")
        if pid and "stopped" in top.stuck:
            lines.append(f"resume a stopped holder with kill -CONT {pid}")
        if pid:
            lines.append(
                f"end the holder: kill {pid} (what it has not saved is lost); its lock stays"
                f" behind until it is stale (60 s), or remove it once pid {pid} is gone: {remove}"
            )
    else:
        lines.append(
            "wait: the holder releases the lock when it is done (a new instance itself would"
            f" wait up to 5 min): sqlprobe wait --timeout 300 {target} && opencode run ...,"
            f" or sqlprobe run --wait 300 {target} -- opencode run ..."
        )
        if pid:
            lines.append(f"end the holder: kill {pid}; its lock stays behind until it is stale"
                         f" (60 s), or remove it once pid {pid} is gone: {remove}")  # fmt: skip
    if pid and top.alive:
        lines.append(
            f"look at the holder: sqlprobe diagnose {target}, or ps -o pid,stat,etime,time,args"
            f" -p {pid}"
        )
    lines.append(
        "sqlprobe run --isolate does not help here: it gives a run its own database, not its"
        " own lock directory"
    )
    return lines
