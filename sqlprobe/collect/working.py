"""The working state of one database while its snapshot is being taken: a mutable record that
files.py, holders.py and locks.py fill in turn, and snapshot.py turns into a DatabaseSnapshot.
"""

from __future__ import annotations

from sqlprobe.model import (
    DbHeader,
    FileKey,
    FileKind,
    Observation,
    Problem,
    SideFile,
    WalState,
)
from sqlprobe.system.access import Gate


class Db:
    """Working state for one database while the snapshot is being taken.

    A plain class, not a dataclass: `sqlprobe check --quiet` would pay for importing
    dataclasses.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.exists = True
        self.error: Problem | None = None
        """The database: its path, whether it exists (or an error says what is wrong with it),
        and why it could not be read (None: it could)."""

        self.files: list[SideFile] = []
        self.fds: dict[FileKind, int] = {}  # raw read-only descriptors
        self.sizes: dict[FileKind, int] = {}
        self.gates: dict[FileKind, Gate] = {}  # who may open each file, by its own mode
        self.own = False  # this very process has one of its files open
        # The kernel's (mount device, inode) of each file opened here, where it differs from
        # lstat's (a btrfs subvolume): what fdinfo and /proc/locks give for it.
        self.aliases: dict[FileKey, FileKind] = {}
        """Its files (files.py): the database and each side file as lstat found them, the
        descriptors opened here and their sizes and modes; `aliases` are filled by holders.py's
        scan."""

        self.header: DbHeader | None = None
        self.size: int | None = None
        self.links: int | None = None  # st_nlink of the database file
        self.wal: WalState | None = None
        self.journal_header_set = False
        """What its files say (files.py): the database header, size and link count, read when
        opened; the -wal and -shm state and the -journal's header, read after the first look."""

        self.openers: dict[int, set[FileKind]] = {}  # pid -> the files it has open
        self.opener_fds: list[tuple[int, int, FileKind]] = []  # (pid, fd, file) of the openers
        self.unreadable: set[int] = set()  # pids whose descriptors could not be read
        self.deleted: dict[tuple[int, int], FileKind] = {}  # (pid, fd) -> file deleted
        """Who has its files open (holders.py): from the /proc/PID/fd scan, and from the
        lockers found with none open (holders.other_names)."""

        self.observations: list[Observation] = []
        """The looks at its locks and holders (locks.py): the first look, then the window's."""

    def kind_of(self, key: FileKey) -> FileKind | None:
        """Which of its files `key` is (lstat's key, or the kernel's alias), if any."""
        return next((f.kind for f in self.files if f.key == key), None) or self.aliases.get(key)
