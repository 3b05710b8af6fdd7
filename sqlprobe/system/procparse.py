"""Pure parsers of /proc's text (proc(5)): bytes in, values out, no I/O. Tested on fixtures.

`linux.LinuxBackend` reads the files and calls these.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from sqlprobe.model import ByteRange, FileKey, LockLine
from sqlprobe.system.access import Credentials
from sqlprobe.system.backend import Mount


def parse_locks(text: str) -> tuple[list[LockLine], int]:
    """Parse /proc/locks (or the `lock:` lines of fdinfo, prefix removed).

    Returns the lines and the number that could not be parsed. Format (fs/locks.c):
    `<id>: [-> ]<CLASS> <MODE> <TYPE> <PID> <MAJ>:<MIN>:<INODE> <START> <END|EOF>`, MAJ and MIN
    in hex. Lines without an inode (`<none>:0`) cannot be on a database file and are skipped.
    """
    lines: list[LockLine] = []
    bad = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            head, rest = raw.split(":", 1)
            tokens = rest.split()
            waiter = tokens[0] == "->"
            if waiter:
                tokens = tokens[1:]
            lock_class, _mode, lock_type, pid, devino, start, end = tokens[:7]
            if devino.startswith("<none>"):
                continue
            major, minor, ino = devino.split(":")
            lines.append(
                LockLine(
                    lock_id=int(head),
                    waiter=waiter,
                    lock_class=lock_class,
                    exclusive=lock_type == "WRITE",
                    pid=int(pid),
                    file=FileKey(os.makedev(int(major, 16), int(minor, 16)), int(ino)),
                    range=ByteRange(int(start), None if end == "EOF" else int(end)),
                )
            )
        except (ValueError, IndexError):
            bad += 1
    return lines, bad


def parse_fdinfo_file(data: bytes) -> tuple[int | None, int | None]:
    """(mount id, inode) of a descriptor's file from its fdinfo; None where a line is missing
    (kernels before 5.14 print no `ino:`)."""
    mount = ino = None
    for line in data.splitlines():
        if line.startswith(b"mnt_id:"):
            mount = int(line.split()[1])
        elif line.startswith(b"ino:"):
            ino = int(line.split()[1])
    return mount, ino


def parse_fdinfo_locks(text: str) -> list[LockLine]:
    """The locks of one descriptor: the `lock:\\t<a /proc/locks line>` lines of its fdinfo."""
    body = "\n".join(
        line.partition("\t")[2] for line in text.splitlines() if line.startswith("lock:")
    )
    return parse_locks(body)[0]


class StatFields(NamedTuple):
    state: str
    ppid: int
    cpu_ticks: int  # utime + stime
    start_ticks: int


def parse_stat(data: bytes) -> StatFields:
    """(state, ppid, cpu ticks, start ticks) from /proc/PID/stat.

    Split at the *last* `)`: the command name may itself contain spaces and parentheses.
    """
    fields = data[data.rindex(b")") + 2 :].split()
    # Field n of proc(5) is fields[n - 3]: state 3, ppid 4, utime 14, stime 15, starttime 22.
    return StatFields(
        fields[0].decode(), int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])
    )


def parse_stat_name(data: bytes) -> str:
    """The command name (`comm`) between the first `(` and the last `)` of /proc/PID/stat."""
    return data[data.index(b"(") + 1 : data.rindex(b")")].decode("utf-8", "backslashreplace")


def parse_status(data: bytes) -> Credentials:
    """A process's uids, gids, groups and whether it has any capability, from /proc/PID/status.

    Raises ValueError when a field is missing or malformed.
    """
    fields = dict(line.split(b":", 1) for line in data.splitlines() if b":" in line)
    if b"Uid" not in fields or b"Gid" not in fields:
        raise ValueError("no Uid or Gid line")
    caps = (fields.get(b"CapPrm", b"0"), fields.get(b"CapEff", b"0"), fields.get(b"CapAmb", b"0"))
    return Credentials(
        frozenset(map(int, fields[b"Uid"].split())),
        frozenset(map(int, fields[b"Gid"].split() + fields.get(b"Groups", b"").split())),
        any(int(c, 16) for c in caps),
    )


def parse_cmdline(data: bytes) -> str:
    """The command line with its NUL separators as spaces; bytes that are not UTF-8 escaped."""
    return data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "backslashreplace")


def _unescape_mount(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal `\\040` etc."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mount points, filesystem types and sources from /proc/PID/mountinfo (proc(5))."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        mounts.append(Mount(_unescape_mount(fields[4]), rest[0], _unescape_mount(rest[1])))
    return mounts


def parse_mount_devs(data: bytes) -> dict[int, int]:
    """Mount id -> its device (`major:minor`, decimal), from /proc/PID/mountinfo."""
    devs = {}
    for line in data.splitlines():
        fields = line.split(maxsplit=3)
        if len(fields) >= 3 and b":" in fields[2]:
            major, _, minor = fields[2].partition(b":")
            devs[int(fields[0])] = os.makedev(int(major), int(minor))
    return devs


def parse_environ(data: bytes) -> dict[str, str]:
    """/proc/PID/environ: NUL-separated NAME=value; bytes that are not UTF-8 escaped."""
    env = {}
    for item in data.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            key = name.decode("utf-8", "backslashreplace")
            env[key] = value.decode("utf-8", "backslashreplace")
    return env
