"""sqlprobe's speed, side by side with what a user would otherwise reach for (not a test).

    .venv/bin/python benchmarks/run.py            # writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/run.py --quick    # fewer repetitions, no 2000-process case

Every command of one comparison runs with the same interpreter, interleaved (A B C A B C ...)
so that a slow moment of the machine hits all of them alike, after warm-up runs; medians,
min/max and ratios are reported. Python's bytecode cache is left on (PYTHONDONTWRITEBYTECODE is
removed from the environment), as on a normal install.

1. `sqlprobe check --quiet` on a clear data dir vs `python -c "import click"` and `python -c pass`.
2. `sqlprobe check --quiet` (and with `--thorough`) with N extra processes each holding F
   descriptors vs `fuser -v` and `lsof` on the same database (spawned here with fork+exec of
   `sleep`, killed at the end); as root, also with the extra processes run as another user and
   the database 0600, which sqlprobe skips.
   In 1 and 2, `SQLPROBE_BACKEND=portable sqlprobe check --quiet` (the portable backend: psutil
   and F_GETLK) runs in the same rounds as the default (the /proc backend on Linux), and the
   ratio portable / Linux is reported.
3. The same check on a 2 GiB database with a 100,000-frame WAL vs a 100 KB one, both with the
   WAL index stale (nobody holds the database) and with a live holder.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
PY = sys.executable
SQLPROBE = shutil.which("sqlprobe", path=str(Path(PY).parent)) or "sqlprobe"
ENV = {
    k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "SQLPROBE_BACKEND")
}
# The portable backend, forced on Linux; the command of that name runs with this environment.
PORTABLE = "SQLPROBE_BACKEND=portable sqlprobe check --quiet"
ENVS = {PORTABLE: {**ENV, "SQLPROBE_BACKEND": "portable"}}
NOBODY = 65534

Timing = dict[str, list[float]]


def quiet_check(path: Path) -> list[str]:
    return [SQLPROBE, "check", "--quiet", str(path)]


def measure(commands: dict[str, Sequence[str]], reps: int, warmup: int = 3) -> Timing:
    """Wall time of each command, interleaved, in seconds. A command named in ENVS runs with
    that environment (the portable backend), every other with ENV."""
    times: Timing = {name: [] for name in commands}
    for i in range(warmup + reps):
        for name, argv in commands.items():
            env = ENVS.get(name, ENV)
            started = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


def table(times: Timing, base: str | None, others: Sequence[str] = ()) -> list[str]:
    """A markdown table: median, min, max, and the ratio of medians to `base` and `others`."""
    heads = ["command", "median ms", "min ms", "max ms"]
    refs = [r for r in (base, *others) if r]
    heads += [f"÷ {r}" for r in refs]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        cells = [
            f"`{name}`",
            f"{med[name] * 1e3:.1f}",
            f"{min(ts) * 1e3:.1f}",
            f"{max(ts) * 1e3:.1f}",
        ]
        cells += [f"{med[name] / med[r]:.2f}" for r in refs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ratio(times: Timing, a: str, b: str) -> float:
    return statistics.median(times[a]) / statistics.median(times[b])


def paired(times: Timing, a: str, b: str) -> tuple[float, float, float]:
    """Per round, `a` ÷ `b` (each run against the one beside it): median and quartiles."""
    each = sorted(x / y for x, y in zip(times[a], times[b], strict=True))
    mid, low, high = (each[int(len(each) * q)] for q in (0.5, 0.25, 0.75))
    return mid, low, high


def backends(times: Timing, where: str) -> str:
    """The portable backend ÷ the Linux one, as a line of RESULTS.md (and of the output)."""
    linux = "sqlprobe check --quiet"
    mid, low, high = paired(times, PORTABLE, linux)
    return (
        f"- portable backend ÷ Linux backend, {where}: **{ratio(times, PORTABLE, linux):.2f}**"
        f" (medians; per round {mid:.2f}, quartiles {low:.2f} to {high:.2f})"
    )


def verdict(value: float, target: float, what: str) -> str:
    mark = "met" if value <= target else "NOT met"
    return f"- {what}: **{value:.2f}** (target ≤ {target}) — {mark}"


# -- fixtures ---------------------------------------------------------------------------------


def small_db(directory: Path) -> Path:
    """A ~100 KB opencode-like database in WAL mode, closed (nobody holds it)."""
    db = directory / "opencode.db"
    conn = sqlite3.connect(db)
    conn.execute("pragma journal_mode=wal")
    conn.execute("create table session(id integer primary key, data blob)")
    conn.executemany("insert into session(data) values (?)", [(b"x" * 3000,)] * 30)
    conn.commit()
    conn.close()
    return db


BIG_WAL_WRITER = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("pragma page_size=4096")
conn.execute("pragma journal_mode=wal")
conn.execute("pragma wal_autocheckpoint=0")
conn.execute("pragma synchronous=off")
conn.execute("pragma cache_size=-65536")
conn.execute("create table t(x)")
conn.execute("begin")
frames = int(sys.argv[2])
step = 5000
for start in range(0, frames, step):
    conn.execute(
        "with recursive n(i) as (select 1 union all select i + 1 from n where i < ?)"
        " insert into t select zeroblob(4000) from n", (min(step, frames - start),))
    conn.execute("commit")
    conn.execute("begin")
conn.execute("commit")
os._exit(0)  # die without closing: the WAL and its index stay, as after a crash
"""


