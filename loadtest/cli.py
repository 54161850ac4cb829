"""`python -m loadtest run|ramp|soak|fault`: Locust against TorchServe, with reports and a quality gate.

  run    steady load: --users users for --duration seconds (default 16 users, 60 s)
  ramp   step ramp (loadtest/shapes.py): --step-users more users every --step-seconds up to --users;
         prints the throughput/latency of every step and the knee (where throughput stops growing)
  soak   long steady run (default 10 min) that also samples backend worker RSS and PIDs:
         RSS growth % and worker restarts, CSV + PNG
  fault  steady load during which one backend worker is SIGKILLed (--kill-after s); TorchServe restarts
         it. Reports the failed requests and the recovery time; the gate is "the worker recovered"
  report redraw the charts and rewrite the docs block of an earlier run from its report folder

If no TorchServe runs from --run-dir, one is started with --model-store/--mar (on --free-ports, or the
ports of config.properties, or the ones given) and stopped at the end. Locust runs headless; its CSV,
HTML and JSON reports, a throughput/latency PNG and <prefix>_summary.json go to reports/loadtest/<mode>/.
Thresholds: loadtest/thresholds.yaml (section = mode), checked by the locustfile when Locust quits;
the exit status is Locust's: 0 when every threshold is met. The results also replace this mode's block
in the load-test section of docs/performance.md (--no-docs to skip), with a note on how busy the CPU
was with other processes meanwhile.

  python -m loadtest run --run-dir /tmp/lt --free-ports --users 16 --duration 60
  python -m loadtest ramp --step-users 2 --step-seconds 15 --users 24
  python -m loadtest run --images ../photos --min-rps 20        # your own photos; cats/x.jpg or cat.1.jpg
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from catsdogs.contract import RUN_DIR as DEFAULT_RUN_DIR
from loadtest import contention, report, workers
from loadtest.gate import DEFAULT_THRESHOLDS
from loadtest.ramp import find_knee, ramp_steps
from serving.config import DEFAULT_CONFIG, REPO_ROOT

LOCUSTFILE = REPO_ROOT / "loadtest" / "locustfile.py"
SHAPES = REPO_ROOT / "loadtest" / "shapes.py"
PREFIX = "locust"
MODE_DEFAULTS = {"run": {"users": 16, "duration": 60.0}, "ramp": {"users": 24, "duration": None},
                 "soak": {"users": 8, "duration": 600.0}, "fault": {"users": 8, "duration": 60.0}}
MODE_TITLES = {"run": "Steady load", "ramp": "Step ramp", "soak": "Soak", "fault": "Fault injection"}


class LoadTestError(RuntimeError):
    """Set-up failed (no archive, TorchServe did not start...); the message says what to do."""


def default_model_name() -> str:
    from catsdogs.contract import model_name

    return model_name()


# ------------------------------------------------------------------------------------------ server ---

def ensure_server(args) -> tuple[dict, bool]:
    """(serve.json state, whether we started it): the run directory's TorchServe, started if none runs."""
    from serving.client import ServingClient
    from serving.server import (
        ServeError,
        free_ports,
        model_status,
        running_pid,
        start,
        wait_ready,
    )

    run_dir = Path(args.run_dir).resolve()
    if running_pid(run_dir):
        from catsdogs.contract import read_serve_state

        state = read_serve_state(run_dir)
        try:  # a busy machine can make /ping slow: wait as long as a start would be given
            wait_ready(run_dir, [args.model_name], args.start_timeout,
                       Path(state.get("log_dir", run_dir)) / "torchserve.console.log")
        except ServeError as exc:
            raise LoadTestError(f"TorchServe from {run_dir} runs but is not ready: {exc}") from exc
        _, why = model_status(ServingClient.from_run_dir(run_dir, timeout=30), args.model_name)
        print(f"using the TorchServe already running from {run_dir} (pid {state['pid']}): {why}")
        return state, False
    mar = Path(args.model_store) / args.mar
    if not mar.is_file():
        raise LoadTestError(f"{mar} not found: build it with `make archive` (or `make pipeline`), or pass "
                            f"--model-store/--mar, or start TorchServe yourself and pass its --run-dir")
    if args.free_ports:
        inference, management, metrics, grpc_i, grpc_m = free_ports(5)
        ports, grpc = {"inference": inference, "management": management, "metrics": metrics}, (grpc_i, grpc_m)
    else:
        ports = {"inference": args.inference_port, "management": args.management_port, "metrics": args.metrics_port}
        grpc = (args.grpc_ports[0], args.grpc_ports[1]) if args.grpc_ports else None
    print(f"starting TorchServe from {run_dir} with {mar} ...", flush=True)
    try:
        state = start(config=args.config, run_dir=run_dir, log_dir=Path(args.log_dir or run_dir / "logs"),
                      model_store=Path(args.model_store), models=f"{args.model_name}={mar.name}", ports=ports,
                      grpc_ports=grpc, model_names=[args.model_name], timeout=args.start_timeout)
    except (ServeError, FileNotFoundError, ValueError) as exc:
        raise LoadTestError(f"could not start TorchServe: {exc}") from exc
    print(f"TorchServe up (pid {state['pid']}), inference {state['inference_url']}", flush=True)
    return state, True


