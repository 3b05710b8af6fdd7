"""The header parsers (db, WAL, shm) on real SQLite files from fixtures/files, and fuzzed."""

from __future__ import annotations

import contextlib
import sqlite3
import struct
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlprobe.errors import HeaderError
from sqlprobe.sqlite import dbheader as dbfile
from sqlprobe.sqlite import shm, wal

FILES = FIXTURES / "files"
WAL_BYTES = (FILES / "wal-crashed.db-wal").read_bytes()
SHM_BYTES = (FILES / "wal-crashed.db-shm").read_bytes()[: shm.SHM_HEADER_SIZE]
DB_BYTES = (FILES / "wal-crashed.db").read_bytes()[:100]


def reader(data: bytes):
    return lambda offset, size: data[offset : offset + size]


def scan_bytes(data: bytes, **kwargs) -> wal.WalScan:
    return wal.scan(wal.parse_header(data), len(data), reader(data), **kwargs)


def test_wal_header_of_a_crashed_writer():
    header = wal.parse_header(WAL_BYTES)
    assert (header.version, header.page_size, header.big_endian) == (3007000, 1024, False)


def test_wal_scan_counts_what_sqlite_recovers(tmp_path):
    # The crashed writer committed: create table, then three inserts; SQLite's recovery agrees.
    result = scan_bytes(WAL_BYTES)
    assert (result.frames, result.uncommitted, result.verified) == (5, 0, 5)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"c.db{suffix}").write_bytes((FILES / f"wal-crashed.db{suffix}").read_bytes())
    conn = sqlite3.connect(tmp_path / "c.db")
    assert conn.execute("select count(*) from t").fetchone() == (3,)
    busy, log, _ = conn.execute("pragma wal_checkpoint(passive)").fetchone()
    conn.close()
    assert (busy, log) == (0, result.frames)


def test_wal_scan_stops_at_a_corrupt_frame():
    data = bytearray(WAL_BYTES)
    third = wal.frame_offset(wal.parse_header(data), 3)
    data[third + 24 + 10] ^= 0xFF  # a byte of frame 3's page: its checksum no longer holds
    result = scan_bytes(bytes(data))
    assert result.frames < 3 and result.verified == result.frames


def test_wal_scan_without_checksums_counts_by_salts_and_commits():
    data = bytearray(WAL_BYTES)
    third = wal.frame_offset(wal.parse_header(data), 3)
    data[third + 24 + 10] ^= 0xFF
    # A budget already spent: headers only, so the damaged page is not noticed.
    result = scan_bytes(bytes(data), verify_until=0.0, clock=lambda: 1.0)
    assert (result.frames, result.verified) == (5, 0)


def test_wal_scan_ignores_frames_of_an_older_generation():
    data = bytearray(WAL_BYTES)
    third = wal.frame_offset(wal.parse_header(data), 3)
    data[third + 8] ^= 0x01  # frame 3's salt-1 differs from the header's
    assert scan_bytes(bytes(data)).frames == 2


def test_truncated_wal_has_a_header_but_no_frame():
    data = (FILES / "truncated.db-wal").read_bytes()
    assert scan_bytes(data).frames == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (WAL_BYTES[:20], "shorter than 32"),
        ((FILES / "garbage.db-wal").read_bytes(), "not a WAL file"),
        (WAL_BYTES[:4] + struct.pack(">I", 3007001) + WAL_BYTES[8:32], "version"),
        (WAL_BYTES[:8] + struct.pack(">I", 1000) + WAL_BYTES[12:32], "page size"),
        (WAL_BYTES[:12] + b"\x00\x00\x00\x09" + WAL_BYTES[16:32], "checksum"),
    ],
)
def test_invalid_wal_headers_are_refused_with_the_reason(data, message):
    with pytest.raises(HeaderError, match=message):
        wal.parse_header(data)


def test_wal_checksum_matches_sqlite_for_both_byte_orders():
    header = wal.parse_header(WAL_BYTES)
    assert wal.checksum(WAL_BYTES[:24], 0, 0, big_endian=False) == header.checksum
    # Same words read the other way round give another sum: the magic's low bit matters.
    assert wal.checksum(WAL_BYTES[:24], 0, 0, big_endian=True) != header.checksum


def test_shm_header_of_a_crashed_writer():
    header = shm.parse_header(SHM_BYTES)
    assert (header.mx_frame, header.backfilled, header.page_size) == (5, 0, 1024)
    wal_header = wal.parse_header(WAL_BYTES)
    assert header.salts == (wal_header.salt1, wal_header.salt2)
    assert header.read_marks[0] == 0 and header.read_marks[2:] == (None, None, None)


