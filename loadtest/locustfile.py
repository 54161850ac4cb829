"""Locust load test of the served model (params.yaml serve.model_name), with its quality gate.

Each mode is a config file, loadtest/<mode>.conf, run by `make loadtest[-<mode>]` or from the repo root:

    locust --config loadtest/run.conf --run-dir .serve          # -H defaults to serve.json's inference URL
    locust --config loadtest/ramp.conf -u 12 --step-seconds 10  # any line of the file overridden
    python -m loadtest.report ramp                              # then: summary, the ramp's knee, worker chart

Users POST image bytes to /predictions/<model> (and /<version>) and GET /ping through serving.client (a refused
token is refreshed and retried, not counted). Answers are checked against the contract's schema and, where the
path carries the label, scored against the served model's offline test accuracy. On quit the thresholds
(loadtest/gate.py) set Locust's exit code; --monitor-every samples worker RSS/PIDs (soak), --kill-after kills a
worker and times its recovery (fault). Output: <csv prefix>_summary.json and _workers.csv. One process only
(no --processes/--master): the gate reads this process's stats.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import gevent
from locust import HttpUser, events, task
from locust.runners import MasterRunner, WorkerRunner

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `locust -f .../loadtest/locustfile.py` from another directory
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.report import load_average
from catsdogs import contract
from catsdogs.contract import RUN_DIR, check_prediction, read_serve_state
from deploy.gates import Tally
from loadtest import gate, workers
from loadtest.images import load_samples
from serving.client import ServingClient

log = logging.getLogger("catsdogs.loadtest")
# One (gevent-patched) lock for every ServingClient of this process: a greenlet waiting for another's flock on
# key_file.json would block the whole process (all users are greenlets of one OS thread).
_KEY_LOCK = threading.Lock()


class LoadClient(ServingClient):
    """ServingClient sharing the process-wide key lock and counting key refreshes."""

    refreshes = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = _KEY_LOCK

    def refresh_key(self, api, stale=None):
        LoadClient.refreshes += 1
        return super().refresh_key(api, stale=stale)


class Run:
    """What this process measures besides Locust's stats."""

    def __init__(self):
        self.samples = []
        self.classes = None
        self.model_name = None
        self.version = None
        self.tally = Tally()
        self.schema_errors = 0
        self.first_schema_error = None
        self.failures = []            # (start, end) unix times of failed requests
        self.started = None
        self.worker_rows = []
        self.fault = {}
        self.peak_users = 0
        self.meta = {}
        self.load = {}                # the machine's 1-minute load average at the start and at the end


RUN = Run()


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    """The locustfile's own options (LocustArgumentParser.add_argument takes include_in_web_ui)."""
    parser.add_argument("--images", default=str(REPO_ROOT / "data" / "synthetic"), include_in_web_ui=False,
                        help="folder (or .zip/.tar) of images to send; labels from cat.1.jpg / cats/x.jpg paths")
    parser.add_argument("--max-images", type=int, default=400, include_in_web_ui=False,
                        help="images loaded into memory, spread evenly over the sorted file list")
    parser.add_argument("--run-dir", default=str(RUN_DIR), include_in_web_ui=False,
                        help="TorchServe run directory: serve.json (URLs), key_file.json (tokens); "
                             "env CATSDOGS_SERVE_DIR, default .serve")
    parser.add_argument("--model-name", default=None, include_in_web_ui=False,
                        help="served model name (default params.yaml serve.model_name)")
    parser.add_argument("--think-time", type=float, default=0.0, include_in_web_ui=False,
                        help="each user waits uniform(0, this) seconds between requests (0: closed loop)")
    parser.add_argument("--mode", default="run", include_in_web_ui=False,
                        help="name of the run in its summary (the config file's: run, ramp, soak, fault)")
    gate.add_threshold_options(parser)
    parser.add_argument("--monitor-every", type=float, default=0.0, include_in_web_ui=False,
                        help="sample backend worker PIDs and RSS every S seconds (0: off)")
    parser.add_argument("--rss-warmup", type=float, default=0.0, include_in_web_ui=False,
                        help="RSS growth is measured from the first samples after this many seconds")
    parser.add_argument("--kill-after", type=float, default=0.0, include_in_web_ui=False,
                        help="SIGKILL one backend worker this many seconds into the run (0: never)")
    parser.add_argument("--recovery-timeout", type=float, default=120.0, include_in_web_ui=False,
                        help="seconds to wait for the killed worker's replacement")
    parser.add_argument("--step-users", type=int, default=2, include_in_web_ui=False,
                        help="StepRampShape (loadtest/shapes.py): users added per step")
    parser.add_argument("--step-seconds", type=float, default=15.0, include_in_web_ui=False,
                        help="StepRampShape: seconds each step is held")


