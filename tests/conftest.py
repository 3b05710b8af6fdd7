"""Shared fixtures: real databases, real holder processes (killed at teardown), the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import apsw
import click
import pytest
import tabulate
from click.testing import CliRunner
from hypothesis import settings

import sqlprobe
from sqlprobe.cli import cli
from sqlprobe.system import BACKENDS  # the OS backends: the real-holder scenarios run on each

HERE = Path(__file__).parent

# The fuzz tests' examples: 300 each in a full run; `--hypothesis-profile=quick` (the pure suite
# of the README's Development section, run while editing) takes fewer, to answer within 2 s.
settings.register_profile("thorough", max_examples=300)
settings.register_profile("quick", max_examples=40)


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("thorough")


HOLDER = HERE / "holder.py"
FIXTURES = HERE.parent / "fixtures"
READY_TIMEOUT = 15.0
PROCESS_MARK = "this test starts a process: mark it `process` (pytestmark = pytest.mark.process)"
T = TypeVar("T")


class StartsAProcess(BaseException):
    """A test without the `process` marker started a process. A BaseException, so that code
    under test that catches Exception (a worker's fallback, the CLI's last resort) lets it by."""


@contextmanager
def _processes_refused(item: pytest.Item) -> Iterator[None]:
    """Unless `item` is marked `process`: starting a process raises StartsAProcess, and the
    test fails even when the code under test swallowed that."""
    if item.get_closest_marker("process"):
        yield
        return
    tried: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            tried.append(what)
            raise StartsAProcess(f"{what}: {PROCESS_MARK}")

        return refused

    with pytest.MonkeyPatch.context() as patch:
        # Popen.__init__ rather than the class: `subprocess.run` and annotations keep working.
        patch.setattr(subprocess.Popen, "__init__", refuse("subprocess.Popen"))
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
            patch.setattr(os, name, refuse(f"os.{name}"))
        yield
    if tried:
        pytest.fail(f"{', '.join(dict.fromkeys(tried))}: {PROCESS_MARK}", pytrace=False)


# `pytest -m "not process"` is the pure suite, so an unmarked test must not start a process (a
# holder, the CLI's forked workers, a subprocess, a pty). Refused while fixtures are set up and
# the test runs, not at teardown: a fixture's clean-up (an `umount`) must always run.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _processes_refused(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _processes_refused(item):
        return (yield)


def wait_until(
    event: Callable[[], T],
    what: str,
    timeout: float = READY_TIMEOUT,
    alive: subprocess.Popen[Any] | None = None,
) -> T:
    """Poll `event` until it returns something true, and return that: how the tests wait for
    something to happen (a /proc state, a file appearing). Fails saying `what` after `timeout`
    seconds, or as soon as `alive`, a process that must not end first, has ended."""
    deadline = time.monotonic() + timeout
    while not (found := event()):
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"{what}: pid {alive.pid} ended first ({alive.returncode})")
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.01)  # the poll interval: the wait is for `event`
    return found


def make_db(path: Path, wal: bool = True, rows: int = 3) -> Path:
    """A small real database; closed again, so that no process of the test holds it."""
    conn = sqlite3.connect(path)
    conn.execute(f"pragma journal_mode={'wal' if wal else 'delete'}")
    conn.execute("create table if not exists t(x)")
    conn.executemany("insert into t values (?)", [(i,) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def fake_opencode(directory: Path, body: str = 'echo "opencode got: $*"') -> Path:
    """An `opencode` script in `directory` (made) that runs `body`: put its parent first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    fake = directory / "opencode"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    return fake


