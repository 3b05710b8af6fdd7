"""Holder health and the wait-for graph, derived from a window of observations. Pure.

Health: what a process did across the window (state, threads and where they sleep, CPU used,
times scheduled). The wait-for graph: edges waiter -> holder (Observation.waits, which the
collector pairs from the lock table's waiter lines on every file), kept when they persist across
the window. SQLite itself
never blocks in the kernel (it polls with F_SETLK and sleeps in its busy handler), so a SQLite
waiter shows no edge: `likely_waiting` infers one from threads sleeping in nanosleep, and says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from sqlprobe.model import (
    WAIT_FILE_LOCK,
    WAIT_NANOSLEEP,
    Observation,
    ProcSample,
    ThreadSample,
)


class Health(NamedTuple):
    """What one process did across the window."""

    pid: int
    state: str  # at the last sample
    states: str  # every state seen, in order of first sight ("S", "RS", "T")
    samples: int
    threads: int | None  # at the last sample with threads; None when threads were not sampled
    thread_summary: str | None  # "8 threads: futex_do_wait x7, ep_poll x1"
    cpu_s: float | None  # CPU used during the window; None with a single sample
    switches: int | None  # times its threads were put on a CPU during the window


def health(pid: int, observations: Iterable[Observation]) -> Health | None:
    samples = [s for obs in observations if (s := obs.proc(pid)) is not None]
    if not samples:
        return None
    first, last = samples[0], samples[-1]
    threaded = [s for s in samples if s.threads]
    cpu = switches = None
    if len(threaded) >= 2 and _same_threads(threaded[0], threaded[-1]):
        cpu = sum(t.cpu_ns for t in threaded[-1].threads) - sum(
            t.cpu_ns for t in threaded[0].threads
        )
        cpu = round(cpu / 1e9, 4)
        switches = sum(t.scheduled for t in threaded[-1].threads) - sum(
            t.scheduled for t in threaded[0].threads
        )
    elif len(samples) >= 2:
        cpu = round(last.cpu_s - first.cpu_s, 4)
    top = threaded[-1] if threaded else None
    return Health(
        pid=pid,
        state=last.state,
        states="".join(dict.fromkeys(s.state for s in samples)),
        samples=len(samples),
        threads=len(top.threads) if top else None,
        thread_summary=summarize_threads(top.threads) if top else None,
        cpu_s=cpu,
        switches=switches,
    )


def _same_threads(a: ProcSample, b: ProcSample) -> bool:
    return {t.tid for t in a.threads} == {t.tid for t in b.threads}


def summarize_threads(threads: Iterable[ThreadSample]) -> str:
    """`8 threads: futex_do_wait x7, ep_poll x1`; a running thread counts as `running`."""
    threads = list(threads)
    where = Counter(t.wchan or ("running" if t.state == "R" else t.state) for t in threads)
    parts = ", ".join(f"{name} x{n}" for name, n in where.most_common())
    noun = "thread" if len(threads) == 1 else "threads"
    return f"{len(threads)} {noun}: {parts}"


# -- the wait-for graph ---------------------------------------------------------------------------


def persistent_edges(observations: Iterable[Observation]) -> frozenset[tuple[int, int]]:
    """The wait-for edges present in every observation that read /proc/locks."""
    common: set[tuple[int, int]] | None = None
    for obs in observations:
        if obs.waits is not None:
            common = set(obs.waits) if common is None else common & set(obs.waits)
    return frozenset(common or ())


def cycle_through(pid: int, edges: Iterable[tuple[int, int]]) -> list[int] | None:
    """A wait-for cycle that `pid` is on, as [pid, b, ...] (pid waits on b ... waits on pid)."""
    out: dict[int, list[int]] = {}
    for waiter, holder in edges:
        out.setdefault(waiter, []).append(holder)
    path = [pid]
    seen = {pid}

    def walk(node: int) -> list[int] | None:
        for nxt in sorted(out.get(node, ())):
            if nxt == pid:
                return list(path)
            if nxt not in seen:
                seen.add(nxt)
                path.append(nxt)
                if found := walk(nxt):
                    return found
                path.pop()
        return None

    return walk(pid)


def waits_on(pid: int, edges: Iterable[tuple[int, int]]) -> list[int]:
    return sorted({holder for waiter, holder in edges if waiter == pid})


def kernel_lock_wait(pid: int, observations: Iterable[Observation]) -> bool:
    """Whether some thread of `pid` slept in a file-lock wait in every sample with threads."""
    threaded = [s for obs in observations if (s := obs.proc(pid)) and s.threads]
    return len(threaded) >= 2 and all(
        any(t.waiting == WAIT_FILE_LOCK for t in s.threads) for s in threaded
    )


def likely_waiting(pid: int, observations: Iterable[Observation]) -> bool:
    """An inference: some thread of `pid` slept in nanosleep in most samples of the window,
    as SQLite's busy handler does between two attempts at a lock it cannot get."""
    threaded = [s for obs in observations if (s := obs.proc(pid)) and s.threads]
    if len(threaded) < 2:
        return False
    napping = sum(any(t.waiting == WAIT_NANOSLEEP for t in s.threads) for s in threaded)
    return napping * 2 > len(threaded)
