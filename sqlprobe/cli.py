"""The `sqlprobe` command line: options in, calls to the library, output and an exit code out."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import click

from . import __version__

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """\b
Exit codes:
  0  clear   no other process holds the database or its side files
  3  shared  others have it open, but hold no lock a new instance needs
  4  busy    a lock a new instance needs is held (SQLite's, persisting
             across the window, or one of opencode's lock directories)
  5  stuck   as busy, and the holder made no progress: waiting won't help
  6  error   cannot judge (not a SQLite database, unreadable, ...)
  2  usage error; 1 an internal error of sqlprobe (a bug: please report it)
"""


def _guarded(func: F) -> F:
    """Turn a crash into one line on stderr and exit 1; a closed stdout into a quiet exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # The reader went away (`sqlprobe check | head -1`): not an error worth a word.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(click.get_current_context().meta.get("exit_code", 0))
        except Exception as err:
            if os.environ.get("SQLPROBE_DEBUG"):
                import traceback

                traceback.print_exc()
            else:
                click.echo(
                    f"sqlprobe: internal error: {type(err).__name__}: {err} "
                    "(a bug; set SQLPROBE_DEBUG=1 for the traceback)",
                    err=True,
                )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def output_options(func: F) -> F:
    """--json and -q/--quiet, shared by every command that reports a verdict."""
    func = click.option(
        "-q", "--quiet", is_flag=True, help="Print nothing; the exit code is the answer."
    )(func)
    func = click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document (schema in the README)."
    )(func)
    return func


