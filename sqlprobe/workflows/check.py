"""`check` as a library call: one snapshot of a target, taken with the judge's decision about
its locks, and its verdict.

The collector is handed `verdict.decide.database_effects` here, in one place: it says whether
the first look shows a lock worth a window, and how the probe may open the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from sqlprobe.collect import snapshot as collect
from sqlprobe.model import Snapshot
from sqlprobe.options import DEFAULT_CHECK, CheckOptions
from sqlprobe.verdict.decide import database_effects
from sqlprobe.verdict.judge import Verdict, judge


class Report(NamedTuple):
    """What `sqlprobe check` reports: the snapshot and its verdict."""

    snapshot: Snapshot
    verdict: Verdict


def take_snapshot(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    options: CheckOptions = DEFAULT_CHECK,
    **keywords: Any,
) -> Snapshot:
    """One snapshot of `path` (None: opencode's default database), taken as `options` say
    (sqlprobe.options.CheckOptions: the CLI's options, with its defaults). `keywords` as
    collect.snapshot.check takes them (window, timeout, busy_timeout, use_probe, thorough,
    databases, probe_live, proc) win over `options`: `take_snapshot(path, window=0)`."""
    return collect.check(path, env, decide=database_effects, **{**options._asdict(), **keywords})


def inspect(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    options: CheckOptions = DEFAULT_CHECK,
    **keywords: Any,
) -> Report:
    """`sqlprobe check` as a call: the snapshot and its verdict (the exit code the command
    leaves with is `report.verdict.exit_code`). Options as `take_snapshot` takes them."""
    snapshot = take_snapshot(path, env, options, **keywords)
    return Report(snapshot, judge(snapshot))
