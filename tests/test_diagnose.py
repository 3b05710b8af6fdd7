"""`sqlprobe diagnose`: one command for what the original hang report gathered by hand."""

from __future__ import annotations

import json
import os

import pytest
from conftest import make_db

from sqlprobe.system.backend import Mount
from sqlprobe.system.procparse import parse_mountinfo
from sqlprobe.text import redact_command, safe
from sqlprobe.workflows.diagnose import (
    fd_kind,
    fs_warning,
    is_log_of,
    is_wsl1,
    mount_of,
    opencode_environment,
)

LAST_LOG_LINE = "INFO  2026-11-25T10:00:01 +480ms service=plugin name=auth loading internal plugin"


@pytest.fixture
def opencode_like(tmp_path, holder):
    """A data dir whose opencode-like holder (a stuck writer) has a log open under log/."""
    data, db, log = _data_dir(tmp_path)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "share"), "OPENCODE_CONFIG": "/x.json"}
    h = holder(db, "wal-write", "--futex", "--log", str(log), env=env)
    return data, db, log, h


def _data_dir(tmp_path):
    """An opencode data dir with a database and a log/ dir: (data dir, database, log file)."""
    data = tmp_path / "share" / "opencode"
    (data / "log").mkdir(parents=True)
    return data, make_db(data / "opencode.db"), data / "log" / "2026-11-25T100000.log"


@pytest.mark.process
def test_diagnose_shows_the_holders_log_environment_and_files(opencode_like, run):
    data, db, log, h = opencode_like
    result = run("diagnose", data, "--json")
    assert result.exit_code == 5  # check's verdict: the writer is parked on a futex
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "stuck" and "futex" in json.dumps(doc["databases"][0]["holders"])
    (details,) = doc["diagnosis"]["holders"]
    assert details["pid"] == h.pid
    (logged,) = details["logs"]
    assert logged["path"] == str(log) and logged["last_lines"][-1] == LAST_LOG_LINE
    assert 0 <= logged["age_s"] < 60
    assert details["environment"]["XDG_DATA_HOME"] == str(data.parent)
    assert details["environment"]["OPENCODE_CONFIG"] == "/x.json"
    assert any(f["target"] == str(db) and f["kind"] == "file" for f in details["fds"])
    assert details["parents"][0]["pid"] == os.getpid()  # started by this test
    assert details["cwd"] == os.getcwd()
    (fs,) = doc["diagnosis"]["filesystems"]
    assert fs["path"] == str(data) and str(data).startswith(fs["mount_point"])


@pytest.mark.process
def test_diagnose_human_report_has_the_last_log_line(opencode_like, run):
    data, _db, log, h = opencode_like
    out = run("diagnose", data).stdout
    assert f"\npid {h.pid}\n" in out
    assert f"  log: {log} (" in out and f"    {LAST_LOG_LINE}\n" in out
    assert "filesystem of " in out and "open files (" in out


@pytest.mark.process
def test_diagnose_of_a_clear_database_has_no_holders(wal_db, run):
    result = run("diagnose", wal_db, "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and doc["diagnosis"]["holders"] == []


@pytest.mark.parametrize(
    ("fstype", "warned"),
    [
        ("ext4", False),
        ("tmpfs", False),
        ("overlay", False),
        ("nfs4", True),
        ("cifs", True),
        ("smb3", True),
        ("9p", True),
        ("fuse.sshfs", True),
        ("fuseblk", True),
    ],
)
def test_filesystems_where_posix_locks_are_unreliable_are_warned(fstype, warned):
    assert (fs_warning(fstype, wsl1=False) is not None) == warned


def test_wsl1_is_warned_and_wsl2_is_not():
    assert is_wsl1("Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com)")
    assert not is_wsl1("Linux version 5.15.90.1-microsoft-standard-WSL2")
    assert fs_warning("ext4", wsl1=True)


def test_mount_of_picks_the_longest_mount_point_and_unescapes():
    text = (
        "22 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:40 / /home/me/my\\040data rw - nfs4 srv:/data rw\n"
        "31 22 0:41 / /home rw - tmpfs tmpfs rw\n"
    )
    mounts = parse_mountinfo(text)
    assert mounts[1] == Mount("/home/me/my data", "nfs4", "srv:/data")
    assert mount_of("/home/me/my data/opencode", mounts).fstype == "nfs4"
    assert mount_of("/home/me/my database", mounts).fstype == "tmpfs"
    assert mount_of("/var/lib", mounts).fstype == "ext4"


def test_fd_kinds_and_log_paths():
    assert [fd_kind(*x) for x in (("/a/b",), ("/a/b", True), ("socket:[1]",), ("pipe:[2]",))] == [
        "file",
        "deleted",
        "socket",
        "pipe",
    ]
    assert fd_kind("anon_inode:[eventpoll]") == "anon_inode" and fd_kind("/dev/null") == "device"
    assert is_log_of("/d/opencode/log/2026.log", "/d/opencode")
    assert not is_log_of("/d/opencode/log/sub/2026.log", "/d/opencode")


# -- what diagnose must not print: secrets, bidi controls (issue 13, item 8) ---------------------


def holder_details(doc, pid):
    """The diagnosis of holder `pid` (other processes may hold the database too)."""
    return next(d for d in doc["diagnosis"]["holders"] if d["pid"] == pid)


SECRETS = ("hunter2-secret", "sk-secret", "my-token-value", "tok-argv-secret", "pw-argv-secret")


@pytest.fixture
def holder_with_secrets(tmp_path, holder):
    """An opencode-like holder with secrets in its environment and on its command line."""
    data, db, log = _data_dir(tmp_path)
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "share"),
        "OPENCODE_SERVER_PASSWORD": "hunter2-secret",
        "OPENCODE_API_KEY": "sk-secret",
        "MY_TOKEN": "my-token-value",
    }
    args = ("--log", str(log), "--token", "tok-argv-secret", "--password=pw-argv-secret")
    h = holder(db, "wal-idle", *args, env=env)
    return data, h


