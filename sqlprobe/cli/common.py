"""The click pieces every command shares: parameter types, the shared options (their defaults
and ranges from sqlprobe.options), the command and group classes, and the crash guard.

Imported by the command modules (cli.check, cli.workflows) and by cli/__init__.py, never the
other way round: the commands do not import the group.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

from sqlprobe.cli.streams import OutputError
from sqlprobe.options import (
    BUSY_TIMEOUT_RANGE,
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    TIMEOUT_RANGE,
    WINDOW_RANGE,
    CheckOptions,
    Range,
)

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

F = TypeVar("F", bound=Callable[..., Any])


class Seconds(click.FloatRange):
    """A number of seconds from `low` to `high`, both finite. click's FloatRange alone lets
    `nan` through (every comparison with it is false): a wait that never ends."""

    name = "seconds"

    def __init__(self, low: float, high: float) -> None:
        super().__init__(low, high)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
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

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value == "":
            self.fail(
                "an empty PATH names no file (leave it out for opencode's own database).",
                param,
                ctx,
            )
        return value  # type: ignore[no-any-return]

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(incomplete, type="file")]  # the shell completes file names


def path_argument(func: F) -> F:
    """The optional PATH of every command that looks at a database."""
    return click.argument("path", type=PathArgument(), required=False, metavar="[PATH]")(func)


def guarded(func: F) -> F:
    """Turn a crash into one line on stderr and exit 1; a closed stdout into a quiet exit; an
    unknown SQLPROBE_BACKEND into one line and exit 2, as a usage error."""

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
            from sqlprobe.system import UnknownBackend  # only here: the start-up stays lean

            if isinstance(err, UnknownBackend):  # the environment's mistake: a usage error
                click.echo(f"sqlprobe: {err}", err=True)
                sys.exit(2)
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


def exit_code_on_broken_pipe(code: int) -> None:
    """The exit code `guarded` leaves with if the reader goes away while the report is written
    (the verdict's, known before anything is printed)."""
    click.get_current_context().meta["exit_code"] = code


def output_options(func: F) -> F:
    """--json and -q/--quiet, shared by every command that reports a verdict."""
    func = click.option(
        "-q", "--quiet", is_flag=True, help="Print nothing; the exit code is the answer."
    )(func)
    func = click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document (schema in the README)."
    )(func)
    return func


def wide_option(func: F) -> F:
    """--wide, of the commands that print holders' tables."""
    return click.option(
        "--wide",
        is_flag=True,
        help="Show every column and whole command lines; wrap nothing (as to a pipe).",
    )(func)


def seconds_option(*decls: str, span: Range, default: float | None, help: str) -> Callable[[F], F]:
    """An option that takes a number of seconds within `span` (its range in options.py), with
    its default shown when it has one."""
    return click.option(
        *decls,
        type=Seconds(*span),
        default=default,
        show_default=default is not None,
        metavar="SECONDS",
        help=help,
    )


def check_timeout_option(help: str) -> Callable[[F], F]:
    """--timeout of a check (sqlprobe.options.DEFAULT_TIMEOUT), for check, diagnose and run."""
    return seconds_option("--timeout", span=TIMEOUT_RANGE, default=DEFAULT_TIMEOUT, help=help)


def snapshot_options(func: F) -> F:
    """PATH and the options of taking a snapshot, shared by `check` and `diagnose`: they come
    to the command as its `path` and `options` (a sqlprobe.CheckOptions)."""
    for option in reversed(
        [
            path_argument,
            seconds_option(
                "--window",
                span=WINDOW_RANGE,
                default=DEFAULT_WINDOW,
                help="How long a blocking lock must persist to count (sampled every 0.05 s). "
                "Only spent when a blocking lock is seen; 0 judges on one look.",
            ),
            check_timeout_option(
                "Answer within this long whatever happens (a hung filesystem, a holder "
                "that never lets go); work cut short is named in the verdict."
            ),
            seconds_option(
                "--busy-timeout",
                span=BUSY_TIMEOUT_RANGE,
                default=DEFAULT_BUSY_TIMEOUT,
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
    return _as_check_options(func)


def _as_check_options(func: F) -> F:
    """The snapshot options' values, gathered into one CheckOptions argument `options`."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        window: float,
        timeout: float,
        busy_timeout: float,
        no_probe: bool,
        probe_live: bool,
        thorough: bool,
        **kwargs: Any,
    ) -> Any:
        taken = CheckOptions(
            window=window,
            timeout=timeout,
            busy_timeout=busy_timeout,
            use_probe=not no_probe,
            probe_live=probe_live,
            thorough=thorough,
        )
        return func(*args, options=taken, **kwargs)

    return wrapper  # type: ignore[return-value]


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
    `sqlprobe check --quiet` runs before every opencode run, and every import is paid there.

    `lazy` maps a command's name to the module that defines it (under the same name).
    """

    command_class = Command

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self.params.append(_help_flag())

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module = importlib.import_module(self.lazy[cmd_name])
            return getattr(module, cmd_name)  # type: ignore[no-any-return]
        return super().get_command(ctx, cmd_name)
