"""Output: the JSON document and the human report, both views of one Snapshot and its Verdict.

JSON is built from the records, never from table cells. Text from other processes (command
lines, paths) goes through `text.safe` before it reaches a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlprobe.judge.health import Health, health, likely_waiting, persistent_edges, waits_on
from sqlprobe.judge.opencode import LockVerdict, OpencodeVerdict
from sqlprobe.judge.verdict import Blocker, DatabaseVerdict, State, Verdict, skipped_caveat
from sqlprobe.model import (
    DatabaseSnapshot,
    DbHeader,
    FileKind,
    IndexState,
    JournalMode,
    Lock,
    Mode,
    OpencodeState,
    Probe,
    ProbeResult,
    Snapshot,
    WalState,
)
from sqlprobe.opencode.flock import key_words
from sqlprobe.opencode.paths import tildify
from sqlprobe.sqlite.effects import outcome
from sqlprobe.sqlite.locks import WAL_FRAME_HEADER_SIZE
from sqlprobe.text import duration, safe, shell_quote, short_command, wrap

SCHEMA = 1

COLOURS = {
    State.CLEAR: "green",
    State.SHARED: "cyan",
    State.BUSY: "yellow",
    State.STUCK: "red",
    State.ERROR: "red",
}


# -- JSON ---------------------------------------------------------------------------------------


def to_json(snapshot: Snapshot, verdict: Verdict) -> dict[str, Any]:
    """The `--json` document (schema 1, documented in the README; extend it, never break it)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "target": snapshot.target,
        "verdict": verdict.state.value,
        "exit_code": int(verdict.exit_code),
        "reason": verdict.reason,
        "databases": [
            _database_json(db, dv)
            for db, dv in zip(snapshot.databases, verdict.databases, strict=True)
        ],
        "uninspected_processes": snapshot.uninspected_processes,
        "skipped_processes": snapshot.skipped_processes,
        "thorough": snapshot.thorough,
        "warnings": all_warnings(snapshot, verdict),
        "window": {"seconds": snapshot.window_s, "samples": snapshot.samples},
        "timeout": {"seconds": snapshot.timeout_s, "cut_short": list(snapshot.cut_short)},
        "opencode_locks": [_oclock_json(v, snapshot.opencode) for v in _lock_verdicts(verdict)],
        "opencode": _opencode_json(snapshot.opencode, verdict.opencode),
    }
    if snapshot.note:
        doc["note"] = snapshot.note
    return doc


def all_warnings(snapshot: Snapshot, verdict: Verdict) -> list[str]:
    """The snapshot's warnings, what the databases' files say (a hard link, a side file that
    is not a regular one), then what opencode's state says (stale locks, index.lock...)."""
    files = [w for dv in verdict.databases for w in dv.warnings]
    extra = list(verdict.opencode.warnings) if verdict.opencode else []
    return list(dict.fromkeys([*snapshot.warnings, *files, *extra]))


def _lock_verdicts(verdict: Verdict) -> tuple[LockVerdict, ...]:
    return verdict.opencode.locks if verdict.opencode else ()


def _oclock_json(v: LockVerdict, state: OpencodeState | None) -> dict[str, Any]:
    meta = v.lock.meta
    found = state.owner(meta.pid if meta else None) if state else None
    return {
        "path": v.lock.path,
        "key": v.lock.key,
        "description": key_words(v.lock.key, state.home if state else ""),
        "pid": meta.pid if meta else None,
        "hostname": meta.hostname if meta else None,
        "alive": v.alive,
        "command": found.command if found and found.alive else None,
        "held_s": v.held_s,
        "heartbeat_age_s": v.heartbeat_age_s,
        "state": v.state,
        "needed_at_startup": v.needed,
        "blocks": v.blocks,
        "wait_s": v.wait_s,
        "stuck": v.stuck,
        "breaker_age_s": None
        if v.lock.breaker_mtime is None or state is None
        else round(max(0.0, state.now - v.lock.breaker_mtime), 1),
        "problem": v.lock.problem,
        "reason": v.reason,
    }


def _opencode_json(state: OpencodeState | None, ov: OpencodeVerdict | None) -> Any:
    if state is None:
        return None
    return {
        "state_dir": state.state_dir,
        "locks_dir": state.locks_dir,
        "version": state.version,
        "version_source": state.version_source,
        "startup_keys": list(ov.startup_keys) if ov else [],
        "index_locks": [
            {
                "path": lk.path,
                "age_s": None if lk.mtime is None else round(max(0.0, state.now - lk.mtime), 1),
                "openers": list(lk.openers),
            }
            for lk in state.index_locks
        ],
        "zombie_children": [
            {"parent": z.parent, "pid": z.pid, "command": z.command} for z in state.zombies
        ],
    }


