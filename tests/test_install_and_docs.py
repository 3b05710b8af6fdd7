"""An installed sqlprobe works where the README says: the hook off PATH, shell completion, the man
page, and a README whose every link stays inside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import fake_opencode

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
SCRIPT = BIN / "sqlprobe"  # the console script of the environment the tests run in
MANPAGE = ROOT / "man" / "sqlprobe.1"
GENERATOR = ROOT / "scripts" / "make_manpage.py"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason=f"no console script at {SCRIPT}")


def _shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _fake_opencode(tmp_path: Path) -> Path:
    return fake_opencode(tmp_path / "fakebin")


def _off_path_env(tmp_path: Path, fake: Path) -> dict[str, str]:
    """A PATH without the tests' environment (where `sqlprobe` lives) and clear XDG dirs."""
    path = f"{fake.parent}:{SYSTEM_PATH}"
    assert shutil.which("sqlprobe", path=path) is None, "a sqlprobe on the system PATH"
    env = {k: v for k, v in os.environ.items() if k != "OPENCODE_DB"}
    env["PATH"] = path
    for var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
        env[var] = str(tmp_path / var.lower())
        os.mkdir(env[var])
    return env


# The shell code that loads a printed hook, then runs `opencode run hi` through it.
LOADERS = {
    "bash": 'eval "$({hook})"; opencode run hi; echo "rc=$?"',
    "zsh": 'eval "$({hook})"; opencode run hi; echo "rc=$?"',
    "fish": "{hook} | source; opencode run hi; echo rc=$status",
}


