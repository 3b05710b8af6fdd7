"""What a database's files say that a person should know, as Finding records: derived from the
snapshot's records (headers, the WAL walk, the side files). Pure; worded by render/findings.py.
"""

from __future__ import annotations

from sqlprobe.model import DatabaseSnapshot, FileKind, Finding, FindingKind, IndexState, WalState
from sqlprobe.sqlite.locks import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE


def state_findings(db: DatabaseSnapshot) -> tuple[Finding, ...]:
    """One finding per thing the side files say, each naming its file."""
    out = []
    paths = {f.kind: f.path for f in db.files}
    present = {f.kind for f in db.files if f.key is not None}
    if FileKind.DB not in present and db.error is None:
        odd = {f.kind for f in db.files if f.not_regular}  # the verdict speaks of these
        for kind in sorted(present - odd, key=list(FileKind).index):
            out.append(Finding(FindingKind.SIDE_WITHOUT_DATABASE, paths[kind], detail=kind.value))
    if db.hot_journal:
        out.append(Finding(FindingKind.HOT_JOURNAL, paths[FileKind.JOURNAL]))
    wal = db.wal
    if wal is not None:
        where = paths[FileKind.WAL]
        if wal.problem:
            out.append(Finding(FindingKind.WAL_IGNORED, where, detail=wal.problem))
        if tail := partial_frame(wal):
            out.append(Finding(FindingKind.PARTIAL_FRAME, where, count=tail))
        if wal.scan and wal.scan.uncommitted:
            out.append(Finding(FindingKind.UNCOMMITTED_FRAMES, where, count=wal.scan.uncommitted))
        if wal.scan and wal.scan.verified < wal.scan.frames:
            out.append(
                Finding(
                    FindingKind.CHECKSUMS_PARTLY,
                    where,
                    count=wal.scan.verified,
                    total=wal.scan.frames,
                )
            )
        shm = paths[FileKind.SHM]
        if wal.index_problem and wal.index is IndexState.STALE:
            out.append(Finding(FindingKind.INDEX_STALE, shm, detail=wal.index_problem))
        elif wal.index_problem and wal.index is IndexState.INVALID:
            out.append(Finding(FindingKind.INDEX_INVALID, shm, detail=wal.index_problem))
    return tuple(out)


def partial_frame(wal: WalState) -> int:
    """Bytes of a frame cut short right after the walked frames (a crash mid-write), or 0.

    A tail further on is not reported: truncating to journal_size_limit leaves one routinely.
    """
    if not (wal.header and wal.scan):
        return 0
    frame_size = wal.header.page_size + WAL_FRAME_HEADER_SIZE
    end = WAL_HEADER_SIZE + (wal.scan.frames + wal.scan.uncommitted) * frame_size
    return wal.size - end if 0 < wal.size - end < frame_size else 0
