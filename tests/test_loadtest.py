"""Load tests (loadtest/): the pure parts, and real Locust runs against a real TorchServe.

Unit tests never import locust (it monkey-patches the whole process with gevent); the integration
tests run `locust --config loadtest/<mode>.conf` and `python -m loadtest.report` in subprocesses, or the make
target itself, as CI does.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from deploy.gates import Tally
from loadtest import gate, report, workers
from loadtest.images import evenly, load_samples
from loadtest.ramp import find_knee, ramp_steps, step_target
from loadtest.report import MODES
from tests.conftest import ROOT, image_bytes

# ------------------------------------------------------------------------------------------ images ---


def test_load_samples_reads_images_spread_over_the_folder(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / f"{cls}s").mkdir()
        for i in range(5):
            (tmp_path / f"{cls}s" / f"{i}.jpg").write_bytes(image_bytes())
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "mine.png").write_bytes(image_bytes(fmt="PNG"))
    samples = load_samples(tmp_path, limit=4)
    assert len(samples) == 4
    assert {s.label for s in samples} == {"cat", "dog"}  # spread over the sorted list, not the first 4 cats
    assert all(Image.open(io.BytesIO(s.data)).size == (64, 48) for s in samples)
    everything = load_samples(tmp_path, limit=0)
    assert len(everything) == 11 and [s.label for s in everything if s.name == "mine.png"] == [None]
    assert evenly(list(range(10)), 3) == [0, 3, 6]


def test_load_samples_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_samples(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        load_samples(tmp_path)


def test_tally_counts_only_labelled_answers():
    tally = Tally()
    for truth, predicted in (("cat", "cat"), ("cat", "dog"), ("dog", "dog"), (None, "cat")):
        tally.add(truth, predicted, "v1")
    assert (tally.n, tally.correct, tally.unlabelled, tally.to_dict()["accuracy"]) == (3, 2, 1, 0.6667)
    assert tally.to_dict()["per_label"] == {"cat": {"correct": 1, "total": 2}, "dog": {"correct": 1, "total": 1}}
    assert Tally().accuracy is None


# -------------------------------------------------------------------------------------------- gate ---

METRICS = {"requests": 1000, "error_ratio": 0.0, "p95_ms": 420.0, "rps": 35.0, "accuracy": 0.93}


def test_gate_passes_when_every_limit_is_met():
    checks = gate.evaluate(METRICS, {"max_error_ratio": 0.0, "max_p95_ms": 500, "min_rps": 30, "min_accuracy": None})
    assert gate.passed(checks)
    assert [c.name for c in checks] == ["requests", "max_error_ratio", "max_p95_ms", "min_rps"]  # null: not checked


@pytest.mark.parametrize("limits, failing", [
    ({"max_error_ratio": 0.0}, "max_error_ratio"),
    ({"max_p95_ms": 400}, "max_p95_ms"),
    ({"min_rps": 1e6}, "min_rps"),
])
def test_gate_fails_on_the_limit_that_is_missed(limits, failing):
    metrics = {**METRICS, "error_ratio": 0.001}
    checks = gate.evaluate(metrics, limits)
    assert not gate.passed(checks)
    assert [c.name for c in checks if not c.ok] == [failing]


def test_gate_fails_when_nothing_or_not_the_metric_was_measured():
    assert not gate.passed(gate.evaluate({"requests": 0, "error_ratio": None}, {}))
    checks = gate.evaluate({**METRICS, "accuracy": None}, {"min_accuracy": 0.8})
    assert not gate.passed(checks) and "not measured" in checks[-1].text


def test_fault_gate_needs_recovery():
    limits = {"require_recovery": True, "max_recovery_s": 60, "max_failures_after_recovery": 0,
              "max_failures_before_fault": 0}
    ok = {"requests": 10, "recovered": True, "recovery_s": 8.5, "failures_after_recovery": 0,
          "failures_before_fault": 0}
    assert gate.passed(gate.evaluate(ok, limits))
    assert not gate.passed(gate.evaluate({**ok, "recovered": False, "recovery_s": None,
                                          "failures_after_recovery": None}, limits))
    assert not gate.passed(gate.evaluate({**ok, "failures_after_recovery": 2}, limits))
    assert not gate.passed(gate.evaluate({**ok, "failures_before_fault": 1}, limits))


def config_file(mode: str) -> Path:
    return ROOT / "loadtest" / f"{mode}.conf"


def read_conf(mode: str) -> dict:
    """loadtest/<mode>.conf as Locust reads it: `key = value`, # comments (also after a value)."""
    pairs = [line.split("#", 1)[0].split("=", 1) for line in config_file(mode).read_text().splitlines()]
    return {k.strip(): v.strip() for k, *v in pairs if v for v in v}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_is_a_locust_config_whose_thresholds_the_gate_knows(mode):
    conf = read_conf(mode)
    assert conf["mode"] == mode and conf["headless"] == "true"
    assert conf["csv"] == f"reports/loadtest/{mode}/locust"  # where `python -m loadtest.report` looks
    thresholds = {k.replace("-", "_") for k in conf if k.startswith(("max-", "min-", "require-"))}
    assert thresholds and thresholds <= set(gate.RULES)
    if mode != "fault":  # a model worse than its offline accuracy fails every mode but the fault drill
        assert float(conf["max-accuracy-drop"]) <= 0.05