# ------------------------------------------------------------------------------------------ locust ---

def locust_command(args, state: dict, prefix: Path) -> list[str]:
    files = f"{LOCUSTFILE},{SHAPES}" if args.mode == "ramp" else str(LOCUSTFILE)
    spawn_rate = args.spawn_rate or float(args.users)
    cmd = [sys.executable, "-m", "locust", "-f", files, "--headless", "-u", str(args.users), "-r", f"{spawn_rate:g}",
           "-H", state["inference_url"], "--csv", str(prefix), "--csv-full-history",
           "--html", str(prefix.parent / "report.html"), "--json-file", str(prefix),  # Locust appends .json
           "--only-summary", "--stop-timeout", f"{args.stop_timeout:g}", "--loglevel", "INFO",
           "--run-dir", str(Path(args.run_dir).resolve()), "--images", str(Path(args.images).resolve()),
           "--max-images", str(args.max_images), "--model-name", args.model_name, "--think-time", f"{args.think_time:g}",
           "--gate", args.mode, "--thresholds", str(Path(args.thresholds).resolve())]
    if args.duration:
        cmd += ["-t", f"{round(args.duration)}s"]
    for flag in ("max_error_ratio", "max_p95_ms", "min_rps", "min_accuracy"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", f"{getattr(args, flag):g}"]
    if args.mode == "ramp":
        cmd += ["--step-users", str(args.step_users), "--step-seconds", f"{args.step_seconds:g}"]
    if args.mode in ("soak", "fault"):
        cmd += ["--monitor-every", f"{args.sample_every:g}", "--rss-warmup", f"{args.rss_warmup:g}"]
    if args.mode == "fault":
        cmd += ["--kill-after", f"{args.kill_after:g}", "--recovery-timeout", f"{args.recovery_timeout:g}"]
    return cmd


def run_locust(cmd: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False).returncode


def clear_outputs(out: Path) -> None:
    """Old results of this mode would be mistaken for the new run's."""
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.is_file() and (path.name.startswith(PREFIX) or path.suffix in (".png", ".html")
                               or path.name == "report.json"):
            path.unlink()


# ---------------------------------------------------------------------------------------- results ---

def analyse(args, out: Path, summary: dict, cpu: dict) -> tuple[list[str], dict]:
    """Charts and mode-specific numbers: (extra console lines, report dict)."""
    lines: list[str] = []
    result = {"summary": summary, "cpu": cpu, "args": {k: v for k, v in vars(args).items() if k != "func"}}
    history_file = out / f"{PREFIX}_stats_history.csv"
    history = report.read_history(history_file) if history_file.is_file() else []
    if history:
        png = report.plot_history(history, out / "throughput_latency.png",
                                  f"catsdogs {args.mode}: {summary['peak_users']} users, model {summary['model_version']}",
                                  cpu_timeline=cpu.get("timeline"))
        lines.append(f"chart: {png}")
    if args.mode == "ramp":
        steps = ramp_steps(history)
        for step in steps:
            step["others_cores"] = (contention.others_between(cpu.get("timeline", []), step["start_ts"], step["end_ts"])
                                    if step.get("start_ts") else None)
        knee = find_knee(steps)
        result.update(steps=steps, knee=knee)
        lines += ["| users | seconds | req/s | failed | p50 ms | p95 ms | p99 ms | other processes' CPU cores |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['users']} | {s['seconds']:g} | {report._fmt(s['rps'])} | {s['failures']} | "
                  f"{report._fmt(s['p50_ms'], 0)} | {report._fmt(s['p95_ms'], 0)} | {report._fmt(s['p99_ms'], 0)} | "
                  f"{report._fmt(s['others_cores'], 2)} |" for s in steps]
        lines.append(f"knee: {knee['users']} users, {knee['rps']} req/s, p95 {report._fmt(knee['p95_ms'], 0)} ms "
                     f"(first step within 5 % of the best throughput)" if knee else "knee: not found (no step measured)")
    workers_file = out / f"{PREFIX}_workers.csv"
    if workers_file.is_file():
        rows = workers.read_rows(workers_file)
        fault = summary.get("fault") or {}
        events = {}
        if fault.get("killed_at_s") is not None:
            events["kill"] = fault["killed_at_s"]
            if fault.get("recovery_s") is not None:
                events["recovered"] = fault["killed_at_s"] + fault["recovery_s"]
        png = report.plot_workers(rows, out / "workers.png", f"catsdogs {args.mode}: TorchServe processes", events)
        lines.append(f"worker chart: {png} (samples: {workers_file})")
    m = summary["metrics"]
    if args.mode == "soak" or "rss_growth_pct" in m:
        lines.append(f"backend worker RSS {report._fmt(m.get('rss_start_mb'))} -> {report._fmt(m.get('rss_end_mb'))} MB "
                     f"(growth {report._fmt(m.get('rss_growth_pct'), 2)} % after {args.rss_warmup:g} s warm-up), "
                     f"frontend RSS growth {report._fmt(m.get('frontend_rss_growth_pct'), 2)} %, "
                     f"worker restarts {m.get('worker_restarts')}")
    if args.mode == "fault":
        fault = summary.get("fault") or {}
        lines.append(f"fault: killed worker pid {fault.get('killed_pid')} at {fault.get('killed_at_s')} s; "
                     f"recovered: {m.get('recovered')} in {report._fmt(m.get('recovery_s'), 2)} s "
                     f"(new PIDs {fault.get('pids_after')}); failed requests: {m['failures']} in all, "
                     f"{m.get('failures_before_fault')} before the kill, {m.get('failures_during_recovery')} "
                     f"while recovering, {m.get('failures_after_recovery')} after")
    return lines, result


def docs_lines(args, summary: dict, result: dict, cpu: dict, console_extra: list[str]) -> list[str]:
    m = summary["metrics"]
    acc = summary["accuracy"]
    meta = summary.get("model_meta") or {}
    duration = f"{args.duration:g} s" if args.duration else f"steps of {args.step_seconds:g} s"
    labelled = summary.get("n_labelled_images")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result.get("finished_at") or time.time()))
    lines = [f"### {MODE_TITLES[args.mode]} (`python -m loadtest {args.mode}`)", "",
             (f"{when}, {cpu['cores']} CPU cores, no GPU; model {summary['model_name']} version "
              f"{summary['model_version']} ({meta.get('arch', '?')} at {meta.get('image_size', '?')} px); "
              f"{summary['n_images']} images from `{args.images}`"
              + (f" ({labelled} with the label in their path)" if labelled is not None else "")
              + f"; up to {summary['peak_users']} users, {duration}, think time {args.think_time:g} s; "
                f"Locust and TorchServe on the same machine."),
             f"CPU: {contention.describe(cpu)}." + (f" Note: {args.note}" if args.note else ""), ""]
    lines += report.endpoint_table(summary["endpoints"], m)
    lines += ["", (f"Accuracy on the labelled images: {report._fmt(acc['accuracy'], 3)} ({acc['correct']}/"
                   f"{acc['labelled']} answers); schema errors {m.get('schema_errors', 0)}; token refreshes "
                   f"{m.get('token_refreshes', 0)}.")]
    extra = [line for line in console_extra if not line.startswith(("chart:", "worker chart:"))]
    table = [line for line in extra if line.startswith("|")]
    if table:
        lines += ["", *table]
    bullets = [f"- {line}" for line in extra if not line.startswith("|")]
    if bullets:
        lines += ["", *bullets]
    checks = "; ".join(f"{'PASS' if c['ok'] else 'FAIL'} {c['text']}" for c in summary["checks"])
    lines += ["", (f"Gate ({args.mode} in loadtest/thresholds.yaml): **{'PASSED' if summary['passed'] else 'FAILED'}** "
                   f"({checks}).")]
    return lines


