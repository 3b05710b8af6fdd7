"""Parse the 100-byte SQLite database header (sqlite-locking.md §5). Pure: bytes in, values out."""

from __future__ import annotations

import struct

from sqlprobe.errors import HeaderError
from sqlprobe.model import DbHeader
from sqlprobe.sqlite.locks import DB_HEADER_SIZE, DB_MAGIC


def is_sqlite(data: bytes) -> bool:
    """Whether `data` starts with SQLite's 16-byte magic string."""
    return data[: len(DB_MAGIC)] == DB_MAGIC


def parse_header(data: bytes) -> DbHeader:
    """Parse the first 100 bytes of a database file; raises HeaderError when they are not one."""
    if not is_sqlite(data):
        raise HeaderError("not a SQLite database (no 'SQLite format 3' header)")
    if len(data) < DB_HEADER_SIZE:
        raise HeaderError(
            f"database header cut short: {len(data)} bytes, shorter than {DB_HEADER_SIZE}"
        )
    (page_size,) = struct.unpack_from(">H", data, 16)
    change_counter, page_count = struct.unpack_from(">II", data, 24)
    (schema_cookie,) = struct.unpack_from(">I", data, 40)
    (user_version,) = struct.unpack_from(">I", data, 60)
    return DbHeader(
        page_size=65536 if page_size == 1 else page_size,
        write_version=data[18],
        read_version=data[19],
        change_counter=change_counter,
        page_count=page_count,
        schema_cookie=schema_cookie,
        user_version=user_version,
    )
