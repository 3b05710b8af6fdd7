"""opencode's own lock directories: real holders that take them exactly as opencode does."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import NOBODY, READY_TIMEOUT, Holder, make_db

from sqlprobe.opencode.locks import STALE_S, dir_name

pytestmark = [
    pytest.mark.process,  # opencode-like lock holders and the CLI's forked workers
    pytest.mark.usefixtures("backend"),  # every scenario on both backends
]

HERE = Path(__file__).parent
OCLOCK = HERE / "oclock.py"
SQLPROBE = [sys.executable, "-m", "sqlprobe"]


class OcEnv:
    """An isolated home with opencode's XDG directories, and no opencode on PATH."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.data = root / "data" / "opencode"
        self.state = root / "state" / "opencode"
        self.config = root / "config" / "opencode"
        self.cache = root / "cache" / "opencode"
        for d in (self.home, self.data, self.state / "locks", self.config, self.cache):
            d.mkdir(parents=True)
        self.bin = root / "bin"
        self.bin.mkdir()
        self.env = {
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_STATE_HOME": str(root / "state"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_CACHE_HOME": str(root / "cache"),
            "PATH": f"{self.bin}:/usr/bin:/bin",
        }

    @property
    def install_key(self) -> str:
        return f"npm-install:{self.config}"

    def lock_dir(self, key: str) -> Path:
        return self.state / "locks" / dir_name(key)

    def install_opencode(self, version: str) -> None:
        """A stand-in `opencode` on PATH, laid out as npm lays out opencode-linux-x64."""
        package = self.root / "node_modules" / "opencode-linux-x64"
        (package / "bin").mkdir(parents=True)
        (package / "package.json").write_text(
            json.dumps({"name": "opencode-linux-x64", "version": version})
        )
        exe = package / "bin" / "opencode"
        exe.write_text("#!/bin/sh\necho never run >&2\nexit 99\n")
        exe.chmod(0o755)
        (self.bin / "opencode").symlink_to(exe)


