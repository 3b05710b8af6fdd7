"""The `--json` document: a view of the row model (rows.py) and the records, never of table
cells. Schema 1, documented in the README: extend it, never break it."""

from __future__ import annotations

from typing import Any

from sqlprobe.model import (
    DatabaseSnapshot,
    DbHeader,
    Finding,
    OpencodeState,
    Probe,
    Problem,
    Snapshot,
    WalState,
)
from sqlprobe.render.findings import words
from sqlprobe.render.rows import (
    HolderRow,
    LockRow,
    OpencodeLockRow,
    database_rows,
    opencode_rows,
)
from sqlprobe.sqlite.locks import WAL_FRAME_HEADER_SIZE
from sqlprobe.verdict.health import Health
from sqlprobe.verdict.judge import DatabaseVerdict, Verdict
from sqlprobe.verdict.opencode import OpencodeVerdict

SCHEMA = 1


def to_json(snapshot: Snapshot, verdict: Verdict) -> dict[str, Any]:
    """The `--json` document (schema 1, documented in the README; extend it, never break it)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "target": snapshot.target,
        "verdict": verdict.state.value,
        "exit_code": int(verdict.exit_code),
        "reason": verdict.reason,
        "error": _problem_json(snapshot.error),
        "databases": [
            _database_json(db, dv)
            for db, dv in zip(snapshot.databases, verdict.databases, strict=True)
        ],
        "uninspected_processes": snapshot.uninspected_processes,
        "skipped_processes": snapshot.skipped_processes,
        "thorough": snapshot.thorough,
        "warnings": all_warnings(snapshot, verdict),
        "findings": findings_json(snapshot, verdict),
        "window": {"seconds": snapshot.window_s, "samples": snapshot.samples},
        "timeout": {"seconds": snapshot.timeout_s, "cut_short": list(snapshot.cut_short)},
        "opencode_locks": [_oclock_json(r) for r in opencode_rows(verdict, snapshot.opencode)],
        "opencode": _opencode_json(snapshot.opencode, verdict.opencode),
        "backend": snapshot.backend,
    }
    if snapshot.note:
        doc["note"] = snapshot.note
    return doc


def _warned(snapshot: Snapshot, verdict: Verdict) -> list[Finding | str]:
    """The snapshot's warnings, what the databases' files say (a hard link, a side file that
    is not a regular one), then what opencode's state says (stale locks, index.lock...)."""
    files = [w for dv in verdict.databases for w in dv.warnings]
    extra = list(verdict.opencode.warnings) if verdict.opencode else []
    return [*snapshot.warnings, *files, *extra]


def all_warnings(snapshot: Snapshot, verdict: Verdict) -> list[str]:
    """Every warning in words, each once."""
    return list(dict.fromkeys(words(f) for f in _warned(snapshot, verdict)))


def findings_json(snapshot: Snapshot, verdict: Verdict) -> list[dict[str, Any]]:
    """The warnings as records (kind, path, pid, detail, count, total, pids): what a script can
    match on without parsing sentences. opencode's own sentences have no record."""
    found = [w for w in _warned(snapshot, verdict) if isinstance(w, Finding)]
    return [
        {
            "kind": f.kind.value,
            "path": f.path,
            "pid": f.pid,
            "detail": f.detail,
            "count": f.count,
            "total": f.total,
            "pids": list(f.pids),
        }
        for f in dict.fromkeys(found)
    ]


def _oclock_json(row: OpencodeLockRow) -> dict[str, Any]:
    return {
        "path": row.path,
        "key": row.key,
        "description": row.description,
        "pid": row.pid,
        "hostname": row.hostname,
        "alive": row.alive,
        "command": row.command,
        "held_s": row.held_s,
        "heartbeat_age_s": row.heartbeat_age_s,
        "state": row.state,
        "needed_at_startup": row.needed,
        "blocks": row.blocks,
        "wait_s": row.wait_s,
        "stuck": row.stuck,
        "breaker_age_s": row.breaker_age_s,
        "problem": row.problem,
        "reason": row.reason,
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
    rows = database_rows(db, dv)
    holders = [_holder_json(h) for h in rows.holders]
    return {
        "path": db.path,
        "exists": db.exists,
        "verdict": dv.state.value,
        "reason": dv.reason,
        "error": _problem_json(db.error),
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
        "unattributed_locks": [_lock_json(r) for r in rows.unattributed],
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


def _holder_json(h: HolderRow) -> dict[str, Any]:
    return {
        "pid": h.pid,
        "command": h.command,
        "user": h.user,
        "uid": h.uid,
        "state": h.state,
        "age_s": h.age_s,
        "cpu_s": h.cpu_s,
        "files": list(h.files),
        "fds_readable": h.fds_readable,
        "locks": [_lock_json(r) for r in h.locks],
        "waiting_for": [_lock_json(r) for r in h.waiting_for],
        "waiting_on": list(h.waiting_on),
        "likely_waiting_on": list(h.likely_waiting_on),
        "health": _health_json(h.health),
        "stuck": h.stuck,
    }


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
        "result": probe.said,
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


def _problem_json(problem: Problem | None) -> dict[str, Any] | None:
    """Why it cannot be judged, as a record (the verdict's reason says it in words)."""
    if problem is None:
        return None
    return {"kind": problem.kind.value, "path": problem.path, "detail": problem.detail}


def _lock_json(row: LockRow) -> dict[str, Any]:
    return {
        "file": row.file,
        "lock": row.lock,
        "mode": row.mode,
        "start": row.start,
        "end": row.end,
        "class": row.lock_class,
        "source": row.source,
        "persisted": row.persisted,
        "blocks": row.blocks,
    }