PARSE = """
import json, sys
import loadtest.locustfile  # registers the locustfile's options (imports locust: gevent patches this process)
from locust.argument_parser import parse_options
from loadtest import gate
o = parse_options(sys.argv[1:])
print(json.dumps({"users": o.num_users, "run_time": o.run_time, "limits": gate.limits_from(o),
                  "kill_after": o.kill_after, "rss_warmup": o.rss_warmup, "mode": o.mode}))
"""


def locust_options(*args: str) -> dict:
    """Locust's own parser on a command line, in a subprocess (importing locust monkey-patches with gevent)."""
    out = subprocess.run([sys.executable, "-c", PARSE, *args], cwd=ROOT, capture_output=True, text=True, check=False,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_locust_reads_the_config_file_and_the_command_line_wins():
    run = locust_options("--config", str(config_file("run")), "-u", "3", "--max-p95-ms", "50")
    assert (run["users"], run["run_time"], run["mode"]) == (3, 60, "run")
    assert run["limits"] == {"max_error_ratio": 0.0, "max_p95_ms": 50.0, "min_rps": 8.0, "max_accuracy_drop": 0.05}
    fault = locust_options("--config", str(config_file("fault")))
    assert fault["limits"]["require_recovery"] is True and fault["kill_after"] == 15 and fault["rss_warmup"] == 10


def test_limits_come_from_the_parsed_options():
    class Options:
        max_p95_ms, min_rps, require_recovery, max_accuracy_drop = 3000.0, None, True, 0.05
    assert gate.limits_from(Options()) == {"max_p95_ms": 3000.0, "require_recovery": True, "max_accuracy_drop": 0.05}


def test_a_model_worse_than_offline_fails_the_accuracy_floor():
    limits = {"max_accuracy_drop": 0.05}
    always_cat = {"requests": 100, "accuracy": 0.5, "offline_accuracy": 0.99, "accuracy_drop": 0.49}
    [_, check] = gate.evaluate(always_cat, limits)
    assert not check.ok and "accuracy_drop 0.49 > 0.05" in check.text
    assert gate.passed(gate.evaluate({**always_cat, "accuracy": 0.97, "accuracy_drop": 0.02}, limits))
    assert not gate.passed(gate.evaluate({"requests": 100, "accuracy_drop": None}, limits))  # unlabelled: not measured


# -------------------------------------------------------------------------------------------- ramp ---

def test_step_ramp_targets():
    targets = [step_target(t, 2, 10, 5) for t in (0, 9.9, 10, 25, 29.9, 30)]
    assert targets == [2, 2, 4, 5, 5, None]  # the last step is capped at max users, then the ramp ends
    assert step_target(12, 2, 10, 8, run_time_s=12) is None
    with pytest.raises(ValueError):
        step_target(0, 0, 10, 8)


def history_rows(plan: list[tuple[int, int, float]]) -> list[dict]:
    """(users, seconds, req/s) steps -> read_history-shaped rows, one a second."""
    rows, t, requests = [], 0, 0
    for users, seconds, rps in plan:
        for _ in range(seconds):
            t += 1
            requests += rps
            rows.append({"t": t, "users": users, "rps": rps, "fps": 0.0, "p50_ms": 10.0 * users,
                         "p95_ms": 20.0 * users, "p99_ms": 30.0 * users, "requests": int(requests), "failures": 0})
    return rows


def test_ramp_steps_and_knee():
    steps = ramp_steps(history_rows([(2, 10, 20), (3, 1, 25), (4, 10, 36), (6, 10, 40), (8, 10, 40)]))
    assert [s["users"] for s in steps] == [2, 4, 6, 8]  # 3 users was only passed through while spawning
    assert [s["rps"] for s in steps] == [20, 36, 40, 40]
    assert steps[1]["p95_ms"] == 80.0 and steps[1]["seconds"] == 10
    knee = find_knee(steps)
    assert knee["users"] == 6  # 4 users is 10 % below the best: not saturated yet
    assert find_knee(steps, tolerance=0.1)["users"] == 4
    assert find_knee([]) is None


# ------------------------------------------------------------------------------------------ report ---

HEADER = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "66%", "75%", "80%", "90%",
          "95%", "98%", "99%", "99.9%", "99.99%", "100%", "Total Request Count", "Total Failure Count",
          "Total Median Response Time", "Total Average Response Time", "Total Min Response Time",
          "Total Max Response Time", "Total Average Content Size"]


