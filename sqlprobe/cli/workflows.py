"""The pre-run commands `wait`, `run` and `hook` (loaded by cli.LazyGroup when used)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from sqlprobe.cli.common import (
    Command,
    F,
    check_timeout_option,
    guarded,
    path_argument,
    seconds_option,
)
from sqlprobe.options import DEFAULT_WAIT, WAIT_RANGE, CheckOptions

if TYPE_CHECKING:
    from sqlprobe.verdict.judge import Verdict
    from sqlprobe.workflows.run import Refused

EXIT_REFUSED_HELP = """\b
Exit codes: the command's own once it runs; when sqlprobe refuses to
run it, the state's code (4 busy, 5 stuck, 6 error; 3 shared, with
--require-clear); 126/127 when the command cannot be executed or is not
found; 130 when interrupted (Ctrl-C) before it runs; 2 a usage error.
"""


class _CommandAfterDashes(Command):
    """Everything after the first `--` is the command to run, left untouched by click."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["command"] = args[cut + 1 :]
            return super().parse_args(ctx, args[:cut])
        ctx.meta["command"] = []
        try:
            return super().parse_args(ctx, list(args))  # click consumes the list it is given
        except click.UsageError as err:
            # `sqlprobe run opencode run hi`: the command's words read as extra arguments.
            words = self._positionals(args)
            if len(words) < 2:
                raise
            raise click.UsageError(
                f"put the command after --: sqlprobe run [PATH] -- {shlex.join(words)}", ctx
            ) from err

    def _positionals(self, args: list[str]) -> list[str]:
        """`args` from the first word that is neither an option of ours nor its value."""
        valued = {
            name
            for p in self.params
            if isinstance(p, click.Option) and not p.is_flag
            for name in p.opts
        }
        i = 0
        while i < len(args) and args[i].startswith("-") and args[i] != "-":
            i += 2 if args[i] in valued else 1
        return args[i:]

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "--", "COMMAND..."]


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


def _waiting_on(verdict: Verdict, waited: float) -> str:
    from sqlprobe.sqlite.effects import describe
    from sqlprobe.text import shorten

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


def _require_clear(help: str) -> Callable[[F], F]:
    return click.option("--require-clear", is_flag=True, help=help)


_allow = click.option(
    "--allow",
    type=click.Choice(["shared"]),
    default=None,
    help="The default now: run alongside holders that do not block. Kept for old scripts.",
)
_until = click.option(
    "--until",
    type=click.Choice(["clear", "unblocked"]),
    default="unblocked",
    show_default=True,
    help="clear: nobody holds the database; unblocked: clear or shared (nothing would block).",
)


@click.command(cls=Command)
@path_argument
@seconds_option(
    "--timeout",
    span=WAIT_RANGE,
    default=DEFAULT_WAIT,
    help="Give up after this long, with the exit code of the last state seen.",
)
@_until
@click.option("-q", "--quiet", is_flag=True, help="No status line, no final message.")
@guarded
def wait(path: str | None, timeout: float, until: str, quiet: bool) -> None:
    """Wait until a new instance would not block (or until nobody holds the database).

    Polls cheaply (/proc/locks first; the full check only when something may have changed,
    and every 3 s). Exit 0 as soon as the state is reached; 5 as soon as a holder is found
    stuck (waiting will not help); after --timeout, the exit code of the last complete check
    (3 shared, 4 busy, 6 error). On a terminal, one live status line on stderr says what it
    waits on.

    \b
    Example:
      sqlprobe wait && opencode run "review this diff"
      sqlprobe wait --until clear --timeout 120 ~/.local/share/opencode
    """
    from sqlprobe.text import seconds
    from sqlprobe.workflows.wait import wait as wait_for

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
        verdict = result.verdict
        # Stuck ends the wait at once (waiting will not help): said as `check` says it.
        said = verdict.state.value
        if said != "stuck":
            said = f"still {said} after {seconds(timeout)} s"
        click.echo(f"sqlprobe: {said}: {verdict.reason}", err=True)
    sys.exit(code)


