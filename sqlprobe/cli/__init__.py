"""The `sqlprobe` command line: options in, calls to the library, output and an exit code out."""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import click

from sqlprobe import __version__
from sqlprobe.cli import streams as cli_io
from sqlprobe.cli.streams import OutputError, json_text

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """\b
Exit codes:
  0  clear   no other process holds the database or its side files
  3  shared  others have it open, but hold no lock a new instance needs
  4  busy    a lock a new instance needs is held (SQLite's, persisting
             across the window, or one of opencode's lock directories)
  5  stuck   as busy, and the holder made no progress: waiting won't help
  6  error   cannot judge (not a SQLite database, unreadable, ...)
  2  usage error; 1 an internal error of sqlprobe (a bug: please report it);
  7  the output could not be written (a full disk); 130 interrupted (Ctrl-C)
"""


class Seconds(click.FloatRange):
    """A number of seconds from `low` to `high`, both finite. click's FloatRange alone lets
    `nan` through (every comparison with it is false): a wait that never ends."""

    name = "seconds"

    def __init__(self, low: float, high: float) -> None:
        super().__init__(low, high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not self.min <= number <= self.max:  # false for nan too
            self.fail(
                f"{value} is not a number of seconds from {self.min:g} to {self.max:g}.", param, ctx
            )
        return number


class PathArgument(click.ParamType):
    """PATH as given (not click.Path: it would stat it in the main thread, which a hung
    filesystem blocks before the deadline can help). An empty PATH is refused: the system
    calls would take it for the current directory."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail(
                "an empty PATH names no file (leave it out for opencode's own database).",
                param,
                ctx,
            )
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> Any:
        from click.shell_completion import CompletionItem

        return [CompletionItem(incomplete, type="file")]  # the shell completes file names


def path_argument(func: F) -> F:
    """The optional PATH of every command that looks at a database."""
    return click.argument("path", type=PathArgument(), required=False, metavar="[PATH]")(func)


def _guarded(func: F) -> F:
    """Turn a crash into one line on stderr and exit 1; a closed stdout into a quiet exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort, OutputError):
            raise  # an OutputError is reported by main(): a full disk is not a bug
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
        "wait": "workflows",
        "run": "workflows",
        "hook": "workflows",
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
    from sqlprobe.system.deadline import use_processes

    # Work that may hang (a filesystem, SQLite) runs in children killed at the deadline: a
    # thread stuck in the kernel would keep this process from exiting (deadline.py).
    use_processes(True)
    click.get_current_context().call_on_close(lambda: use_processes(False))


def check_timeout_option(help: str) -> Callable[[F], F]:
    """--timeout of a check (snapshot.DEFAULT_TIMEOUT), for check, diagnose and run."""
    return click.option(
        "--timeout",
        type=Seconds(0.1, 3600),
        default=3.0,
        show_default=True,
        metavar="SECONDS",
        help=help,
    )


