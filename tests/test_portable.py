"""The portable backend (psutil, os.stat, F_GETLK) against real processes on Linux, beside the
Linux backend's answers for the same processes; its selection by SQLPROBE_BACKEND."""

from __future__ import annotations

import json
import os
import pickle
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_db, wait_until

from sqlprobe import system
from sqlprobe.errors import NoSuchProcess
from sqlprobe.model import FileKey
from sqlprobe.system.linux import LinuxBackend
from sqlprobe.system.portable import PortableBackend, state_letter

SQLPROBE = [sys.executable, "-m", "sqlprobe"]


@pytest.fixture
def portable() -> PortableBackend:
    return PortableBackend()


@pytest.fixture
def linux() -> LinuxBackend:
    return LinuxBackend()


def names(db: Path) -> set[str]:
    return {db.name, f"{db.name}-wal", f"{db.name}-shm"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SQLPROBE, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def with_backend(name: str) -> dict[str, str]:
    return {**os.environ, "SQLPROBE_BACKEND": name}


# -- the Protocol and the selection (no process) ----------------------------------------------


def test_the_variable_chooses_the_backend_at_call_time(monkeypatch):
    monkeypatch.setenv("SQLPROBE_BACKEND", "portable")
    assert isinstance(system.backend(), PortableBackend)
    monkeypatch.setenv("SQLPROBE_BACKEND", "linux")
    assert isinstance(system.backend(), LinuxBackend)
    monkeypatch.setenv("SQLPROBE_BACKEND", "")  # empty: as unset
    assert system.chosen() == ("linux" if sys.platform.startswith("linux") else "portable")
    monkeypatch.delenv("SQLPROBE_BACKEND")
    assert system.chosen() == ("linux" if sys.platform.startswith("linux") else "portable")
    assert system.chosen({"SQLPROBE_BACKEND": "portable"}) == "portable"
    # A /proc tree of a test's own is the Linux backend's, whatever the variable says.
    monkeypatch.setenv("SQLPROBE_BACKEND", "portable")
    assert isinstance(system.backend("/elsewhere"), LinuxBackend)


def test_an_unknown_backend_is_a_typed_error_naming_the_allowed_values(monkeypatch):
    monkeypatch.setenv("SQLPROBE_BACKEND", "macos")
    with pytest.raises(system.UnknownBackend) as err:
        system.backend()
    assert str(err.value) == "SQLPROBE_BACKEND='macos' names no backend: use linux or portable"
    assert isinstance(err.value, system.SqlprobeError)
    again = pickle.loads(pickle.dumps(err.value))  # as a forked worker sends it up
    assert (type(again), str(again)) == (system.UnknownBackend, str(err.value))


def test_psutil_states_are_ps_letters():
    assert [state_letter(s) for s in ("running", "sleeping", "disk-sleep", "stopped")] == list(
        "RSDT"
    )
    assert (state_letter("tracing-stop"), state_letter("zombie"), state_letter("new")) == (
        "t",
        "Z",
        "?",
    )


def test_own_files_include_a_file_this_test_opened(tmp_path, portable):
    path = tmp_path / "mine"
    path.write_text("x")
    with path.open() as f:
        st = os.fstat(f.fileno())
        assert FileKey(st.st_dev, st.st_ino) in portable.own_files()
        assert portable.fd_key(portable.self_pid, f.fileno()) == FileKey(st.st_dev, st.st_ino)
    assert FileKey(st.st_dev, st.st_ino) not in portable.own_files()


def test_the_platform_facts(portable):
    assert portable.kernel_version() == platform.release()
    assert any(m.mount_point == "/" for m in portable.mounts())
    assert portable.locks() is None
    assert portable.fd_locks(portable.self_pid, 0) is None
    assert portable.stack(portable.self_pid) is None


def test_paths_that_name_descriptors_are_this_processs_own(tmp_path, portable):
    assert portable.names_descriptor("/dev/fd/3") and portable.names_descriptor("/dev/stdin")
    assert not portable.names_descriptor("/srv/opencode.db")
    assert not portable.names_descriptor("/dev/fd/x")
    assert portable.pinned("/dev/stdin", 42) == "/dev/stdin"  # no path names another's
    path = tmp_path / "f"
    path.write_text("x")
    with path.open() as f:
        # Linux's /dev/fd/N is a link; macOS's are no links (None there).
        assert portable.descriptor_link(f"/dev/fd/{f.fileno()}") == str(path)
    assert portable.descriptor_link("/srv/opencode.db") is None


# -- real processes ----------------------------------------------------------------------------


@pytest.mark.process
def test_finds_a_holders_database_wal_and_shm_as_the_linux_backend_does(
    wal_db, holder, portable, linux
):
    h = holder(wal_db, "wal-idle")
    mine = sorted(d for d in portable.find_fds(names(wal_db)).found if d.pid == h.pid)
    theirs = sorted(d for d in linux.find_fds(names(wal_db)).found if d.pid == h.pid)
    assert mine == theirs
    assert {Path(d.target).name for d in mine} == names(wal_db)
    for d in mine:
        st = os.stat(d.target)
        assert portable.fd_key(h.pid, d.fd) == FileKey(st.st_dev, st.st_ino)
        assert portable.fd_key(h.pid, d.fd).ino == linux.fd_key(h.pid, d.fd).ino
        assert portable.descriptor(h.pid, d.fd) == linux.descriptor(h.pid, d.fd)
    # Every file of the holder that has a path, as the Linux backend lists them (it lists pipes
    # and files deleted while held too: pytest's capture file is one).
    files = [d for d in linux.fds(h.pid) if d.target.startswith("/") and not d.deleted]
    assert portable.fds(h.pid) == files


@pytest.mark.process
def test_thorough_scan_finds_the_database_under_another_name(tmp_path, holder, portable):
    db = make_db(tmp_path / "opencode.db")
    other = tmp_path / "other.db"
    os.link(db, other)
    h = holder(other, "wal-idle")
    st = os.stat(db)
    assert not [d for d in portable.find_fds({db.name}).found if d.pid == h.pid]
    found = portable.find_fds({db.name}, {FileKey(st.st_dev, st.st_ino)}).found
    assert [(d.pid, d.target) for d in found if d.pid == h.pid] == [(h.pid, str(other))]


@pytest.mark.process
def test_samples_give_each_thread_the_process_state_and_no_wait(wal_db, holder, portable, linux):
    h = holder(wal_db, "wal-idle")
    h.stop()  # a state that holds still: T in both
    mine, theirs = portable.sample(h.pid, threads=True), linux.sample(h.pid, threads=True)
    assert (mine.pid, mine.state, mine.ppid) == (theirs.pid, theirs.state, theirs.ppid)
    assert mine.state == "T"
    assert abs(mine.cpu_s - theirs.cpu_s) < 0.05
    assert {t.tid for t in mine.threads} == {t.tid for t in theirs.threads}
    assert len(mine.threads) == 2  # the holder's main thread and its stdin reader
    assert all((t.state, t.wchan, t.waiting) == ("T", "", "") for t in mine.threads)
    assert portable.sample(h.pid).threads == ()
    # The start time is the process's identity: the same at every read.
    assert portable.sample(h.pid).start_ticks == mine.start_ticks


@pytest.mark.process
def test_age_start_and_process_facts_agree_with_the_linux_backend(wal_db, holder, portable, linux):
    h = holder(wal_db, "wal-idle")
    mine, theirs = portable.sample(h.pid), linux.sample(h.pid)
    assert abs(portable.age(mine) - linux.age(theirs)) < 1.5  # btime is in whole seconds
    assert abs(portable.started_at(mine) - linux.started_at(theirs)) < 1.5
    assert portable.cmdline(h.pid) == linux.cmdline(h.pid)
    assert portable.cmdline(h.pid).endswith(f"holder.py {wal_db} wal-idle")
    assert portable.uid(h.pid) == linux.uid(h.pid) == os.geteuid()
    assert portable.exe(h.pid) == linux.exe(h.pid)
    assert portable.cwd(h.pid) == linux.cwd(h.pid)
    assert portable.environ(h.pid) == linux.environ(h.pid)
    assert h.pid in portable.children(os.getpid())
    assert portable.children(h.pid) == linux.children(h.pid) == []
    assert portable.exists(h.pid)
    assert not portable.is_sqlprobe(h.pid)
    h.end()
    assert not portable.exists(h.pid)
    with pytest.raises(NoSuchProcess):
        portable.sample(h.pid)
    with pytest.raises(NoSuchProcess):
        portable.fds(h.pid)


@pytest.mark.process
def test_a_zombie_exists_holds_nothing_and_is_its_parents_unreaped_child(portable, linux):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_until(lambda: linux.sample(child.pid).state == "Z", "child did not exit")
        assert portable.exists(child.pid)
        assert portable.sample(child.pid).state == "Z"
        assert child.pid in portable.zombie_children(os.getpid())
        assert child.pid in linux.zombie_children(os.getpid())
        assert portable.cmdline(child.pid) == linux.cmdline(child.pid)  # [python3...]
        assert portable.fds(child.pid) == []
    finally:
        child.wait()


@pytest.mark.process
def test_a_sqlprobe_process_is_known_by_its_name(tmp_path, portable):
    script = tmp_path / "sqlprobe"  # its name is sqlprobe, as the console script's is
    script.write_text(
        f"#!{sys.executable}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()\n"
    )
    script.chmod(0o755)
    proc = subprocess.Popen([str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"  # type: ignore[union-attr]
        assert portable.is_sqlprobe(proc.pid)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]


@pytest.mark.process
def test_a_file_deleted_while_held_is_seen_by_the_linux_backend_only(
    wal_db, holder, portable, linux
):
    h = holder(wal_db, "wal-idle")
    shm = Path(f"{wal_db}-shm")
    shm.unlink()
    assert [d.deleted for d in linux.find_fds(names(wal_db)).found if d.pid == h.pid].count(True)
    # psutil drops a `path (deleted)` link (it is no regular file by that name): not seen.
    assert not [d for d in portable.find_fds(names(wal_db)).found if d.pid == h.pid and d.deleted]
    assert str(shm) not in {d.target for d in portable.fds(h.pid)}


# -- the CLI on the portable backend -----------------------------------------------------------


@pytest.mark.process
def test_an_unknown_backend_is_one_line_and_exit_2(wal_db):
    done = cli("check", str(wal_db), env=with_backend("bogus"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert (
        done.stderr
        == "sqlprobe: SQLPROBE_BACKEND='bogus' names no backend: use linux or portable\n"
    )


@pytest.mark.process
def test_a_wal_writer_is_busy_on_both_backends_and_getlk_names_it(wal_db, holder):
    h = holder(wal_db, "wal-write", "--spin")
    docs = {}
    for name in ("linux", "portable"):
        done = cli("check", "--json", str(wal_db), env=with_backend(name))
        docs[name] = json.loads(done.stdout)
        assert done.returncode == 4, (name, done.stderr)
    linux, portable = docs["linux"], docs["portable"]
    assert linux["verdict"] == portable["verdict"] == "busy"
    assert (linux.get("backend"), portable.get("backend")) in {("linux", "portable"), (None, None)}
    blockers = [
        {k: b[k] for k in ("pid", "file", "lock", "mode", "stuck")}
        for b in portable["databases"][0]["blockers"]
    ]
    assert blockers == [
        {"pid": h.pid, "file": "shm", "lock": "wal-write", "mode": "exclusive", "stuck": None}
    ]
    assert blockers[0] in [
        {k: b[k] for k in ("pid", "file", "lock", "mode", "stuck")}
        for b in linux["databases"][0]["blockers"]
    ]
    # With no lock table, every lock is F_GETLK's, and each names the holder.
    (mine,) = portable["databases"][0]["holders"]
    assert mine["pid"] == h.pid and mine["files"] == ["db", "wal", "shm"]
    assert {lk["source"] for lk in mine["locks"]} == {"getlk"}
    (theirs,) = linux["databases"][0]["holders"]
    as_names = {(lk["file"], lk["lock"], lk["mode"]) for lk in mine["locks"]}
    assert as_names == {(lk["file"], lk["lock"], lk["mode"]) for lk in theirs["locks"]}
    assert portable["reason"] == linux["reason"]


@pytest.mark.process
def test_getlk_names_one_holder_per_byte(wal_db, holder):
    """Two idle readers share the database's SHARED and the -shm's DMS bytes: F_GETLK answers
    one of them per byte (the Linux backend lists both); both are holders all the same, as
    openers of the files, and the verdict is the same."""
    first, second = holder(wal_db, "wal-idle"), holder(wal_db, "wal-idle")
    docs = {}
    for name in ("linux", "portable"):
        done = cli("check", "--json", str(wal_db), env=with_backend(name))
        docs[name] = json.loads(done.stdout)
    assert docs["linux"]["verdict"] == docs["portable"]["verdict"] == "shared"
    for name, doc in docs.items():
        holders = doc["databases"][0]["holders"]
        assert sorted(hd["pid"] for hd in holders) == sorted([first.pid, second.pid]), name
    lockers = {
        (lk["file"], lk["lock"], hd["pid"])
        for hd in docs["portable"]["databases"][0]["holders"]
        for lk in hd["locks"]
    }
    for byte in (("db", "shared"), ("shm", "dms")):
        pids = {pid for f, n, pid in lockers if (f, n) == byte}
        assert len(pids) == 1 and pids <= {first.pid, second.pid}, (byte, lockers)


@pytest.mark.process
def test_a_check_on_linux_never_imports_psutil(wal_db):
    code = (
        "import sys; from sqlprobe.cli import main; sys.argv = ['sqlprobe', 'check', '--quiet',"
        f" {str(wal_db)!r}];\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'psutil' not in sys.modules and 'sqlprobe.system.portable' not in sys.modules"
    )
    env = {k: v for k, v in os.environ.items() if k != "SQLPROBE_BACKEND"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