def opencode_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A data dir with a WAL database, and the environment that makes it opencode's (XDG_DATA_HOME,
    and the state and config dirs beside it)."""
    data = tmp_path / "share" / "opencode"
    data.mkdir(parents=True)
    make_db(data / "opencode.db")
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "share"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    env.pop("OPENCODE_DB", None)
    return data, env


@pytest.fixture
def wal_db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "opencode.db", wal=True)


@pytest.fixture
def rollback_db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "opencode.db", wal=False)


class Holder:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.ready: list[str] = []

    def stop(self) -> None:
        """SIGSTOP, and wait until the kernel reports it stopped (the signal is asynchronous)."""
        os.kill(self.pid, signal.SIGSTOP)
        wait_until(lambda: self.state() == "T", "holder did not stop", 10)

    def state(self) -> str:
        data = Path(f"/proc/{self.pid}/stat").read_bytes()
        return data[data.rindex(b")") + 2 :].split()[0].decode()

    def end(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()


@pytest.fixture
def holder() -> Iterator[Callable[..., Holder]]:
    """Start holder processes: `holder(db, "wal-write", "--spin")`; all killed at teardown."""
    started: list[Holder] = []

    def start(
        db: Path | str,
        state: str,
        *args: str,
        wrapper: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Holder:
        cmd = [*(wrapper or []), sys.executable, str(HOLDER), str(db), state, *args]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        h = Holder(proc)
        started.append(h)
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        assert line.startswith("ready "), f"holder {state} did not get ready: {line!r}"
        h.pid = int(line.split()[1])  # the holder itself, even behind a wrapper
        h.ready = line.split()[2:]  # anything else the state reports
        return h

    yield start
    for h in started:
        h.end()


def fingerprint(directory: Path, recursive: bool = False) -> dict[str, tuple[object, ...]]:
    """Name -> (sha256 or file type, mode, owner, group, mtime, ctime) of every entry of a
    directory (and, with `recursive`, of every directory below it, by relative path). The
    ctime catches what changes no byte (an fchown to the same owner, a chmod). FIFOs are never
    opened."""
    out = {}
    entries = sorted(directory.rglob("*") if recursive else directory.iterdir())
    for p in entries:
        st = p.lstat()
        name = str(p.relative_to(directory))
        what = (
            hashlib.sha256(p.read_bytes()).hexdigest()
            if stat.S_ISREG(st.st_mode)
            else stat.filemode(st.st_mode)
        )
        out[name] = (what, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns)
    return out


def _watched_dirs(args: tuple[Any, ...], env: dict[str, str] | None) -> dict[Path, bool]:
    """The directories a check of `args` looks into, and whether to look below them: its
    PATH's directory, opencode's data dir, and (recursively) opencode's state and config."""
    dirs = {}
    for arg in args:
        if isinstance(arg, Path) and arg.is_absolute():
            dirs[arg if arg.is_dir() and not arg.name.endswith(".db") else arg.parent] = False
    for variable, recursive in (
        ("XDG_DATA_HOME", False),
        ("XDG_STATE_HOME", True),
        ("XDG_CONFIG_HOME", True),
    ):
        if env and env.get(variable):
            dirs[Path(env[variable]) / "opencode"] = recursive
    if env and env.get("XDG_DATA_HOME"):
        dirs[Path(env["XDG_DATA_HOME"]) / "opencode" / "snapshot"] = True
    return {d: r for d, r in dirs.items() if d.is_dir()}


# What only the Linux backend sees (README, "Platforms"): the lock table's waiters (`->` lines:
# `waiting_for`, `waiting_on`, the wait-for graph), threads' kernel waits (wchan: the thread
# summary's waits, `likely_waiting_on`, a kernel lock wait), a descriptor's own locks (fdinfo:
# `source`), and every holder of a byte (F_GETLK reports one).
LINUX_ONLY = frozenset({"waiters", "thread-waits", "fdinfo", "every-holder"})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The backend that this test uses: a test that asks for it runs once per backend, with
    SQLPROBE_BACKEND set for every command it runs in-process (`run`, `check_json`), for its
    library calls (`sqlprobe.check`) and for the sqlprobe processes it starts."""
    monkeypatch.setenv("SQLPROBE_BACKEND", request.param)
    return request.param


def sees(backend: str, what: str) -> bool:
    """Whether `backend` can see `what` (one of LINUX_ONLY). A test asserts the fact where it is
    seen, and what the backend reports instead where it is not: never silently drops it."""
    assert what in LINUX_ONLY, what
    return backend == "linux"


@pytest.fixture
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Run the CLI in-process: `run("check", path, "--json")` -> click Result.

    Every run also checks that sqlprobe changed nothing: the bytes and mtimes of every file in
    the directories it looked into are the same after it, and no file appeared. A test whose own
    holder writes while sqlprobe runs opts out with @pytest.mark.holder_writes. In a test that
    asks for `backend`, every run sets SQLPROBE_BACKEND to it.
    """
    runner = CliRunner()
    watch = request.node.get_closest_marker("holder_writes") is None
    chosen = request.getfixturevalue("backend") if "backend" in request.fixturenames else None

    def invoke(*args: Any, env: dict[str, str] | None = None) -> Any:
        if chosen is not None:  # CliRunner sets only the variables given: the rest are kept
            env = {**(env or {}), "SQLPROBE_BACKEND": chosen}
        dirs = _watched_dirs(args, env) if watch else {}
        before = {d: fingerprint(d, r) for d, r in dirs.items()}
        result = runner.invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
        for d, r in dirs.items():
            after = fingerprint(d, r)
            assert after == before[d], f"sqlprobe {' '.join(map(str, args))} changed {d}"
        return result

    return invoke


