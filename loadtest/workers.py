"""TorchServe backend workers under load: RSS and PID samples (soak), killing one and timing recovery (fault).

PIDs and states from the management API, memory from psutil; the row helpers are pure (tested on made-up rows).
"""
from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psutil

FIELDS = ("time", "elapsed_s", "worker", "pid", "status", "rss_mb")
FRONTEND = "frontend"


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of one process in MB (None if it is gone)."""
    if not pid:
        return None
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by the frontend
            return None
        return round(proc.memory_info().rss / 1e6, 1)
    except (psutil.Error, ValueError):
        return None


def worker_states(described: list[dict]) -> list[dict]:
    """[{"worker", "pid", "status"}] for every worker of every version in a describe-model answer."""
    return [{"worker": str(w.get("id", "?")), "pid": w.get("pid"), "status": w.get("status", "?")}
            for version in described for w in version.get("workers", [])]


def current_states(client) -> list[dict]:
    """worker_states of the model now; [] while the management API does not answer (a worker restarting)."""
    try:
        return worker_states(client.describe())
    except Exception:  # noqa: BLE001 - the gap is the data
        return []


def sample(client, started: float, frontend_pid: int | None = None) -> list[dict]:
    """One row per worker (and the Java frontend) with its RSS; no worker rows when the management API is silent."""
    now = time.time()
    states = current_states(client)
    if frontend_pid:
        states.append({"worker": FRONTEND, "pid": frontend_pid, "status": "UP" if rss_mb(frontend_pid) else "GONE"})
    return [{"time": round(now, 2), "elapsed_s": round(now - started, 2), **s, "rss_mb": rss_mb(s["pid"])}
            for s in states]


def append_rows(path: Path, rows: list[dict]) -> None:
    new = not Path(path).exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{**r, "elapsed_s": float(r["elapsed_s"]), "time": float(r["time"]),
                 "pid": int(r["pid"]) if r["pid"] else None,
                 "rss_mb": float(r["rss_mb"]) if r["rss_mb"] else None} for r in csv.DictReader(handle)]


def restarts(rows: list[dict]) -> int:
    """Worker PIDs that appeared after the first sample: each is a restarted (or added) backend worker."""
    rows = [r for r in rows if r["worker"] != FRONTEND]
    if not rows:
        return 0
    first_time = min(r["elapsed_s"] for r in rows)
    initial = {r["pid"] for r in rows if r["elapsed_s"] == first_time}
    return len({r["pid"] for r in rows if r["pid"]} - initial)


def total_rss_series(rows: list[dict], frontend: bool = False) -> list[tuple[float, float]]:
    """(elapsed_s, summed RSS MB) per sample time of the backend workers (or of the frontend)."""
    totals: dict[float, float] = {}
    for r in rows:
        if (r["worker"] == FRONTEND) == frontend and r["rss_mb"] is not None:
            totals[r["elapsed_s"]] = totals.get(r["elapsed_s"], 0.0) + r["rss_mb"]
    return sorted(totals.items())


def rss_growth(series: list[tuple[float, float]], warmup_s: float = 30.0,
               window: int = 5) -> tuple[float | None, float | None, float | None]:
    """(start MB, end MB, growth %) of an RSS series: the median of the first `window` samples taken after
    `warmup_s` against the median of the last `window` samples (Nones with fewer than two samples)."""
    after = [v for t, v in series if t >= warmup_s] or [v for _, v in series]
    if len(after) < 2:
        return None, None, None
    window = max(1, min(window, len(after) // 2))
    start, end = statistics.median(after[:window]), statistics.median(after[-window:])
    return round(start, 1), round(end, 1), (round((end - start) / start * 100, 2) if start else None)


def wait_recovered(client, before_pids: list[int], probe: Callable[[], bool], timeout: float = 120.0,
                   poll_s: float = 0.25, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> tuple[float | None, list[int]]:
    """Seconds from now until the model has as many READY workers as before the kill, one of them with a
    PID not in `before_pids` (the restarted worker), and `probe()` (one real prediction) succeeds.
    (None, pids last seen) if that does not happen within `timeout`."""
    start = clock()
    pids: list[int] = []
    while clock() - start < timeout:
        states = current_states(client)
        pids = [s["pid"] for s in states if s["pid"]]
        ready = [s["pid"] for s in states if s["status"] == "READY" and s["pid"]]
        if len(ready) >= len(before_pids) and set(ready) - set(before_pids):
            try:
                ok = probe()
            except Exception:  # noqa: BLE001
                ok = False
            if ok:
                return round(clock() - start, 2), pids
        sleep(poll_s)
    return None, pids
