"""The preflight of `sqlprobe run`: may a command start now (or within a wait) on this database?

`preflight(path, wait_s=60)` answers Preflight(ok, snapshot, verdict); when not ok, the
verdict's reason says why and its exit code is the one `sqlprobe run` refuses with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

from sqlprobe.model import Snapshot
from sqlprobe.options import DEFAULT_CHECK, CheckOptions
from sqlprobe.verdict.judge import Verdict
from sqlprobe.workflows.check import inspect
from sqlprobe.workflows.wait import UNTIL, wait


class Preflight(NamedTuple):
    ok: bool  # the state is one `until` accepts: the command may run
    snapshot: Snapshot
    verdict: Verdict  # when not ok, its reason says why and its exit code is the one to leave with


def preflight(
    path: str | None,
    until: str = "unblocked",
    wait_s: float | None = None,
    options: CheckOptions = DEFAULT_CHECK,
    env: Mapping[str, str] | None = None,
    on_status: Callable[[Verdict, float], None] | None = None,
    on_waited: Callable[[], None] | None = None,
) -> Preflight:
    """Whether the state is in UNTIL[until] (clear, or unblocked): at once, or with `wait_s`
    within that long; a stuck state answers at once all the same. Each check is taken as
    `options` say (`databases` False: only opencode's own locks count, as for an isolated run,
    which has a database of its own).

    While it waits, `on_status(verdict, waited)` hears what it waits on, and `on_waited()` is
    called once the wait is over, however it ended (a Ctrl-C too): a status line's end.
    """
    if not wait_s:
        snapshot, verdict = inspect(path, env, options)
        return Preflight(verdict.state in UNTIL[until], snapshot, verdict)
    try:
        result = wait(
            path,
            until=until,
            timeout=wait_s,
            env=env,
            window=options.window,
            on_status=on_status,
            check_timeout=math.inf if options.timeout is None else options.timeout,
            busy_timeout=options.busy_timeout,
            use_probe=options.use_probe,
            thorough=options.thorough,
            databases=options.databases,
            probe_live=options.probe_live,
        )
    finally:
        if on_waited:
            on_waited()
    return Preflight(result.reached, result.snapshot, result.verdict)