def big_db(directory: Path, frames: int, size: int) -> Path:
    """A database of `size` bytes (sparse) whose WAL has about `frames` committed frames."""
    db = directory / "opencode.db"
    subprocess.run([PY, "-c", BIG_WAL_WRITER, str(db), str(frames)], check=True)
    with open(db, "r+b") as f:
        f.truncate(size)  # sparse: a 2 GiB file costs no disk
    return db


@contextmanager
def holders(count: int, fds: int, directory: Path, uid: int | None = None) -> Iterator[None]:
    """`count` processes (sleep) holding `fds` descriptors each, on files in `directory`;
    running as `uid` when given (root only)."""
    paths = [directory / f"held-{i}.txt" for i in range(fds)]
    for p in paths:
        p.write_bytes(b"")
    opened = [os.open(p, os.O_RDONLY) for p in paths]
    for fd in opened:
        os.set_inheritable(fd, True)
    pids = []
    try:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:  # the child: keep the inherited descriptors, become `sleep`
                try:
                    if uid is not None:
                        os.setgroups([])
                        os.setgid(uid)
                        os.setuid(uid)
                    os.execv("/bin/sleep", ["sleep", "3600"])
                finally:
                    os._exit(127)
            pids.append(pid)
        time.sleep(0.5)
        yield
    finally:
        for fd in opened:
            os.close(fd)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            os.waitpid(pid, 0)


@contextmanager
def live_holder(db: Path) -> Iterator[None]:
    """A process with the database open in WAL mode and idle (holding DMS and SHARED)."""
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1]); c.execute('select count(*) from sqlite_schema')\n"
        "print('ready', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [PY, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout and proc.stdout.readline().startswith("ready")
        yield
    finally:
        proc.kill()
        proc.wait()


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = [line.strip() for line in (out.stdout + out.stderr).strip().splitlines()]
    named = [line for line in text if "revision" in line.lower() or "version" in line.lower()]
    revision = [line for line in named if any(ch.isdigit() for ch in line)]
    return (revision or text or ["?"])[0]