def _hook_runs_opencode(shell: str, command: list[str], env: dict[str, str], **kw) -> None:
    printed = subprocess.run(
        [*command, "hook", shell, "--wait", "0"], capture_output=True, text=True, env=env, **kw
    )
    assert printed.returncode == 0, printed.stderr
    script = LOADERS[shell].format(hook=f"cat {printed_file(printed.stdout, env)}")
    result = subprocess.run(
        [_shell(shell), "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert (result.stdout, result.stderr) == ("opencode got: run hi\nrc=0\n", ""), printed.stdout


def printed_file(text: str, env: dict[str, str]) -> str:
    """The printed hook in a file of the temp XDG_CONFIG_HOME, so the shell loads it as given."""
    path = Path(env["XDG_CONFIG_HOME"]) / "hook.sh"
    path.write_text(text)
    return str(path)


# -- item 3: the hook of a sqlprobe that is not on PATH -----------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_hook_printed_by_a_sqlprobe_off_path_runs_opencode(tmp_path, shell):
    """README set-up leaves only .venv/bin/sqlprobe: its hook must still run (it was exit 127)."""
    _shell(shell)
    env = _off_path_env(tmp_path, _fake_opencode(tmp_path))
    _hook_runs_opencode(shell, [str(SCRIPT)], env)


@pytest.mark.process
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_hook_of_a_sqlprobe_at_a_path_with_quotes_and_spaces_runs_opencode(tmp_path, shell):
    _shell(shell)
    env = _off_path_env(tmp_path, _fake_opencode(tmp_path))
    odd = tmp_path / "it's a \\ $dir" / "sqlprobe"
    odd.parent.mkdir()
    odd.symlink_to(SCRIPT)
    _hook_runs_opencode(shell, [str(odd)], env)


@pytest.mark.process
def test_hook_printed_by_python_m_sqlprobe_off_path_runs_opencode(tmp_path):
    env = _off_path_env(tmp_path, _fake_opencode(tmp_path))
    _hook_runs_opencode("bash", [sys.executable, "-m", "sqlprobe"], env, cwd=tmp_path)


# -- item 9: shell completion, as the README documents it -----------------------------------------


def _readme_completion_line(shell: str) -> str:
    lines = [
        line.split("#")[0].strip()
        for line in README.splitlines()
        if f"_SQLPROBE_COMPLETE={shell}_source" in line
    ]
    assert lines, f"the README documents no {shell} completion"
    return lines[0].lstrip("$ ")


@pytest.mark.process
def test_readme_bash_completion_completes_commands_options_and_choices(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    load = _readme_completion_line("bash")
    script = "\n".join(
        [
            load,
            "complete -p sqlprobe >/dev/null || exit 9",
            'ask() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=();',
            '  _sqlprobe_completion sqlprobe; echo "${COMPREPLY[*]}"; }',
            "ask sqlprobe ch",
            "ask sqlprobe ''",
            "ask sqlprobe hook ''",
            "ask sqlprobe check --thor",
            "ask sqlprobe run --ser",
        ]
    )
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "check",
        "check diagnose hook run wait",
        "bash fish zsh",
        "--thorough",
        "--serialize",
    ]
    # PATH: click hands it to the shell's own file-name completion (`compopt -o default`).
    asked = subprocess.run(
        ["sqlprobe"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **env,
            "_SQLPROBE_COMPLETE": "bash_complete",
            "COMP_WORDS": f"sqlprobe check {tmp_path}/openc",
            "COMP_CWORD": "2",
        },
    )
    assert asked.stdout.split() == [f"file,{tmp_path}/openc"], asked.stderr


@pytest.mark.process
@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_readme_zsh_and_fish_completion_load_and_complete(tmp_path, shell):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    load = _readme_completion_line(shell)
    exe = _shell(shell)
    if shell == "zsh":
        script = f"autoload -Uz compinit && compinit -u -d {tmp_path}/zcd; {load}; "
        script += "(( $+functions[_sqlprobe_completion] )) && echo loaded; "
        # what the loaded function asks sqlprobe on a Tab after `sqlprobe ch`
        script += "COMP_WORDS='sqlprobe ch' COMP_CWORD=1 _SQLPROBE_COMPLETE=zsh_complete sqlprobe"
    else:
        script = f"{load}; complete -C 'sqlprobe ch'"
    result = subprocess.run(
        [exe, "-c", script],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # fish prints each candidate with its description after a tab
    candidates = [line.split("\t")[0] for line in result.stdout.splitlines()]
    if shell == "zsh":  # loaded, then type, value, help of each candidate
        assert candidates[:3] == ["loaded", "plain", "check"] and len(candidates) == 4
    else:
        assert candidates == ["check"]


# -- item 9: the man page --------------------------------------------------------------------------


@pytest.mark.process
def test_committed_man_page_is_what_the_generator_writes_now(tmp_path):
    out = tmp_path / "sqlprobe.1"
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert MANPAGE.read_text() == out.read_text(), (
        f"man/sqlprobe.1 is stale: run {GENERATOR.relative_to(ROOT)}"
    )


def test_man_page_covers_every_command_and_option():
    import click

    from sqlprobe.cli import cli

    page = MANPAGE.read_text()
    ctx = click.Context(cli, info_name="sqlprobe")
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert f'.SS "sqlprobe {name}' in page, name
        for param in command.params:
            for opt in getattr(param, "opts", []) if param.param_type_name == "option" else []:
                assert opt.replace("-", "\\-") in page, (name, opt)


@pytest.mark.process
def test_man_page_renders_without_warnings(tmp_path):
    text = MANPAGE.read_text()
    assert text.startswith(".TH SQLPROBE 1 ")
    # Every request line is a known one: a typo would print as text, or vanish.
    known = {
        ".TH",
        ".SH",
        ".SS",
        ".PP",
        ".TP",
        ".IP",
        ".nf",
        ".fi",
        ".RS",
        ".RE",
        ".B",
        ".I",
        ".BR",
        ".nh",
        ".ad",
    }
    requests = {line.split()[0] for line in text.splitlines() if line.startswith(".")}
    assert requests <= known, requests - known
    env = {**os.environ, "MANWIDTH": "100", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    if shutil.which("man"):
        cmd = ["man", "--warnings", "-l", str(MANPAGE)]
    elif shutil.which("groff"):
        cmd = ["groff", "-man", "-Tutf8", "-ww", str(MANPAGE)]
    elif shutil.which("mandoc"):
        cmd = ["mandoc", "-Tlint", str(MANPAGE)]
    else:
        pytest.skip("no man, groff or mandoc to render it (the request check above ran)")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rendered = re.sub(r".\x08", "", proc.stdout)
    assert "sqlprobe check" in rendered and "Exit codes:" in rendered
    assert "--probe-live" in rendered.replace("\u2010", "-").replace("\u2212", "-")


# -- item 9: the README stands on its own ---------------------------------------------------------


def _relative_links(text: str) -> list[str]:
    inline = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    defined = re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", text, re.M)
    code_paths = re.findall(r"`(\.\./[^`\s]+)`", text)  # a path given to follow, not a link
    links = [*inline, *defined, *code_paths]
    return [u for u in links if not urlparse(u).scheme and not u.startswith("#")]


def test_every_relative_link_in_the_readme_is_a_file_inside_the_repository():
    links = _relative_links(README)
    assert links, "no relative link found: the pattern is broken"
    root = ROOT.resolve()
    for link in links:
        target = (ROOT / unquote(link.split("#")[0])).resolve()
        assert target.is_relative_to(root), f"{link} leaves the repository"
        assert target.is_file(), f"{link} is not a file"


def test_readme_documents_an_end_user_install_and_where_the_command_lands():
    setup = README[README.index("## Set-up") : README.index("## Promises")]
    for command in ("pipx install .", "pip install --user ."):
        assert command in setup, command
    assert "~/.local/bin" in setup and "PATH" in setup
