"""Who could have opened a database's files: each file's own permission bits against a
process's credentials. Pure; the stat and /proc reads are done by collect/files.py and
system/linux.py.

Conservative on purpose. A process is ruled out only when nothing it has or could switch to lets
it read or write any of the files: none of its real, effective, saved or filesystem uids, none of
its gids or supplementary groups, no capability at all, and no POSIX ACL on the file. Only the
file's own mode counts, never the directories above it: a bind mount or a hard link elsewhere
can bypass those. What this cannot see, and the report says so: a descriptor passed to the
process over a socket, kept across a change of user and an exec, or opened before a chmod.
"""

from typing import NamedTuple

READ, WRITE = 4, 2


class Gate(NamedTuple):
    """A file's owner, group and permission bits, and whether an ACL overrides them."""

    uid: int
    gid: int
    mode: int
    acl: bool  # a POSIX access ACL: the group bits are then only a mask, so anyone may pass


class Credentials(NamedTuple):
    """What a process can present to a permission check (from /proc/PID/status)."""

    uids: frozenset[int]  # real, effective, saved, filesystem
    gids: frozenset[int]  # real, effective, saved, filesystem, supplementary
    capable: bool  # any capability in its permitted, effective or ambient set


# Owner of nothing, member of no group: only the "others" bits apply.
NOBODY = Credentials(frozenset(), frozenset(), False)


def could_open(cred: Credentials, gate: Gate) -> bool:
    """Whether `cred` could open the file for reading or writing, under any identity it has."""
    if cred.capable or 0 in cred.uids or gate.acl:
        return True
    want = READ | WRITE
    return bool(
        (gate.uid in cred.uids and (gate.mode >> 6) & want)
        or (gate.gid in cred.gids and (gate.mode >> 3) & want)
        or gate.mode & want
    )


def rules_out_others(gates: tuple[Gate, ...]) -> bool:
    """Whether the files' modes keep out a process that owns none of them and is in none of
    their groups (without that, every process must be scanned)."""
    return bool(gates) and ruled_out(NOBODY, gates)


def ruled_out(cred: Credentials, gates: tuple[Gate, ...]) -> bool:
    """Whether `cred` could open none of the files."""
    return not any(could_open(cred, g) for g in gates)
