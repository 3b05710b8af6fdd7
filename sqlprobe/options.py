"""The options of a check and of a wait, their defaults and the ranges the CLI accepts: one place.

A base module (it imports nothing of sqlprobe's): the collector, the workflows and the click
options all take their defaults from here, so that a library call and the command line agree.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_WINDOW = 0.3  # how long a blocking lock must persist to count
DEFAULT_TIMEOUT = 3.0  # a check answers within this long
DEFAULT_BUSY_TIMEOUT = 0.1  # how long the read-only SQLite probe waits on a lock
DEFAULT_WAIT = 30.0  # how long `wait` (and a hook's wrapped runs) wait for the database


class Range(NamedTuple):
    """The seconds an option accepts, both ends included. Written as the help shows them
    (click prints `0<=x<=10` from these very numbers: 0, not 0.0)."""

    low: float
    high: float


WINDOW_RANGE = Range(0, 10)
TIMEOUT_RANGE = Range(0.1, 3600)
BUSY_TIMEOUT_RANGE = Range(0, 10)
WAIT_RANGE = Range(0, 86400)


class CheckOptions(NamedTuple):
    """How one check is taken (collect.snapshot.check's keywords, with the same defaults)."""

    window: float = DEFAULT_WINDOW
    timeout: float | None = DEFAULT_TIMEOUT  # None: no limit
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    use_probe: bool = True  # open the database read-only with SQLite, where that is safe
    probe_live: bool = False  # even while others hold it (WAL mode)
    thorough: bool = False  # stat every open file of every process
    databases: bool = True  # False: only opencode's lock directories (an isolated run)


DEFAULT_CHECK = CheckOptions()  # every default: what a call without options is given