def write_history(path: Path, seconds: int = 12) -> Path:
    """A small *_stats_history.csv as Locust 2.47 writes it with --csv-full-history."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerow([1700000000, 0, "", "Aggregated", "0.000000", "0.000000"] + ["N/A"] * 11 + [0, 0, 0, 0, 0, 0,
                                                                                                    0])
        for i in range(1, seconds):
            p = [40 + i, 45, 50, 55, 70, 90 + i, 100, 120, 130, 130, 130]
            writer.writerow([1700000000 + i, 4, "POST", "/predictions/catsdogs", "30", "0"] + p + [30 * i,
                                                                                                   0] + [45] * 5)
            writer.writerow([1700000000 + i, 4, "", "Aggregated", f"{30 + i:.6f}", "0.000000"] + p
                            + [30 * i, 0, 45, 50.1, 12, 130, 150])
    return path


def test_history_is_read(tmp_path):
    history = report.read_history(write_history(tmp_path / "locust_stats_history.csv"))
    assert len(history) == 12 and history[0]["p95_ms"] is None and history[0]["t"] == 0
    assert history[-1] == {"t": 11.0, "ts": 1700000011.0, "users": 4, "rps": 41.0, "fps": 0.0, "p50_ms": 51.0,
                           "p95_ms": 101.0,
                           "p99_ms": 120.0, "requests": 330, "failures": 0}


def test_docs_block_is_replaced_and_other_sections_kept(tmp_path):
    from benchmarks.report import write_block

    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\n<!-- serving-benchmark:start -->\nbench\n<!-- serving-benchmark:end -->\n")
    write_block(docs, ["soak v1"], "loadtest:soak")
    write_block(docs, ["run v1"], "loadtest:run")
    write_block(docs, ["run v2"], "loadtest:run")
    text = docs.read_text()
    assert "bench" in text and "run v2" in text and "run v1" not in text and "soak v1" in text
    assert text.index("bench") < text.index("soak v1") < text.index("run v2")
    assert text.count("<!-- loadtest:run:start -->") == 1 and text.count("<!-- loadtest:run:end -->") == 1


# ----------------------------------------------------------------------------------------- workers ---

def worker_row(t, pid, rss, worker="9000"):
    return {"time": 1e9 + t, "elapsed_s": t, "worker": worker, "pid": pid, "status": "READY", "rss_mb": rss}


def test_restarts_and_rss_growth_from_samples():
    rows = [worker_row(t, 101, 300 + t) for t in range(0, 100, 10)] + [worker_row(0, 55, 900, workers.FRONTEND)]
    assert workers.restarts(rows) == 0
    series = workers.total_rss_series(rows)
    assert series[0] == (0, 300) and len(series) == 10  # the frontend is not a backend worker
    start, end, pct = workers.rss_growth(series, warmup_s=30, window=2)
    assert (start, end) == (335, 385) and pct == pytest.approx((385 - 335) / 335 * 100, abs=0.01)
    rows.append(worker_row(110, 202, 250))
    assert workers.restarts(rows) == 1
    assert workers.rss_growth([(0, 100.0)]) == (None, None, None)


def test_worker_states_from_describe():
    described = [{"modelVersion": "1", "workers": [{"id": "9000", "pid": 11, "status": "READY"},
                                                   {"id": "9001", "pid": None, "status": "UNLOADING"}]}]
    assert workers.worker_states(described) == [{"worker": "9000", "pid": 11, "status": "READY"},
                                                {"worker": "9001", "pid": None, "status": "UNLOADING"}]


class FakeManagement:
    """describe() answers scripted per call: what TorchServe's management API shows while a worker restarts."""

    def __init__(self, answers):
        self.answers = list(answers)

    def describe(self):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return [{"workers": [{"id": "9000", "pid": pid, "status": status} for pid, status in answer]}]


