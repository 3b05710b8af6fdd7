"""The pre-run commands `wait`, `run` and `hook` (loaded by cli.LazyGroup when used)."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from typing import Any

import click

from .cli import Command, Seconds, _guarded, path_argument

EXIT_REFUSED_HELP = """\b
Exit codes: the command's own once it runs; when sqlprobe refuses to run it, the
state's code (3 shared, 4 busy, 5 stuck, 6 error); 126/127 when the command cannot be
executed or is not found; 130 when interrupted (Ctrl-C) before it runs; 2 a usage error.
"""


class _CommandAfterDashes(Command):
    """Everything after the first `--` is the command to run, left untouched by click."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["command"] = args[cut + 1 :]
            args = args[:cut]
        else:
            ctx.meta["command"] = []
        return super().parse_args(ctx, args)


class _Status:
    """One live status line on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.shown = False

    def show(self, text: str) -> None:
        if self.live:
            self.shown = True  # first: a Ctrl-C during the write must still clear it
            sys.stderr.write(f"\r\x1b[K{text}"[:300])
            sys.stderr.flush()

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _waiting_on(verdict: Any, waited: float) -> str:
    from .effects import describe
    from .text import shorten

    locks = verdict.opencode.blockers if verdict.opencode else ()
    if locks:
        v = locks[0]
        pid = v.lock.meta.pid if v.lock.meta and v.lock.meta.pid else None
        if v.state == "left-behind":
            what = (
                f"a lock left behind{f' by pid {pid}' if pid else ''} (stale in ~{v.wait_s:.0f}s)"
            )
        else:
            what = (
                f"{f'pid {pid}' if pid else 'a process'} (an opencode lock, {verdict.state.value})"
            )
        return f"sqlprobe: waiting {waited:4.1f}s on {what}"
    blockers = [b for dv in verdict.databases for b in dv.blockers]
    if blockers:
        b = blockers[0]
        who = f"pid {b.lock.pid}" if b.lock.pid else "a hidden process"
        what = f"{who} ({describe(b.lock)}, {verdict.state.value})"
    else:
        what = shorten(verdict.reason, 80)
    return f"sqlprobe: waiting {waited:4.1f}s on {what}"


_until = click.option(
    "--until",
    type=click.Choice(["clear", "unblocked"]),
    default="unblocked",
    show_default=True,
    help="clear: nobody holds the database; unblocked: clear or shared (nothing would block).",
)


@click.command(cls=Command)
@path_argument
@click.option(
    "--timeout",
    type=Seconds(0, 86400),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up after this long, with the exit code of the last state seen.",
)
@_until
@click.option("-q", "--quiet", is_flag=True, help="No status line, no final message.")
@_guarded
def wait(path: str | None, timeout: float, until: str, quiet: bool) -> None:
    """Wait until a new instance would not block (or until nobody holds the database).

    Polls cheaply (/proc/locks first; the full check only when something may have changed).
    Exit 0 as soon as the state is reached; after --timeout, the exit code of the last state
    seen (3 shared, 4 busy, 5 stuck, 6 error). On a terminal, one live status line on stderr
    says what it waits on.

    \b
    Example:
      sqlprobe wait && opencode run "review this diff"
      sqlprobe wait --until clear --timeout 120 ~/.local/share/opencode
    """
    from .text import seconds
    from .waiting import wait as wait_for

    status = _Status() if not quiet else None
    try:
        result = wait_for(
            path,
            until=until,
            timeout=timeout,
            on_status=(lambda v, t: status.show(_waiting_on(v, t))) if status else None,
        )
    finally:  # Ctrl-C too: the terminal is left without the status line
        if status:
            status.clear()
    code = 0 if result.reached else int(result.verdict.exit_code)
    if not quiet and not result.reached:
        click.echo(
            f"sqlprobe: still {result.verdict.state.value} after {seconds(timeout)} s:"
            f" {result.verdict.reason}",
            err=True,
        )
    sys.exit(code)


@click.command(cls=_CommandAfterDashes, epilog=EXIT_REFUSED_HELP)
@path_argument
@click.option(
    "--wait",
    "wait_s",
    type=Seconds(0, 86400),
    default=None,
    metavar="SECONDS",
    help="Wait up to this long for the database (and with --serialize, the queue) instead of"
    " refusing at once.",
)
@click.option(
    "--allow",
    type=click.Choice(["shared"]),
    default=None,
    help="Also run when others hold the database without blocking (`shared`).",
)
@click.option(
    "--serialize",
    is_flag=True,
    help="Queue: run one wrapped command at a time per database (an flock in "
    "$XDG_RUNTIME_DIR/sqlprobe, held by the command until it exits).",
)
@click.option(
    "--isolate",
    is_flag=True,
    help="Give this run its own database: OPENCODE_DB in a fresh private directory, removed "
    "after the run. opencode's own locks still apply: a held one refuses (or, with --wait, "
    "waits).",
)
@click.option("--keep", is_flag=True, help="With --isolate: keep the isolated database.")
@_guarded
def run(
    path: str | None,
    wait_s: float | None,
    allow: str | None,
    serialize: bool,
    isolate: bool,
    keep: bool,
) -> None:
    """Preflight, then run COMMAND in place of sqlprobe: sqlprobe run [PATH] -- COMMAND...

    Without --wait, a blocking state refuses at once, with the reason on stderr and that
    state's exit code; `shared` refuses too unless --allow shared. Once it runs, COMMAND
    replaces sqlprobe (exec): its signals and exit status are its own.

    \b
    Example:
      sqlprobe run -- opencode run "review this diff"
      sqlprobe run --wait 60 --allow shared -- opencode run "fix the tests"
      sqlprobe run --serialize -- opencode run "review with provider A"   # one at a time
      sqlprobe run --isolate -- opencode run "a throwaway session"
    """
    from . import running
    from .text import seconds

    command = click.get_current_context().meta["command"]
    if not command:
        raise click.UsageError("give the command after --: sqlprobe run -- opencode run ...")
    if keep and not isolate:
        raise click.UsageError("--keep only goes with --isolate")
    if isolate and (serialize or allow):
        raise click.UsageError("--isolate has a database of its own: drop --serialize/--allow")
    name = running.shown(command[0])
    status = _Status()
    if isolate:
        # Its own database, but not its own lock directory: opencode's locks still apply.
        _preflight(path, "unblocked", wait_s, status, name, databases=False)
        with _refusing_on_overrun(name, status):
            code = _run_isolated(command, keep)
        sys.exit(code)
    until = "unblocked" if allow == "shared" else "clear"
    if serialize:
        from .text import safe
        from .verdict import ExitCode

        try:
            with _refusing_on_overrun(name, status):
                _lock, fd = running.take_queue(
                    path,
                    os.environ,
                    wait_s,
                    on_wait=lambda t: status.show(f"sqlprobe: queued {t:4.1f}s"),
                    warn=lambda m: click.echo(f"sqlprobe: {safe(m)}", err=True),
                )
        except running.QueueError as err:
            # Not a bug: a directory or file another user (or an old tool) left in the way.
            status.clear()
            click.echo(f"sqlprobe: {safe(str(err))}", err=True)
            sys.exit(int(ExitCode.ERROR))
        status.clear()
        if fd is None:
            click.echo(
                f"sqlprobe: not running {name}: the queue was still taken after"
                f" {seconds(wait_s or 0)} s (another `sqlprobe run --serialize` on this database)",
                err=True,
            )
            sys.exit(4)
    _preflight(path, until, wait_s, status, name)
    sys.exit(running.exec_command(command))


@contextlib.contextmanager
def _refusing_on_overrun(name: str, status: _Status) -> Iterator[None]:
    """A step that touches the filesystem and overran its deadline: refuse with exit 6."""
    from .deadline import Overrun
    from .text import safe
    from .verdict import ExitCode

    try:
        yield
    except Overrun as err:
        status.clear()
        click.echo(f"sqlprobe: not running {name}: {safe(str(err))}", err=True)
        sys.exit(int(ExitCode.ERROR))


def _preflight(
    path: str | None,
    until: str,
    wait_s: float | None,
    status: _Status,
    name: str,
    databases: bool = True,
) -> None:
    """Exit with the state's code unless it is `until` (at once, or within `wait_s`).

    `databases` False: only opencode's own locks count (an isolated run has its own database).
    """
    from .snapshot import check
    from .verdict import judge
    from .waiting import UNTIL
    from .waiting import wait as wait_for

    if wait_s:
        try:
            result = wait_for(
                path,
                until=until,
                timeout=wait_s,
                on_status=lambda v, t: status.show(_waiting_on(v, t)),
                databases=databases,
            )
        finally:  # Ctrl-C too
            status.clear()
        verdict, reached = result.verdict, result.reached
    else:
        verdict = judge(check(path, databases=databases))
        reached = verdict.state in UNTIL[until]
    if not reached:
        hint = " (--allow shared runs alongside)" if verdict.state.value == "shared" else ""
        click.echo(f"sqlprobe: not running {name}: {verdict.reason}{hint}", err=True)
        sys.exit(int(verdict.exit_code))


def _run_isolated(command: list[str], keep: bool) -> int:
    from . import running
    from .text import shell_quote

    directory = running.isolated_dir()
    cleanup = (lambda: None) if keep else running.remove_tree(directory)
    try:
        database = os.path.join(directory, "opencode.db")
        kept = "kept" if keep else "removed after the run (--keep keeps it)"
        click.echo(
            f"sqlprobe: isolated run: OPENCODE_DB={shell_quote(database)} ({kept})", err=True
        )
        return running.run_child(command, {**os.environ, "OPENCODE_DB": database}, cleanup)
    except BaseException:
        cleanup()  # Ctrl-C before the command started (run_child cleans up once it has)
        raise


HOOKS = {
    "bash": """\