def management_client(environment) -> LoadClient:
    opts = environment.parsed_options
    return LoadClient.from_run_dir(opts.run_dir, model_name=opts.model_name, timeout=30)


def output_path(environment, suffix: str) -> Path | None:
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    return Path(f"{prefix}_{suffix}") if prefix else None


@events.init.add_listener
def on_init(environment, **_):
    opts = environment.parsed_options
    if opts is None:  # Environment made by a library user without command-line parsing
        return
    RUN.model_name = opts.model_name = opts.model_name or contract.model_name()
    try:
        RUN.samples = load_samples(opts.images, opts.max_images)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    labelled = sum(s.label is not None for s in RUN.samples)
    if not environment.host:  # serve.json's URL, else config.properties'
        environment.host = ServingClient.from_run_dir(opts.run_dir).urls["inference"]
    try:
        described = management_client(environment).describe(customized=True)
        RUN.version = described[0].get("modelVersion")
        RUN.meta = contract.parse_description(described)
        RUN.classes = RUN.meta.get("classes")
    except Exception as exc:  # noqa: BLE001 - the first prediction's model_version will do
        log.warning("describe-model failed (%s); the version comes from the first prediction", exc)
    log.info("%d images from %s (%d with a label in the path); host %s; model %s version %s",
             len(RUN.samples), opts.images, labelled, environment.host, RUN.model_name, RUN.version)


@events.test_start.add_listener
def on_test_start(environment, **_):
    if isinstance(environment.runner, MasterRunner):
        return
    RUN.started = time.time()
    RUN.load = {"before": load_average()}
    opts = environment.parsed_options
    if opts.monitor_every > 0:
        gevent.spawn(monitor, environment, opts.monitor_every)
    if opts.kill_after > 0:
        gevent.spawn(inject_fault, environment, opts.kill_after, opts.recovery_timeout)


@events.spawning_complete.add_listener
def on_spawned(user_count, **_):
    RUN.peak_users = max(RUN.peak_users, user_count)


@events.request.add_listener
def on_request(exception=None, start_time=None, response_time=None, **_):
    if exception is not None:
        start = start_time or time.time()
        RUN.failures.append((start, start + (response_time or 0) / 1000))


def monitor(environment, every: float) -> None:
    client = management_client(environment)
    frontend = (read_serve_state(environment.parsed_options.run_dir) or {}).get("pid")
    path = output_path(environment, "workers.csv")
    if path:
        path.unlink(missing_ok=True)
    while True:
        rows = workers.sample(client, RUN.started, frontend_pid=frontend)
        RUN.worker_rows.extend(rows)
        if path and rows:
            workers.append_rows(path, rows)
        gevent.sleep(every)


def inject_fault(environment, after: float, timeout: float) -> None:
    gevent.sleep(after)
    client = management_client(environment)
    try:
        before = client.worker_pids()
    except Exception as exc:  # noqa: BLE001
        RUN.fault = {"error": f"could not list worker PIDs before the kill: {exc}"}
        return
    if not before:
        RUN.fault = {"error": "the model has no worker to kill"}
        return
    victim = before[0]
    sample = RUN.samples[0].data
    os.kill(victim, signal.SIGKILL)  # what an OOM kill or a segfault looks like to TorchServe
    killed_at = time.time()
    RUN.fault = {"killed_pid": victim, "pids_before": before, "killed_at": killed_at,
                 "killed_at_s": round(killed_at - RUN.started, 2), "recovered": False}
    log.info("SIGKILLed backend worker %d at %.1f s", victim, killed_at - RUN.started)
    recovery, pids = workers.wait_recovered(client, before, lambda: client.predict(sample).status_code == 200,
                                            timeout=timeout)
    RUN.fault.update(pids_after=pids, recovered=recovery is not None, recovery_s=recovery,
                     recovered_at=killed_at + recovery if recovery is not None else None)
    log.info("worker recovery: %s", f"{recovery:.2f} s, PIDs {pids}" if recovery is not None else "NOT RECOVERED")


