"""`python -m loadtest MODE [Locust options]`: Locust with loadtest/MODE.conf against TorchServe, gated.

  run    steady load (default 16 users, 60 s); gate: errors, p95, throughput, accuracy vs offline
  ramp   step ramp (loadtest/shapes.py) up to the config's users: prints each step and the knee
  soak   long steady run that also samples backend worker RSS and PIDs: RSS growth, restarts
  fault  steady load during which one backend worker is SIGKILLed: recovery time and failures
  docs   write MODE's block of docs/performance.md from its last run (make loadtest-docs); no load

A mode is Locust configuration (loadtest/<mode>.conf); Locust or locustfile options after MODE override it
(`python -m loadtest run -u 32 -t 120s --max-p95-ms 2000 --images ../photos`). This wrapper adds only what
Locust cannot do: start (and stop) TorchServe from --run-dir when none runs, watch other processes' CPU, and
the ramp's knee and worker RSS chart. Reports go to reports/loadtest/<mode>/ (--out). Exit status: Locust's
(0: every threshold met, 3: one missed).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from catsdogs import contract
from loadtest import contention, report, workers
from loadtest.ramp import find_knee, ramp_steps
from serving.config import DEFAULT_CONFIG, REPO_ROOT

MODES = ("run", "ramp", "soak", "fault")
PREFIX = "locust"


class LoadTestError(RuntimeError):
    """Set-up failed (no archive, TorchServe did not start...); the message says what to do."""


def config_file(mode: str) -> Path:
    return REPO_ROOT / "loadtest" / f"{mode}.conf"


def default_out(mode: str) -> Path:
    return REPO_ROOT / "reports" / "loadtest" / mode


def ensure_server(args) -> tuple[dict, bool]:
    """(serve.json state, whether we started it): the run directory's TorchServe, started if none runs."""
    from serving.server import ServeError, free_ports, running_pid, start, wait_ready

    run_dir = Path(args.run_dir).resolve()
    name = contract.model_name()
    if running_pid(run_dir):
        state = contract.read_serve_state(run_dir)
        try:  # a busy machine can make /ping slow: wait as long as a start would be given
            wait_ready(run_dir, [name], args.start_timeout, Path(state["log_dir"]) / "torchserve.console.log")
        except ServeError as exc:
            raise LoadTestError(f"TorchServe from {run_dir} runs but is not ready: {exc}") from exc
        print(f"using the TorchServe already running from {run_dir} (pid {state['pid']})")
        return state, False
    mar = contract.archive_path(name, args.model_store)
    if not mar.is_file():
        raise LoadTestError(f"{mar} not found: build it with `make archive` (or `make pipeline`), or pass "
                            f"--model-store, or start TorchServe yourself and pass its --run-dir")
    ports, grpc = None, None
    if args.free_ports:
        *apis, grpc_i, grpc_m = free_ports(len(contract.PORTS) + 2)
        ports, grpc = dict(zip(contract.PORTS, apis)), (grpc_i, grpc_m)
    print(f"starting TorchServe from {run_dir} with {mar} ...", flush=True)
    try:
        state = start(config=DEFAULT_CONFIG, run_dir=run_dir, log_dir=run_dir / "logs", model_store=mar.parent,
                      models=f"{name}={mar.name}", ports=ports, grpc_ports=grpc, timeout=args.start_timeout)
    except (ServeError, FileNotFoundError, ValueError) as exc:
        raise LoadTestError(f"could not start TorchServe: {exc}") from exc
    return state, True


def locust_command(mode: str, state: dict, run_dir: Path, out: Path, extra: list[str]) -> list[str]:
    """`locust --config loadtest/<mode>.conf` with the server and the report folder; `extra` last (wins)."""
    prefix = str(out / PREFIX)
    return [sys.executable, "-m", "locust", "--config", str(config_file(mode)), "-H", state["inference_url"],
            "--run-dir", str(run_dir), "--csv", prefix, "--html", str(out / "report.html"), "--json-file", prefix,
            *extra]


