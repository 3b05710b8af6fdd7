"""Where opencode keeps things (xdg-basedir, on every OS): docs/opencode-state.md §1."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

APP = "opencode"


class Dirs(NamedTuple):
    """opencode's directories for one environment: data, state, config, cache, and the home."""

    data: str  # opencode.db*, auth.json, log/, snapshot/
    state: str  # locks/
    config: str  # opencode.json, and an npm install of its plugins
    cache: str  # packages/<spec>/, bin/
    home: str

    @property
    def locks(self) -> str:
        return os.path.join(self.state, "locks")

    @property
    def snapshots(self) -> str:
        return os.path.join(self.data, "snapshot")


_DEFAULTS = {
    "XDG_DATA_HOME": (".local", "share"),
    "XDG_STATE_HOME": (".local", "state"),
    "XDG_CONFIG_HOME": (".config",),
    "XDG_CACHE_HOME": (".cache",),
}


def home_of(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def base_dir(env: Mapping[str, str], variable: str) -> str:
    """`$XDG_*_HOME`, else its default under the home. As the XDG spec says, a relative value is
    invalid and ignored."""
    value = env.get(variable, "")
    if value and os.path.isabs(value):
        return value
    return os.path.join(home_of(env), *_DEFAULTS[variable])


def dirs(env: Mapping[str, str]) -> Dirs:
    """opencode's directories as an instance started with `env` would use them."""
    return Dirs(
        data=os.path.join(base_dir(env, "XDG_DATA_HOME"), APP),
        state=os.path.join(base_dir(env, "XDG_STATE_HOME"), APP),
        config=os.path.join(base_dir(env, "XDG_CONFIG_HOME"), APP),
        cache=os.path.join(base_dir(env, "XDG_CACHE_HOME"), APP),
        home=home_of(env),
    )


def tildify(path: str, home: str) -> str:
    """`~/.config/opencode` for a path under the home, for sentences a person reads."""
    home = home.rstrip("/")
    if home and (path == home or path.startswith(home + "/")):
        return "~" + path[len(home) :]
    return path
