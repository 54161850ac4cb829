"""`python -m loadtest.report MODE`: what Locust's own report lacks, read from the files Locust wrote.

After `locust --config loadtest/MODE.conf` (make loadtest*): prints the run's summary line, the ramp's steps
and knee (from Locust's stats history), draws the worker RSS chart (soak, fault) and writes report.json beside
Locust's files. With --docs it writes MODE's block of docs/performance.md from them (make loadtest-docs).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.report import describe_machine, machine, model_line, write_block
from loadtest import workers
from loadtest.ramp import find_knee, ramp_steps

ROOT = Path(__file__).resolve().parents[1]
MODES = ("run", "ramp", "soak", "fault")
PREFIX = "locust"  # the csv / json-file prefix of loadtest/<mode>.conf
TITLES = {"run": "Steady load", "ramp": "Step ramp", "soak": "Soak", "fault": "Fault injection"}


def _num(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None  # "N/A" before the first request


def read_history(path: Path | str) -> list[dict]:
    """The Aggregated rows of Locust's `<prefix>_stats_history.csv`, as numbers, `t` in s from the first row.

    With --csv-full-history Locust writes the current-window (last ~10 s) percentiles in every row;
    without it the percentiles are cumulative since the start (every loadtest/<mode>.conf sets it).
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
    lines = ["| endpoint | requests | failed | req/s | p50 ms | p95 ms | p99 ms | max ms |",
             "|---|---|---|---|---|---|---|---|"]
    for e in sorted(endpoints, key=lambda e: -e["requests"]) + [{**total, "name": "**all**", "method": ""}]:
        lines.append(f"| {(e['method'] + ' ') if e['method'] else ''}{e['name']} | {e['requests']} | {e['failures']} | "
                     f"{_fmt(e['rps'])} | {_fmt(e['p50_ms'], 0)} | {_fmt(e['p95_ms'], 0)} | {_fmt(e['p99_ms'], 0)} | "
                     f"{_fmt(e['max_ms'], 0)} |")
    return lines


def analyse(mode: str, out: Path) -> dict:
    """report.json: Locust's summary (written by the locustfile's gate), the ramp's steps and knee, the chart."""
    summary = json.loads((out / f"{PREFIX}_summary.json").read_text())
    result = {"mode": mode, "summary": summary}
    m = summary["metrics"]
    print(f"{mode}: {m['requests']} requests, {m['failures']} failed, {_fmt(m['rps'])} req/s, p50 "
          f"{_fmt(m['p50_ms'], 0)} ms, "
          f"p95 {_fmt(m['p95_ms'], 0)} ms, p99 {_fmt(m['p99_ms'], 0)} ms; accuracy {_fmt(m.get('accuracy'), 3)} on "
          f"labelled images vs {_fmt(m.get('offline_accuracy'), 3)} offline; "
          f"gate {'PASSED' if summary['passed'] else 'FAILED'}")
    if mode == "ramp":
        steps = ramp_steps(read_history(out / f"{PREFIX}_stats_history.csv"))
        result.update(steps=steps, knee=find_knee(steps))
        for s in steps:
            print(f"step {s['users']:>3} users: {_fmt(s['rps'])} req/s, p95 {_fmt(s['p95_ms'], 0)} ms, "
                  f"{s['failures']} failed")
        knee = result["knee"]
        print(f"knee: {knee['users']} users, {knee['rps']} req/s (first step within 5 % of the best throughput)"
              if knee else "knee: not found (no step measured)")
    samples = out / f"{PREFIX}_workers.csv"
    if samples.is_file():
        fault = summary.get("fault") or {}
        events = {"kill": fault["killed_at_s"]} if fault.get("killed_at_s") is not None else {}
        if events and fault.get("recovery_s") is not None:
            events["recovered"] = fault["killed_at_s"] + fault["recovery_s"]
        chart = plot_workers(workers.read_rows(samples), out / "workers.png", f"{mode}: TorchServe processes", events)
        print(f"worker chart: {chart}")
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"reports: {out}/ (report.html is Locust's, with its charts)")
    return result