def machine() -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    mem = next(
        line.split()[1]
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return [
        f"- {platform.system()} {platform.release()}, {platform.machine()}",
        f"- CPU: {cpu}, {len(os.sched_getaffinity(0))} usable cores;"
        f" {int(mem) // 1024 // 1024} GiB of memory",
        f"- Python {platform.python_version()} ({PY})",
        f"- fuser: {tool_version(['fuser', '-V'])}; lsof: {tool_version(['lsof', '-v'])}",
        f"- run as uid {os.getuid()}, {time.strftime('%Y-%m-%d %H:%M')}",
    ]


# -- the three comparisons -------------------------------------------------------------------------


def startup(reps: int, before: str | None = None) -> tuple[list[str], list[str]]:
    """`before`: the `sqlprobe` of another install (an earlier commit), timed in the same
    interleaved rounds: what a change cost, against this machine's noise."""
    commands = {
        "python -c pass": [PY, "-c", "pass"],
        'python -c "import click"': [PY, "-c", "import click"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "opencode"
        data.mkdir()
        small_db(data)
        commands["sqlprobe check --quiet"] = quiet_check(data)
        commands[PORTABLE] = quiet_check(data)
        if before:
            commands["the same, before"] = [before, *quiet_check(data)[1:]]
        times = measure(commands, reps)
    r = ratio(times, "sqlprobe check --quiet", 'python -c "import click"')
    lines = table(times, 'python -c "import click"', ["python -c pass", "sqlprobe check --quiet"])
    if before:
        mid, low, high = paired(times, "sqlprobe check --quiet", "the same, before")
        lines += [
            "",
            f"`the same, before` is `{before}`. Per round, this check ÷ that one: median"
            f" **{mid:.3f}** (quartiles {low:.3f} to {high:.3f}).",
        ]
    return lines, [
        verdict(r, 1.3, 'clear data dir, ÷ `python -c "import click"`'),
        backends(times, "clear data dir"),
    ]


def descriptors(
    counts: Sequence[int], fds: int, reps: int, rounds: int, before: str | None = None
) -> tuple[list[str], list[str]]:
    lines, targets = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "opencode"
        data.mkdir()
        db = small_db(data)
        commands = {
            "sqlprobe check --quiet": quiet_check(data),
            PORTABLE: quiet_check(data),
            "sqlprobe check --quiet --thorough": [*quiet_check(data), "--thorough"],
            "fuser -v": ["fuser", "-v", str(db)],
            "lsof": ["lsof", str(db)],
        }
        if before:
            commands["the same, before"] = [before, *quiet_check(data)[1:]]
        with live_holder(db):
            for count in counts:
                # The largest case decides a target: measured in rounds, each with freshly
                # started processes, so that one lucky or unlucky moment does not decide it.
                times: Timing = {name: [] for name in commands}
                per_round = []
                for _ in range(rounds if count == max(counts) else 1):
                    with holders(count, fds, Path(tmp)):
                        measured = measure(commands, reps, warmup=1)
                    per_round.append(ratio(measured, "sqlprobe check --quiet", "fuser -v"))
                    for name, ts in measured.items():
                        times[name] += ts
                lines += ["", f"{count} extra processes x {fds} descriptors:", ""]
                lines += table(times, "fuser -v", ["lsof", "sqlprobe check --quiet"])
                lines += ["", backends(times, f"{count} x {fds} descriptors")]
                if len(per_round) > 1:
                    lines += [
                        "",
                        f"{len(per_round)} rounds of {reps} runs (fresh processes each); sqlprobe ÷"
                        f" fuser per round: {', '.join(f'{r:.3f}' for r in per_round)}",
                    ]
                if count == max(counts):
                    what = f"{count} x {fds} descriptors"
                    targets.append(
                        verdict(
                            ratio(times, "sqlprobe check --quiet", "fuser -v"),
                            0.5,
                            f"{what}, ÷ `fuser -v`",
                        )
                    )
                    targets.append(
                        verdict(
                            ratio(times, "sqlprobe check --quiet", "lsof"), 0.2, f"{what}, ÷ `lsof`"
                        )
                    )
                    targets.append(backends(times, what))
        if os.geteuid() == 0:
            lines += other_users(max(counts), fds, reps, Path(tmp))
        else:
            lines += ["", "(Processes of another user: skipped, this needs root to start them.)"]
    return lines, targets


def other_users(count: int, fds: int, reps: int, tmp: Path) -> list[str]:
    """The same scan when the extra processes belong to another user and the database is 0600:
    sqlprobe skips them (they could not have opened it), `--thorough` and the others do not."""
    data = tmp / "private"
    data.mkdir()
    db = small_db(data)
    db.chmod(0o600)  # SQLite gives the -wal and -shm the database's mode
    with live_holder(db), holders(count, fds, tmp, uid=NOBODY):
        times = measure(
            {
                "sqlprobe check --quiet": quiet_check(data),
                "sqlprobe check --quiet --thorough": [*quiet_check(data), "--thorough"],
                "fuser -v": ["fuser", "-v", str(db)],
                "lsof": ["lsof", str(db)],
            },
            reps,
            warmup=1,
        )
    return [
        "",
        f"{count} extra processes of another user (nobody) x {fds} descriptors, the database"
        " 0600 (sqlprobe skips them and says so; `--thorough` scans them):",
        "",
        *table(times, "fuser -v", ["lsof"]),
    ]


def sizes(frames: int, reps: int) -> tuple[list[str], list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small"
        big = Path(tmp) / "big"
        small.mkdir()
        big.mkdir()
        small_db(small)
        big_path = big_db(big, frames, 2 << 30)
        wal = Path(f"{big_path}-wal").stat().st_size
        check = {
            "small (100 KB, no WAL)": quiet_check(small),
            "2 GiB + WAL, index stale": quiet_check(big),
        }
        stale = measure(check, reps)
        # A live holder on each (the big one recovers the WAL first): both indexes are valid.
        with live_holder(small / "opencode.db"), live_holder(big_path):
            live = measure(
                {
                    "small, live holder": check["small (100 KB, no WAL)"],
                    "2 GiB + WAL, live holder": quiet_check(big),
                },
                reps,
            )
        probe = subprocess.run(
            [SQLPROBE, "check", "--json", str(big)], capture_output=True, text=True, env=ENV
        ).stdout
    lines = [
        f"The big database: a 2 GiB sparse file, and a WAL of {wal / 2**20:.0f} MiB written by"
        f" SQLite in one process that then died ({frames:,} pages).",
        "",
        *table(stale, "small (100 KB, no WAL)"),
        "",
        *table(live, "small, live holder"),
        "",
        "What the stale check reported for the big WAL (from `--json`):",
        "",
        "```",
        *[
            line
            for line in probe.splitlines()
            if any(k in line for k in ('"frames"', '"verified_frames"', '"index"', '"file_size"'))
        ],
        "```",
    ]
    targets = [
        verdict(
            ratio(stale, "2 GiB + WAL, index stale", "small (100 KB, no WAL)"),
            1.1,
            "2 GiB database + 100k-frame WAL, stale index, ÷ small",
        ),
        verdict(
            ratio(live, "2 GiB + WAL, live holder", "small, live holder"),
            1.1,
            "2 GiB database + 100k-frame WAL, live holder, ÷ small",
        ),
    ]
    return lines, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, 500 processes")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument(
        "--before",
        metavar="SQLPROBE",
        help="the sqlprobe command of another install (an earlier commit), timed beside this one",
    )
    args = parser.parse_args()
    reps = 7 if args.quick else 31
    counts = [500] if args.quick else [500, 2000]
    sections = []
    targets: list[str] = []
    for title, (lines, found) in (
        ("1. Start-up: a clear data dir", startup(reps, args.before)),
        (
            "2. The holder scan: many processes with many descriptors",
            descriptors(counts, 50, 3 if args.quick else 7, 1 if args.quick else 3, args.before),
        ),
        ("3. Database and WAL size", sizes(100_000, reps)),
    ):
        sections += [f"## {title}", "", *lines, ""]
        targets += found
        print(f"== {title}", *lines, *found, sep="\n", flush=True)
    command = (
        f"{Path(PY).relative_to(ROOT) if Path(PY).is_relative_to(ROOT) else PY} benchmarks/run.py"
    )
    if args.quick:
        command += " --quick"
    text = [
        "# sqlprobe benchmarks",
        "",
        f"Reproduce with `{command}` (from the repository root, after the README's install).",
        "Wall time per command, interleaved runs, medians; ratios are of medians.",
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Targets",
        "",
        *targets,
        "",
        *sections,
    ]
    Path(args.out).write_text("\n".join(text) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