@pytest.fixture
def check_json(
    run: Callable[..., Any], request: pytest.FixtureRequest
) -> Callable[..., tuple[dict[str, Any], int]]:
    """`check_json(path, *options)` -> (the JSON document, exit code). In a test that asks for
    `backend`, the document must say that this backend answered."""
    chosen = request.getfixturevalue("backend") if "backend" in request.fixturenames else None

    def go(*args: Any, env: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
        result = run("check", *args, "--json", env=env)
        doc = json.loads(result.stdout)
        if chosen is not None:
            assert doc["backend"] == chosen, doc["backend"]
        return doc, result.exit_code

    return go


def lock_names(holder_doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    """{(file, lock, mode)} of one holder in the JSON document."""
    return {(lk["file"], lk["lock"], lk["mode"]) for lk in holder_doc["locks"]}


def only_holder(doc: dict[str, Any], pid: int) -> dict[str, Any]:
    """The holder `pid` of the first database; fails if there are other holders."""
    holders = doc["databases"][0]["holders"]
    assert [h["pid"] for h in holders] == [pid], holders
    return holders[0]


def is_root() -> bool:
    return os.geteuid() == 0


def on_pty(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `cmd` with stdout and stderr on a new pseudo-terminal: (exit code, all it wrote)."""
    import pty

    main, sub = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sub, stderr=sub, env=env)
    os.close(sub)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO once the last writer has gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    code = proc.wait(timeout=30)
    os.close(main)
    return code, b"".join(chunks).decode()


NOBODY = 65534


@pytest.fixture
def as_nobody() -> Iterator[list[str]]:
    """argv prefix running `python -m sqlprobe` as nobody, from a copy nobody can read.

    The test venv may live under /root (mode 0700), so sqlprobe and its pure-Python
    dependencies are copied to a world-readable directory and run by a system Python.
    """
    if not is_root():
        pytest.skip("needs root to drop to nobody")
    python = next(
        (
            p
            for p in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable)
            if _runs_as_nobody(p)
        ),
        None,
    )
    if python is None:
        pytest.skip("no Python >= 3.10 that the nobody user can execute")
    lib = tempfile.mkdtemp(prefix="sqlprobe-nobody-")
    os.chmod(lib, 0o755)
    for module in (sqlprobe, click, tabulate, apsw):
        src = Path(module.__file__)
        if src.name.startswith("__init__."):  # a package (apsw's __init__ is a .so)
            shutil.copytree(src.parent, Path(lib) / src.parent.name)
        else:
            shutil.copy(src, lib)
    for root, dirs, files in os.walk(lib):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    argv = ["env", f"PYTHONPATH={lib}", python]
    if subprocess.run([*argv, "-c", "import apsw"], user=NOBODY, capture_output=True).returncode:
        shutil.rmtree(lib)
        pytest.skip(f"{python} cannot load the apsw built for {sys.executable}")
    yield [*argv, "-m", "sqlprobe"]
    shutil.rmtree(lib)


def _runs_as_nobody(python: str) -> bool:
    try:
        probe = subprocess.run(
            [python, "-c", "import sys; assert sys.version_info >= (3, 10)"],
            user=NOBODY,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory the nobody user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="sqlprobe-public-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)