def finish(args, out: Path, summary: dict, cpu: dict, finished_at: float | None = None) -> None:
    """Charts, console summary, report.json and (unless --no-docs) the docs block, from a finished run."""
    extra, result = analyse(args, out, summary, cpu)
    result["finished_at"] = finished_at or time.time()
    print("\n" + report.console_summary(summary, extra))
    print(f"CPU: {contention.describe(cpu)}")
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if not args.no_docs:
        path = report.update_docs(args.docs, args.mode, docs_lines(args, summary, result, cpu, extra))
        print(f"wrote the {args.mode} block of {path}")


def main_mode(args) -> int:
    if not Path(args.images).exists():
        raise LoadTestError(f"--images {args.images} does not exist: pass a folder (or .zip/.tar) of cat/dog "
                            f"images, or run `make synthesize` for data/synthetic")
    out = Path(args.out or REPO_ROOT / "reports" / "loadtest" / args.mode).resolve()
    clear_outputs(out)
    prefix = out / PREFIX
    state, started = ensure_server(args)
    cpu_watch = contention.CpuWatcher(roots=[state["pid"]])
    cpu_watch.start()
    try:
        code = run_locust(locust_command(args, state, prefix))
    finally:
        cpu = cpu_watch.result()
        if started and not args.keep_server:
            from serving.server import stop

            stop(Path(args.run_dir).resolve())
            print(f"stopped the TorchServe started from {args.run_dir}")
    summary_file = Path(f"{prefix}_summary.json")
    if not summary_file.is_file():
        print(f"loadtest: Locust exited with {code} without writing {summary_file}; see its output above",
              file=sys.stderr)
        return code or 2
    finish(args, out, json.loads(summary_file.read_text()), cpu)
    print(f"reports: {out}/ (report.html, {PREFIX}_stats*.csv, {PREFIX}.json, *.png); Locust exit code {code}")
    return code


