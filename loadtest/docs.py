"""The docs/performance.md block of one load-test run, from its report folder (`python -m loadtest docs MODE`).

Every number in the block is one the run measured (locust_summary.json, report.json) or a condition
detected now (benchmarks.conditions: CPU model, GPU) or during the run (other processes' CPU).
"""
from __future__ import annotations

import time
from pathlib import Path

from benchmarks.conditions import describe_machine, machine, model_line
from loadtest import contention
from loadtest.report import _fmt, endpoint_table

TITLES = {"run": "Steady load", "ramp": "Step ramp", "soak": "Soak", "fault": "Fault injection"}


def docs_lines(result: dict, out: Path) -> list[str]:
    summary, cpu, mode = result["summary"], result["cpu"], result["mode"]
    m, acc = summary["metrics"], summary["accuracy"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((out / "report.json").stat().st_mtime))
    lines = [f"### {TITLES[mode]} (`python -m loadtest {mode}`, loadtest/{mode}.conf)", "",
             f"Run {when}. Machine: {describe_machine(machine())}. {model_line(summary.get('model_meta') or {})}.",
             (f"{summary['n_images']} images from `{summary['images']}` ({summary['n_labelled_images']} with the label "
              f"in their path); up to {summary['peak_users']} users; Locust and TorchServe on the same machine."),
             f"CPU: {contention.describe(cpu)}.", ""]
    lines += endpoint_table(summary["endpoints"], m)
    lines += ["", (f"Accuracy on the labelled images: {_fmt(acc['accuracy'], 3)} ({acc['correct']}/{acc['labelled']}); "
                   f"the served model's offline test accuracy: {_fmt(m.get('offline_accuracy'), 3)}; schema errors "
                   f"{m.get('schema_errors', 0)}; token refreshes {m.get('token_refreshes', 0)}.")]
    if result.get("steps"):
        lines += ["", "| users | seconds | req/s | failed | p50 ms | p95 ms | p99 ms | other processes' CPU cores |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['users']} | {s['seconds']:g} | {_fmt(s['rps'])} | {s['failures']} | {_fmt(s['p50_ms'], 0)} | "
                  f"{_fmt(s['p95_ms'], 0)} | {_fmt(s['p99_ms'], 0)} | {_fmt(s['others_cores'], 2)} |" for s in result["steps"]]
        knee = result.get("knee")
        lines += ["", f"Knee: {knee['users']} users, {knee['rps']} req/s (first step within 5 % of the best throughput)."
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
