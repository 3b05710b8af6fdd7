"""Against a real opencode: the reported start-up hang, reproduced, and what sqlprobe says of it.

Runs only when SQLPROBE_TEST_OPENCODE names an opencode binary (`npm pack
opencode-linux-x64@VERSION`, then `package/bin/opencode`); skipped with the reason otherwise.
The first run lists a plugin in opencode.json and gets an npm registry on 127.0.0.1 that accepts
connections and never answers, so its install stalls while it holds opencode's install lock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sqlprobe.opencode.locks import dir_name

OPENCODE = os.environ.get("SQLPROBE_TEST_OPENCODE", "")
pytestmark = [
    pytest.mark.process,  # real opencode runs, and a server for them
    pytest.mark.skipif(
        not (OPENCODE and os.access(OPENCODE, os.X_OK)),
        reason="SQLPROBE_TEST_OPENCODE does not name an opencode binary (npm pack "
        "opencode-linux-x64@VERSION; package/bin/opencode)",
    ),
]
LOCK_APPEARS_S = 60.0


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


def _environment(root: Path, registry_port: int) -> dict[str, str]:
    for d in ("home", "config/opencode", "data", "state", "cache", "proj"):
        (root / d).mkdir(parents=True, exist_ok=True)
    config = {
        "$schema": "https://opencode.ai/config.json",
        "plugin": ["opencode-anthropic-auth"],
        "autoupdate": False,
        "share": "disabled",
        "model": "local/fake",
        "provider": {
            "local": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Local fake",
                # Nothing listens there: the run never gets that far.
                "options": {"baseURL": "http://127.0.0.1:9/v1", "apiKey": "x"},
                "models": {"fake": {"name": "fake"}},
            }
        },
    }
    (root / "config/opencode/opencode.json").write_text(json.dumps(config))
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(root / "home"),
        "XDG_CONFIG_HOME": str(root / "config"),
        "XDG_DATA_HOME": str(root / "data"),
        "XDG_STATE_HOME": str(root / "state"),
        "XDG_CACHE_HOME": str(root / "cache"),
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "npm_config_registry": f"http://127.0.0.1:{registry_port}",
    }


def _check(env: dict[str, str]) -> tuple[dict, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "sqlprobe", "check", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return json.loads(proc.stdout), proc.returncode


def test_stalled_plugin_install_holds_the_lock_a_new_instance_waits_on(tmp_path, blackhole):
    env = _environment(tmp_path, blackhole)
    lock = tmp_path / "state/opencode/locks" / dir_name(f"npm-install:{tmp_path}/config/opencode")
    first = subprocess.Popen(
        [OPENCODE, "run", "-m", "local/fake", "hi"],
        cwd=tmp_path / "proj",
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + LOCK_APPEARS_S
        while not (lock / "meta.json").exists():  # the observable event: the lock is taken
            assert first.poll() is None, "the first run ended before taking the install lock"
            assert time.monotonic() < deadline, "the first run never took the install lock"
            time.sleep(0.1)
        doc, code = _check(env)
        assert doc["verdict"] in ("busy", "stuck") and code in (4, 5), doc["reason"]
        assert f"pid {first.pid}" in doc["reason"]
        (found,) = [lk for lk in doc["opencode_locks"] if lk["path"] == str(lock)]
        assert found["pid"] == first.pid and found["state"] == "held" and found["blocks"]
        # Killed as `timeout` kills it: the lock stays behind, and still blocks until stale.
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
        assert lock.is_dir(), "SIGTERM leaves opencode's lock behind"
        doc, code = _check(env)
        (found,) = [lk for lk in doc["opencode_locks"] if lk["path"] == str(lock)]
        assert found["state"] == "left-behind" and code == 4 and found["wait_s"] > 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
