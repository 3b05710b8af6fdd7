"""The pure parsers and the lock decoder, on captured and synthetic input."""

from __future__ import annotations

import os

import pytest
from conftest import FIXTURES
from hypothesis import given
from hypothesis import strategies as st

from sqlprobe.errors import HeaderError
from sqlprobe.model import ByteRange, FileKey, FileKind, JournalMode, LockLine, Mode
from sqlprobe.sqlite import locks as layout
from sqlprobe.sqlite.dbheader import parse_header
from sqlprobe.system.procparse import parse_cmdline, parse_locks, parse_stat, parse_status

PROC = FIXTURES / "proc"
SHM_KEY = FileKey(os.makedev(0xFE, 0), 2146404)


def read(name: str) -> str:
    return (PROC / name).read_text()


def line(start: int, end: int | None, exclusive: bool, cls: str = "POSIX") -> LockLine:
    return LockLine(1, False, cls, exclusive, 42, SHM_KEY, ByteRange(start, end))


def names(kind: FileKind, ln: LockLine) -> list[tuple[str, Mode]]:
    return [(lk.name, lk.mode) for lk in layout.decode(kind, ln)]


# -- /proc/locks ----------------------------------------------------------------------------------


def test_parse_locks_keys_by_hex_device_and_inode():
    lines, bad = parse_locks(read("locks-wal-write.txt"))
    assert bad == 0
    assert [ln.file for ln in lines] == [SHM_KEY] * 3 + [FileKey(os.makedev(0xFE, 0), 2146402)]
    assert [(ln.range.start, ln.range.end, ln.exclusive) for ln in lines[:2]] == [
        (120, 120, True),
        (124, 124, False),
    ]
    assert {ln.pid for ln in lines} == {2058}


def test_parse_locks_reads_waiters_ofd_flock_eof_and_counts_garbage():
    lines, bad = parse_locks(read("locks-mixed.txt"))
    assert bad == 2  # the prose line and the one with a non-numeric pid
    by_class = [(ln.lock_class, ln.waiter, ln.pid) for ln in lines]
    assert by_class == [
        ("POSIX", False, 2058),
        ("POSIX", True, 3001),
        ("OFDLCK", False, -1),
        ("FLOCK", False, 812),
        ("LEASE", False, 900),
        ("POSIX", False, 2058),  # the `<none>:0` line is skipped, not counted as bad
    ]
    assert lines[3].range == ByteRange(0, None)
    assert lines[5].file == FileKey(os.makedev(0x103, 0x02), 9)  # majors above 0xff


def test_parse_stat_splits_at_last_parenthesis():
    st = parse_stat((PROC / "stat-paren-comm.txt").read_bytes())
    assert (st.state, st.cpu_ticks, st.start_ticks) == ("S", 281, 987654)
    assert st.ppid == 1


def test_parse_cmdline_turns_nuls_into_spaces_and_escapes_bad_bytes():
    assert parse_cmdline(b"opencode\0run\0hi\xff\0") == "opencode run hi\\xff"


# -- decoding -------------------------------------------------------------------------------------


def test_decode_shm_bytes_one_by_one():
    expected = ["wal-write", "wal-checkpoint", "wal-recover"]
    expected += [f"wal-read-{i}" for i in range(5)] + ["dms"]
    got = [names(FileKind.SHM, line(b, b, False))[0][0] for b in range(120, 129)]
    assert got == expected


def test_decode_merged_shm_range_names_every_byte():
    assert names(FileKind.SHM, line(120, 128, True)) == [
        (n, Mode.EXCLUSIVE)
        for n in ["wal-write", "wal-checkpoint", "wal-recover"]
        + [f"wal-read-{i}" for i in range(5)]
        + ["dms"]
    ]


def test_decode_rollback_exclusive_merged_line():
    got = names(FileKind.DB, line(layout.PENDING_BYTE, layout.SHARED_LAST, True))
    assert got == [
        ("pending", Mode.EXCLUSIVE),
        ("reserved", Mode.EXCLUSIVE),
        ("exclusive", Mode.EXCLUSIVE),
    ]


def test_decode_shared_range_read_is_shared():
    got = names(FileKind.DB, line(layout.SHARED_FIRST, layout.SHARED_LAST, False))
    assert got == [("shared", Mode.SHARED)]


def test_decode_whole_file_lock_covers_sqlite_bytes():
    assert [n for n, _ in names(FileKind.DB, line(0, None, True))] == [
        "pending",
        "reserved",
        "exclusive",
    ]


def test_decode_keeps_unknown_ranges_and_foreign_classes():
    assert names(FileKind.DB, line(0, 99, True)) == [("other", Mode.EXCLUSIVE)]
    assert names(FileKind.WAL, line(0, None, False)) == [("other", Mode.SHARED)]
    assert names(FileKind.DB, line(0, None, True, cls="FLOCK")) == [("flock", Mode.EXCLUSIVE)]


def test_decode_ofd_lock_has_no_pid():
    ln = LockLine(1, False, "OFDLCK", False, -1, SHM_KEY, ByteRange(128, 128))
    (lock,) = layout.decode(FileKind.SHM, ln)
    assert (lock.name, lock.pid) == ("dms", None)


@given(
    start=st.integers(0, layout.SHARED_LAST + 10),
    length=st.one_of(st.none(), st.integers(1, 2000)),
    exclusive=st.booleans(),
    kind=st.sampled_from([FileKind.DB, FileKind.SHM]),
)
def test_decode_is_range_intersection(start, length, exclusive, kind):
    """Every named byte that the range touches is named once; nothing else is."""
    end = None if length is None else start + length - 1
    rng = ByteRange(start, end)
    locks = layout.decode(kind, LockLine(1, False, "POSIX", exclusive, 7, SHM_KEY, rng))
    touched = [name for name, named in layout.lock_bytes(kind) if rng.intersect(named)]
    if not touched:
        assert [lk.name for lk in locks] == ["other"]
        return
    renamed = ["exclusive" if n == "shared" and exclusive else n for n in touched]
    assert [lk.name for lk in locks] == renamed
    for lk in locks:
        assert lk.range.start >= start and (end is None or (lk.range.end or 0) <= end)


# -- db header ------------------------------------------------------------------------------------


def test_parse_header_of_real_database(wal_db):
    header = parse_header(wal_db.read_bytes()[:100])
    assert header.journal_mode is JournalMode.WAL
    assert header.page_size == 4096 and header.page_count >= 2


def test_parse_header_page_size_one_means_65536():
    data = bytearray(layout.DB_MAGIC + bytes(84))
    data[16:18] = (1).to_bytes(2, "big")
    data[18] = data[19] = 1
    header = parse_header(bytes(data))
    assert (header.page_size, header.journal_mode) == (65536, JournalMode.ROLLBACK)


@pytest.mark.parametrize("data", [b"", b"SQLite format 3\0", b"x" * 100])
def test_parse_header_rejects_short_or_foreign_bytes(data):
    with pytest.raises(HeaderError):
        parse_header(data)


def test_parse_status_collects_every_uid_gid_group_and_any_capability():
    nobody = parse_status((PROC / "status-nobody.txt").read_bytes())
    assert nobody.uids == {65534}
    assert nobody.gids == {65534, 100}
    assert nobody.capable is False
    root = parse_status((PROC / "status-root.txt").read_bytes())
    assert root.uids == {0} and root.capable is True


def test_parse_status_without_uid_line_raises_value_error():
    with pytest.raises(ValueError):
        parse_status(b"Name:\tx\nGid:\t1\t1\t1\t1\n")