def analyse(mode: str, out: Path, summary: dict, cpu: dict) -> dict:
    """report.json: the contention, the ramp's steps and knee, the worker chart (what Locust's report lacks)."""
    result = {"mode": mode, "summary": summary, "cpu": cpu}
    m, f = summary["metrics"], report._fmt
    print(f"{mode}: {m['requests']} requests, {m['failures']} failed, {f(m['rps'])} req/s, p50 {f(m['p50_ms'], 0)} ms, "
          f"p95 {f(m['p95_ms'], 0)} ms, p99 {f(m['p99_ms'], 0)} ms; accuracy {f(m.get('accuracy'), 3)} on labelled "
          f"images vs {f(m.get('offline_accuracy'), 3)} offline; gate {'PASSED' if summary['passed'] else 'FAILED'}")
    if mode == "ramp":
        steps = ramp_steps(report.read_history(out / f"{PREFIX}_stats_history.csv"))
        for step in steps:
            step["others_cores"] = (contention.others_between(cpu["timeline"], step["start_ts"], step["end_ts"])
                                    if step.get("start_ts") else None)
        result.update(steps=steps, knee=find_knee(steps))
        for s in steps:
            print(f"step {s['users']:>3} users: {report._fmt(s['rps'])} req/s, p95 {report._fmt(s['p95_ms'], 0)} ms, "
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
        print(f"worker chart: {report.plot_workers(workers.read_rows(samples), out / 'workers.png', f'{mode}: TorchServe processes', events)}")
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def main_mode(args, extra: list[str]) -> int:
    out = Path(args.out or default_out(args.mode)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{PREFIX}*"):  # an earlier run's files would be mistaken for this one's
        old.unlink()
    state, started = ensure_server(args)
    watcher = contention.CpuWatcher(roots=[state["pid"]])
    watcher.start()
    try:
        cmd = locust_command(args.mode, state, Path(args.run_dir).resolve(), out, extra)
        print("$ " + " ".join(cmd), flush=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        code = subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False).returncode
    finally:
        cpu = watcher.result()
        if started and not args.keep_server:
            from serving.server import stop

            stop(Path(args.run_dir).resolve())
            print(f"stopped the TorchServe started from {args.run_dir}")
    summary_file = out / f"{PREFIX}_summary.json"
    if not summary_file.is_file():
        print(f"loadtest: Locust exited with {code} without writing {summary_file}; see its output above",
              file=sys.stderr)
        return code or 2
    analyse(args.mode, out, json.loads(summary_file.read_text()), cpu)
    print(f"CPU: {contention.describe(cpu)}\nreports: {out}/ (report.html is Locust's, with its charts); "
          f"Locust exit code {code}")
    return code


def main_docs(args) -> int:
    from loadtest.docs import docs_lines

    out = Path(args.out or default_out(args.docs_mode)).resolve()
    if not (out / "report.json").is_file():
        print(f"loadtest docs: {out} has no report.json: run `python -m loadtest {args.docs_mode}` first "
              f"(or pass --out)", file=sys.stderr)
        return 2
    result = json.loads((out / "report.json").read_text())
    path = report.update_docs(args.docs, args.docs_mode, docs_lines(result, out))
    print(f"wrote the {args.docs_mode} block of {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Locust's and the locustfile's options: `locust -f loadtest/locustfile.py --help`.")
    parser.add_argument("mode", choices=[*MODES, "docs"])
    parser.add_argument("--run-dir", type=Path, default=contract.RUN_DIR,
                        help=f"TorchServe run directory (serve.json, key_file.json; default {contract.RUN_DIR})")
    parser.add_argument("--model-store", type=Path, default=contract.MODEL_STORE,
                        help="where the archive is when a TorchServe has to be started (default %(default)s)")
    parser.add_argument("--free-ports", action="store_true", help="start it on free ports, not config.properties'")
    parser.add_argument("--start-timeout", type=float, default=240.0, help="seconds to wait for READY workers")
    parser.add_argument("--keep-server", action="store_true", help="leave a TorchServe this command started running")
    parser.add_argument("--out", type=Path, help="report folder (default reports/loadtest/<mode>)")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "performance.md",
                        help="with `docs`: the markdown file whose block is replaced")
    return parser


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`: a TorchServe this command started is stopped


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["docs"]:
        parser = build_parser()
        parser.add_argument("docs_mode", choices=MODES, help="which run")
        return main_docs(parser.parse_args(argv))
    args, extra = build_parser().parse_known_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return main_mode(args, extra)
    except LoadTestError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
