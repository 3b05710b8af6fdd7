"""A holder of one of opencode's lock directories, taken exactly as opencode's Flock takes it.

    python oclock.py STATE_DIR KEY [--hostname NAME] [--heartbeat SECONDS] [--stop]
                     [--futex] [--spin] [--zombie]

mkdir `<STATE_DIR>/locks/<sha1 hex of KEY>.lock` (0700), then `heartbeat` (empty) and
`meta.json` (`{"token", "pid", "hostname", "createdAt"}`, JSON.stringify(…, null, 2)), both
created exclusively; then touches `heartbeat` every --heartbeat seconds (opencode: 20) from its
main loop. Prints `ready <pid> <lock dir>` once it holds the lock, and releases it (checks the
token, removes the directory) when stdin closes, as opencode does on a normal exit. Killed, it
leaves the directory behind, as opencode does. --futex parks the main thread on a lock that is
never released (no heartbeat, no CPU: the hung start-up); --spin burns CPU between heartbeats;
--zombie starts a child that exits and is never reaped.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

KEEP: list[object] = []


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def main() -> None:
    state_dir, key = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    hostname = args[args.index("--hostname") + 1] if "--hostname" in args else socket.gethostname()
    interval = float(args[args.index("--heartbeat") + 1]) if "--heartbeat" in args else 20.0
    locks = os.path.join(state_dir, "locks")
    os.makedirs(locks, exist_ok=True)
    path = os.path.join(locks, hashlib.sha1(key.encode()).hexdigest() + ".lock")
    os.mkdir(path, 0o700)
    token = uuid.uuid4().hex
    meta = {
        "token": token,
        "pid": os.getpid(),
        "hostname": hostname,
        "createdAt": datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }
    heartbeat = os.path.join(path, "heartbeat")
    os.close(os.open(heartbeat, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    fd = os.open(os.path.join(path, "meta.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, json.dumps(meta, indent=2).encode())
    os.close(fd)
    if "--zombie" in args:
        child = subprocess.Popen(["true"])  # kept, never waited for: a zombie once it exits
        KEEP.append(child)
        while _state(child.pid) != "Z":  # ready only once it is one
            time.sleep(0.01)

    def release() -> None:
        with open(os.path.join(path, "meta.json")) as f:
            if json.load(f)["token"] == token:
                shutil.rmtree(path)
        os._exit(0)

    threading.Thread(target=lambda: (sys.stdin.read(), release()), daemon=True).start()
    print("ready", os.getpid(), path, flush=True)
    if "--futex" in args:
        parked = threading.Lock()
        parked.acquire()
        parked.acquire()  # never returns
    next_beat = time.monotonic() + interval
    while True:
        if "--spin" in args:
            sum(range(10_000))
        else:
            time.sleep(max(0.0, min(1.0, next_beat - time.monotonic())))
        if time.monotonic() >= next_beat:
            os.utime(heartbeat)
            next_beat += interval


if __name__ == "__main__":
    main()
