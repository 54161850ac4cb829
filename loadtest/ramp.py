"""Step ramp: how many users when (loadtest/shapes.py's LoadTestShape), and where throughput stops growing."""
from __future__ import annotations


def step_target(elapsed_s: float, step_users: int, step_seconds: float, max_users: int,
                run_time_s: float | None = None) -> int | None:
    """Users wanted `elapsed_s` into the ramp: step_users, 2*step_users, ... up to max_users, each held
    step_seconds; None (stop) after the top step has been held, or after run_time_s if that comes first."""
    if step_users < 1 or step_seconds <= 0 or max_users < 1:
        raise ValueError(f"need step_users >= 1, step_seconds > 0, max_users >= 1; got {step_users}, "
                         f"{step_seconds}, {max_users}")
    steps = -(-max_users // step_users)  # ceil: the last step is max_users even if not a multiple
    if elapsed_s >= steps * step_seconds or (run_time_s and elapsed_s >= run_time_s):
        return None
    return min(max_users, (int(elapsed_s // step_seconds) + 1) * step_users)


def ramp_steps(history: list[dict], min_rows: int = 3) -> list[dict]:
    """Per user-count step of a ramp (loadtest.report.read_history rows): throughput from the request counters
    over the step, latency percentiles of its last row (the step's last ~10 s); a user count seen in fewer than
    `min_rows` rows was passed through while spawning and is skipped."""
    steps: list[dict] = []
    groups: list[list[dict]] = []
    for row in history:
        if row["users"] <= 0:
            continue
        if groups and groups[-1][0]["users"] == row["users"]:
            groups[-1].append(row)
        else:
            groups.append([row])
    previous_end = None
    for rows in groups:
        first, last = (previous_end or rows[0]), rows[-1]
        seconds = last["t"] - first["t"]
        requests = last["requests"] - first["requests"]
        previous_end = last
        if len(rows) < min_rows:  # passing through a user count while spawning
            continue
        steps.append({"users": last["users"], "seconds": round(seconds, 1),
                      "start_ts": first.get("ts"), "end_ts": last.get("ts"),
                      "rps": round(requests / seconds, 2) if seconds > 0 else None,
                      "failures": last["failures"] - first["failures"],
                      "p50_ms": last["p50_ms"], "p95_ms": last["p95_ms"], "p99_ms": last["p99_ms"]})
    return steps


def find_knee(steps: list[dict], tolerance: float = 0.05) -> dict | None:
    """The first step that reaches (1 - tolerance) of the best step throughput: more users than this
    add queueing (latency), not throughput. None when no step has a throughput."""
    measured = [s for s in steps if s.get("rps")]
    if not measured:
        return None
    best = max(s["rps"] for s in measured)
    return next(s for s in measured if s["rps"] >= (1 - tolerance) * best)