def test_recovery_waits_for_a_new_ready_worker_that_answers():
    clock = iter(range(100))
    client = FakeManagement([[(11, "READY")], RuntimeError("502"), [(None, "STARTING")], [(22, "READY")]])
    answers = iter([False, True])
    seconds, pids = workers.wait_recovered(client, [11], lambda: next(answers), timeout=50,
                                           clock=lambda: next(clock), sleep=lambda s: None)
    assert seconds == 6 and pids == [22]  # polls 1-4 not recovered (old pid, error, starting, probe failed)
    never = workers.wait_recovered(FakeManagement([[(11, "READY")]]), [11], lambda: True, timeout=3,
                                   clock=lambda: next(clock), sleep=lambda s: None)
    assert never == (None, [11])


def test_report_help_names_the_modes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(mode in text for mode in MODES)


def test_report_needs_the_run_and_says_how_to_make_it(tmp_path, capsys):
    assert report.main(["soak", "--out", str(tmp_path)]) == 2
    assert "make loadtest-soak" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- integration ---

def run_logged(command: list[str], timeout: float, **kwargs) -> tuple[int, str]:
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: make's trap stops a TorchServe it started before exiting
        output, _ = proc.communicate(timeout=120)
        pytest.fail(f"{' '.join(command)} took over {timeout} s:\n{output[-3000:]}")
    return proc.returncode, output


def loadtest(mode: str, run_dir: Path, out: Path, *args: str, timeout: float = 480) -> tuple[int, str]:
    """What `make loadtest-<mode>` runs against a running TorchServe: Locust with the mode's config (its exit
    status is the gate's), then `python -m loadtest.report` on the files it wrote."""
    code, output = run_logged([sys.executable, "-m", "locust", "--config", str(config_file(mode)), "--run-dir",
                               str(run_dir), "--csv", str(out / "locust"), "--html", str(out / "report.html"),
                               "--json-file", str(out / "locust"), *args], timeout)
    report_code, report_output = run_logged([sys.executable, "-m", "loadtest.report", mode, "--out", str(out)], 120)
    assert report_code == 0, report_output
    return code, output + report_output


def make_loadtest(target: str, run_dir: Path, store: Path, out: Path, args: str) -> tuple[int, str]:
    """The make target itself, on free ports: it starts TorchServe (none runs from run_dir) and stops it."""
    venv = Path(sys.executable).parent.parent
    return run_logged(["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed", target,
                       f"SERVE_DIR={run_dir}", f"MAR={store / 'catsdogs.mar'}", f"LOADTEST_OUT={out}",
                       f"SERVE_ARGS=--free-ports --model-store {store} --log-dir {run_dir / 'logs'}",
                       f"LOADTEST_ARGS={args}"], 600)


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def served_for_load(synthetic_model, tmp_path_factory):
    """(run dir, image folder, archive store): TorchServe on free ports with the synthetic model."""
    from serving.archive import build_archive
    from serving.config import DEFAULT_CONFIG
    from serving.server import free_ports, start, stop

    model_dir, _ = synthetic_model
    work = tmp_path_factory.mktemp("loadtest")
    build_archive(model_dir, work / "store")
    inference, management, metrics, grpc_i, grpc_m = free_ports(5)
    start(config=DEFAULT_CONFIG, run_dir=work / "run", log_dir=work / "logs", model_store=work / "store",
          ports={"inference": inference, "management": management, "metrics": metrics},
          grpc_ports=(grpc_i, grpc_m), timeout=240)
    try:
        yield work / "run", model_dir.parent / "images", work / "store"
    finally:
        stop(work / "run")