def snapshot_options(func: F) -> F:
    """PATH and the options of taking a snapshot, shared by `check` and `diagnose`."""
    for option in reversed(
        [
            path_argument,
            click.option(
                "--window",
                type=Seconds(0, 10),
                default=0.3,
                show_default=True,
                metavar="SECONDS",
                help="How long a blocking lock must persist to count (sampled every 0.05 s). "
                "Only spent when a blocking lock is seen; 0 judges on one look.",
            ),
            check_timeout_option(
                "Answer within this long whatever happens (a hung filesystem, a holder "
                "that never lets go); work cut short is named in the verdict."
            ),
            click.option(
                "--busy-timeout",
                type=Seconds(0, 10),
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
                "--probe-live",
                is_flag=True,
                help="Open it with SQLite (read-only) even while other processes hold it, in WAL "
                "mode. Off by default: a read can make a writer's TRUNCATE checkpoint fail.",
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
    probe_live: bool,
    thorough: bool,
) -> tuple[Any, Any]:
    from sqlprobe.collect.snapshot import check as take_snapshot
    from sqlprobe.judge.verdict import judge

    snapshot = take_snapshot(
        path,
        window=window,
        timeout=timeout,
        busy_timeout=busy_timeout,
        use_probe=not no_probe,
        thorough=thorough,
        probe_live=probe_live,
    )
    verdict = judge(snapshot)
    click.get_current_context().meta["exit_code"] = int(verdict.exit_code)
    return snapshot, verdict


def _report(snapshot: Any, verdict: Any, wide: bool = False) -> tuple[str, bool]:
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


def wide_option(func: F) -> F:
    """--wide, of the commands that print holders' tables."""
    return click.option(
        "--wide",
        is_flag=True,
        help="Show every column and whole command lines; wrap nothing (as to a pipe).",
    )(func)


def _colored() -> bool:
    # As NO_COLOR, TERM=dumb says that the terminal takes no escape sequences.
    dumb = os.environ.get("TERM") == "dumb"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and not dumb


def _one_line_error(snapshot: Any, verdict: Any) -> bool:
    """Whether the report is only an error (on stderr, as `sqlprobe: error: ...`)."""
    from sqlprobe.judge.verdict import State

    return verdict.state is State.ERROR and len(snapshot.databases) <= 1


@cli.command()
@snapshot_options
@output_options
@wide_option
@_guarded
def check(
    path: str | None,
    window: float,
    timeout: float,
    busy_timeout: float,
    no_probe: bool,
    probe_live: bool,
    thorough: bool,
    as_json: bool,
    quiet: bool,
    wide: bool,
) -> None:
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
    if as_json and quiet:
        raise click.UsageError("--json and --quiet cannot be used together")
    snapshot, verdict = _take(path, window, timeout, busy_timeout, no_probe, probe_live, thorough)
    if quiet:
        sys.exit(int(verdict.exit_code))
    from sqlprobe.render.report import to_json  # only needed when there is something to print

    if as_json:
        click.echo(json_text(to_json(snapshot, verdict)))
    elif _one_line_error(snapshot, verdict):
        click.echo(f"sqlprobe: error: {verdict.reason}", err=True)
    else:
        report, color = _report(snapshot, verdict, wide)
        click.echo(report, color=color)
    sys.exit(int(verdict.exit_code))


@cli.command()
@snapshot_options
@output_options
@wide_option
@_guarded
def diagnose(
    path: str | None,
    window: float,
    timeout: float,
    busy_timeout: float,
    no_probe: bool,
    probe_live: bool,
    thorough: bool,
    as_json: bool,
    quiet: bool,
    wide: bool,
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
    import time

    from sqlprobe.judge.opencode import likely_lock_waiters
    from sqlprobe.render.diagnose import diagnosis_json, diagnosis_text
    from sqlprobe.render.report import to_json
    from sqlprobe.system.deadline import run_until
    from sqlprobe.text import seconds
    from sqlprobe.workflows.diagnose import diagnose as gather

    if as_json and quiet:
        raise click.UsageError("--json and --quiet cannot be used together")
    started = time.monotonic()
    snapshot, verdict = _take(path, window, timeout, busy_timeout, no_probe, probe_live, thorough)
    if quiet:  # as check -q: nothing to show, so nothing gathered
        sys.exit(int(verdict.exit_code))
    job = run_until(lambda: gather(snapshot), timeout - (time.monotonic() - started))
    diagnosis = job.get() if job.done.is_set() else None
    missing = f"no diagnosis: the {seconds(timeout)} s timeout came first"
    likely = likely_lock_waiters(snapshot, verdict.opencode)
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


def _styler(color: bool) -> Callable[..., str]:
    if color:
        return click.style
    return lambda text, **_: text


def main() -> None:
    """Console-script entry point.

    Leaves through os._exit once the output is flushed: tearing down the interpreter (every
    module, apsw's SQLite) costs ~7 ms, paid before every opencode run, and sqlprobe registers
    no exit handler that would need it. An abandoned deadline thread cannot delay the exit.
    Closed standard streams, a stdout that cannot be written and Ctrl-C: cli_io.py.
    """
    cli_io.prepare()
    try:
        try:
            cli(prog_name="sqlprobe")
            code: object = 0
        except SystemExit as leaving:
            code = leaving.code
        except OutputError as err:  # from a command, or from --help and --version
            os._exit(cli_io.cannot_write(err))  # what is left unwritten stays so
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
        try:
            cli_io.flush()
        except OutputError as err:
            code = cli_io.cannot_write(err)
    except cli_io.Interrupted:
        os._exit(cli_io.EXIT_INTERRUPTED)  # the clean-ups ran on the way here; nothing to add
    os._exit(code if isinstance(code, int) else 0)
