"""Which opencode a new instance would run, and its version, without ever executing it.

The `opencode` on PATH (or a holder's executable) is resolved to its real file; the npm packages
that ship it (`opencode-ai`, the wrapper people install, and `opencode-<os>-<arch>`, which holds
the binary at `bin/opencode`) have their `package.json` one level above `bin/`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import NamedTuple

from sqlprobe.errors import CannotInspect
from sqlprobe.system.files import open_regular, pread_at_most

NAME = "opencode"
PACKAGE_MAX = 256 * 1024


class Install(NamedTuple):
    executable: str  # the resolved file
    version: str | None
    package_json: str | None  # where the version was read


def on_path(env: Mapping[str, str]) -> str | None:
    """The first executable regular file named `opencode` on `env`'s PATH, resolved."""
    for directory in env.get("PATH", "").split(os.pathsep):
        if not directory or not os.path.isabs(directory):
            continue  # a relative entry depends on the cwd of whoever runs opencode
        candidate = os.path.join(directory, NAME)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return os.path.realpath(candidate)
    return None


def inspect(executable: str) -> Install:
    """The version of the opencode at `executable`, from the package.json of its npm package."""
    real = os.path.realpath(executable)
    here = os.path.dirname(real)
    for directory in (here, os.path.dirname(here)):
        package = os.path.join(directory, "package.json")
        version = _package_version(package)
        if version:
            return Install(real, version, package)
    return Install(real, None, None)


def _package_version(path: str) -> str | None:
    import json  # only when there is a lock to judge: not on every check's path

    try:
        fd, st = open_regular(path)
    except CannotInspect:
        return None
    try:
        if st.st_size > PACKAGE_MAX:
            return None
        doc = json.loads(pread_at_most(fd, PACKAGE_MAX).decode("utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(doc, dict) or not str(doc.get("name", "")).startswith(NAME):
        return None
    version = doc.get("version")
    return version if isinstance(version, str) else None