def restore_args(stored: dict, mode: str) -> argparse.Namespace:
    """The arguments a run was made with, from its report.json (values typed like the parser's defaults)."""
    args = build_parser().parse_args([mode])
    for key, value in stored.items():
        default = getattr(args, key, None)
        if isinstance(value, str) and value == "None":
            value = None
        elif isinstance(value, str) and isinstance(default, bool):
            value = value == "True"
        elif isinstance(value, str) and isinstance(default, (int, float)):
            value = type(default)(float(value))
        setattr(args, key, value)
    return args


def main_report(opts) -> int:
    """Redraw the charts and rewrite the docs block of an earlier run from its report folder."""
    out = Path(opts.out or REPO_ROOT / "reports" / "loadtest" / opts.report_mode).resolve()
    summary_file, report_file = out / f"{PREFIX}_summary.json", out / "report.json"
    if not summary_file.is_file() or not report_file.is_file():
        raise LoadTestError(f"{out} has no {summary_file.name} and report.json: run `python -m loadtest "
                            f"{opts.report_mode}` first (or pass --out)")
    stored = json.loads(report_file.read_text())
    args = restore_args(stored["args"], opts.report_mode)
    args.docs, args.no_docs = opts.docs, opts.no_docs
    finish(args, out, json.loads(summary_file.read_text()), stored["cpu"],
           finished_at=stored.get("finished_at") or summary_file.stat().st_mtime)
    return 0 if json.loads(summary_file.read_text())["passed"] else 3


# ------------------------------------------------------------------------------------------ parser ---