@pytest.mark.parametrize(
    ("name", "message"),
    [("zero.db-shm", "empty"), ("short.db-shm", "shorter"), ("garbage.db-shm", "differ")],
)
def test_bad_shm_files_are_refused_with_the_reason(name, message):
    with pytest.raises(HeaderError, match=message):
        shm.parse_header((FILES / name).read_bytes()[: shm.SHM_HEADER_SIZE])


def test_shm_header_with_a_bad_checksum_is_refused():
    data = bytearray(SHM_BYTES)
    for copy in (0, 48):
        data[copy + 20] ^= 0x01  # nPage in both copies: the copies agree, the checksum does not
    with pytest.raises(HeaderError, match="checksum"):
        shm.parse_header(bytes(data))


def test_shm_header_not_initialised_is_refused():
    data = bytearray(SHM_BYTES)
    data[12] = data[48 + 12] = 0
    with pytest.raises(HeaderError, match="not initialised"):
        shm.parse_header(bytes(data))


def test_shm_header_in_the_other_byte_order_is_refused():
    other = "big" if sys.byteorder == "little" else "little"
    with pytest.raises(HeaderError):
        shm.parse_header(SHM_BYTES, byteorder=other)


def test_db_header_fields():
    header = dbfile.parse_header(DB_BYTES)
    assert (header.page_size, header.write_version, header.read_version) == (1024, 2, 2)


@pytest.mark.parametrize(
    ("name", "message"),
    [("short.db", "shorter than 100"), ("not-sqlite.db", "not a SQLite database")],
)
def test_bad_db_headers_are_refused(name, message):
    with pytest.raises(HeaderError, match=message):
        dbfile.parse_header((FILES / name).read_bytes()[:100])


# -- fuzz: arbitrary and mutated bytes raise nothing but HeaderError ------------------------------


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """`seed` with a few bytes changed, cut short or extended."""

    def mutate(data: tuple[list[tuple[int, int]], int, bytes]) -> bytes:
        changes, cut, tail = data
        out = bytearray(seed)
        for pos, value in changes:
            out[pos % len(out)] = value
        return bytes(out[: cut % (len(out) + 1)]) + tail

    changes = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8)
    return st.tuples(changes, st.integers(0, 1 << 16), st.binary(max_size=64)).map(mutate)


def _parses_or_refuses(parse, data: bytes) -> None:
    with contextlib.suppress(HeaderError):  # anything else fails the test
        parse(data)


@settings(deadline=None)  # examples: the profile's (conftest.py)
@given(st.one_of(st.binary(max_size=200), mutated(DB_BYTES)))
def test_fuzz_db_header(data: bytes) -> None:
    _parses_or_refuses(dbfile.parse_header, data)


@settings(deadline=None)  # examples: the profile's (conftest.py)
@given(st.one_of(st.binary(max_size=200), mutated(SHM_BYTES)))
def test_fuzz_shm_header(data: bytes) -> None:
    _parses_or_refuses(shm.parse_header, data)


@settings(deadline=None)  # examples: the profile's (conftest.py)
@given(st.one_of(st.binary(max_size=2000), mutated(WAL_BYTES)))
def test_fuzz_wal_header_and_frames(data: bytes) -> None:
    try:
        header = wal.parse_header(data)
    except HeaderError:
        return
    result = wal.scan(header, len(data), reader(data))
    assert 0 <= result.verified <= result.frames
    assert result.frames + result.uncommitted <= (len(data) - 32) // (header.page_size + 24)


def test_fixture_files_are_listed(tmp_path: Path) -> None:
    # The generator's outputs are all present (a missing fixture would skip tests silently).
    expected = {
        "empty.db", "garbage.db-shm", "garbage.db-wal", "hot-journal.db", "hot-journal.db-journal",
        "not-sqlite.db", "short.db", "short.db-shm", "truncated.db-wal", "wal-crashed.db",
        "wal-crashed.db-shm", "wal-crashed.db-wal", "zero.db-shm",
    }  # fmt: skip
    assert {p.name for p in FILES.iterdir()} == expected


def test_unverified_frames_are_found_by_bisection_like_a_walk(monkeypatch):
    spent = {"verify_until": 0.0, "clock": lambda: 1.0}  # no time to verify: salts only
    walked = scan_bytes(WAL_BYTES, **spent)
    monkeypatch.setattr(wal, "SEQUENTIAL_LIMIT", 1)  # force the bisection on 5 frames
    assert scan_bytes(WAL_BYTES, **spent) == walked
    assert (walked.frames, walked.verified) == (5, 0)
    data = bytearray(WAL_BYTES)
    header = wal.parse_header(WAL_BYTES)
    for i in (4, 5):  # frames 4 and 5 from an older generation: the salts end after frame 3
        data[wal.frame_offset(header, i) + 8] ^= 0x01
    result = scan_bytes(bytes(data), **spent)
    assert (result.frames, result.uncommitted) == (3, 0)
