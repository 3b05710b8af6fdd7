"""Findings in words: the one place a Finding record becomes a sentence (the text report's
`warning:` lines and the JSON's `warnings` strings)."""

from __future__ import annotations

from collections.abc import Callable

from sqlprobe.model import Finding, FindingKind

_FATE = {
    "wal": "delete this file (its contents are lost)",
    "shm": "rebuild this file",
    "journal": "delete this file",
}


def _uninspected(f: Finding) -> str:
    n = f.count or 0
    return (
        f"{n} process{'es' if n != 1 else ''} could not be inspected (permission denied on"
        f" {f.detail or 'their open files'}): run as their user or as root to see their files"
    )


_WORDS: dict[FindingKind, Callable[[Finding], str]] = {
    FindingKind.OWN_FILE: lambda f: (
        f"{f.path} is open in sqlprobe's own process (a SQLite connection?): not opened,"
        " because closing a descriptor would drop that connection's locks; its own locks are"
        " not reported"
    ),
    FindingKind.SIDE_FILE_UNREADABLE: lambda f: f"{f.path}: {f.detail} (not read)",
    FindingKind.UNINSPECTED: _uninspected,
    FindingKind.UNPARSED_LOCK_LINES: lambda f: (
        f"{f.count} line(s) of /proc/locks could not be parsed"
    ),
    FindingKind.INODE_ONLY_MATCH: lambda f: (
        f"{f.path}: /proc/locks shows another device number for the database's files"
        " (btrfs or overlayfs?); matched by inode and open descriptors"
    ),
    FindingKind.SIDE_WITHOUT_DATABASE: lambda f: (
        f"{f.path} exists without its database: a new instance would create the database and"
        f" {_FATE.get(f.detail or '', 'delete this file')}"
    ),
    FindingKind.HOT_JOURNAL: lambda f: (
        f"{f.path} is a hot journal: a writer died mid-transaction; the next opener must roll"
        " it back, which needs an exclusive lock on the database"
    ),
    FindingKind.WAL_IGNORED: lambda f: f"{f.path}: {f.detail}: SQLite ignores its contents",
    FindingKind.PARTIAL_FRAME: lambda f: (
        f"{f.path}: ends in a partial frame ({f.count} bytes, a write cut short) right after"
        " its last valid frame: SQLite ignores it"
    ),
    FindingKind.UNCOMMITTED_FRAMES: lambda f: (
        f"{f.path}: {f.count} frame(s) after the last commit (a transaction being written, or"
        " cut short by a crash): not counted"
    ),
    FindingKind.CHECKSUMS_PARTLY: lambda f: (
        f"{f.path}: checksums verified for {f.count} of {f.total} frames within the time"
        " budget; the rest counted by their salts and commit markers"
    ),
    FindingKind.INDEX_STALE: lambda f: (
        f"{f.path}: {f.detail}; nobody has it open, so the next opener rebuilds it from the WAL"
    ),
    FindingKind.INDEX_INVALID: lambda f: (
        f"{f.path}: {f.detail}, although a live process holds it: a new instance would have to"
        " run WAL recovery"
    ),
    FindingKind.NOT_REGULAR_HARMLESS: lambda f: f"{f.path} {f.detail}",
    FindingKind.HARD_LINKS: lambda f: (
        f"{f.path} has {f.count} hard links: a process using another name keeps its own -wal"
        " and -shm beside that name (two WALs for one database); none holds a lock on it now,"
        " and --thorough also finds one that has it open without a lock"
    ),
    FindingKind.INDEX_LOCK_HELD: lambda f: (
        f"{f.path} (git's lock on an opencode snapshot repo, taken{f.detail or ''}) is held open"
        f" by {', '.join(f'pid {p}' for p in f.pids)}: an instance that snapshots that worktree"
        " waits for that git"
    ),
    FindingKind.INDEX_LOCK_LEFT: lambda f: (
        f"{f.path} was left{f.detail or ''} by a git that is gone: opencode still runs but takes"
        ' no snapshot of that worktree (its log says tracking hash=""), so undo and revert lose'
        f" work; when no git runs there, remove it: rm {_quoted(f.path or '')}"
    ),
    FindingKind.ZOMBIE_CHILD: lambda f: (
        f"pid {f.pid} has a child that exited and was never reaped: pid {f.count}"
        f" ({f.detail}); an opencode process in that state never finishes starting (opencode"
        " issues #41806, #50348)"
    ),
}


def _quoted(path: str) -> str:
    import shlex

    return shlex.quote(path)


def words(finding: Finding | str) -> str:
    """The sentence for `finding` (a string is already one: opencode's lock problems)."""
    if isinstance(finding, str):
        return finding
    return _WORDS[finding.kind](finding)
