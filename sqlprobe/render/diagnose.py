"""Output of `sqlprobe diagnose`: the extra sections, as JSON and as text, after check's report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlprobe.diagnosis import Diagnosis, HolderDetails
from sqlprobe.opencode.locks import key_words
from sqlprobe.text import duration, safe, shorten, wrap
from sqlprobe.verdict.opencode import LockVerdict

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
    diag: Diagnosis,
    style: Any,
    likely: Mapping[int, LockVerdict],
    home: str,
    width: int | None = None,
) -> str:
    """The diagnosis for a person. Fitted to `width` columns (None: lines whole, as to a pipe
    or with --wide): prose wraps with a hanging indent; a log line or an open file's path,
    which are data, is cut with an ellipsis (the JSON has them whole)."""
    out: list[str] = []

    def prose(text: str, indent: str = "", hang: str | None = None) -> None:
        out.extend(wrap(text, width, indent, hang if hang is not None else indent + "  "))

    def data(text: str) -> None:
        out.append(text if width is None else shorten(text, max(width, 20)))

    for fs in diag.filesystems:
        prose(
            f"filesystem of {safe(fs.path)}: {safe(fs.fstype)} ({safe(fs.source)} on"
            f" {safe(fs.mount_point)})"
        )
        if fs.warning:
            out.extend(
                style(line, fg="yellow") for line in wrap(f"warning: {safe(fs.warning)}", width)
            )
    for h in diag.holders:
        out.append("")
        out.append(style(f"pid {h.pid}", bold=True))
        if (lock := likely.get(h.pid)) is not None:
            meta = lock.lock.meta
            by = f" of pid {meta.pid}" if meta and meta.pid else ""
            prose(
                f"likely waiting on {key_words(lock.lock.key, home)}{by} ({lock.state}) —"
                " inferred: an opencode process that holds none of opencode's locks has run"
                " for a while, while that lock blocks every start-up",
                "  ",
            )
        if h.cwd:
            prose(f"cwd: {safe(h.cwd)}", "  ")
        if h.parents:
            chain = " <- ".join(f"{pid} ({safe(command)[:40]})" for pid, command in h.parents)
            prose(f"parents: {chain}", "  ")
        if h.environment is not None:
            pairs = (f"{safe(k)}={safe(v)}" for k, v in h.environment.items())
            prose(f"environment: {' '.join(pairs) or '(none set)'}", "  ")
        for log in h.logs:
            if log.error:
                prose(f"log: {safe(log.path)}: {safe(log.error)}", "  ")
                continue
            prose(
                f"log: {safe(log.path)} ({log.size} bytes, last written {duration(log.age_s)}"
                " ago), last lines:",
                "  ",
            )
            for line in log.last_lines:
                data(f"    {safe(line)}")
        if h.fds is not None:
            out.append(f"  open files ({len(h.fds)}):")
            for f in h.fds:
                data(f"    {f.fd:>4} {f.kind:<10} {safe(f.target)}")
        if h.stack:
            lines = h.stack.splitlines()
            out.append("  kernel stack:")
            out.extend(f"    {safe(line)}" for line in lines[:STACK_LINES])
        for problem in h.problems:
            prose(f"not readable: {safe(problem)}", "  ")
    return "\n".join(out)
