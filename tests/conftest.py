"""Shared fixtures: real databases, real holder processes (killed at teardown), the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sqlprobe.cli import cli

HERE = Path(__file__).parent
HOLDER = HERE / "holder.py"
FIXTURES = HERE.parent / "fixtures"
READY_TIMEOUT = 15.0


def make_db(path: Path, wal: bool = True, rows: int = 3) -> Path:
    """A small real database; closed again, so that no process of the test holds it."""
    conn = sqlite3.connect(path)
    conn.execute(f"pragma journal_mode={'wal' if wal else 'delete'}")
    conn.execute("create table if not exists t(x)")
    conn.executemany("insert into t values (?)", [(i,) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


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
        deadline = time.monotonic() + 10
        while self.state() != "T":
            assert time.monotonic() < deadline, "holder did not stop"
            time.sleep(0.01)

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


def fingerprint(directory: Path) -> dict[str, tuple[str, int]]:
    """Name -> (sha256 or file type, mtime) of every entry of a directory."""
    out = {}
    for p in sorted(directory.iterdir()):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            out[p.name] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
        else:
            out[p.name] = (stat.filemode(st.st_mode), st.st_mtime_ns)
    return out


def _watched_dirs(args: tuple[Any, ...], env: dict[str, str] | None) -> set[Path]:
    """The directories a check of `args` looks into: its PATH's directory, or the data dir."""
    dirs = set()
    for arg in args:
        if isinstance(arg, Path) and arg.is_absolute():
            dirs.add(arg if arg.is_dir() and not arg.name.endswith(".db") else arg.parent)
    if env and env.get("XDG_DATA_HOME"):
        dirs.add(Path(env["XDG_DATA_HOME"]) / "opencode")
    return {d for d in dirs if d.is_dir()}


@pytest.fixture
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Run the CLI in-process: `run("check", path, "--json")` -> click Result.

    Every run also checks that sqlprobe changed nothing: the bytes and mtimes of every file in
    the directories it looked into are the same after it, and no file appeared. A test whose own
    holder writes while sqlprobe runs opts out with @pytest.mark.holder_writes.
    """
    runner = CliRunner()
    watch = request.node.get_closest_marker("holder_writes") is None

    def invoke(*args: Any, env: dict[str, str] | None = None) -> Any:
        dirs = _watched_dirs(args, env) if watch else set()
        before = {d: fingerprint(d) for d in dirs}
        result = runner.invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
        for d in dirs:
            assert fingerprint(d) == before[d], f"sqlprobe {' '.join(map(str, args))} changed {d}"
        return result

    return invoke


@pytest.fixture
def check_json(run: Callable[..., Any]) -> Callable[..., tuple[dict[str, Any], int]]:
    """`check_json(path, *options)` -> (the JSON document, exit code)."""

    def go(*args: Any, env: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
        result = run("check", *args, "--json", env=env)
        return json.loads(result.stdout), result.exit_code

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