def add_common(p: argparse.ArgumentParser, mode: str) -> None:
    d = MODE_DEFAULTS[mode]
    load = p.add_argument_group("load")
    load.add_argument("--users", "-u", type=int, default=d["users"],
                      help="concurrent users (ramp: the top step) (default: %(default)s)")
    load.add_argument("--spawn-rate", "-r", type=float, help="users started per second (default: all at once)")
    load.add_argument("--duration", "-t", type=float, default=d["duration"],
                      help="seconds of load (ramp: optional cap) (default: %(default)s)")
    load.add_argument("--think-time", type=float, default=0.0,
                      help="each user waits uniform(0, this) s between requests; 0 = closed loop (default)")
    load.add_argument("--images", default="data/synthetic",
                      help="folder (or .zip/.tar) of images to send; accuracy is scored on files whose path "
                           "names the class (cat.1.jpg, cats/x.jpg) (default: %(default)s)")
    load.add_argument("--max-images", type=int, default=400, help="images kept in memory (default: %(default)s)")
    load.add_argument("--stop-timeout", type=float, default=10.0,
                      help="seconds in-flight requests may finish at the end (default: %(default)s)")
    g = p.add_argument_group("gate (override loadtest/thresholds.yaml)")
    g.add_argument("--thresholds", default=str(DEFAULT_THRESHOLDS), help="thresholds file (section: the mode)")
    g.add_argument("--max-error-ratio", type=float, help="failed / all requests")
    g.add_argument("--max-p95-ms", type=float, help="p95 latency over the whole run, ms")
    g.add_argument("--min-rps", type=float, help="minimum throughput, requests/s")
    g.add_argument("--min-accuracy", type=float, help="minimum accuracy on labelled images")
    o = p.add_argument_group("output")
    o.add_argument("--out", help=f"report folder (default: reports/loadtest/{mode})")
    o.add_argument("--docs", default=str(REPO_ROOT / "docs" / "performance.md"),
                   help="markdown file whose load-test section gets this run's numbers (default: %(default)s)")
    o.add_argument("--no-docs", action="store_true", help="don't write the docs section")
    o.add_argument("--note", default="", help="free text added to the docs block (e.g. what else ran)")
    s = p.add_argument_group("TorchServe (started only when none runs from --run-dir)")
    s.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR),
                   help="run directory: serve.json, key_file.json (env CATSDOGS_SERVE_DIR) (default: %(default)s)")
    s.add_argument("--model-name", default=default_model_name(), help="model name (default: %(default)s)")
    s.add_argument("--model-store", default="model-store", help="folder with the archive (default: %(default)s)")
    s.add_argument("--mar", default="catsdogs.mar", help="archive to serve (default: %(default)s)")
    s.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config.properties")
    s.add_argument("--log-dir", help="TorchServe logs (default: <run-dir>/logs)")
    s.add_argument("--free-ports", action="store_true",
                   help="pick free ports instead of config.properties' 8080-8082 (for private instances)")
    s.add_argument("--inference-port", type=int, help="inference port to start on")
    s.add_argument("--management-port", type=int, help="management port to start on")
    s.add_argument("--metrics-port", type=int, help="metrics port to start on")
    s.add_argument("--grpc-ports", type=int, nargs=2, metavar=("INFERENCE", "MANAGEMENT"), help="gRPC ports")
    s.add_argument("--start-timeout", type=float, default=240.0, help="seconds to wait for READY workers")
    s.add_argument("--keep-server", action="store_true", help="leave a TorchServe this command started running")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    helps = {"run": "steady load for --duration s; gate: errors, p95, throughput",
             "ramp": "step ramp up to --users to find the knee",
             "soak": "long run that also tracks worker RSS growth and restarts",
             "fault": "kill a backend worker under load; gate: it recovers"}
    for mode in MODE_DEFAULTS:
        p = sub.add_parser(mode, help=helps[mode], description=f"{helps[mode]}.\n\n{__doc__}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_common(p, mode)
        if mode == "ramp":
            p.add_argument("--step-users", type=int, default=2, help="users added per step (default: %(default)s)")
            p.add_argument("--step-seconds", type=float, default=15.0,
                           help="seconds each step is held (>= 10: percentiles cover the last 10 s) (default: %(default)s)")
        if mode in ("soak", "fault"):
            p.add_argument("--sample-every", type=float, default=5.0 if mode == "soak" else 1.0,
                           help="seconds between worker RSS/PID samples (default: %(default)s)")
            p.add_argument("--rss-warmup", type=float, default=60.0 if mode == "soak" else 10.0,
                           help="RSS growth counts from the samples after this many s (default: %(default)s)")
        if mode == "fault":
            p.add_argument("--kill-after", type=float, default=15.0,
                           help="SIGKILL a backend worker this many s into the run (default: %(default)s)")
            p.add_argument("--recovery-timeout", type=float, default=120.0,
                           help="seconds allowed for the restarted worker to answer (default: %(default)s)")
        p.set_defaults(func=main_mode)
    p = sub.add_parser("report", help="redraw charts and rewrite the docs block of an earlier run (no load)",
                       description="Rebuild the charts, report.json and the docs/performance.md block of an "
                                   "earlier run from its report folder (e.g. after editing the docs code); "
                                   "exits 3 if that run failed its gate.")
    p.add_argument("report_mode", choices=list(MODE_DEFAULTS), help="which run")
    p.add_argument("--out", help="report folder (default: reports/loadtest/<mode>)")
    p.add_argument("--docs", default=str(REPO_ROOT / "docs" / "performance.md"), help="markdown file to update")
    p.add_argument("--no-docs", action="store_true", help="don't write the docs section")
    p.set_defaults(func=main_report)
    return parser


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`: a TorchServe this command started is stopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.mode == "fault" and args.duration and args.duration <= args.kill_after:
        print(f"loadtest: --duration {args.duration:g} must be longer than --kill-after {args.kill_after:g}",
              file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except LoadTestError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
