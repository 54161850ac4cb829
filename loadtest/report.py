"""What Locust's own report lacks: the per-worker RSS chart, the ramp's step table, the docs block."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest import workers

DOCS_START, DOCS_END = "<!-- loadtest:start -->", "<!-- loadtest:end -->"
MODES = ("run", "ramp", "fault", "soak")  # the order of their blocks in the docs


def _num(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None  # "N/A" before the first request


def read_history(path: Path | str) -> list[dict]:
    """The Aggregated rows of Locust's `<prefix>_stats_history.csv`, as numbers, `t` in s from the first row.

    With --csv-full-history Locust writes the current-window (last ~10 s) percentiles in every row;
    without it the percentiles are cumulative since the start (python -m loadtest always passes it).
    """
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("Name") == "Aggregated"]
    if not rows:
        return []
    t0 = float(rows[0]["Timestamp"])
    out = [{"t": float(r["Timestamp"]) - t0, "ts": float(r["Timestamp"]), "users": int(float(r["User Count"])),
             "rps": _num(r["Requests/s"]) or 0.0, "fps": _num(r["Failures/s"]) or 0.0,
             "p50_ms": _num(r["50%"]), "p95_ms": _num(r["95%"]), "p99_ms": _num(r["99%"]),
             "requests": int(float(r["Total Request Count"])), "failures": int(float(r["Total Failure Count"]))}
           for r in rows]
    for row in out:  # Locust writes 0 for every percentile while its current window is still empty
        if row["p50_ms"] == row["p95_ms"] == row["p99_ms"] == 0:
            row["p50_ms"] = row["p95_ms"] = row["p99_ms"] = None
    return out


def plot_workers(rows: list[dict], out: Path | str, title: str, events: dict[str, float] | None = None) -> Path:
    """PNG: RSS per backend worker PID (and the frontend) over time; vertical lines at `events` (label -> s)."""
    if not rows:
        raise ValueError("no worker samples to plot")
    fig, (ax, front) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=(2, 1))
    series: dict[tuple[str, int], list[tuple[float, float]]] = {}  # (worker, pid) -> (seconds, RSS MB)
    for r in rows:
        if r["rss_mb"] is not None:
            series.setdefault((r["worker"], r["pid"]), []).append((r["elapsed_s"], r["rss_mb"]))
    for (worker, pid), points in series.items():
        target = front if worker == workers.FRONTEND else ax
        target.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=f"{worker} pid {pid}")
    ax.set_ylabel("backend worker RSS MB")
    front.set_ylabel("frontend RSS MB")
    front.set_xlabel("seconds")
    for label, at in (events or {}).items():
        for target in (ax, front):
            target.axvline(at, color="tab:red", linestyle=":")
        ax.annotate(label, (at, ax.get_ylim()[1]), color="tab:red", va="top")
    for target in (ax, front):
        target.grid(alpha=0.3)
        if target.get_legend_handles_labels()[0]:
            target.legend(loc="lower right", fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def endpoint_table(endpoints: list[dict], total: dict) -> list[str]:
    """Markdown rows: name, requests, failures, req/s, p50, p95, p99, max."""
    lines = ["| endpoint | requests | failed | req/s | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|---|"]
    for e in sorted(endpoints, key=lambda e: -e["requests"]) + [{**total, "name": "**all**", "method": ""}]:
        lines.append(f"| {(e['method'] + ' ') if e['method'] else ''}{e['name']} | {e['requests']} | {e['failures']} | "
                     f"{_fmt(e['rps'])} | {_fmt(e['p50_ms'], 0)} | {_fmt(e['p95_ms'], 0)} | {_fmt(e['p99_ms'], 0)} | "
                     f"{_fmt(e['max_ms'], 0)} |")
    return lines


def replace_block(text: str, start: str, end: str, block: str) -> str:
    """`text` with the part from `start` to `end` (markers included) replaced by `block`, or `block` appended."""
    if start in text and end in text and text.index(start) < text.index(end):
        return text[:text.index(start)] + block + text[text.index(end) + len(end):]
    return text.rstrip() + "\n\n" + block + "\n"


def mode_markers(mode: str) -> tuple[str, str]:
    return f"<!-- loadtest:{mode}:start -->", f"<!-- loadtest:{mode}:end -->"


def update_docs(path: Path | str, mode: str, lines: list[str]) -> Path:
    """Write this mode's block inside the loadtest section of docs/performance.md (blocks in MODES order)."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Performance\n"
    if DOCS_START not in text or DOCS_END not in text:
        intro = ("Written by `make loadtest-docs` (`python -m loadtest docs <mode>`) from the last "
                 "`python -m loadtest <mode>` run's reports/loadtest/<mode>/ (Locust's HTML report with its charts, "
                 "CSV, JSON: not committed); each mode replaces its own block.")
        header = [DOCS_START, "## Load tests (Locust, `python -m loadtest`)", "", intro, "", DOCS_END]
        text = replace_block(text, DOCS_START, DOCS_END, "\n".join(header))
    start, end = mode_markers(mode)
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        text = replace_block(text, start, end, block)
    else:  # before the first block of a later mode, else at the end of the section
        later = [m for m in (mode_markers(m)[0] for m in MODES[MODES.index(mode) + 1:]) if m in text]
        at = text.index(later[0] if later else DOCS_END)
        text = text[:at].rstrip() + "\n\n" + block + ("\n\n" if later else "\n") + text[at:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
