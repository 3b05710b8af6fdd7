"""`--timeout`: check answers by its deadline whatever the filesystem or the holders do."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import is_root, make_db

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