def _database_json(db: DatabaseSnapshot, dv: DatabaseVerdict) -> dict[str, Any]:
    first = db.observations[0] if db.observations else None
    last = db.observations[-1] if db.observations else None
    locks = first.locks if first else ()
    # Waiters are known only where /proc/locks was read: the first look may have used fdinfo.
    listed = next((o for o in reversed(db.observations) if o.waits is not None), None)
    waiting = [lk for lk in (listed.locks if listed else ()) if lk.waiter]
    holders = []
    edges = persistent_edges(db.observations)
    for h in db.holders:
        sample = last.proc(h.pid) if last else None
        mine = [lk for lk in locks if lk.pid == h.pid and not lk.waiter]
        stuck = next((b.stuck for b in dv.blockers if b.lock.pid == h.pid and b.stuck), None)
        holders.append(
            {
                "pid": h.pid,
                "command": h.command,
                "user": h.user,
                "uid": h.uid,
                "state": sample.state if sample else None,
                "age_s": h.age_s,
                "cpu_s": round(sample.cpu_s, 2) if sample else None,
                "files": [k.value for k in h.files],
                "fds_readable": h.fds_readable,
                "locks": [_lock_json(lk, dv) for lk in mine],
                "waiting_for": [_lock_json(lk, dv) for lk in waiting if lk.pid == h.pid],
                "waiting_on": waits_on(h.pid, edges),
                "likely_waiting_on": _likely(db, dv, h.pid),
                "health": _health_json(health(h.pid, db.observations)),
                "stuck": stuck,
            }
        )
    return {
        "path": db.path,
        "exists": db.exists,
        "verdict": dv.state.value,
        "reason": dv.reason,
        "journal_mode": dv.journal_mode.value,
        "size": db.size,
        "files": {f.kind.value: f.key is not None for f in db.files},
        "not_regular": {f.kind.value: f.not_regular for f in db.files if f.not_regular},
        "links": db.links,
        "other_names": [
            {"pid": o.pid, "path": o.path, "side_files": list(o.side_files)} for o in db.other_names
        ],
        "header": _header_json(db.header),
        "wal": _wal_json(db.wal),
        "hot_journal": db.hot_journal,
        "deleted_open": [{"pid": pid, "file": kind.value} for pid, kind in db.deleted_open],
        "probe": _probe_json(db.probe),
        "holders": holders,
        "unattributed_locks": [_lock_json(lk, dv) for lk in locks if lk.pid is None],
        "blockers": [
            {
                "pid": b.lock.pid,
                "file": b.lock.file.value,
                "lock": b.lock.name,
                "mode": b.lock.mode.value,
                "outcome": b.outcome.name.lower(),
                "stuck": b.stuck,
            }
            for b in dv.blockers
        ],
    }


def _likely(db: DatabaseSnapshot, dv: DatabaseVerdict, pid: int) -> list[int]:
    """The blockers `pid` is likely waiting on: an inference from nanosleep (health.py)."""
    blockers = sorted({b.lock.pid for b in dv.blockers if b.lock.pid and b.lock.pid != pid})
    if not blockers or not likely_waiting(pid, db.observations):
        return []
    return blockers