@pytest.mark.process
def test_diagnose_never_prints_a_holders_secrets(holder_with_secrets, run):
    data, h = holder_with_secrets
    text = run("diagnose", data).stdout
    raw_json = run("diagnose", data, "--json").stdout
    for out in (text, raw_json):
        assert not [s for s in SECRETS if s in out], out
    assert "OPENCODE_SERVER_PASSWORD=(set, redacted)" in text
    assert f"XDG_DATA_HOME={data.parent}" in text
    details = holder_details(json.loads(raw_json), h.pid)
    env = details["environment"]
    assert env["OPENCODE_SERVER_PASSWORD"] == env["OPENCODE_API_KEY"] == "(set, redacted)"
    assert env["XDG_DATA_HOME"] == str(data.parent) and "MY_TOKEN" not in env
    assert "--token (redacted) --password=(redacted)" in text  # the command line, in check's table


@pytest.mark.process
def test_a_log_line_with_bidi_controls_is_printed_escaped(tmp_path, holder, run):
    data = tmp_path / "share" / "opencode"
    (data / "log").mkdir(parents=True)
    db = make_db(data / "opencode.db")
    log = data / "log" / "2026-11-25T10\u2066.log"  # a file name with one too
    log.write_text("INFO  evil \u202etxt.exe\u2069 line\n")  # the holder appends to it
    h = holder(db, "wal-idle", "--log", str(log))
    out = run("diagnose", data).stdout
    assert f"\npid {h.pid}\n" in out
    assert "    INFO  evil \\u202etxt.exe\\u2069 line\n" in out
    assert not set(out) & {"\u202e", "\u2066", "\u2069"}
    raw_json = run("diagnose", data, "--json").stdout
    assert not set(raw_json) & {"\u202e", "\u2066", "\u2069"}  # json.dumps escapes them
    details = holder_details(json.loads(raw_json), h.pid)
    assert details["logs"][0]["path"] == str(log)  # JSON stays faithful
    assert "INFO  evil \u202etxt.exe\u2069 line" in details["logs"][0]["last_lines"]


# name: (value, what is shown of it; None: the variable is not shown at all)
ENVIRONMENT = {
    "XDG_CONFIG_HOME": ("/home/me/.config", "/home/me/.config"),
    "XDG_CACHE_HOME": ("/home/me/.cache", "/home/me/.cache"),
    "HOME": ("/home/me", "/home/me"),
    "OPENCODE_DB": ("work.db", "work.db"),
    "OPENCODE_CONFIG_DIR": ("/etc/oc", "/etc/oc"),
    "OPENCODE_DISABLE_AUTOUPDATE": ("true", "true"),
    "OPENCODE_CLIENT": ("cli", "(set)"),
    "OPENCODE_CONFIG_CONTENT": ('{"provider": {}}', "(set)"),
    "OPENCODE_CONFIG": ('{"apiKey": "sk-x"}', "(set)"),  # a path variable, no path in it
    "OPENCODE_SECRET_DIR": ("/run/secret-dir", "(set, redacted)"),  # path-like, and a secret
    "OPENCODE_AUTH_PATH": ("/run/auth.json", "(set, redacted)"),
    "OPENCODE_SERVER_PASSWORD": ("true", "(set, redacted)"),
    "opencode_api_key": ("sk-lower", None),  # not an opencode variable
    "GITHUB_TOKEN": ("ghp_x", None),
    "PATH": ("/usr/bin", None),
}


def test_environment_shows_paths_and_flags_and_redacts_secrets():
    env = opencode_environment({name: value for name, (value, _) in ENVIRONMENT.items()})
    expected = {name: shown for name, (_, shown) in ENVIRONMENT.items() if shown is not None}
    assert env == expected


def test_secret_options_and_assignments_are_redacted_from_a_command_line():
    command = (
        "sh -c OPENAI_API_KEY=sk-a opencode serve --password hunter2 --api-key=sk-b"
        " --Auth-Token 'x y' -m local/fake --port 4096 --keep"
    )
    assert redact_command(command) == (
        "sh -c OPENAI_API_KEY=(redacted) opencode serve --password (redacted)"
        " --api-key=(redacted) --Auth-Token (redacted) -m local/fake --port 4096 --keep"
    )
    assert redact_command("opencode run --no-auth -c") == "opencode run --no-auth -c"


def test_bidi_controls_are_made_visible():
    text = "a\u202ab\u202bc\u202cd\u202de\u202ef\u2066g\u2067h\u2068i\u2069j\u200ek\u200fl\u061cm"
    assert safe(text) == (
        "a\\u202ab\\u202bc\\u202cd\\u202de\\u202ef\\u2066g\\u2067h\\u2068i\\u2069j\\u200ek"
        "\\u200fl\\u061cm"
    )
    assert safe("caf\u00e9 \u2192 ok") == "caf\u00e9 \u2192 ok"  # other non-ASCII stays


def test_a_byte_that_is_not_utf8_and_a_lone_surrogate_are_shown_not_crashed_on():
    # A file name's byte 0xff (surrogate-escaped), and a lone surrogate as a JSON file of
    # another process (a lock's meta.json) can hold: one rule for the text, the shell and JSON.
    assert safe("a\udcffb") == "a\\xffb"
    assert safe("x\ud800\x1b") == "x\\ud800\\x1b"