class LockHolder(Holder):
    """A running tests/oclock.py: stop() and end() as for a database holder."""

    def __init__(self, proc: subprocess.Popen[str], pid: int, path: Path) -> None:
        super().__init__(proc)
        self.pid, self.path = pid, path

    def kill(self) -> None:
        """SIGKILL, as `timeout -s KILL` would: the lock directory stays behind."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def oc(tmp_path: Path) -> OcEnv:
    return OcEnv(tmp_path)


@pytest.fixture
def oclock() -> Iterator[Callable[..., LockHolder]]:
    """Start lock holders: `oclock(oc, key, "--hostname", "elsewhere")`; killed at teardown."""
    started: list[LockHolder] = []

    def start(env: OcEnv, key: str, *args: str) -> LockHolder:
        cmd = [sys.executable, str(OCLOCK), str(env.state), key, "--heartbeat", "3600", *args]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        assert line.startswith("ready "), f"lock holder did not get ready: {line!r}"
        _, pid, path = line.split(maxsplit=2)
        holder = LockHolder(proc, int(pid), Path(path.strip()))
        started.append(holder)
        return holder

    yield start
    for h in started:
        h.end()


def check(run: Callable[..., Any], env: OcEnv, *args: Any) -> tuple[dict[str, Any], int]:
    result = run("check", *args, "--json", env=env.env)
    return json.loads(result.stdout), result.exit_code


def only_lock(doc: dict[str, Any]) -> dict[str, Any]:
    (lock,) = doc["opencode_locks"]
    return lock


def backdate(path: Path, seconds: float) -> None:
    """Make a lock directory look `seconds` old (the test's own files: sqlprobe never does)."""
    then = time.time() - seconds
    for p in (path / "heartbeat", path / "meta.json", path):
        if p.exists():
            os.utime(p, (then, then))


# -- held by a live process ------------------------------------------------------------------------


def test_install_lock_held_by_a_live_heartbeating_process_is_busy(oc, oclock, run):
    lock = oclock(oc, oc.install_key, "--spin")
    doc, code = check(run, oc)
    assert code == 4 and doc["verdict"] == "busy"
    assert doc["reason"].startswith(f"pid {lock.pid} (")
    assert "has held opencode's package install lock for " in doc["reason"]
    assert "would stall ~" in doc["reason"]
    assert "until it is stale (this lock's heartbeat is never refreshed)" in doc["reason"]
    got = only_lock(doc)
    assert got["path"] == str(lock.path) and got["key"] == oc.install_key
    assert (got["state"], got["alive"], got["blocks"]) == ("held", True, True)
    assert 55 <= got["wait_s"] <= STALE_S
    assert got["pid"] == lock.pid and got["needed_at_startup"] is True
    assert got["heartbeat_age_s"] < STALE_S and got["held_s"] >= 0
    assert doc["window"]["samples"] > 1, "the holder's health needs a window"
    assert lock.path.is_dir()


def test_human_report_has_a_lock_section_and_never_advises_isolate(oc, oclock, run):
    lock = oclock(oc, oc.install_key, "--spin")
    out = run("check", env=oc.env).stdout
    assert "opencode's locks in " in out
    row = next(line for line in out.splitlines() if line.strip().startswith("held"))
    assert str(lock.pid) in row and "package install lock for" in row
    assert "sqlprobe run --isolate does not help here" in out
    assert "isolate the run" not in out
    assert f"kill {lock.pid}" in out


def test_stopped_lock_holder_is_stuck(oc, oclock, run):
    lock = oclock(oc, oc.install_key)
    lock.stop()
    doc, code = check(run, oc)
    assert code == 5 and doc["verdict"] == "stuck"
    assert "is stopped (state T)" in doc["reason"] and "waiting will not help" in doc["reason"]
    assert only_lock(doc)["stuck"] == "is stopped (state T)"
    assert f"kill -CONT {lock.pid}" in run("check", env=oc.env).stdout


def test_lock_holder_with_a_zombie_child_is_stuck(oc, oclock, run):
    lock = oclock(oc, oc.install_key, "--spin", "--zombie")
    doc, code = check(run, oc)
    assert code == 5
    assert "has a child that exited and was never reaped" in doc["reason"]
    (zombie,) = doc["opencode"]["zombie_children"]
    assert zombie["parent"] == lock.pid
    assert any("never reaped" in w and str(lock.pid) in w for w in doc["warnings"])


def test_lock_on_another_host_cannot_be_checked_and_says_so(oc, oclock, run):
    oclock(oc, oc.install_key, "--hostname", "builder-7")
    doc, code = check(run, oc)
    assert code == 4
    assert "on host builder-7" in doc["reason"]
    assert "its liveness cannot be checked from this host" in doc["reason"]
    got = only_lock(doc)
    assert got["alive"] is None and got["hostname"] == "builder-7" and got["state"] == "held"


# -- left behind, stale ----------------------------------------------------------------------------


def test_lock_left_behind_by_a_killed_run_is_busy_with_the_time_left(oc, oclock, run):
    lock = oclock(oc, oc.install_key)
    lock.kill()
    backdate(lock.path, 19)
    doc, code = check(run, oc)
    assert code == 4
    got = only_lock(doc)
    assert (got["state"], got["alive"], got["blocks"]) == ("left-behind", False, True)
    assert 39 <= got["wait_s"] <= 41
    assert "a new instance would stall ~4" in doc["reason"]
    assert "until it is stale, then break it" in doc["reason"]
    out = run("check", env=oc.env).stdout
    assert f"rm -r {lock.path}" in out, "the exact command is printed"
    assert lock.path.is_dir(), "printed, never run"


def test_stale_lock_does_not_block_and_is_a_warning(oc, oclock, run):
    lock = oclock(oc, oc.install_key)
    lock.kill()
    backdate(lock.path, 120)
    doc, code = check(run, oc)
    assert code == 0, doc["reason"]
    got = only_lock(doc)
    assert (got["state"], got["blocks"]) == ("stale", False)
    assert any("is stale" in w and "breaks it at once" in w for w in doc["warnings"])


def test_stale_lock_with_a_fresh_breaker_left_behind_still_stalls(oc, oclock, run):
    lock = oclock(oc, oc.install_key)
    lock.kill()
    backdate(lock.path, 120)
    breaker = Path(f"{lock.path}.breaker")
    breaker.mkdir(mode=0o700)
    then = time.time() - 50
    os.utime(breaker, (then, then))
    doc, code = check(run, oc)
    assert code == 4
    got = only_lock(doc)
    assert got["state"] == "stale" and got["blocks"] and 9 <= got["wait_s"] <= 11
    assert ".breaker" in doc["reason"]


def test_pid_reused_by_a_newer_process_is_left_behind(oc, run):
    """meta.json names a live pid, but that process started after the lock was taken."""
    path = oc.lock_dir(oc.install_key)
    path.mkdir(mode=0o700)
    (path / "heartbeat").touch()
    created = "2001-01-01T00:00:00.000Z"
    meta = {"token": "t", "pid": os.getpid(), "hostname": os.uname().nodename, "createdAt": created}
    (path / "meta.json").write_text(json.dumps(meta))
    doc, code = check(run, oc)
    got = only_lock(doc)
    assert (got["state"], got["alive"]) == ("left-behind", False) and code == 4
    assert "pid reused" in doc["reason"]


# -- keys ----------------------------------------------------------------------------------------


def test_unrecognised_lock_does_not_block_and_is_named_in_warnings(oc, oclock, run):
    lock = oclock(oc, "something-new:/srv/x")
    doc, code = check(run, oc)
    assert code == 0
    got = only_lock(doc)
    assert got["key"] is None and got["blocks"] is False and got["state"] == "held"
    (warning,) = [w for w in doc["warnings"] if str(lock.path) in w]
    assert "an unrecognised opencode lock" in warning and "does not take it" in warning


def test_lock_no_start_up_takes_is_not_blocking(oc, oclock, run):
    key = f"plug-config:{oc.config / 'opencode'}"
    oclock(oc, key)
    doc, code = check(run, oc)
    assert code == 0
    got = only_lock(doc)
    assert got["key"] == key and got["needed_at_startup"] is False
    assert any("plugin config lock" in w and "does not take it" in w for w in doc["warnings"])


def test_package_cache_keys_are_recognised(oc, oclock, run):
    spec = oc.cache / "packages" / "opencode-foo@1.0.0"
    spec.mkdir(parents=True)
    oclock(oc, f"npm-install:{spec}")
    doc, _ = check(run, oc)
    assert only_lock(doc)["key"] == f"npm-install:{spec}"


def test_version_comes_from_the_package_json_beside_the_binary_never_run(oc, oclock, run):
    oc.install_opencode("1.18.34")
    oclock(oc, oc.install_key)
    doc, _ = check(run, oc)
    assert doc["opencode"]["version"] == "1.18.34"
    assert doc["opencode"]["version_source"].endswith("opencode-linux-x64/package.json")
    assert doc["opencode"]["startup_keys"] == [oc.install_key]


# -- what cannot be read ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "meta.json is not opencode's"),
        (b"[1, 2]", "meta.json is not opencode's (not a JSON object)"),
        (b" " * (65 * 1024), "meta.json is not opencode's"),
        (None, "meta.json is a FIFO, not a regular file"),
    ],
    ids=["garbage", "not-an-object", "huge", "fifo"],
)
def test_bad_meta_json_is_reported_and_judged_by_the_mtimes(oc, run, content, problem):
    path = oc.lock_dir(oc.install_key)
    path.mkdir(mode=0o700)
    (path / "heartbeat").touch()
    if content is None:
        os.mkfifo(path / "meta.json")
    else:
        (path / "meta.json").write_bytes(content)
    started = time.monotonic()
    doc, code = check(run, oc)
    assert time.monotonic() - started < 5, "a FIFO must never be opened for reading"
    got = only_lock(doc)
    assert got["problem"].startswith(problem) and got["pid"] is None
    # Fresh, and nobody is known to refresh it: a new instance waits until it turns stale.
    assert code == 4 and got["blocks"] and got["state"] == "held"


