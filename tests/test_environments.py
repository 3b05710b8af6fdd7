"""What sqlprobe sees from where it runs: another pid namespace, an unprivileged user, a bind mount.

These need root to set up (unshare, setuid, mount); each skips with the reason otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import NOBODY, is_root, make_db

pytestmark = pytest.mark.process  # real holders, and checks run as another user

needs_root = pytest.mark.skipif(not is_root(), reason="needs root to set up (unshare/setuid/mount)")


def sqlprobe_json(argv: list[str], **kwargs) -> tuple[dict, int]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)
    assert proc.returncode not in (1, 2), proc.stderr
    return json.loads(proc.stdout), proc.returncode


# -- another pid namespace ------------------------------------------------------------------------


@needs_root
def test_lock_held_from_outside_the_pid_namespace_is_still_seen(wal_db, holder):
    """Inside a new pid namespace /proc/locks omits the holder; F_GETLK still reports the lock."""
    if not shutil.which("unshare"):
        pytest.skip("unshare(1) is not installed")
    holder(wal_db, "wal-write", "--spin")
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "sqlprobe"]
    doc, code = sqlprobe_json([*argv, "check", str(wal_db), "--json"])
    assert (doc["verdict"], code) == ("busy", 4)
    db = doc["databases"][0]
    assert db["holders"] == []  # invisible from in here
    assert ("wal-write", "getlk", None) in {
        (lk["lock"], lk["source"], lk.get("pid")) for lk in db["unattributed_locks"]
    }
    assert db["blockers"][0]["pid"] is None
    assert doc["reason"].startswith("a process outside this pid namespace")


# -- as an unprivileged user ----------------------------------------------------------------------


def test_unprivileged_user_sees_locks_but_admits_unreadable_processes(
    as_nobody, public_dir, holder
):
    db = make_db(public_dir / "opencode.db")
    h = holder(db, "wal-write", "--spin")  # a root process: its fds are closed to nobody
    for f in public_dir.iterdir():
        f.chmod(0o644)
    doc, code = sqlprobe_json([*as_nobody, "check", str(db), "--json"], user=NOBODY)
    assert (doc["verdict"], code) == ("busy", 4)
    (mine,) = doc["databases"][0]["holders"]
    assert (mine["pid"], mine["fds_readable"], mine["files"]) == (h.pid, False, [])
    assert "wal-write" in {lk["lock"] for lk in mine["locks"]}
    assert doc["uninspected_processes"] > 0
    assert any("could not be inspected" in w for w in doc["warnings"])


def test_unprivileged_user_clear_verdict_admits_what_it_could_not_see(as_nobody, public_dir):
    db = make_db(public_dir / "opencode.db")
    db.chmod(0o644)
    doc, code = sqlprobe_json([*as_nobody, "check", str(db), "--json"], user=NOBODY)
    assert (doc["verdict"], code) == ("clear", 0)
    assert doc["uninspected_processes"] > 0
    assert "could not be inspected" in doc["reason"]


def test_unreadable_database_is_a_one_line_error(as_nobody, public_dir):
    db = make_db(public_dir / "opencode.db")
    db.chmod(0o600)
    proc = subprocess.run(
        [*as_nobody, "check", str(db)], user=NOBODY, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 6
    assert proc.stdout == ""
    assert proc.stderr == f"sqlprobe: error: {db}: permission denied\n"


# -- a bind mount ---------------------------------------------------------------------------------


@needs_root
def test_holder_through_a_bind_mount_is_matched_by_inode(tmp_path, holder, check_json):
    real, bound = tmp_path / "real", tmp_path / "bound"
    real.mkdir()
    bound.mkdir()
    make_db(real / "opencode.db")
    if subprocess.run(["mount", "--bind", str(real), str(bound)], capture_output=True).returncode:
        pytest.skip("bind mounts are not permitted here")
    try:
        h = holder(bound / "opencode.db", "wal-idle")
        try:
            doc, code = check_json(real)
        finally:
            h.end()  # before the umount, which a holder would keep busy
        assert (doc["verdict"], code) == ("shared", 3)
        (mine,) = doc["databases"][0]["holders"]
        assert (mine["pid"], mine["files"]) == (h.pid, ["db", "wal", "shm"])
    finally:
        subprocess.run(["umount", str(bound)], check=False)
