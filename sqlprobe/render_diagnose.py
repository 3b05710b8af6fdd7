"""Output of `sqlprobe diagnose`: the extra sections, as JSON and as text, after check's report."""

from __future__ import annotations

from typing import Any

from .diagnose import Diagnosis, HolderDetails
from .render import duration
from .text import safe

STACK_LINES = 12


def diagnosis_json(diag: Diagnosis) -> dict[str, Any]:
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
        "holders": [_holder_json(h) for h in diag.holders],
    }


def _holder_json(h: HolderDetails) -> dict[str, Any]:
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
    }


def diagnosis_text(diag: Diagnosis, style: Any) -> str:
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
        if h.cwd:
            out.append(f"  cwd: {safe(h.cwd)}")
        if h.parents:
            chain = " <- ".join(f"{pid} ({safe(command)[:40]})" for pid, command in h.parents)
            out.append(f"  parents: {chain}")
        if h.environment is not None:
            env = " ".join(f"{k}={safe(v)}" for k, v in h.environment.items()) or "(none set)"
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
