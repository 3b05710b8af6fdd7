"""Who could open a database's files: the pure rule behind skipping other users' processes."""

from __future__ import annotations

import pytest

from sqlprobe.system.access import (
    NOBODY,
    Credentials,
    Gate,
    could_open,
    ruled_out,
    rules_out_others,
)

ALICE = Credentials(frozenset({1000}), frozenset({1000}), False)
BOB = Credentials(frozenset({1001}), frozenset({1001, 100}), False)  # in group 100 too


def gate(mode: int, uid: int = 1000, gid: int = 1000, acl: bool = False) -> Gate:
    return Gate(uid, gid, mode, acl)


@pytest.mark.parametrize(
    ("mode", "who", "expected"),
    [
        (0o600, ALICE, True),  # the owner
        (0o600, BOB, False),  # neither owner nor group, others have nothing
        (0o200, ALICE, True),  # write alone is enough to hold it open
        (0o000, ALICE, False),  # even the owner cannot open a file with no bits (without caps)
        (0o640, BOB, False),  # group 1000 may read, bob is not in it
        (0o604, BOB, True),  # others may read
        (0o602, BOB, True),  # others may write
        (0o611, BOB, False),  # execute alone does not open a file
    ],
)
def test_could_open_follows_owner_group_and_other_bits(mode, who, expected):
    assert could_open(who, gate(mode)) is expected


def test_a_supplementary_group_counts():
    assert could_open(BOB, gate(0o640, gid=100))
    assert not could_open(BOB, gate(0o600, gid=100))


def test_any_uid_the_process_could_switch_to_counts():
    # Effective uid 1001, but its saved uid is the owner: it can switch back and open the file.
    switcher = Credentials(frozenset({1001, 1000}), frozenset({1001}), False)
    assert could_open(switcher, gate(0o600))


def test_root_capabilities_and_acls_let_anyone_through():
    root = Credentials(frozenset({0}), frozenset({0}), False)
    capable = BOB._replace(capable=True)
    assert could_open(root, gate(0o000))
    assert could_open(capable, gate(0o000))
    assert could_open(BOB, gate(0o600, acl=True))


def test_others_are_kept_out_only_when_no_file_lets_them_in():
    assert rules_out_others((gate(0o600), gate(0o640)))
    assert not rules_out_others((gate(0o600), gate(0o644)))  # a readable -shm is enough
    assert not rules_out_others(())  # no file known: no rule
    assert rules_out_others((gate(0o600),)) and could_open(NOBODY, gate(0o604))


def test_ruled_out_needs_every_file_closed_to_the_process():
    assert ruled_out(BOB, (gate(0o600), gate(0o640)))
    assert not ruled_out(BOB, (gate(0o600), gate(0o640, gid=100)))