def test_unreadable_lock_directory_is_unknown_not_clear(as_nobody, public_dir):
    env = OcEnv(public_dir)
    for d in public_dir.rglob("*"):
        d.chmod(0o755)
    path = env.lock_dir(env.install_key)
    path.mkdir(mode=0o700)  # as opencode makes it: only its owner (root here) can look inside
    (path / "heartbeat").touch()
    (path / "meta.json").write_text("{}")
    proc = subprocess.run(
        [*as_nobody, "check", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        user=NOBODY,
        env=env.env,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    got = only_lock(doc)
    assert got["state"] == "unknown" and got["blocks"] is False
    assert any("whether it blocks a new instance is unknown" in w for w in doc["warnings"])


# -- scope --------------------------------------------------------------------------------------


def test_a_path_elsewhere_reads_nothing_of_opencode(oc, oclock, run, tmp_path):
    oclock(oc, oc.install_key)
    db = make_db(tmp_path / "app.db")
    doc, code = check(run, oc, db)
    assert code == 0 and doc["opencode"] is None and doc["opencode_locks"] == []


def test_opencode_data_dir_as_path_reads_its_locks(oc, oclock, run):
    oclock(oc, oc.install_key)
    doc, code = check(run, oc, oc.data)
    assert code == 4 and len(doc["opencode_locks"]) == 1


def test_no_locks_says_so(oc, run):
    doc, code = check(run, oc)
    assert code == 0 and doc["opencode_locks"] == []
    assert doc["opencode"]["locks_dir"] == str(oc.state / "locks")
    assert "opencode's locks: none in " in run("check", env=oc.env).stdout


# -- snapshot repos -------------------------------------------------------------------------------


def test_index_lock_left_in_a_snapshot_repo_is_a_warning(oc, run):
    repo = oc.data / "snapshot" / "proj" / "worktree"
    repo.mkdir(parents=True)
    (repo / "index.lock").write_bytes(b"")
    doc, code = check(run, oc)
    assert code == 0
    (lock,) = doc["opencode"]["index_locks"]
    assert lock["path"] == str(repo / "index.lock") and lock["openers"] == []
    assert any(
        "takes no snapshot" in w and f"rm {repo / 'index.lock'}" in w for w in doc["warnings"]
    )
    assert (repo / "index.lock").exists()


def test_index_lock_held_open_names_its_process(oc, run):
    repo = oc.data / "snapshot" / "proj" / "worktree"
    repo.mkdir(parents=True)
    (repo / "index.lock").write_bytes(b"")
    code = "import sys; f = open(sys.argv[1]); print('ready', flush=True); sys.stdin.read()"
    git = subprocess.Popen(
        [sys.executable, "-c", code, str(repo / "index.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert git.stdout.readline() == "ready\n"  # type: ignore[union-attr]
        doc, _ = check(run, oc)
        (lock,) = doc["opencode"]["index_locks"]
        assert lock["openers"] == [git.pid]
        assert any(f"held open by pid {git.pid}" in w for w in doc["warnings"])
    finally:
        git.kill()
        git.wait(timeout=10)


# -- workflows ------------------------------------------------------------------------------------


def sqlprobe(env: OcEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SQLPROBE, *args], capture_output=True, text=True, timeout=timeout, env=env.env
    )


def test_wait_returns_when_a_left_behind_lock_turns_stale_and_deletes_nothing(oc, oclock):
    lock = oclock(oc, oc.install_key)
    lock.kill()
    backdate(lock.path, STALE_S - 2)
    stale_at = (lock.path / "heartbeat").stat().st_mtime + STALE_S
    proc = sqlprobe(oc, "wait", "--timeout", "20")
    returned = time.time()
    assert proc.returncode == 0, proc.stderr
    assert returned >= stale_at, "wait returned before the lock was stale"
    assert returned < stale_at + 5, "wait missed the stale moment"
    assert lock.path.is_dir() and (lock.path / "meta.json").exists(), "wait deletes nothing"


def test_wait_gives_up_on_a_held_lock_with_its_reason(oc, oclock):
    lock = oclock(oc, oc.install_key, "--spin")
    proc = sqlprobe(oc, "wait", "--timeout", "1")
    assert proc.returncode == 4
    assert f"pid {lock.pid}" in proc.stderr and "package install lock" in proc.stderr


def test_run_refuses_while_a_lock_blocks_and_runs_nothing(oc, oclock, tmp_path):
    lock = oclock(oc, oc.install_key, "--spin")
    marker = tmp_path / "ran"
    proc = sqlprobe(oc, "run", "--", "touch", str(marker))
    assert proc.returncode == 4 and not marker.exists()
    assert proc.stderr.startswith("sqlprobe: not running touch: pid ")
    assert f"pid {lock.pid}" in proc.stderr


def test_isolate_does_not_start_a_run_into_a_held_lock(oc, oclock, tmp_path):
    oclock(oc, oc.install_key, "--spin")
    marker = tmp_path / "ran"
    proc = sqlprobe(oc, "run", "--isolate", "--", "touch", str(marker))
    assert proc.returncode == 4 and not marker.exists()
    assert "package install lock" in proc.stderr
    assert "isolated run" not in proc.stderr, "no isolated database was made"


def test_isolate_with_wait_starts_once_a_left_behind_lock_is_stale(oc, oclock, tmp_path):
    lock = oclock(oc, oc.install_key)
    lock.kill()
    backdate(lock.path, STALE_S - 1)
    marker = tmp_path / "ran"
    proc = sqlprobe(oc, "run", "--isolate", "--wait", "20", "--", "touch", str(marker))
    assert proc.returncode == 0, proc.stderr
    assert marker.exists() and "isolated run" in proc.stderr


def test_isolate_ignores_a_busy_database(oc, holder, tmp_path):
    db = make_db(oc.data / "opencode.db")
    holder(db, "wal-write", "--spin")
    marker = tmp_path / "ran"
    proc = sqlprobe(oc, "run", "--isolate", "--", "touch", str(marker))
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()


# -- diagnose ------------------------------------------------------------------------------------


def test_diagnose_details_the_lock_holder(oc, oclock, run):
    lock = oclock(oc, oc.install_key, "--spin")
    result = run("diagnose", "--json", env=oc.env)
    doc = json.loads(result.stdout)
    assert result.exit_code == 4
    (details,) = [h for h in doc["diagnosis"]["holders"] if h["pid"] == lock.pid]
    assert details["cwd"] and details["parents"], details
    assert details["fds"] is not None


def test_live_holder_whose_heartbeat_stopped_stalls_a_new_instance_until_stale(oc, oclock, run):
    """As measured with opencode 1.18.34: a run whose install hangs stops refreshing it."""
    lock = oclock(oc, oc.install_key, "--spin")
    backdate(lock.path, 45)
    doc, code = check(run, oc)
    got = only_lock(doc)
    assert code == 4 and got["state"] == "held" and got["alive"] is True
    assert 14 <= got["wait_s"] <= 16
    assert "would stall ~15 s until it is stale" in doc["reason"]


def test_model_catalogue_lock_is_recognised_but_never_holds_a_run_up(oc, oclock, run):
    lock = oclock(oc, f"models-dev:{oc.cache / 'models.json'}", "--spin")
    doc, code = check(run, oc)
    assert code == 0
    got = only_lock(doc)
    assert got["state"] == "held" and got["pid"] == lock.pid and not got["blocks"]
    assert 'then fails "Timed out waiting for lock: models-dev:' in got["reason"]
    assert "opencode's model catalogue lock for " in got["reason"]
