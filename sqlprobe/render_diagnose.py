"""Output of `sqlprobe diagnose`: the extra sections, as JSON and as text, after check's report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .diagnose import Diagnosis, HolderDetails
from .opencode.flock import key_words
from .text import duration, safe
from .verdict_opencode import LockVerdict

STACK_LINES = 12


def diagnosis_json(diag: Diagnosis, likely: Mapping[int, LockVerdict]) -> dict[str, Any]:
    return {
        "filesystems": [
            {
                "path": fs.path,
                "mount_point": fs.mount_point,
                "fstype": fs.fstype,
                "source": fs.source,
                "warning": fs.warning,
            }
            for fs in diag.filesystems
        ],
        "holders": [_holder_json(h, likely.get(h.pid)) for h in diag.holders],
    }


def _holder_json(h: HolderDetails, likely: LockVerdict | None) -> dict[str, Any]:
    return {
        "pid": h.pid,
        "fds": None
        if h.fds is None
        else [{"fd": f.fd, "kind": f.kind, "target": f.target} for f in h.fds],
        "stack": h.stack,
        "cwd": h.cwd,
        "parents": [{"pid": pid, "command": command} for pid, command in h.parents],
        "environment": h.environment,
        "logs": [
            {
                "path": log.path,
                "size": log.size,
                "age_s": log.age_s,
                "last_lines": list(log.last_lines),
                "error": log.error,
            }
            for log in h.logs
        ],
        "problems": list(h.problems),
        "likely_waiting_on_lock": None
        if likely is None
        else {
            "path": likely.lock.path,
            "pid": likely.lock.meta.pid if likely.lock.meta else None,
            "inference": True,
        },
    }


def diagnosis_text(
    diag: Diagnosis, style: Any, likely: Mapping[int, LockVerdict], home: str
) -> str:
    out = []
    for fs in diag.filesystems:
        out.append(
            f"filesystem of {safe(fs.path)}: {safe(fs.fstype)} ({safe(fs.source)} on"
            f" {safe(fs.mount_point)})"
        )
        if fs.warning:
            out.append(style(f"warning: {safe(fs.warning)}", fg="yellow"))
    for h in diag.holders:
        out.append("")
        out.append(style(f"pid {h.pid}", bold=True))
        if (lock := likely.get(h.pid)) is not None:
            meta = lock.lock.meta
            by = f" of pid {meta.pid}" if meta and meta.pid else ""
            out.append(
                f"  likely waiting on {key_words(lock.lock.key, home)}{by} ({lock.state}) —"
                " inferred: an opencode process that holds none of opencode's locks has run"
                " for a while, while that lock blocks every start-up"
            )
        if h.cwd:
            out.append(f"  cwd: {safe(h.cwd)}")
        if h.parents:
            chain = " <- ".join(f"{pid} ({safe(command)[:40]})" for pid, command in h.parents)
            out.append(f"  parents: {chain}")
        if h.environment is not None:
            pairs = (f"{safe(k)}={safe(v)}" for k, v in h.environment.items())
            env = " ".join(pairs) or "(none set)"
            out.append(f"  environment: {env}")
        for log in h.logs:
            if log.error:
                out.append(f"  log: {safe(log.path)}: {safe(log.error)}")
                continue
            out.append(
                f"  log: {safe(log.path)} ({log.size} bytes, last written {duration(log.age_s)}"
                " ago), last lines:"
            )
            out.extend(f"    {safe(line)}" for line in log.last_lines)
        if h.fds is not None:
            out.append(f"  open files ({len(h.fds)}):")
            out.extend(f"    {f.fd:>4} {f.kind:<10} {safe(f.target)}" for f in h.fds)
        if h.stack:
            lines = h.stack.splitlines()
            out.append("  kernel stack:")
            out.extend(f"    {safe(line)}" for line in lines[:STACK_LINES])
        for problem in h.problems:
            out.append(f"  not readable: {safe(problem)}")
    return "\n".join(out)