def _health_json(h: Health | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {
        "states": h.states,
        "samples": h.samples,
        "threads": h.threads,
        "thread_summary": h.thread_summary,
        "window_cpu_s": h.cpu_s,
        "window_switches": h.switches,
    }


def _header_json(header: DbHeader | None) -> dict[str, Any] | None:
    if header is None:
        return None
    return {
        "page_size": header.page_size,
        "page_count": header.page_count,
        "change_counter": header.change_counter,
        "schema_cookie": header.schema_cookie,
        "user_version": header.user_version,
        "write_version": header.write_version,
        "read_version": header.read_version,
    }


def _wal_json(wal: WalState | None) -> dict[str, Any] | None:
    if wal is None:
        return None
    return {
        "frames": wal.frames,
        "backfilled": wal.backfilled,
        "lag_frames": wal.lag_frames,
        "bytes": lag_bytes(wal),
        "page_size": wal.page_size,
        "checkpoint_seq": wal.header.checkpoint_seq if wal.header else None,
        "index": wal.index.value,
        "counted_from": wal.counted_from,
        "verified_frames": wal.scan.verified if wal.scan else None,
        "uncommitted_frames": wal.scan.uncommitted if wal.scan else None,
        "read_marks": list(wal.shm.read_marks) if wal.shm else None,
        "backfill_attempted": wal.shm.backfill_attempted if wal.shm else None,
        "file_size": wal.size,
        "problem": wal.problem,
        "index_problem": wal.index_problem,
    }


def _probe_json(probe: Probe | None) -> dict[str, Any] | None:
    if probe is None:
        return None
    return {
        "result": probe.result,
        "how": probe.how,
        "detail": probe.detail,
        "elapsed_s": probe.elapsed_s,
        "journal_mode": probe.journal_mode,
        "page_count": probe.page_count,
        "user_version": probe.user_version,
    }


def lag_bytes(wal: WalState) -> int:
    """Bytes of the WAL not yet checkpointed: whole frames, header and page."""
    return wal.lag_frames * ((wal.page_size or 0) + WAL_FRAME_HEADER_SIZE)


def _lock_json(lock: Lock, dv: DatabaseVerdict) -> dict[str, Any]:
    return {
        "file": lock.file.value,
        "lock": lock.name,
        "mode": lock.mode.value,
        "start": lock.range.start,
        "end": lock.range.end,
        "class": lock.lock_class,
        "source": lock.source,
        "persisted": lock.identity in dv.persisted,
        "blocks": outcome(lock, dv.journal_mode) is not None,
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
    for db, dv in zip(snapshot.databases, verdict.databases, strict=True):
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
        if db.holders:
            out.extend(_holder_table(db, dv, windowed, width, wide))
            if windowed:
                for line in health_lines(db, dv):
                    out.extend(wrap(line, width, "  ", "    "))
        hidden = [lk for lk in (db.observations[0].locks if db.observations else ()) if not lk.pid]
        if hidden:
            cells = ", ".join(_lock_cell(lk, dv, windowed) for lk in hidden)
            out.extend(
                wrap(f"locks whose holder sqlprobe cannot see: {cells}", width, "  ", "    ")
            )
    if snapshot.opencode is not None and verdict.opencode is not None:
        out.append("")
        out.extend(opencode_lines(snapshot.opencode, verdict.opencode, width, wide))
    legend = _legend(snapshot, verdict, windowed)
    if legend:
        out.append("")
        out.extend(legend)
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
    state: OpencodeState, ov: OpencodeVerdict, width: int | None = None, wide: bool = False
) -> list[str]:
    """opencode's lock directories: one row each, and which opencode the verdict assumed."""
    where = safe(tildify(state.locks_dir, state.home))
    version = f"opencode {state.version}" if state.version else "opencode (version unknown)"
    if not ov.locks:
        return [f"opencode's locks: none in {where}"]
    rows = []
    for v in ov.locks:
        meta = v.lock.meta
        found = state.owner(meta.pid if meta else None)
        if v.blocks:
            blocks = f"~{v.wait_s:.0f}s" if v.wait_s is not None else v.verdict.value
        else:
            blocks = "no"
        rows.append(
            [
                v.state,
                meta.pid if meta and meta.pid else "?",
                duration(v.held_s),
                duration(v.heartbeat_age_s),
                blocks,
                key_words(v.lock.key, state.home).removeprefix("opencode's "),
                _command(found.command, wide) if found and found.alive else "-",
            ]
        )
    headers = ["STATE", "PID", "HELD", "HEARTBEAT", "BLOCKS", "LOCK", "COMMAND"]
    steps = [("wrap", "LOCK"), ("drop", "HEARTBEAT"), ("drop", "HELD")]
    head = wrap(f"opencode's locks in {where} (judged for {version}):", width, hang="  ")
    return [*head, *_fitted(headers, rows, width, steps)]


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


def health_lines(db: DatabaseSnapshot, dv: DatabaseVerdict) -> list[str]:
    """Per holder, what it did in the window; who waits on whom."""
    lines = []
    edges = persistent_edges(db.observations)
    for h in db.holders:
        got = health(h.pid, db.observations)
        if got is None:
            continue
        words = [got.thread_summary or f"state {got.states}"]
        if got.cpu_s is not None:
            words.append(f"{got.cpu_s:.2f} s CPU in the window")
        if got.switches is not None:
            words.append(f"scheduled {got.switches} times")
        line = f"pid {h.pid}: " + "; ".join(words)
        if others := waits_on(h.pid, edges):
            line += f"; waits in the kernel on {', '.join(f'pid {p}' for p in others)}"
        if likely := _likely(db, dv, h.pid):
            line += (
                f"; likely waiting on {', '.join(f'pid {p}' for p in likely)} (inferred: its"
                " threads sleep in nanosleep, as SQLite's busy handler does)"
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
    if probe.result == ProbeResult.SKIPPED.value:
        return f"skipped: {safe(probe.detail)}"
    words = f"{probe.result} ({probe.how}, {probe.elapsed_s * 1000:.1f} ms)"
    if probe.result == ProbeResult.OK.value:
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


def _holder_table(
    db: DatabaseSnapshot, dv: DatabaseVerdict, windowed: bool, width: int | None, wide: bool
) -> list[str]:
    last = db.observations[-1]
    first = db.observations[0]
    rows = []
    for h in db.holders:
        sample = last.proc(h.pid)
        locks = [lk for lk in first.locks if lk.pid == h.pid]
        rows.append(
            [
                h.pid,
                h.user or "?",
                sample.state if sample else "?",
                duration(h.age_s),
                f"{sample.cpu_s:.2f}s" if sample else "?",
                ",".join(k.value for k in h.files) if h.fds_readable else "?",
                " ".join(_lock_cell(lk, dv, windowed) for lk in locks) or "-",
                _command(h.command, wide) or "?",
            ]
        )
    headers = ["PID", "USER", "STATE", "AGE", "CPU", "FILES", "LOCKS", "COMMAND"]
    steps = [("drop", "FILES"), ("wrap", "LOCKS"), ("drop", "USER"), ("drop", "CPU")]
    return _fitted(headers, rows, width, steps)


def _command(command: str, wide: bool) -> str:
    """A command line as a table shows it: whole with --wide, else from its program's name."""
    return safe(command) if wide else short_command(safe(command))


# The COMMAND column keeps at least this much before other columns go; cut to fit after that.
MIN_COMMAND = 28
WRAP_CELL = 24


def _fitted(
    headers: list[str], rows: list[list[Any]], width: int | None, steps: list[tuple[str, str]]
) -> list[str]:
    """A plain table, indented two spaces, whose last column is COMMAND: at `width` columns,
    `steps` are taken in turn ("drop" a column, "wrap" one's words onto lines) until COMMAND
    has MIN_COMMAND columns (or all it needs), then COMMAND is cut to what is left. What was
    left out is said below the table, with how to see it."""
    import tabulate  # only the tables need it: keep it off the --quiet path

    def table(cols: list[str], cells: list[list[Any]]) -> str:
        # Fitting a terminal, headers get no padding beyond the 2-space gap (tabulate's
        # MIN_PADDING, a module global: restored at once).
        padding = tabulate.MIN_PADDING
        tabulate.MIN_PADDING = padding if width is None else 0
        try:
            return tabulate.tabulate(cells, headers=cols, tablefmt="plain", disable_numparse=True)
        finally:
            tabulate.MIN_PADDING = padding

    cols, cells = list(headers), [list(r) for r in rows]
    if width is None:
        return [_indent(table(cols, cells))]
    need = max(len(str(r[-1])) for r in cells)
    dropped = []

    def room() -> int:  # columns left for COMMAND: the indent, the others, a 2-space gap
        rest = table(cols[:-1], [r[:-1] for r in cells])
        return width - 2 - max(map(len, rest.splitlines())) - 2

    for action, name in steps:  # wrapping loses nothing: done until COMMAND fits whole
        if room() >= need or (action == "drop" and room() >= min(MIN_COMMAND, need)):
            continue
        i = cols.index(name)
        if action == "drop":
            dropped.append(name)
            del cols[i]
            for r in cells:
                del r[i]
        else:
            for r in cells:
                text = str(r[i])
                longest = max(map(len, text.split()), default=0)
                r[i] = "\n".join(wrap(text, max(WRAP_CELL, longest)))
    fit = max(room(), 10)
    cut = need > fit
    for r in cells:
        r[-1] = short_command(str(r[-1]), fit)
    lines = [_indent(table(cols, cells))]
    if dropped or cut:
        what = [f"{', '.join(dropped)} hidden"] if dropped else []
        what += ["commands cut"] if cut else []
        note = f"({', '.join(what)}, to fit {width} columns: --wide shows all)"
        lines.extend(wrap(note, width, "  ", "    "))
    return lines


def _lock_cell(lock: Lock, dv: DatabaseVerdict, windowed: bool) -> str:
    """`wal-write:EX*`: name, :EX when exclusive, * when it blocks, ~ when it did not persist."""
    text = f"{lock.file.value}:{lock.name}" if lock.file is not FileKind.SHM else lock.name
    if lock.mode is Mode.EXCLUSIVE and lock.name != "exclusive":
        text += ":EX"
    if lock.waiter:
        text = "waits:" + text
    elif outcome(lock, dv.journal_mode) is not None:
        text += "*" if lock.identity in dv.persisted else "~"
    elif windowed and lock.identity not in dv.persisted:
        text += "~"
    return text


def _legend(snapshot: Snapshot, verdict: Verdict, windowed: bool) -> list[str]:
    cells = " ".join(
        _lock_cell(lk, dv, windowed)
        for db, dv in zip(snapshot.databases, verdict.databases, strict=True)
        for obs in db.observations[:1]
        for lk in obs.locks
    )
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


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
