"""The library calls behind the commands: a program gets the result objects the CLI renders."""

from __future__ import annotations

import json

import pytest

import sqlprobe
from sqlprobe.options import CheckOptions
from sqlprobe.workflows import run as running
from sqlprobe.workflows.diagnose import diagnose_target
from sqlprobe.workflows.preflight import preflight

pytestmark = pytest.mark.process  # real holders, and the collector's workers


def test_inspect_gives_the_verdict_that_check_json_prints_for_a_real_holder(
    wal_db, holder, check_json
):
    h = holder(wal_db, "wal-write")  # sleeps holding the write lock: stuck, every time
    doc, code = check_json(wal_db)
    report = sqlprobe.inspect(str(wal_db))
    assert (report.verdict.state.value, report.verdict.reason) == (doc["verdict"], doc["reason"])
    assert int(report.verdict.exit_code) == code == doc["exit_code"] == 5
    assert [hd.pid for db in report.snapshot.databases for hd in db.holders] == [h.pid]


def test_check_options_are_the_commands_options(wal_db, holder, check_json):
    holder(wal_db, "wal-write")
    doc, _code = check_json(wal_db, "--window", "0", "--no-probe")
    report = sqlprobe.inspect(str(wal_db), options=CheckOptions(window=0, use_probe=False))
    assert report.snapshot.window_s == doc["window"]["seconds"] == 0
    assert report.snapshot.databases[0].probe is None
    assert report.verdict.reason == doc["reason"]


def test_check_still_takes_its_options_as_keywords(wal_db):
    snapshot = sqlprobe.check(str(wal_db), window=0, use_probe=False)
    assert snapshot.window_s == 0 and snapshot.databases[0].probe is None
    assert sqlprobe.CheckOptions().timeout == 3.0  # the CLI's default, from sqlprobe.options


def test_diagnose_target_gives_what_diagnose_json_prints(wal_db, holder, run):
    h = holder(wal_db, "wal-write")
    doc = json.loads(run("diagnose", wal_db, "--json").stdout)
    result = diagnose_target(str(wal_db))
    assert result.missing is None and result.diagnosis is not None
    assert result.verdict.reason == doc["reason"]
    assert [d.pid for d in result.diagnosis.holders] == [h.pid]
    assert [d["pid"] for d in doc["diagnosis"]["holders"]] == [h.pid]


def test_diagnose_target_within_no_time_left_says_the_timeout_came_first(wal_db):
    result = diagnose_target(str(wal_db), options=CheckOptions(timeout=0.1, window=0))
    # The check may take the whole 0.1 s; whichever way, the result says which it was.
    if result.diagnosis is None:
        assert result.missing == "no diagnosis: the 0.1 s timeout came first"
    else:
        assert result.missing is None


def test_preflight_refuses_with_the_verdict_check_gives(wal_db, holder, check_json):
    holder(wal_db, "wal-write")
    doc, code = check_json(wal_db)
    answer = preflight(str(wal_db))
    assert not answer.ok
    assert (answer.verdict.reason, int(answer.verdict.exit_code)) == (
        doc["reason"],
        code,
    )


def test_run_command_refused_returns_what_run_says_and_exits_with(wal_db, holder, run):
    holder(wal_db, "wal-write")
    result = run("run", wal_db, "--", "true")
    refused = running.run_command(["true"], str(wal_db))  # refused: never execs
    assert isinstance(refused, running.Refused) and refused.queue is None
    assert refused.exit_code == result.exit_code == 5
    assert result.stderr == f"sqlprobe: not running true: {refused.preflight.verdict.reason}\n"


def test_run_command_isolated_returns_the_commands_exit_status(wal_db, holder):
    holder(wal_db, "wal-write")  # its own database: the holder of this one does not matter
    said = []

    class Heard(running.Silent):
        def isolated(self, database: str, keep: bool) -> None:
            said.append((database.endswith("/opencode.db"), keep))

    ran = running.run_command(["sh", "-c", "exit 3"], str(wal_db), isolate=True, progress=Heard())
    assert ran == running.Ran(3) and said == [(True, False)]


def test_the_documented_library_names_are_the_functions_even_after_their_modules_load(tmp_path):
    # `sqlprobe.judge` is the function; the package that holds it is `sqlprobe.verdict`, so an
    # import of a submodule (which sets the package as its parent's attribute) cannot hide it.
    import importlib

    snapshot = sqlprobe.check(str(tmp_path / "new.db"), window=0)
    importlib.import_module("sqlprobe.verdict.judge")
    from sqlprobe import check, diagnose, inspect, judge, wait

    assert all(callable(f) for f in (check, diagnose, inspect, judge, wait))
    assert judge(snapshot).state.value == "clear"
