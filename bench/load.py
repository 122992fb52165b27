"""Closed-loop load, latency statistics, and CPU / memory of a process tree (read from /proc)."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was observed)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # by part of the machine, with a meter

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.count / self.wall_s if self.wall_s else 0.0

    def p(self, pct: float) -> float:
        return percentile(self.latencies_ms, pct)


def closed_loop(
    call: Callable[[int], None],
    *,
    concurrency: int,
    requests_per_worker: int,
    make_state: Callable[[], object] | None = None,
    meter: CpuMeter | None = None,
) -> LoadResult:
    """`concurrency` threads each run `call` back to back; each call's wall time is one latency.

    `call(i)` raises to report an error. A per-thread state (an HTTP client) comes from make_state
    and is passed through a thread-local the caller's `call` reads via `state()`. `meter` reads the
    CPU of the timed part only (after every thread has made its state), into `result.cpu_s`.
    """
    result = LoadResult()
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)

    def worker(n: int) -> None:
        if make_state is not None:
            _local.state = make_state()
        start_barrier.wait()
        mine: list[float] = []
        errors: list[str] = []
        for i in range(requests_per_worker):
            t0 = time.perf_counter()
            try:
                call(n * requests_per_worker + i)
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the load
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            result.latencies_ms.extend(mine)
            result.errors.extend(errors)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    if meter is not None:
        meter.start()  # the threads are made and have their clients: their set-up is not the load
    start_barrier.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - t0
    if meter is not None:
        result.cpu_s = meter.stop()
    return result


_local = threading.local()


def state() -> object:
    return _local.state


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text().split()
            kids.extend(int(k) for k in text)
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        queue.extend(_children(current))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants (live ones), in seconds."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def _ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[11]) + int(fields[12])


def pids_named(name: str) -> list[int]:
    """Every process whose command name is `name` (e.g. all of PostgreSQL's backends)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return pids


class CpuMeter:
    """CPU seconds used by groups of processes between `start()` and `stop()`.

    A group is a callable that lists its pids at that moment (processes come and go: PostgreSQL
    starts a backend per connection); a process that appears during the interval counts whole, one
    that ends during it loses what it used since the start (rare here: connections are pooled).
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, int]] = {}

    def _snapshot(self) -> dict[str, dict[int, int]]:
        snap: dict[str, dict[int, int]] = {}
        for name, pids in self.groups.items():
            ticks = {pid: _ticks(pid) for pid in pids()}
            snap[name] = {pid: t for pid, t in ticks.items() if t is not None}
        return snap

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        return {
            name: sum(t - self._start[name].get(pid, 0) for pid, t in end[name].items()) / CLOCK_TICKS
            for name in self.groups
        }


def rss_mb(pid: int) -> float:
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except FileNotFoundError:
        return float("nan")
    return resident * PAGE_SIZE / (1024 * 1024)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