class CatsDogsUser(HttpUser):
    """POSTs images (mostly to the default version), sometimes to the explicit version, sometimes /ping."""

    def wait_time(self):
        think = self.environment.parsed_options.think_time
        return random.uniform(0, think) if think > 0 else 0

    def on_start(self):
        opts = self.environment.parsed_options
        self.serving = LoadClient.from_run_dir(opts.run_dir, session=self.client, model_name=opts.model_name,
                                               timeout=30)
        self.serving.urls["inference"] = self.host.rstrip("/")
        self.rng = random.Random()

    def _predict(self, version: str | None):
        sample = self.rng.choice(RUN.samples)
        model = RUN.model_name if version is None else f"{RUN.model_name}/{version}"
        name = f"/predictions/{RUN.model_name}" + ("" if version is None else "/[version]")
        with self.serving.predict(sample.data, model_name=model, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.error or response.text[:200]}")
                return
            try:
                body = response.json()
            except ValueError:
                body = None
            problem = check_prediction(body, RUN.classes, version)
            if problem:
                RUN.schema_errors += 1
                RUN.first_schema_error = RUN.first_schema_error or problem
                response.failure(f"bad prediction: {problem}")
                return
            if RUN.version is None:
                RUN.version = body["model_version"]
            RUN.tally.add(sample.label, body["label"], body["model_version"])

    @task(18)
    def predict(self):
        self._predict(None)

    @task(1)
    def predict_version(self):
        self._predict(RUN.version)  # the default version's URL while the version is not known yet

    @task(1)
    def ping(self):
        with self.serving.request("inference", "GET", "/ping", name="/ping", catch_response=True) as response:
            try:
                healthy = response.status_code == 200 and response.json().get("status") == "Healthy"
            except ValueError:
                healthy = False
            if not healthy:
                response.failure(f"/ping: HTTP {response.status_code} {response.error or response.text[:200]}")


def run_metrics(environment) -> dict:
    """Everything the gate and the reports need, from Locust's stats and this process's tallies."""
    opts = environment.parsed_options
    total = gate.entry_metrics(environment.stats.total)
    offline = (RUN.meta.get("test_metrics") or {}).get("accuracy")
    live = RUN.tally.to_dict()["accuracy"]
    metrics = {**total, "accuracy": live, "offline_accuracy": offline,
               "accuracy_drop": round(offline - live, 4) if live is not None and offline is not None else None,
               "schema_errors": RUN.schema_errors, "token_refreshes": LoadClient.refreshes}
    if RUN.worker_rows:
        start, end, growth = workers.rss_growth(workers.total_rss_series(RUN.worker_rows), warmup_s=opts.rss_warmup)
        frontend = workers.total_rss_series(RUN.worker_rows, frontend=True)
        metrics.update(worker_restarts=workers.restarts(RUN.worker_rows), rss_growth_pct=growth,
                       rss_start_mb=start, rss_end_mb=end,
                       frontend_rss_growth_pct=workers.rss_growth(frontend, warmup_s=opts.rss_warmup)[2])
    if RUN.fault.get("killed_at"):
        # a request that failed before the kill is a failure of its own; one still running at the kill,
        # or sent while the worker restarts, is the fault's; one sent after recovery should not fail
        killed, recovered = RUN.fault["killed_at"], RUN.fault.get("recovered_at")
        before = sum(end < killed for _, end in RUN.failures)
        after = sum(start >= recovered for start, _ in RUN.failures) if recovered is not None else None
        metrics.update(recovered=RUN.fault["recovered"], recovery_s=RUN.fault.get("recovery_s"),
                       failures_before_fault=before, failures_after_recovery=after,
                       failures_during_recovery=len(RUN.failures) - before - (after or 0))
    elif opts.kill_after > 0:
        too_short = "the run ended before the kill; use -t/--run-time longer than --kill-after"
        metrics.update(recovered=False, fault_error=RUN.fault.get("error", too_short))
    return metrics


@events.quitting.add_listener
def on_quitting(environment, **_):
    """The gate: thresholds checked against this run; Locust's exit code is the verdict."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    opts = environment.parsed_options
    limits = gate.limits_from(opts)
    metrics = run_metrics(environment)
    checks = gate.evaluate(metrics, limits)
    ok = gate.passed(checks)
    environment.process_exit_code = 0 if ok else 3
    summary = {"mode": opts.mode, "passed": ok, "exit_code": environment.process_exit_code, "metrics": metrics,
               "checks": [asdict(c) for c in checks], "thresholds": limits,
               "endpoints": [gate.entry_metrics(e) for e in environment.stats.entries.values()],
               "accuracy": RUN.tally.to_dict(), "first_schema_error": RUN.first_schema_error,
               "model_name": RUN.model_name, "model_version": RUN.version,
               "model_meta": {k: RUN.meta.get(k) for k in ("arch", "image_size", "version", "classes",
                                                           "pretrained")}, "images": opts.images,
               "n_images": len(RUN.samples), "peak_users": RUN.peak_users,
               "n_labelled_images": sum(s.label is not None for s in RUN.samples),
               "fault": dict(RUN.fault), "pid": os.getpid(), "load": {**RUN.load, "after": load_average()}}
    path = output_path(environment, "summary.json")
    if path:
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log.info("accuracy on labelled images: %s", RUN.tally.summary())
    for check in checks:
        log.info("gate %-28s %s  %s", check.name, "PASS" if check.ok else "FAIL", check.text)
    log.info("quality gate (%s): %s", opts.mode, "PASSED" if ok else "FAILED")
