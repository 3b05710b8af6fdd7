"""Which databases a PATH (or opencode's environment) names."""

from __future__ import annotations

import os

import pytest
from conftest import make_db

from sqlprobe.collect.targets import default_target, opencode_data_dir, resolve


def test_data_dir_follows_xdg_data_home_then_home():
    assert opencode_data_dir({"XDG_DATA_HOME": "/x", "HOME": "/h"}) == "/x/opencode"
    assert opencode_data_dir({"HOME": "/h"}) == "/h/.local/share/opencode"
    assert opencode_data_dir({"XDG_DATA_HOME": "rel", "HOME": "/h"}) == "/h/.local/share/opencode"


def test_opencode_db_absolute_relative_and_memory():
    env = {"HOME": "/h"}
    assert default_target({**env, "OPENCODE_DB": "/abs/x.db"}) == "/abs/x.db"
    assert (
        default_target({**env, "OPENCODE_DB": "runs/a.db"}) == "/h/.local/share/opencode/runs/a.db"
    )
    assert default_target(env) == "/h/.local/share/opencode"
    target = resolve(None, {**env, "OPENCODE_DB": ":memory:"})
    assert target.databases == () and "nothing on disk" in (target.note or "")


def test_missing_default_data_dir_means_its_opencode_db(tmp_path):
    target = resolve(None, {"XDG_DATA_HOME": str(tmp_path)})
    assert target.databases == (str(tmp_path / "opencode" / "opencode.db"),)


def test_directory_takes_opencode_db_and_channel_databases_only(tmp_path):
    for name in ("opencode.db", "opencode-beta.db", "other.db"):
        make_db(tmp_path / name)
    (tmp_path / "opencode-beta.db-wal").write_bytes(b"")
    target = resolve(str(tmp_path), {})
    assert target.databases == (str(tmp_path / "opencode-beta.db"), str(tmp_path / "opencode.db"))


def test_directory_without_opencode_db_takes_every_sqlite_file(tmp_path):
    make_db(tmp_path / "a.sqlite")
    make_db(tmp_path / "b")
    (tmp_path / "notes.txt").write_text("SQLite is nice")
    (tmp_path / "sub").mkdir()
    make_db(tmp_path / "sub" / "deep.db")  # not recursive
    os.mkfifo(tmp_path / "fifo")  # must not be opened for reading, nor hang
    assert resolve(str(tmp_path), {}).databases == (
        str(tmp_path / "a.sqlite"),
        str(tmp_path / "b"),
    )


def test_empty_directory_is_a_note(tmp_path):
    target = resolve(str(tmp_path), {})
    assert target.databases == () and "would create opencode.db" in (target.note or "")


def test_symlinked_file_resolves_to_real_path(tmp_path):
    real = make_db(tmp_path / "real.db")
    (tmp_path / "link.db").symlink_to(real)
    assert resolve(str(tmp_path / "link.db"), {}).databases == (str(real),)


@pytest.mark.process
def test_symlink_loop_is_an_error(tmp_path, check_json):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    doc, code = check_json(tmp_path / "a")
    assert (doc["verdict"], code) == ("error", 6)
    assert "symbolic links" in doc["reason"]
