"""How much CPU other processes used while a load test ran (the machine may be shared).

Every few seconds every process's CPU time is read; the increase is split between this run (this process, its
children such as Locust, the TorchServe tree) and everything else. Timings taken while others used a sizeable
share of the cores are reported as measured under contention.
"""
from __future__ import annotations

import os
import threading
import time

import psutil


def snapshot() -> dict[int, tuple[str, float, float]]:
    """pid -> (name, user+system CPU seconds, create time) for every readable process."""
    out = {}
    for proc in psutil.process_iter(["name", "cpu_times", "create_time"]):
        times = proc.info.get("cpu_times")
        if times is not None:
            out[proc.pid] = (proc.info.get("name") or "?", times.user + times.system, proc.info.get("create_time"))
    return out


def deltas(before: dict, after: dict) -> dict[int, tuple[str, float]]:
    """CPU seconds each process used between two snapshots; pid + create time identify a process (pids are
    reused, names change), a new one counts all its CPU time so far."""
    out = {}
    for pid, (name, cpu, created) in after.items():
        prev = before.get(pid)
        used = cpu - prev[1] if prev and prev[2] == created else cpu
        if used > 0:
            out[pid] = (name, used)
    return out


def descendants(roots: list[int]) -> set[int]:
    pids = set()
    for root in roots:
        try:
            pids.update([root, *(child.pid for child in psutil.Process(root).children(recursive=True))])
        except psutil.Error:
            continue
    return pids


class CpuWatcher(threading.Thread):
    def __init__(self, roots: list[int] | None = None, every: float = 2.0):
        super().__init__(daemon=True, name="cpu-watcher")
        self.roots = list(roots or []) + [os.getpid()]
        self.every = every
        self._halt = threading.Event()
        self.ours_s = 0.0
        self.others: dict[str, float] = {}
        self.started = time.monotonic()
        self.wall_s = 0.0
        self.timeline: list[tuple[float, float, float]] = []

    def run(self) -> None:
        previous, previous_at = snapshot(), time.monotonic()
        ours = descendants(self.roots)
        while True:
            stopping = self._halt.wait(self.every)
            current, current_at = snapshot(), time.monotonic()
            ours |= descendants(self.roots)
            mine = other = 0.0
            for pid, (name, used) in deltas(previous, current).items():
                if pid in ours:
                    mine += used
                else:
                    other += used
                    self.others[name] = self.others.get(name, 0.0) + used
            self.ours_s += mine
            if current_at > previous_at:  # (unix time, our cores, other cores) over the interval
                interval = current_at - previous_at
                self.timeline.append((round(time.time(), 2), round(mine / interval, 3), round(other / interval, 3)))
            self.wall_s = current_at - self.started
            previous, previous_at = current, current_at
            if stopping:
                return

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.summary = self.result()

    def result(self) -> dict:
        """Stop sampling; average cores used by this run and by other processes (with the busiest names)."""
        self._halt.set()
        self.join(timeout=30)
        wall = max(self.wall_s, 1e-9)
        busiest = sorted(self.others.items(), key=lambda kv: -kv[1])[:3]
        return {"cores": os.cpu_count(), "seconds": round(self.wall_s, 1), "ours_cores": round(self.ours_s / wall, 2),
                "others_cores": round(sum(self.others.values()) / wall, 2),
                "busiest_others": [{"name": n, "cores": round(s / wall, 2)} for n, s in busiest],
                "timeline": [list(row) for row in self.timeline]}


def others_between(timeline: list, start: float, end: float) -> float | None:
    """Mean cores used by other processes over the timeline intervals ending in [start, end] (unix times)."""
    values = [other for at, _, other in timeline if start <= at <= end]
    return round(sum(values) / len(values), 2) if values else None


def describe(result: dict, threshold: float = 0.5) -> str:
    """One sentence for the docs: was the machine shared while this ran?"""
    others = result["others_cores"]
    who = ", ".join(f"{b['name']} {b['cores']:.2f}" for b in result["busiest_others"]) or "none"
    text = (f"during the run this test (Locust + TorchServe) used {result['ours_cores']:.2f} of {result['cores']} "
            f"cores and other processes {others:.2f} (busiest: {who})")
    if others >= threshold:
        return f"measured under CPU contention: {text}"
    return f"machine otherwise mostly idle (kernel threads and background only): {text}"