@click.command(cls=_CommandAfterDashes, epilog=EXIT_REFUSED_HELP)
@path_argument
@seconds_option(
    "--wait",
    "wait_s",
    span=WAIT_RANGE,
    default=None,
    help="Wait up to this long while the state blocks (busy, or error; with --require-clear,"
    " shared too), and with --serialize for the queue, instead of refusing at once. A stuck"
    " holder refuses at once: waiting will not help.",
)
@check_timeout_option(
    "The preflight check answers within this long (with --wait, each of its checks)."
)
@_require_clear(
    "Run only when nobody else holds the database: `shared` refuses (or, with --wait, waits)."
)
@_allow
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
@guarded
def run(
    path: str | None,
    wait_s: float | None,
    timeout: float,
    require_clear: bool,
    allow: str | None,
    serialize: bool,
    isolate: bool,
    keep: bool,
) -> None:
    """Preflight, then run COMMAND in place of sqlprobe: sqlprobe run [PATH] -- COMMAND...

    It runs when a new instance would not block: the database clear, or `shared` (others hold
    it open, none a lock a new instance needs). A blocking state refuses at once, with the
    reason on stderr and that state's exit code, or with --wait once the time is up; a stuck
    holder refuses at once either way. Once it runs, COMMAND replaces sqlprobe (exec): its
    signals and exit status are its own.

    \b
    Example:
      sqlprobe run -- opencode run "review this diff"
      sqlprobe run --wait 60 -- opencode run "fix the tests"
      sqlprobe run --require-clear -- opencode run "migrate"  # nobody else in it
      sqlprobe run --serialize -- opencode run "review, model A"  # one at a time
      sqlprobe run --isolate -- opencode run "a throwaway session"
    """
    from sqlprobe.system.deadline import Overrun
    from sqlprobe.text import safe
    from sqlprobe.verdict.judge import ExitCode
    from sqlprobe.workflows import run as running

    command = click.get_current_context().meta["command"]
    if not command:
        raise click.UsageError("give the command after --: sqlprobe run -- opencode run ...")
    if keep and not isolate:
        raise click.UsageError("--keep only goes with --isolate")
    if require_clear and allow:
        raise click.UsageError("--require-clear and --allow shared say opposite things")
    if isolate and (serialize or require_clear):
        raise click.UsageError(
            "--isolate has a database of its own: drop --serialize/--require-clear"
        )
    name = running.shown(command[0])
    status = _Status()
    try:
        outcome = running.run_command(
            command,
            path,
            until="clear" if require_clear else "unblocked",
            wait_s=wait_s,
            options=CheckOptions(timeout=timeout),
            serialize=serialize,
            isolate=isolate,
            keep=keep,
            progress=_RunProgress(status),
        )
    except running.QueueError as err:
        # Not a bug: a directory or file another user (or an old tool) left in the way.
        status.clear()
        click.echo(f"sqlprobe: {safe(str(err))}", err=True)
        sys.exit(int(ExitCode.ERROR))
    except Overrun as err:  # a step that touches the filesystem (the queue, the temp dir)
        status.clear()
        click.echo(f"sqlprobe: not running {name}: {safe(str(err))}", err=True)
        sys.exit(int(ExitCode.ERROR))
    if isinstance(outcome, running.Refused):
        click.echo(f"sqlprobe: not running {name}: {_refusal(outcome, wait_s)}", err=True)
    sys.exit(outcome.exit_code)


def _refusal(refused: Refused, wait_s: float | None) -> str:
    """Why `run` did not run the command, after `sqlprobe: not running NAME: `."""
    from sqlprobe.text import seconds

    if refused.preflight is None:
        return (
            f"the queue was still taken after {seconds(wait_s or 0)} s"
            " (another `sqlprobe run --serialize` on this database)"
        )
    verdict = refused.preflight.verdict
    hint = " (--require-clear)" if verdict.state.value == "shared" else ""
    return f"{verdict.reason}{hint}"


class _RunProgress:
    """What `run` says while it gets ready (a workflows.run.Progress): the status line, and
    lines on stderr."""

    def __init__(self, status: _Status) -> None:
        self.status = status

    def queued(self, waited: float) -> None:
        self.status.show(f"sqlprobe: queued {waited:4.1f}s")

    def waiting(self, verdict: Verdict, waited: float) -> None:
        self.status.show(_waiting_on(verdict, waited))

    def waited(self) -> None:
        self.status.clear()

    def warn(self, message: str) -> None:
        from sqlprobe.text import safe

        click.echo(f"sqlprobe: {safe(message)}", err=True)

    def isolated(self, database: str, keep: bool) -> None:
        from sqlprobe.text import shell_quote

        kept = "kept" if keep else "removed after the run (--keep keeps it)"
        click.echo(
            f"sqlprobe: isolated run: OPENCODE_DB={shell_quote(database)} ({kept})", err=True
        )


HOOKS = {
    "bash": """\
# sqlprobe: wrap `opencode run` with a preflight; every other opencode command is untouched.
# Load it with: eval "$({sqlprobe} hook bash{args})"
opencode() {{
  if [ "${{1-}}" = run ]; then
    command {sqlprobe} run{run_args} -- opencode "$@"
  else
    command opencode "$@"
  fi
}}
""",
    "zsh": """\
# sqlprobe: wrap `opencode run` with a preflight; every other opencode command is untouched.
# Load it with: eval "$({sqlprobe} hook zsh{args})"
opencode() {{
  if [[ "${{1-}}" == run ]]; then
    command {sqlprobe} run{run_args} -- opencode "$@"
  else
    command opencode "$@"
  fi
}}
""",
    "fish": """\
# sqlprobe: wrap `opencode run` with a preflight; every other opencode command is untouched.
# Load it with: {sqlprobe} hook fish{args} | source
function opencode --wraps opencode --description 'opencode, with a sqlprobe preflight for run'
    if test (count $argv) -gt 0; and test "$argv[1]" = run
        command {sqlprobe} run{run_args} -- opencode $argv
    else
        command opencode $argv
    end
end
""",
}