@pytest.mark.slow
@pytest.mark.integration
def test_steady_run_passes_the_gate_and_survives_a_key_rotation(served_for_load, tmp_path):
    from serving.client import ServingClient

    run_dir, images, _ = served_for_load
    out = tmp_path / "run"
    status_before = git_status()
    proc = subprocess.Popen([sys.executable, "-m", "locust", "--config", str(config_file("run")), "--run-dir",
                             str(run_dir), "--images", str(images), "-u", "4", "-r", "4", "-t", "15s",
                             "--csv", str(out / "locust"), "--html", str(out / "report.html"),
                             "--json-file", str(out / "locust"),
                             # throughput/latency limits are for the real model on a known machine (see
                             # run.conf); here the error ratio (0) and the accuracy floor of run.conf gate
                             "--min-rps", "0.5", "--max-p95-ms", "30000"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "locust_stats_history.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)
        keys = ServingClient.from_run_dir(run_dir)
        old = keys.key("inference")
        assert keys.refresh_key("inference", stale=old) != old  # TorchServe rotates: the users' key is now refused
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    code, summary_output = run_logged([sys.executable, "-m", "loadtest.report", "run", "--out", str(out)], 120)
    assert code == 0, summary_output
    output += summary_output
    assert git_status() == status_before, "a load run changed tracked files (docs are written by loadtest-docs only)"
    summary = json.loads((out / "locust_summary.json").read_text())
    m = summary["metrics"]
    assert summary["passed"] and m["failures"] == 0 and m["requests"] > 20, output
    assert m["token_refreshes"] >= 1, "no user met the rotated key: the rotation test did not test anything"
    assert {e["name"] for e in summary["endpoints"]} == {"/predictions/catsdogs", "/predictions/catsdogs/[version]",
                                                        "/ping"}
    predictions = sum(e["requests"] for e in summary["endpoints"] if e["name"].startswith("/predictions"))
    accuracy = summary["accuracy"]  # every image of the synthetic set is labelled: every answer is scored
    assert accuracy["labelled"] == predictions and accuracy["correct"] == round(accuracy["accuracy"] * predictions)
    assert sum(v["total"] for v in accuracy["per_label"].values()) == predictions
    assert m["accuracy_drop"] is not None and m["offline_accuracy"] > 0.9  # the floor was measured, not skipped
    assert "max_accuracy_drop" in {c["name"] for c in summary["checks"]}
    for name in ("locust_stats.csv", "locust_stats_history.csv", "report.html", "locust.json", "report.json"):
        assert (out / name).stat().st_size > 0, name
    for text in ("req/s, p50", "p95", "quality gate (run): PASSED"):  # the report's summary line, the gate's verdict
        assert text in output, f"{text!r} not in:\n{output[-4000:]}"


@pytest.mark.slow
@pytest.mark.integration
def test_an_unreachable_threshold_fails_the_run(served_for_load, tmp_path):
    run_dir, images, _ = served_for_load
    code, output = loadtest("run", run_dir, tmp_path, "--images", str(images), "-u", "2", "-r", "2",
                            "-t", "5s", "--min-rps", "1e6", "--max-p95-ms", "30000")
    assert code != 0, output
    summary = json.loads((tmp_path / "locust_summary.json").read_text())
    assert [c["name"] for c in summary["checks"] if not c["ok"]] == ["min_rps"]
    assert "quality gate (run): FAILED" in output


@pytest.mark.slow
@pytest.mark.integration
def test_step_ramp_measures_each_step(served_for_load, tmp_path):
    run_dir, images, _ = served_for_load
    code, output = loadtest("ramp", run_dir, tmp_path, "--images", str(images), "-u", "4",
                            "--step-users", "2", "--step-seconds", "6")
    assert code == 0, output
    result = json.loads((tmp_path / "report.json").read_text())
    assert [s["users"] for s in result["steps"]] == [2, 4]
    assert all(s["rps"] > 0 for s in result["steps"]) and result["knee"]["users"] in (2, 4)
    assert "knee:" in output


@pytest.mark.slow
@pytest.mark.integration
def test_fault_mode_starts_its_own_server_kills_a_worker_and_sees_it_recover(served_for_load, tmp_path):
    """`make loadtest-fault` against a run directory where nothing runs: it starts TorchServe and stops it."""
    from serving.server import running_pid, stop

    _, images, store = served_for_load
    try:
        code, output = make_loadtest("loadtest-fault", tmp_path / "run", store, tmp_path,
                                     f"--images {images} -u 2 -r 2 -t 30s --kill-after 5 --monitor-every 1")
        left_running = running_pid(tmp_path / "run")
    finally:
        stop(tmp_path / "run")  # never leave a TorchServe behind, even when the command failed
    assert code == 0, output
    summary = json.loads((tmp_path / "fault" / "locust_summary.json").read_text())
    m, fault = summary["metrics"], summary["fault"]
    assert m["recovered"] is True and 0 < m["recovery_s"] < 25, output
    assert fault["killed_pid"] not in fault["pids_after"]
    assert m["failures_after_recovery"] == 0 and m["failures_before_fault"] == 0
    assert m["worker_restarts"] >= 1  # the monitor saw the new PID too
    assert (tmp_path / "fault" / "workers.png").stat().st_size > 0
    assert left_running is None, "the TorchServe the command started was left running"


@pytest.mark.slow
@pytest.mark.integration
def test_a_model_that_always_answers_cat_fails_the_load_test_gate(synthetic_model, served_for_load, tmp_path):
    """Well-formed answers, no errors, fast: only the accuracy floor (vs model-meta.json's offline accuracy) bites."""
    from serving.archive import build_archive
    from serving.server import stop
    from tests.serving_helpers import variant

    model_dir, _ = synthetic_model
    _, images, _ = served_for_load
    build_archive(variant(model_dir, tmp_path / "cat-model", "9.alwayscat", always_cat=True), tmp_path / "store")
    try:
        code, output = make_loadtest("loadtest", tmp_path / "run", tmp_path / "store", tmp_path / "out",
                                     f"--images {images} -u 2 -r 2 -t 8s --min-rps 0.5 --max-p95-ms 30000")
    finally:
        stop(tmp_path / "run")
    assert code != 0 and "quality gate (run): FAILED" in output, output  # make: Locust's exit 3 fails the recipe
    summary = json.loads((tmp_path / "out" / "run" / "locust_summary.json").read_text())
    assert [c["name"] for c in summary["checks"] if not c["ok"]] == ["max_accuracy_drop"], summary["checks"]
    assert summary["metrics"]["failures"] == 0 and summary["metrics"]["accuracy"] < 0.6


def run_summary() -> dict:
    """A locust_summary.json as the locustfile's gate writes it (made-up numbers)."""
    metrics = {"requests": 10, "failures": 0, "error_ratio": 0.0, "rps": 5.0, "p50_ms": 10.0, "p95_ms": 20.0,
               "p99_ms": 30.0, "max_ms": 40.0, "accuracy": 0.9, "offline_accuracy": 0.95, "schema_errors": 0}
    return {"metrics": metrics, "accuracy": {"accuracy": 0.9, "correct": 9, "labelled": 10},
            "endpoints": [{**metrics, "name": "/predictions/m", "method": "POST"}], "n_images": 10,
            "images": "data/synthetic", "n_labelled_images": 10, "peak_users": 2, "fault": {}, "passed": True,
            "checks": [{"ok": True, "text": "accuracy_drop 0.05 <= 0.05"}], "load": {"before": 0.5, "after": 1.7},
            "model_meta": {"arch": "resnet18", "image_size": 96, "version": "1.abc", "pretrained": "none"}}


def test_docs_block_states_detected_conditions_and_only_measured_numbers(tmp_path):
    from benchmarks.report import machine

    (tmp_path / "report.json").write_text("{}")
    text = "\n".join(report.docs_lines({"mode": "run", "summary": run_summary()}, tmp_path))
    assert machine()["cpu"] in text and machine()["gpu"] in text  # detected, not typed
    assert "random initialisation" in text and "offline test accuracy: 0.950" in text
    assert "**PASSED**" in text and "0.5 before, 1.7 after" in text


def test_report_of_a_run_writes_report_json_and_only_its_docs_block(tmp_path, capsys):
    """What `make loadtest-docs` runs: the run's block of the docs, the rest of the file kept."""
    (tmp_path / "locust_summary.json").write_text(json.dumps(run_summary()))
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nkept\n")
    assert report.main(["run", "--out", str(tmp_path), "--docs", str(doc)]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["mode"] == "run"
    text = doc.read_text()
    assert text.startswith("# Performance\n\nkept\n") and "<!-- loadtest:run:start -->" in text
    assert "Gate: **PASSED**" in text and "gate PASSED" in capsys.readouterr().out
