"""The commands `check` and `diagnose`: each one library call, then the report and its exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from sqlprobe.cli.common import (
    Command,
    exit_code_on_broken_pipe,
    guarded,
    output_options,
    snapshot_options,
    wide_option,
)
from sqlprobe.cli.streams import json_text

if TYPE_CHECKING:
    from sqlprobe.model import Snapshot
    from sqlprobe.options import CheckOptions
    from sqlprobe.verdict.judge import Verdict


@click.command(cls=Command)
@snapshot_options
@output_options
@wide_option
@guarded
def check(path: str | None, options: CheckOptions, as_json: bool, quiet: bool, wide: bool) -> None:
    """Say whether a new instance would start now, or block, on which process, for how long.

    PATH is an opencode data dir (its opencode.db and opencode-*.db are checked), or a
    database file. Without PATH: $OPENCODE_DB if set (relative to the data dir), else
    $XDG_DATA_HOME/opencode, else ~/.local/share/opencode. A PATH that does not exist, in
    a directory that does, is clear: a new instance would create the database.

    For opencode's own data (no PATH, or PATH is its data dir or database), opencode's lock
    directories are judged too ($XDG_STATE_HOME/opencode/locks, else
    ~/.local/state/opencode/locks): a lock that a start-up of the opencode on PATH takes,
    held by a live process or left behind by a killed one, blocks a new instance.

    It also reads the database, -wal and -shm headers (WAL frames not yet checkpointed, the
    state of the WAL index, a hot journal) and, where that is safe, opens the database
    read-only with SQLite to confirm it is readable. It answers within --timeout.

    \b
    Example:
      sqlprobe check                       # opencode's default database
      sqlprobe check ~/.local/share/opencode --json | jq .verdict
      sqlprobe check --json | jq '.databases[0].wal'   # checkpoint lag
      sqlprobe check -q --timeout 1 app.db || echo "not clear: exit $?"
      sqlprobe check --thorough app.db     # also finds it open under another name
    """
    from sqlprobe.workflows.check import inspect

    if as_json and quiet:
        raise click.UsageError("--json and --quiet cannot be used together")
    snapshot, verdict = inspect(path, options=options)
    exit_code_on_broken_pipe(int(verdict.exit_code))
    if quiet:
        sys.exit(int(verdict.exit_code))
    from sqlprobe.render.document import to_json  # only needed when there is something to print

    if as_json:
        click.echo(json_text(to_json(snapshot, verdict)))
    elif _one_line_error(snapshot, verdict):
        click.echo(f"sqlprobe: error: {verdict.reason}", err=True)
    else:
        report, color = _report(snapshot, verdict, wide)
        click.echo(report, color=color)
    sys.exit(int(verdict.exit_code))


@click.command(cls=Command)
@snapshot_options
@output_options
@wide_option
@guarded
def diagnose(
    path: str | None, options: CheckOptions, as_json: bool, quiet: bool, wide: bool
) -> None:
    """Everything check knows, plus what you would otherwise gather by hand per holder.

    For each process that holds the database: every open file, the kernel stack (where
    readable), its cwd and parent chain, the environment variables that decide where opencode
    keeps its data, and for opencode the log file it has open under <data dir>/log/ with its
    last lines and how long ago it was written. Also the filesystem of the data dir, with a
    warning where POSIX locks are unreliable (NFS, SMB, 9p, FUSE, WSL1). Exits with check's code.

    \b
    Example:
      sqlprobe diagnose                    # opencode's default data dir
      sqlprobe diagnose ~/.local/share/opencode --json > diagnosis.json
    """
    if as_json and quiet:
        raise click.UsageError("--json and --quiet cannot be used together")
    if quiet:  # as check -q: nothing to show, so nothing gathered
        from sqlprobe.workflows.check import inspect

        sys.exit(int(inspect(path, options=options).verdict.exit_code))
    from sqlprobe.render.diagnose import diagnosis_json, diagnosis_text
    from sqlprobe.render.document import to_json
    from sqlprobe.workflows.diagnose import diagnose_target

    snapshot, verdict, diagnosis, missing, likely = diagnose_target(path, options=options)
    exit_code_on_broken_pipe(int(verdict.exit_code))
    if as_json:
        doc = to_json(snapshot, verdict)
        doc["diagnosis"] = diagnosis_json(diagnosis, likely) if diagnosis else {"error": missing}
        click.echo(json_text(doc))
    else:
        color = _colored()
        parts = []
        if _one_line_error(snapshot, verdict):
            click.echo(f"sqlprobe: error: {verdict.reason}", err=True)  # as check says it
        else:
            parts.append(_report(snapshot, verdict, wide)[0])
        home = snapshot.opencode.home if snapshot.opencode else ""
        parts.append(
            diagnosis_text(diagnosis, _styler(color), likely, home, None if wide else _width())
            if diagnosis
            else f"warning: {missing}"
        )
        text = "\n\n".join(p for p in parts if p)
        if text:
            click.echo(text, color=color)
    sys.exit(int(verdict.exit_code))


def _report(snapshot: Snapshot, verdict: Verdict, wide: bool = False) -> tuple[str, bool]:
    """The human report, and whether it is coloured."""
    from sqlprobe.collect.targets import opencode_data_dir
    from sqlprobe.render.report import human

    color = _colored()
    auth = os.path.join(opencode_data_dir(os.environ), "auth.json")
    shown = auth if _is_file(auth) else None
    return human(snapshot, verdict, _styler(color), shown, _width(), wide), color


def _is_file(path: str) -> bool:
    """Whether `path` is a file, asked apart and given 0.1 s: the data dir may be on a hung
    filesystem, and the report must not wait on it (unanswered: no)."""
    from sqlprobe.system.deadline import run_until

    job = run_until(lambda: os.path.isfile(path), 0.1, name="sqlprobe-auth")
    return job.done.is_set() and job.error is None and bool(job.value)


def _width() -> int | None:
    """The terminal's width (COLUMNS first) when stdout is one; None to a pipe: lines whole."""
    import shutil

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _colored() -> bool:
    # As NO_COLOR, TERM=dumb says that the terminal takes no escape sequences.
    dumb = os.environ.get("TERM") == "dumb"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and not dumb


def _styler(color: bool) -> Callable[..., str]:
    if color:
        return click.style
    return lambda text, **_: text


def _one_line_error(snapshot: Snapshot, verdict: Verdict) -> bool:
    """Whether the report is only an error (on stderr, as `sqlprobe: error: ...`)."""
    from sqlprobe.verdict.judge import State

    return verdict.state is State.ERROR and len(snapshot.databases) <= 1
