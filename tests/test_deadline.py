"""`--timeout`: check answers by its deadline whatever the filesystem or the holders do."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import is_root, make_db, wait_until

pytestmark = pytest.mark.process  # forked workers, subprocesses and a FUSE mount

MS_NOSUID, MS_NODEV = 0x2, 0x4
# The deadline is the point; this margin only absorbs interpreter start-up on a loaded machine.
MARGIN_S = 3.0


@pytest.fixture
def hung_dir(tmp_path: Path) -> Iterator[Path]:
    """A FUSE mount whose daemon never answers: every stat or open under it blocks.

    Made by opening /dev/fuse and mounting it by hand, with nobody reading the requests; closing
    the descriptor at teardown aborts the connection and releases whoever is blocked.
    """
    if not is_root():
        pytest.skip("mounting a FUSE filesystem needs root")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine")
    mnt = tmp_path / "hung"
    mnt.mkdir()
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"sqlprobe-hang", bytes(mnt), b"fuse.sqlprobe-hang", MS_NOSUID | MS_NODEV, opts):
        err = ctypes.get_errno()
        os.close(fd)
        pytest.skip(f"cannot mount a FUSE filesystem here: {os.strerror(err)}")
    try:
        yield mnt
    finally:
        os.close(fd)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def sqlprobe(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sqlprobe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return proc, time.monotonic() - started


def test_hung_filesystem_is_an_error_by_the_deadline(hung_dir):
    proc, elapsed = sqlprobe("check", str(hung_dir / "opencode.db"), "--timeout", "1")
    assert elapsed < 1 + MARGIN_S
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("sqlprobe: error: no answer within the 1 s timeout: stuck ")
    assert "hung filesystem" in proc.stderr


def test_hung_default_data_dir_gives_a_json_error_by_the_deadline(hung_dir):
    env = {**os.environ, "XDG_DATA_HOME": str(hung_dir)}
    env.pop("OPENCODE_DB", None)
    proc, elapsed = sqlprobe("check", "--json", "--timeout", "1", env=env)
    assert elapsed < 1 + MARGIN_S
    doc = json.loads(proc.stdout)
    assert (proc.returncode, doc["verdict"]) == (6, "error")
    assert doc["timeout"] == {"seconds": 1.0, "cut_short": ["everything"]}
    assert f"resolving {hung_dir}/opencode" in doc["reason"]


def test_window_is_cut_short_by_the_timeout_and_the_verdict_says_so(tmp_path, holder):
    db = make_db(tmp_path / "opencode.db")
    holder(db, "wal-write", "--spin")
    proc, elapsed = sqlprobe("check", str(db), "--window", "5", "--timeout", "1", "--json")
    doc = json.loads(proc.stdout)
    assert elapsed < 1 + MARGIN_S
    assert proc.returncode == 4, doc["reason"]
    assert doc["timeout"]["cut_short"][0].startswith("the window (")
    assert "timeout cut short the window (" in doc["reason"]
    assert doc["window"]["seconds"] < 1


def test_a_window_within_the_timeout_is_not_cut(tmp_path, holder, check_json):
    db = make_db(tmp_path / "opencode.db")
    holder(db, "wal-write", "--spin")
    doc, code = check_json(db, "--window", "0.2", "--timeout", "3")
    assert code == 4
    assert doc["timeout"]["cut_short"] == [] and "cut short" not in doc["reason"]
    assert doc["window"]["seconds"] == 0.2


# -- the worker process (deadline.run_until under the command line) -----------------------------


@pytest.fixture
def processes() -> Iterator[None]:
    from sqlprobe.system import deadline

    deadline.use_processes(True)
    yield
    deadline.use_processes(False)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_a_worker_that_overruns_is_killed_and_its_last_stage_is_known(processes):
    from sqlprobe.system.deadline import Deadline, run_until

    read_end, write_end = os.pipe()
    stages = Deadline(None)

    def work() -> None:
        stages.stage = "reading something that never answers"
        os.write(write_end, b"%d\n" % os.getpid())
        time.sleep(60)

    job = run_until(work, 0.5, deadline=stages)
    os.close(write_end)
    worker = int(os.read(read_end, 64))
    os.close(read_end)
    assert not job.done.is_set()
    assert stages.stage == "reading something that never answers"  # sent up by the worker
    # SIGKILLed at the deadline: gone at once.
    wait_until(lambda: not _alive(worker), "the worker was not killed", 10)


def test_a_workers_value_exception_and_descriptors_come_back(processes, tmp_path):
    from sqlprobe.system.deadline import Handed, run_until, within

    assert within(lambda: {"pid": os.getpid()}, 5, "x")["pid"] != os.getpid()
    job = run_until(lambda: 1 / 0, 5)
    with pytest.raises(ZeroDivisionError):
        job.get()
    (tmp_path / "f").write_text("handed over")
    handed = within(
        lambda: Handed("v", (os.open(tmp_path / "f", os.O_RDONLY),)), 5, "x", hands_fds=True
    )
    assert handed.value == "v"
    assert os.read(handed.fds[0], 100) == b"handed over"  # a descriptor of this process now
    os.close(handed.fds[0])


def test_an_overrun_is_an_error_naming_the_step(processes):
    from sqlprobe.system.deadline import Overrun, within

    with pytest.raises(Overrun, match=r"no answer within 0\.2 s making the queue"):
        within(lambda: time.sleep(60), 0.2, "making the queue")


def test_a_worker_holds_neither_the_callers_output_nor_its_terminal(processes):
    """`$(sqlprobe check)` reads to the end of the output: a worker stuck in the kernel past
    the deadline (a hung FUSE request; tests/test_hangs.py) must not keep it open, and Ctrl-C
    is its parent's to act on."""
    from sqlprobe.system.deadline import within

    def streams() -> tuple[list[str], object]:
        return [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)], signal.getsignal(
            signal.SIGINT
        )

    links, sigint = within(streams, 5, "x")
    assert links == ["/dev/null"] * 3
    assert sigint == signal.SIG_IGN
