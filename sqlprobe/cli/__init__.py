"""The `sqlprobe` command line: the group, its commands, and `main` (the console script).

The commands live beside it: check and diagnose in cli.check, wait, run and hook in
cli.workflows (imported only when used: LazyGroup), what they share in cli.common.
"""

from __future__ import annotations

import os
import sys

import click

from sqlprobe import __version__
from sqlprobe.cli import check as check_commands
from sqlprobe.cli import streams as cli_io
from sqlprobe.cli.common import LazyGroup
from sqlprobe.cli.streams import OutputError

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


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # Not click.version_option: its translated help text imports gettext and locale at start-up.
    if value and not ctx.resilient_parsing:
        click.echo(f"sqlprobe, version {__version__}")
        ctx.exit()


@click.group(
    cls=LazyGroup,
    lazy={name: "sqlprobe.cli.workflows" for name in ("wait", "run", "hook")},
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


cli.add_command(check_commands.check)
cli.add_command(check_commands.diagnose)


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