# sqlprobe: wrap `opencode run` with a preflight; every other opencode command is untouched.
# Load it with: eval "$(sqlprobe hook bash{args})"
opencode() {{
  if [ "${{1-}}" = run ]; then
    command sqlprobe run{run_args} -- opencode "$@"
  else
    command opencode "$@"
  fi
}}
""",
    "zsh": """\
# sqlprobe: wrap `opencode run` with a preflight; every other opencode command is untouched.
# Load it with: eval "$(sqlprobe hook zsh{args})"
opencode() {{
  if [[ "${{1-}}" == run ]]; then
    command sqlprobe run{run_args} -- opencode "$@"
  else
    command opencode "$@"
  fi
}}
""",
    "fish": """\
# sqlprobe: wrap `opencode run` with a preflight; every other opencode command is untouched.
# Load it with: sqlprobe hook fish{args} | source
function opencode --wraps opencode --description 'opencode, with a sqlprobe preflight for run'
    if test (count $argv) -gt 0; and test "$argv[1]" = run
        command sqlprobe run{run_args} -- opencode $argv
    else
        command opencode $argv
    end
end
""",
}


@click.command(cls=Command)
@click.argument("shell", type=click.Choice(sorted(HOOKS)))
@click.option(
    "--wait",
    "wait_s",
    type=Seconds(0, 86400),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="The wrapped runs wait up to this long for the database (0: refuse at once).",
)
@click.option("--serialize", is_flag=True, help="The wrapped runs queue, one at a time.")
@click.option(
    "--allow", type=click.Choice(["shared"]), default=None, help="Run alongside idle holders."
)
@_guarded
def hook(shell: str, wait_s: float, serialize: bool, allow: str | None) -> None:
    """Print a shell function that wraps `opencode run` with `sqlprobe run`.

    Every other opencode subcommand passes through untouched. The options are baked into the
    function.

    \b
    Example:
      eval "$(sqlprobe hook bash)"                  # in ~/.bashrc
      eval "$(sqlprobe hook zsh --serialize)"       # in ~/.zshrc
      sqlprobe hook fish | source                   # in ~/.config/fish/config.fish
    """
    options = []
    if wait_s:
        options += ["--wait", f"{wait_s:.15g}"]  # as given: the wrapped runs parse it back
    if serialize:
        options.append("--serialize")
    if allow:
        options += ["--allow", allow]
    run_args = "".join(f" {shlex.quote(o)}" for o in options)
    given = []
    if wait_s != 30.0:
        given += ["--wait", f"{wait_s:.15g}"]
    given += ["--serialize"] if serialize else []
    given += ["--allow", allow] if allow else []
    args = "".join(f" {o}" for o in given)
    click.echo(HOOKS[shell].format(args=args, run_args=run_args), nl=False)