def _fish_quote(word: str) -> str:
    """fish's single quotes: only \\ and \' are special inside them (shlex.quote is POSIX)."""
    if word and all(c.isalnum() or c in "@%+=:,./-_" for c in word):
        return word
    return "'" + word.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _running_sqlprobe() -> list[str] | None:
    """The command that runs this sqlprobe, by absolute path; None if only the cwd has it.

    The console script is sys.argv[0]. Under `python -m sqlprobe` (or a caller in-process) it
    is this environment's console script, else this interpreter with -m."""
    import sysconfig

    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "sqlprobe" and os.access(argv0, os.X_OK):
        return [os.path.abspath(argv0)]  # not resolved: a pipx link outlives a reinstall
    schemes = [sysconfig.get_default_scheme()]
    if sys.prefix == sys.base_prefix:  # a venv sees no user site
        schemes.append(f"{os.name}_user")
    for scheme in schemes:
        script = os.path.join(sysconfig.get_path("scripts", scheme), "sqlprobe")
        if os.path.isfile(script) and os.access(script, os.X_OK):
            return [script]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.realpath(package_root) == os.path.realpath(os.getcwd()):
        return None  # imported from the current directory only: elsewhere it is not found
    return [sys.executable, "-m", "sqlprobe"]


def _hook_command(shell: str) -> str:
    """How the function calls sqlprobe: by name when PATH leads to this one, else by path.

    Looking means stat()s along PATH and of this environment: run apart, given the queue's 3 s
    per step (a directory of PATH on a hung filesystem), and exit 6 past them.
    """
    from sqlprobe.system.deadline import Overrun, within
    from sqlprobe.text import safe
    from sqlprobe.workflows.run import STEP_S

    try:
        running, by_name = within(_sqlprobe_found, STEP_S, "looking for sqlprobe on PATH")
    except Overrun as err:
        from sqlprobe.verdict.judge import ExitCode

        click.echo(f"sqlprobe: error: {safe(str(err))}", err=True)
        sys.exit(int(ExitCode.ERROR))
    if by_name:
        return "sqlprobe"
    if running is None:
        click.echo(
            "sqlprobe: error: no sqlprobe for the function to call: this one runs only from "
            "the current directory, and none is on PATH; install it (pipx install . or "
            "pip install --user .) and put ~/.local/bin on PATH",
            err=True,
        )
        from sqlprobe.verdict.judge import ExitCode

        sys.exit(int(ExitCode.ERROR))
    quote = _fish_quote if shell == "fish" else shlex.quote
    return " ".join(quote(word) for word in running)


def _sqlprobe_found() -> tuple[list[str] | None, bool]:
    """(the command that runs this sqlprobe, or None; whether `sqlprobe` on PATH is it)."""
    running = _running_sqlprobe()
    on_path = shutil.which("sqlprobe")
    by_name = bool(on_path) and (
        running is None or (len(running) == 1 and _same_file(on_path, running[0]))
    )
    return running, by_name


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@click.command(cls=Command)
@click.argument("shell", type=click.Choice(sorted(HOOKS)))
@seconds_option(
    "--wait",
    "wait_s",
    span=WAIT_RANGE,
    default=DEFAULT_WAIT,
    help="The wrapped runs wait up to this long for the database (0: refuse at once).",
)
@click.option("--serialize", is_flag=True, help="The wrapped runs queue, one at a time.")
@_require_clear("The wrapped runs refuse (or wait) while another process has the database open.")
@_allow
@guarded
def hook(
    shell: str, wait_s: float, serialize: bool, require_clear: bool, allow: str | None
) -> None:
    """Print a shell function that wraps `opencode run` with `sqlprobe run`.

    Every other opencode subcommand passes through untouched. The options are baked into the
    function. It calls `sqlprobe` by name when PATH leads to this sqlprobe, else this one by
    its absolute path (say .venv/bin/sqlprobe, not on PATH), so the function always runs;
    exit 6 if this one can only run from the current directory and none is on PATH, or if
    looking along PATH takes more than 3 s (a hung filesystem).

    \b
    Example:
      eval "$(sqlprobe hook bash)"                  # in ~/.bashrc
      eval "$(sqlprobe hook zsh --serialize)"       # in ~/.zshrc
      sqlprobe hook fish | source              # in ~/.config/fish/config.fish
    """
    if require_clear and allow:
        raise click.UsageError("--require-clear and --allow shared say opposite things")
    options = []
    if wait_s:
        options += ["--wait", f"{wait_s:.15g}"]  # as given: the wrapped runs parse it back
    if serialize:
        options.append("--serialize")
    if require_clear:
        options.append("--require-clear")
    if allow:
        options += ["--allow", allow]
    run_args = "".join(f" {shlex.quote(o)}" for o in options)
    given = []
    if wait_s != DEFAULT_WAIT:
        given += ["--wait", f"{wait_s:.15g}"]
    given += ["--serialize"] if serialize else []
    given += ["--require-clear"] if require_clear else []
    given += ["--allow", allow] if allow else []
    args = "".join(f" {o}" for o in given)
    sqlprobe = _hook_command(shell)
    click.echo(HOOKS[shell].format(sqlprobe=sqlprobe, args=args, run_args=run_args), nl=False)
