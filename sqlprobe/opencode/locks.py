"""opencode's cross-process lock ("Flock"), as knowledge: its names, keys, files and rules (pure).

The facts are in docs/opencode-state.md §2, read from the bundled JavaScript of the
releases named in the README's table and checked with strace and real runs:

- acquire: `mkdir <state>/locks/<sha1 hex of the key>.lock` (0700), then `heartbeat` (empty) and
  `meta.json` (`{"token", "pid", "hostname", "createdAt"}`), both created exclusively;
- the holder touches `heartbeat` every STALE_S / 3 from its event loop, but the install lock
  (EffectFlock, `npm-install:` keys) sets it back to the time it was taken each time
  (FROZEN_HEARTBEAT);
- stale: now - mtime(heartbeat) > STALE_S (else meta.json's mtime, else the directory's); a
  waiter breaks a stale lock through `<dir>.breaker` (mkdir; one older than STALE_S is removed
  first, and the waiter tries again later);
- a waiter that finds a fresh lock retries with backoff until TIMEOUT_S, then fails with
  `Timed out waiting for lock: <key>`; SIGTERM and SIGKILL leave the directory behind.

Values in, values out: no file is read here (lockdirs.py reads the directories).
"""

from __future__ import annotations

from sqlprobe.model import LockMeta
from sqlprobe.opencode.paths import Dirs, tildify

STALE_S = 60.0  # staleMs
HEARTBEAT_S = STALE_S / 3  # the holder's refresh interval
TIMEOUT_S = 300.0  # timeoutMs: a waiter gives up after this long
TIMEOUT_MESSAGE = "Timed out waiting for lock"
META_MAX = 64 * 1024  # a meta.json is ~150 bytes; anything larger is not opencode's
MAX_LOCKS = 512  # lock directories read per check; more are counted, not read
SUFFIX = ".lock"
BREAKER = ".breaker"


def dir_name(key: str) -> str:
    """The lock directory's name for `key`: its SHA-1 in hex, then `.lock`."""
    import hashlib  # only when there is a lock to name: not on every check's path

    return hashlib.sha1(key.encode()).hexdigest() + SUFFIX


def parse_meta(data: bytes) -> LockMeta:
    """The fields of a meta.json; raises ValueError when it is not opencode's JSON object."""
    import json

    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    pid = doc.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        pid = None
    created = doc.get("createdAt")
    created_at = _iso_time(created) if isinstance(created, str) else None
    host = doc.get("hostname")
    token = doc.get("token")
    return LockMeta(
        token=token if isinstance(token, str) else None,
        pid=pid,
        hostname=host if isinstance(host, str) else None,
        created_at=created_at,
    )


def _iso_time(text: str) -> float | None:
    """`2026-11-25T10:00:00.123Z` (JavaScript's toISOString) as epoch seconds."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def is_stale(since: float, now: float) -> bool:
    """opencode's stale rule: the mtime it looks at (LockDir.fresh_since) is over STALE_S old."""
    return now - since > STALE_S


# -- keys -----------------------------------------------------------------------------------------


def key_words(key: str | None, home: str) -> str:
    """The key in words: `opencode's package install lock for ~/.config/opencode`."""
    if key is None:
        return "an opencode lock of unknown purpose"
    kind, _, what = key.partition(":")
    what = tildify(what, home)
    if kind == "npm-install":
        return f"opencode's package install lock for {what}"
    if kind == "models-dev":
        return f"opencode's model catalogue lock for {what}"
    if kind == "plug-config":
        return f"opencode's plugin config lock for {what}"
    if kind == "repo-clone":
        return f"opencode's repository clone lock for {what}"
    return f"opencode's {kind} lock for {what}"


# -- which keys a new instance takes at start-up ------------------------------------------------

# (first version, key templates taken by every start-up of `opencode run` from that version on),
# oldest first. Established per release with strace and real runs (README, "opencode's locks").
# 1.3.2 has no lock directories at all; 1.14.34, 1.15.13, 1.17.0, 1.17.19, 1.18.3, 1.18.33 and
# 1.18.34 each take `npm-install:<config dir>` at start-up, and wait for it when plugins are
# configured (the registry has no release in between). They take `models-dev:<cache>/models.json`
# too, but in the background: it never holds a run up, so it is not listed.
STARTUP: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...] = (
    ((0,), ()),
    ((1, 3, 3), ("npm-install:{config}",)),
)
# Keys taken by EffectFlock, whose heartbeat rewrites the time it was taken (1.14.34-1.18.34):
# such a lock looks stale 60 s after it was taken, live holder or not, and a waiter breaks it.
FROZEN_HEARTBEAT = ("npm-install:",)
# The newest release that the table was checked against: a newer one is assumed to behave alike.
CHECKED_UP_TO = (1, 18, 34)


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """`1.18.34` -> (1, 18, 34); a pre-release suffix is dropped; None when not a version."""
    if not text:
        return None
    core = text.strip().lstrip("v").split("-", 1)[0].split("+", 1)[0]
    try:
        parts = tuple(int(p) for p in core.split("."))
    except ValueError:
        return None
    return parts if parts else None


def startup_keys(version: str | None, dirs: Dirs) -> tuple[str, ...]:
    """The keys a new instance of `version` takes at start-up (None: assume the newest known)."""
    parsed = parse_version(version) or CHECKED_UP_TO
    templates: tuple[str, ...] = ()
    for first, keys in STARTUP:
        if parsed >= first:
            templates = keys
    return tuple(t.format(config=dirs.config, cache=dirs.cache) for t in templates)


def version_note(version: str | None) -> str | None:
    """Why the start-up table is applied by assumption for this version, or None."""
    parsed = parse_version(version)
    newest = ".".join(map(str, CHECKED_UP_TO))
    if parsed is None:
        return f"opencode's version is unknown: assumed to start up as {newest} does"
    if parsed > CHECKED_UP_TO:
        return (
            f"opencode {version} is newer than the releases checked: assumed to start as {newest}"
        )
    return None
