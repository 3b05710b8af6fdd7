"""PATHs the user types (symlinks in a data dir, typos, `-`) and what the README promises about
them; options and messages that the README documents (diagnose -q, notes, several databases,
colour)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import make_db, on_pty

pytestmark = pytest.mark.process  # real holders, the CLI's forked workers, a pty

WITHOUT_DB = "exists without its database"


def opencode_env(tmp_path: Path) -> dict[str, str]:
    """opencode's data dir and state dir under tmp_path; OPENCODE_DB unset."""
    return {
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "OPENCODE_DB": "",
    }


# -- item 5: symlinked databases in a data dir ----------------------------------------------


def test_symlinked_opencode_db_in_a_data_dir_is_its_real_file(tmp_path, holder, check_json):
    real = make_db(tmp_path / "elsewhere.db")
    data = tmp_path / "dir"
    data.mkdir()
    (data / "opencode.db").symlink_to(real)
    h = holder(real, "wal-idle")
    doc, code = check_json(data)
    as_file, _ = check_json(data / "opencode.db")
    assert (doc["verdict"], code) == ("shared", 3), doc["reason"]
    assert [d["path"] for d in doc["databases"]] == [str(real)]
    assert [d["path"] for d in as_file["databases"]] == [str(real)]  # as for PATH = the link
    assert [h2["pid"] for h2 in doc["databases"][0]["holders"]] == [h.pid]


def test_symlinked_channel_database_in_a_data_dir_is_its_real_file(tmp_path, check_json):
    real = make_db(tmp_path / "dev.db")
    data = tmp_path / "dir"
    data.mkdir()
    make_db(data / "opencode.db")
    (data / "opencode-dev.db").symlink_to(real)
    doc, code = check_json(data)
    assert (doc["verdict"], code) == ("clear", 0), doc["reason"]
    assert sorted(d["path"] for d in doc["databases"]) == sorted(
        [str(real), str(data / "opencode.db")]
    )


def test_symlink_loop_as_opencode_db_in_a_data_dir_says_so(tmp_path, check_json):
    data = tmp_path / "dir"
    data.mkdir()
    (data / "opencode.db").symlink_to(data / "loop")
    (data / "loop").symlink_to(data / "opencode.db")
    doc, code = check_json(data)
    assert (doc["verdict"], code) == ("error", 6)
    assert "too many levels of symbolic links" in doc["reason"], doc["reason"]


# -- item 6: a mistyped PATH ----------------------------------------------------------------


def test_explicit_path_in_a_missing_directory_is_an_error_naming_it(tmp_path, run):
    result = run("check", tmp_path / "typo" / "opencode.db")
    assert result.exit_code == 6, result.output
    assert result.stdout == ""
    assert result.stderr == (
        f"sqlprobe: error: {tmp_path}/typo/opencode.db: its directory {tmp_path}/typo does not"
        " exist\n"
    )
    # Its parent exists: a database not created yet, as before.
    assert run("check", tmp_path / "new.db").exit_code == 0


def test_dash_is_not_standard_input(run):
    result = run("check", "-")
    assert result.exit_code == 6, result.output
    assert "/dev/stdin" in result.stderr and result.stderr.startswith("sqlprobe: error: -: ")


# -- item 8: README against behaviour ---------------------------------------------------------


def test_diagnose_quiet_prints_nothing_and_exits_with_the_verdict(wal_db, holder, run):
    holder(wal_db, "wal-idle")
    result = run("diagnose", wal_db, "-q")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "", "")
    assert run("diagnose", wal_db, "-q", "--json").exit_code == 2


@pytest.mark.parametrize("name", ["opencode.db", "opencode-dev.db"])
def test_wal_without_database_warns_for_a_directory(tmp_path, check_json, name):
    (tmp_path / f"{name}-wal").write_bytes(b"")
    as_file, _ = check_json(tmp_path / name)
    doc, code = check_json(tmp_path)
    assert (doc["verdict"], code) == ("clear", 0)
    assert any(WITHOUT_DB in w for w in as_file["warnings"])  # as it did already
    assert any(f"{name}-wal {WITHOUT_DB}" in w for w in doc["warnings"]), doc


def test_wal_without_database_warns_for_the_default_data_dir(tmp_path, check_json):
    env = opencode_env(tmp_path)
    data = tmp_path / "data" / "opencode"
    data.mkdir(parents=True)
    (data / "opencode.db-wal").write_bytes(b"")
    doc, code = check_json(env=env)
    assert (doc["verdict"], code) == ("clear", 0)
    assert any(f"opencode.db-wal {WITHOUT_DB}" in w for w in doc["warnings"]), doc


def test_missing_data_dir_has_a_note_in_the_json_and_the_text(tmp_path, run):
    env = opencode_env(tmp_path)
    data = tmp_path / "data" / "opencode"
    doc = json.loads(run("check", "--json", env=env).stdout)
    text = run("check", env=env).stdout
    assert doc["verdict"] == "clear"
    want = f"{data} does not exist: a new opencode instance would create it"
    assert want in doc.get("note", ""), doc
    assert text.startswith(f"clear: {want}"), text


def test_every_database_that_is_not_clear_is_named(tmp_path, holder, check_json):
    main = make_db(tmp_path / "opencode.db")
    dev = make_db(tmp_path / "opencode-dev.db")
    make_db(tmp_path / "opencode-beta.db")  # clear: not named
    writer = holder(main, "wal-write", "--spin")
    reader = holder(dev, "wal-idle")
    doc, code = check_json(tmp_path)
    assert (doc["verdict"], code) == ("busy", 4), doc["reason"]
    reason = doc["reason"]
    assert str(main) in reason and str(writer.pid) in reason
    assert f"{dev} is shared" in reason and str(reader.pid) in reason
    assert "opencode-beta.db" not in reason


def test_memory_note_has_no_double_colon(run):
    doc = json.loads(run("check", "--json", env={"OPENCODE_DB": ":memory:"}).stdout)
    assert ":memory::" not in doc["reason"] and ":memory::" not in doc["note"]
    assert "nothing on disk to check" in doc["note"]


def test_no_colour_for_a_dumb_terminal(wal_db, holder):
    pytest.importorskip("pty")
    holder(wal_db, "wal-idle")
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    cmd = [sys.executable, "-m", "sqlprobe", "check", str(wal_db)]
    assert "\x1b[" in on_pty(cmd, {**env, "TERM": "xterm"})[1]
    assert "\x1b[" not in on_pty(cmd, {**env, "TERM": "dumb"})[1]