def _print_help(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


def _help_flag() -> click.Option:
    # Our own -h/--help: click's builds its help text with gettext, which imports locale on
    # every run; `sqlprobe check --quiet` runs before every opencode run.
    return click.Option(
        ["-h", "--help"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_print_help,
        help="Show this message and exit.",
    )


class Command(click.Command):
    """A click command with sqlprobe's own -h/--help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_help_flag())


class LazyGroup(click.Group):
    """A group whose less common commands are imported only when used (or listed by --help):
    `sqlprobe check --quiet` runs before every opencode run, and every import is paid there."""

    command_class = Command

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_help_flag())

    lazy: ClassVar[dict[str, str]] = {
        "wait": "cli_workflows",
        "run": "cli_workflows",
        "hook": "cli_workflows",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module = importlib.import_module(f"{__package__}.{self.lazy[cmd_name]}")
            return getattr(module, cmd_name)  # type: ignore[no-any-return]
        return super().get_command(ctx, cmd_name)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # Not click.version_option: its translated help text imports gettext and locale at start-up.
    if value and not ctx.resilient_parsing:
        click.echo(f"sqlprobe, version {__version__}")
        ctx.exit()


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
def cli() -> None:
    """Would a new opencode instance block, on whom, and for how long?

    sqlprobe looks at opencode's data, state and config: every process that holds its SQLite
    database and the -wal/-shm/-journal files (their POSIX locks decoded into SQLite's terms),
    opencode's own lock directories ($XDG_STATE_HOME/opencode/locks) and who holds them, and
    git locks left in its snapshot repos; it answers with an exit code. It never writes to
    any of them, never creates a file beside them and never takes a lock.
    """


def snapshot_options(func: F) -> F:
    """PATH and the options of taking a snapshot, shared by `check` and `diagnose`."""
    for option in reversed(
        [
            # No click.Path for PATH: click would stat it in the main thread, which a hung
            # filesystem blocks before the deadline can help.
            click.argument("path", required=False, metavar="[PATH]"),
            click.option(
                "--window",
                type=click.FloatRange(0, 10),
                default=0.3,
                show_default=True,
                metavar="SECONDS",
                help="How long a blocking lock must persist to count (sampled every 0.05 s). "
                "Only spent when a blocking lock is seen; 0 judges on one look.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(0.1, 3600),
                default=3.0,
                show_default=True,
                metavar="SECONDS",
                help="Answer within this long whatever happens (a hung filesystem, a holder "
                "that never lets go); work cut short is named in the verdict.",
            ),
            click.option(
                "--busy-timeout",
                type=click.FloatRange(0, 10),
                default=0.1,
                show_default=True,
                metavar="SECONDS",
                help="How long the read-only SQLite probe waits on a lock.",
            ),
            click.option(
                "--no-probe",
                is_flag=True,
                help="Do not open the database with SQLite at all; read only /proc and the file "
                "headers.",
            ),
            click.option(
                "--thorough",
                is_flag=True,
                help="Also stat every open file of every process, to find the database open "
                "under another name (a hard link, or a bind mount of the file), and scan the "
                "processes of other users that the files' modes keep out. Slower.",
            ),
        ]
    ):
        func = option(func)
    return func


def _take(
    path: str | None,
    window: float,
    timeout: float,
    busy_timeout: float,
    no_probe: bool,
    thorough: bool,
) -> tuple[Any, Any]:
    from .snapshot import check as take_snapshot
    from .verdict import judge

    snapshot = take_snapshot(
        path,
        window=window,
        timeout=timeout,
        busy_timeout=busy_timeout,
        use_probe=not no_probe,
        thorough=thorough,
    )
    verdict = judge(snapshot)
    click.get_current_context().meta["exit_code"] = int(verdict.exit_code)
    return snapshot, verdict


def _report(snapshot: Any, verdict: Any) -> tuple[str, bool]:
    """The human report, and whether it is coloured."""
    from .render import human
    from .targets import opencode_data_dir

    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return human(snapshot, verdict, _styler(color), opencode_data_dir(os.environ)), color


@cli.command()
@snapshot_options
@output_options
@_guarded
def check(
    path: str | None,
    window: float,
    timeout: float,
    busy_timeout: float,
    no_probe: bool,
    thorough: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Say whether a new instance would start now, or block, on which process, for how long.

    PATH is an opencode data dir (its opencode.db and opencode-*.db are checked), or a
    database file. Without PATH: $OPENCODE_DB if set (relative to the data dir), else
    $XDG_DATA_HOME/opencode, else ~/.local/share/opencode. A PATH that does not exist is
    clear: a new instance would create the database.

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
    from .verdict import State

    if as_json and quiet:
        raise click.UsageError("--json and --quiet cannot be used together")
    snapshot, verdict = _take(path, window, timeout, busy_timeout, no_probe, thorough)
    if quiet:
        sys.exit(int(verdict.exit_code))
    from .render import to_json  # only needed when there is something to print

    if as_json:
        import json

        click.echo(json.dumps(to_json(snapshot, verdict), indent=2))
    elif verdict.state is State.ERROR and len(snapshot.databases) <= 1:
        click.echo(f"sqlprobe: error: {verdict.reason}", err=True)
    else:
        report, color = _report(snapshot, verdict)
        click.echo(report, color=color)
    sys.exit(int(verdict.exit_code))


@cli.command()
@snapshot_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@_guarded
def diagnose(
    path: str | None,
    window: float,
    timeout: float,
    busy_timeout: float,
    no_probe: bool,
    thorough: bool,
    as_json: bool,
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
    import json
    import time

    from .deadline import run_until
    from .diagnose import diagnose as gather
    from .render import to_json
    from .render_diagnose import diagnosis_json, diagnosis_text
    from .verdict_opencode import likely_lock_waiters

    started = time.monotonic()
    snapshot, verdict = _take(path, window, timeout, busy_timeout, no_probe, thorough)
    job = run_until(lambda: gather(snapshot), timeout - (time.monotonic() - started))
    diagnosis = job.get() if job.done.is_set() else None
    missing = f"no diagnosis: the {timeout:g} s timeout came first"
    likely = likely_lock_waiters(snapshot, verdict.opencode)
    if as_json:
        doc = to_json(snapshot, verdict)
        doc["diagnosis"] = diagnosis_json(diagnosis, likely) if diagnosis else {"error": missing}
        click.echo(json.dumps(doc, indent=2))
    else:
        report, color = _report(snapshot, verdict)
        home = snapshot.opencode.home if snapshot.opencode else ""
        extra = (
            diagnosis_text(diagnosis, _styler(color), likely, home)
            if diagnosis
            else f"warning: {missing}"
        )
        click.echo(f"{report}\n\n{extra}", color=color)
    sys.exit(int(verdict.exit_code))


def _styler(color: bool) -> Callable[..., str]:
    if color:
        return click.style
    return lambda text, **_: text


def main() -> None:
    """Console-script entry point.

    Leaves through os._exit once the output is flushed: tearing down the interpreter (every
    module, apsw's SQLite) costs ~7 ms, paid before every opencode run, and sqlprobe registers
    no exit handler that would need it. An abandoned deadline thread cannot delay the exit.
    """
    try:
        cli(prog_name="sqlprobe")
        code: object = 0
    except SystemExit as leaving:
        code = leaving.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        # A reader that went away, or a closed stream: nothing more to say.
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0)