def docs_lines(result: dict, out: Path) -> list[str]:
    """docs/performance.md's block of one run: numbers the run measured, conditions detected now."""
    summary, mode = result["summary"], result["mode"]
    m, acc = summary["metrics"], summary["accuracy"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((out / "report.json").stat().st_mtime))
    lines = [f"### {TITLES[mode]} (`make loadtest{'' if mode == 'run' else '-' + mode}`, loadtest/{mode}.conf)", "",
             f"Run {when}. Machine: {describe_machine(machine())}. {model_line(summary.get('model_meta') or {})}.",
             (f"{summary['n_images']} images from `{summary['images']}` ({summary['n_labelled_images']} with the label "
              f"in their path); up to {summary['peak_users']} users; Locust and TorchServe on the same machine."),
             *([(f"Machine load (1-min load average) {summary['load']['before']} before, "
                 f"{summary['load']['after']} after.")]
               if summary.get("load") else []), ""]
    lines += endpoint_table(summary["endpoints"], m)
    lines += ["", (f"Accuracy on the labelled images: {_fmt(acc['accuracy'], 3)} ({acc['correct']}/{acc['labelled']}); "
                   f"the served model's offline test accuracy: {_fmt(m.get('offline_accuracy'), 3)}; schema errors "
                   f"{m.get('schema_errors', 0)}; token refreshes {m.get('token_refreshes', 0)}.")]
    if result.get("steps"):
        lines += ["", "| users | seconds | req/s | failed | p50 ms | p95 ms | p99 ms |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['users']} | {s['seconds']:g} | {_fmt(s['rps'])} | {s['failures']} | {_fmt(s['p50_ms'], 0)} | "
                  f"{_fmt(s['p95_ms'], 0)} | {_fmt(s['p99_ms'], 0)} |" for s in result["steps"]]
        knee = result.get("knee")
        lines += ["",
                  f"Knee: {knee['users']} users, {knee['rps']} req/s (first step within 5 % of the best throughput)."
                  if knee else "Knee: not found."]
    if "rss_growth_pct" in m:
        lines += ["", (f"Backend worker RSS {_fmt(m.get('rss_start_mb'))} -> {_fmt(m.get('rss_end_mb'))} MB (growth "
                       f"{_fmt(m.get('rss_growth_pct'), 2)} %), frontend RSS growth "
                       f"{_fmt(m.get('frontend_rss_growth_pct'), 2)} %, worker restarts {m.get('worker_restarts')}.")]
    fault = summary.get("fault") or {}
    if fault.get("killed_pid"):
        lines += ["", (f"Killed worker pid {fault['killed_pid']} at {fault.get('killed_at_s')} s; recovered: "
                       f"{m.get('recovered')} in {_fmt(m.get('recovery_s'), 2)} s; failed requests {m['failures']} "
                       f"({m.get('failures_before_fault')} before the kill, {m.get('failures_during_recovery')} while "
                       f"recovering, {m.get('failures_after_recovery')} after).")]
    checks = "; ".join(f"{'PASS' if c['ok'] else 'FAIL'} {c['text']}" for c in summary["checks"])
    lines += ["", f"Gate: **{'PASSED' if summary['passed'] else 'FAILED'}** ({checks})."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--out", type=Path, help="the run's folder (default reports/loadtest/<mode>, the config's)")
    parser.add_argument("--docs", type=Path, nargs="?", const=ROOT / "docs" / "performance.md",
                        help="also write the mode's block of this markdown file (default docs/performance.md)")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "reports" / "loadtest" / args.mode
    if not (out / f"{PREFIX}_summary.json").is_file():
        print(f"loadtest report: no {out / (PREFIX + '_summary.json')}: run `make loadtest"
              f"{'' if args.mode == 'run' else '-' + args.mode}` first (or pass --out)", file=sys.stderr)
        return 2
    result = analyse(args.mode, out)
    if args.docs:
        write_block(args.docs, docs_lines(result, out), f"loadtest:{args.mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
