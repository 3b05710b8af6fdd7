"""Many sqlprobe processes at once, the main use case: fanned-out wrapped runs.

Each sqlprobe opens the database's files read-only for a moment (and may probe it): another
sqlprobe must never count those as a holder's, nor tell the user to stop one, and together they
must not make a live writer fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_db

pytestmark = pytest.mark.process  # real holders and parallel checks

LOOPS = 8


def _loops(argv: list[str], n: int, times: int, env: dict[str, str] | None = None) -> list[str]:
    """Run `n` shell loops side by side, each running `argv` `times` times; every run's exit code
    and output, one string per run ("CODE|output")."""
    quoted = " ".join(f"'{a}'" for a in argv)
    script = (
        f"for i in $(seq {times}); do out=$({quoted} 2>&1);"
        ' echo "$?|$out" | tr "\\n" " "; echo; done'
    )
    procs = [
        subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(n)
    ]
    try:
        return [line for p in procs for line in p.communicate(timeout=600)[0].splitlines()]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var, sub in (("XDG_STATE_HOME", "state"), ("XDG_CONFIG_HOME", "config")):
        env[var] = str(tmp_path / sub)
    env.pop("XDG_RUNTIME_DIR", None)
    return env


def test_parallel_checks_of_a_quiet_database_are_all_clear(tmp_path):
    db = make_db(tmp_path / "opencode.db")
    runs = _loops([sys.executable, "-m", "sqlprobe", "check", str(db)], LOOPS, 10, _env(tmp_path))
    assert len(runs) == LOOPS * 10
    not_clear = [r for r in runs if not r.startswith("0|")]
    assert not not_clear, f"{len(not_clear)} of {len(runs)}: {not_clear[:3]}"


def test_parallel_wrapped_runs_are_never_refused(tmp_path):
    db = make_db(tmp_path / "opencode.db")
    argv = [sys.executable, "-m", "sqlprobe", "run", str(tmp_path), "--", "true"]
    runs = _loops(argv, 4, 10, _env(tmp_path))
    refused = [r for r in runs if not r.startswith("0|")]
    assert len(runs) == 40 and not refused, f"{len(refused)} refused: {refused[:3]}"
    assert db.exists()


def test_parallel_checks_beside_a_rollback_writer_name_only_the_writer(
    public_dir, holder, as_nobody
):
    db = make_db(public_dir / "opencode.db", wal=False)
    for p in (public_dir, db):
        p.chmod(0o777 if p.is_dir() else 0o666)
    h = holder(db, "rollback-commit-loop")
    runs = _loops([*as_nobody, "check", str(db)], 4, 8)
    named = {int(pid) for run in runs for pid in re.findall(r"\bpid (\d+)", run)}
    assert named <= {h.pid}, f"sqlprobe named other processes: {named - {h.pid}} in {runs[:3]}"
    assert not [r for r in runs if "deleted while" in r], runs
    # The writer's live journal is never called hot (its header read after the lock look).
    assert not [r for r in runs if "hot journal" in r or "journal: hot" in r], runs


@pytest.mark.holder_writes
def test_checks_beside_a_rollback_writer_never_see_a_hot_journal(rollback_db, holder, run):
    holder(rollback_db, "rollback-commit-loop")
    for _ in range(60):
        out = run("check", rollback_db, "--window", "0").stdout
        assert "journal: hot" not in out and "is a hot journal" not in out, out


def test_soak_concurrent_checks_never_make_a_writer_fail(wal_db, holder):
    """8 check loops beside a writer that commits and TRUNCATE-checkpoints with no busy timeout:
    any read of the WAL at the wrong moment makes its checkpoint report busy."""
    h = holder(wal_db, "wal-truncate-loop")
    argv = [sys.executable, "-m", "sqlprobe", "check", "-q", str(wal_db)]
    env = _env(wal_db.parent)
    end = time.monotonic() + 6
    script = " ".join(f"'{a}'" for a in argv)
    procs = [
        subprocess.Popen(
            ["sh", "-c", f"while [ $(date +%s) -lt {int(time.time()) + 6} ]; do {script}; done"],
            env=env,
        )
        for _ in range(LOOPS)
    ]
    try:
        for p in procs:
            p.wait(timeout=max(1, end - time.monotonic()) + 30)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    h.proc.stdin.write("report\n")
    h.proc.stdin.flush()
    stats = h.proc.stdout.readline().split()
    assert stats[0] == "stats", stats
    commits, busy, failed = map(int, stats[1:])
    assert commits > 100  # the writer really ran beside the checks
    assert (busy, failed) == (0, 0), f"{busy} busy checkpoints, {failed} failed writes"
