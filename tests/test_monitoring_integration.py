"""Monitoring against real processes: TorchServe serving the synthetic model (token auth on, the
monitoring/log4j2.xml logging config) and a real Prometheus scraping it every second with the committed
alert rules (`for:` shortened).

- a burst of bad requests makes the 4xx error-ratio alert fire (Prometheus HTTP API);
- every Grafana panel expression is accepted by the live Prometheus and uses only exported metrics;
- `monitoring evaluate` on the model's held-out images matches the same TorchScript model run in-process
  on the same files (within 0.5 pp), logs an MLflow run linked to the registered model version, and
  fails (exit 1) on a batch whose labels are swapped;
- `monitoring drift` and `monitoring feedback` read the real model_log.log / predictions.log.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml

from catsdogs.contract import META_FILE, read_meta
from model import engines
from model.preprocess import decode_image, eval_transform
from model.runtime import channels_last, for_cpu_inference
from monitoring import dashboard, evaluate, logs
from monitoring.__main__ import main
from serving.client import ServingClient
from serving.server import free_ports, stop
from tests import prometheus_config as prometheus
from tests import promql_names as promql
from tests.serving_helpers import serve_model_dir
from tests.test_monitoring_tools import require_tool
from training.metrics import classification_metrics
from training.prepare import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
LOG4J = prometheus.MONITORING / "log4j2.xml"
BAD_BODY = b"this is not an image " * 10


@pytest.fixture(scope="module")
def served(synthetic_model, tmp_path_factory):
    """TorchServe on free ports with the synthetic model and monitoring/log4j2.xml; yields a dict."""
    model_dir, prepared = synthetic_model
    work = tmp_path_factory.mktemp("monitor-serve")
    # f32, so that served answers are the offline model's to 1e-6 and live and offline accuracies can be compared
    # exactly (a bf16 server may flip an image or two, within the export gate; that is not what these tests check)
    os.environ[engines.PRECISION_ENV] = "f32"
    try:
        state = serve_model_dir(model_dir, work, extra={"vmargs": f"-Dlog4j.configurationFile={LOG4J.as_uri()}"})
    finally:
        del os.environ[engines.PRECISION_ENV]
    test_rows = read_manifest(prepared, "test")
    images = work / "test-images"   # the held-out originals, in their class folders
    for row in test_rows:
        target = images / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model_dir.parent / "images" / row["path"], target)
    try:
        yield {"client": ServingClient.from_run_dir(work / "run", timeout=30), "state": state, "work": work,
               "run_dir": work / "run", "model_dir": model_dir, "images": images, "rows": test_rows,
               "meta": read_meta(model_dir / META_FILE)}
    finally:
        stop(work / "run")


@pytest.fixture(scope="module")
def prometheus_url(served, tmp_path_factory):
    """A real Prometheus scraping the test TorchServe every second, evaluating the rules every second."""
    binary = require_tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    rules = prometheus.shorten_for(yaml.safe_load(prometheus.ALERTS.read_text()), "1s")
    prometheus.write_yaml(rules, work / "alerts.yml")
    target = served["state"]["metrics_url"].split("://", 1)[1]
    config = prometheus.render_config(yaml.safe_load(prometheus.CONFIG.read_text()), target=target, interval="1s",
                                      rule_files=[str(work / "alerts.yml")])
    prometheus.write_yaml(config, work / "prometheus.yml")
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    with open(work / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus not ready after 60 s:\n{(work / 'prometheus.log').read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def query(url: str, expr: str) -> dict:
    response = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]


def wait_for(condition, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()


def send_traffic(served, good: int, bad: int) -> list[requests.Response]:
    client, images = served["client"], sorted(served["images"].rglob("*.jpg"))
    responses = [client.predict(images[i % len(images)].read_bytes()) for i in range(good)]
    responses += [client.predict(BAD_BODY) for _ in range(bad)]
    return responses


# --------------------------------------------------------------------------- Prometheus ---------

def test_error_ratio_alert_fires_on_a_burst_of_bad_requests(served, prometheus_url):
    assert wait_for(lambda: query(prometheus_url, 'up{job="torchserve"} == 1')["result"], 30), \
        "Prometheus does not scrape the test TorchServe"
    # TorchServe creates the Requests4XX series at its first 4xx; Prometheus' rate() cannot see the jump
    # from "no series" to its first value, so one 4xx goes first and the burst follows once it is scraped.
    send_traffic(served, good=1, bad=1)
    assert wait_for(lambda: query(prometheus_url, "Requests4XX")["result"], 30), "no Requests4XX series scraped"
    responses = send_traffic(served, good=5, bad=40)
    assert [r.status_code for r in responses].count(415) == 40

    def firing():
        alerts = requests.get(f"{prometheus_url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "CatsdogsHigh4xxRatio" and a["state"] == "firing"]

    fired = wait_for(firing, timeout=60)
    assert fired, requests.get(f"{prometheus_url}/api/v1/alerts", timeout=10).text
    assert fired[0]["labels"]["severity"] == "warning"
    ratio = query(prometheus_url, "catsdogs:http_4xx:ratio5m")["result"]
    assert ratio and float(ratio[0]["value"][1]) > 0.25
    series = query(prometheus_url, "ts_inference_requests_total")["result"]
    assert series and series[0]["metric"]["model_name"] == "catsdogs"
    assert sum(float(s["value"][1]) for s in series) >= 5
    assert query(prometheus_url, 'ALERTS{alertname="CatsdogsHigh5xxRatio"}')["result"] == []


def test_worker_restart_alert_fires_and_no_worker_answers_503(served, prometheus_url):
    """Kill the worker: TorchServe restarts it and CatsdogsWorkerRestarted fires. Scale to 0: 503s."""
    client = served["client"]
    before = client.worker_pids()
    os.kill(before[0], signal.SIGKILL)

    def restarted():
        try:
            pids = client.worker_pids()
            ready = all(w["status"] == "READY" for w in client.describe()[0]["workers"])
        except requests.RequestException:
            return False
        return pids and pids != before and ready

    assert wait_for(restarted, timeout=90), client.describe()

    def firing():
        alerts = requests.get(f"{prometheus_url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "CatsdogsWorkerRestarted" and a["state"] == "firing"]

    fired = wait_for(firing, timeout=60)
    assert fired and fired[0]["labels"]["WorkerName"].startswith("W-"), fired

    scale = {"synchronous": "true"}
    response = client.request("management", "PUT", "/models/catsdogs", params={**scale, "min_worker": 0,
                                                                               "max_worker": 0})
    assert response.status_code == 200, response.text
    try:
        statuses = [r.status_code for r in send_traffic(served, good=3, bad=0)]
    finally:
        response = client.request("management", "PUT", "/models/catsdogs",
                                  params={**scale, "min_worker": 1, "max_worker": 1})
    assert response.status_code == 200, response.text
    assert statuses == [503, 503, 503]
    assert "Requests5XX{" in client.metrics()
    assert wait_for(lambda: [r.status_code for r in send_traffic(served, good=1, bad=0)] == [200], timeout=60)


def test_dashboard_expressions_run_on_the_live_prometheus(served, prometheus_url):
    board = dashboard.load_dashboard()
    live_names = promql.exposition_names(served["client"].metrics())
    from monitoring.rules import (
        RECORDS,  # the model's baseline rules (make drift-rules)
    )

    known = live_names | promql.recording_rules(yaml.safe_load(prometheus.ALERTS.read_text())) | set(RECORDS)
    assert promql.unknown_metrics(board, known) == {}, sorted(live_names)
    snapshot = promql.exposition_names(promql.METRICS_SNAPSHOT.read_text())
    # the committed snapshot (used by the fast unit test) lists exactly the names TorchServe exports
    assert snapshot == live_names, (sorted(snapshot - live_names), sorted(live_names - snapshot))
    with_data = 0
    for title, expr in dashboard.dashboard_targets(board):
        result = query(prometheus_url, dashboard.substitute_variables(expr))["result"]
        with_data += bool(result)
    assert with_data >= len(dashboard.dashboard_targets(board)) // 2


def test_logs_hold_one_record_per_request_in_both_files(served):
    response = send_traffic(served, good=1, bad=0)[0]
    request_id = response.headers["x-request-id"]
    log_dir = Path(served["state"]["log_dir"])

    def found():
        return (logs.by_request_id(logs.read_records(log_dir / "model_log.log")).get(request_id),
                logs.by_request_id(logs.read_records(log_dir / "predictions.log")).get(request_id))

    in_model_log, in_predictions = wait_for(lambda: all(found()) and found(), timeout=15)
    for record in (in_model_log, in_predictions):
        assert record["label"] == response.json()["label"] and record["status"] == 200
        assert record["confidence"] == response.json()["confidence"]
        assert record["time"]
    assert in_predictions["time"].endswith(("+00:00", "Z")) or "+" in in_predictions["time"]
    assert all(r["event"] == "prediction" for r in logs.read_records(log_dir / "predictions.log"))


# --------------------------------------------------------------------------- evaluate -----------

def offline_predictions(model_dir: Path, files: list[Path]) -> np.ndarray:
    """The served TorchScript model run in-process on the same files, preprocessed, run (channels_last + freeze,
    handler.optimize) and rounded (6 decimals, the response schema) like the handler."""
    meta = read_meta(model_dir / META_FILE)
    transform = eval_transform(meta)
    batch = torch.stack([transform(decode_image(f.read_bytes(), draft_size=int(meta["resize_size"])))
                         for f in files])
    model = for_cpu_inference(torch.jit.load(str(model_dir / "model.pt")).eval(), batch[:2])
    with torch.inference_mode():
        return np.round(torch.softmax(model(channels_last(batch)).float(), dim=1).numpy(), 6)


def run_evaluate(served, tmp_path, monkeypatch, images: Path, *extra: str) -> tuple[int, dict]:
    store = served["model_dir"].parent / "mlflow.db"  # the synthetic model's registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path)
    code = main(["evaluate", "--images", str(images), "--run-dir", str(served["run_dir"]),
                 "--out", str(tmp_path / "reports"), *extra])
    report_dir = max((tmp_path / "reports").glob("evaluate-*"), key=lambda p: p.stat().st_mtime_ns)
    return code, json.loads((report_dir / "metrics.json").read_text()) | {"dir": str(report_dir)}


def test_evaluate_matches_the_offline_model_on_held_out_images(served, tmp_path, monkeypatch):
    code, report = run_evaluate(served, tmp_path, monkeypatch, served["images"])
    live = report["live"]
    files = sorted(served["images"].rglob("*.jpg"))
    classes = served["meta"]["classes"]
    y_true = np.array([classes.index(f.parent.name) for f in files])
    offline = classification_metrics(y_true, offline_predictions(served["model_dir"], files), classes)
    print(f"evaluate vs in-process on {len(files)} held-out images: live accuracy {live['accuracy']:.4f}, "
          f"offline {offline['accuracy']:.4f}, live log loss {live['log_loss']:.5f}, offline {offline['log_loss']:.5f}")
    assert live["n"] == len(files) == len(served["rows"]) and live["refused"] == 0
    assert abs(live["accuracy"] - offline["accuracy"]) <= 0.005
    assert abs(live["f1"] - offline["f1"]) <= 0.005
    assert abs(live["log_loss"] - offline["log_loss"]) <= 0.005
    assert live["confusion_matrix"] == offline["confusion_matrix"]
    assert code == 0 and not report["comparison"]["failed"]
    assert Path(report["dir"], "confusion_matrix.png").stat().st_size > 0
    assert "verdict: **passed**" in Path(report["dir"], "report.md").read_text()

    from mlflow import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("catsdogs-monitoring").experiment_id])
    run = runs[0]
    meta = served["meta"]
    assert run.data.tags["model_version"] == meta["version"]
    assert run.data.tags["registered_model_version"] == str(meta["mlflow_model_version"])
    assert run.data.metrics["live_accuracy"] == pytest.approx(live["accuracy"])
    assert run.data.metrics["offline_accuracy"] == pytest.approx(meta["test_metrics"]["accuracy"])
    version = client.get_model_version(meta["registered_model"], str(meta["mlflow_model_version"]))
    assert version.tags["monitoring.evaluate.last_run"] == run.info.run_id


def test_evaluate_fails_when_live_accuracy_drops(served, tmp_path, monkeypatch):
    """Labels swapped (cat images filed as dog and back): live accuracy becomes 1 - the model's, evaluate exits 1."""
    swapped = tmp_path / "swapped"
    files = sorted(served["images"].rglob("*.jpg"))
    for f in files:
        other = "dog" if f.parent.name == "cat" else "cat"
        (swapped / other).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, swapped / other / f.name)
    code, report = run_evaluate(served, tmp_path, monkeypatch, swapped, "--no-mlflow")
    classes = served["meta"]["classes"]
    in_process = offline_predictions(served["model_dir"], files).argmax(1)
    accuracy = float(np.mean(in_process == np.array([classes.index(f.parent.name) for f in files])))
    live = report["live"]
    assert live["n"] == len(files) and live["accuracy"] == pytest.approx(1 - accuracy, abs=1e-9)
    drop = served["meta"]["test_metrics"]["accuracy"] - live["accuracy"]
    assert report["comparison"]["accuracy_drop"] == pytest.approx(drop)
    assert drop > 0.05, f"the fixture model ({accuracy:.3f} on held-out originals) is too weak for this check"
    assert code == 1 and report["comparison"]["failed"]


@pytest.mark.realdata
def test_evaluate_matches_offline_on_real_photos(served, tmp_path, monkeypatch, shared_tar):
    code, report = run_evaluate(served, tmp_path, monkeypatch, shared_tar, "--sample", "100", "--seed", "3",
                                "--no-mlflow", "--max-drop", "1")
    live = report["live"]
    classes = served["meta"]["classes"]
    with open(Path(report["dir"]) / "predictions.csv") as fh:
        sent = [(r["path"], r["actual"]) for r in csv.DictReader(fh)]
    samples = evaluate.read_samples(shared_tar, sent)   # the same 100 files, read again from the tar
    assert len(samples) == 100 == live["n"] + live["refused"]
    tmp_files, labels = [], []
    for i, sample in enumerate(samples):
        path = tmp_path / f"real-{i}.jpg"
        path.write_bytes(sample.data)
        tmp_files.append(path)
        labels.append(sample.label)
    offline = classification_metrics(np.array([classes.index(x) for x in labels]),
                                     offline_predictions(served["model_dir"], tmp_files), classes)
    print(f"real photos: live accuracy {live['accuracy']:.4f} vs in-process {offline['accuracy']:.4f}")
    assert live["refused"] == 0
    assert abs(live["accuracy"] - offline["accuracy"]) <= 0.005
    assert abs(live["log_loss"] - offline["log_loss"]) <= 0.005
    assert code == 0


# --------------------------------------------------------------------------- drift + feedback ---

def test_drift_and_feedback_on_the_real_log(served, tmp_path, monkeypatch, capsys):
    baseline = served["model_dir"].parent / "eval" / "predictions.csv"
    assert baseline.is_file()
    responses = send_traffic(served, good=len(served["rows"]), bad=0)   # the test split once more
    log_dir = Path(served["state"]["log_dir"])
    meta_path = served["model_dir"] / META_FILE
    wait_for(lambda: len(logs.answered(logs.read_records(log_dir / "model_log.log"))) >= len(responses), 15)
    code = main(["drift", "--log", str(log_dir), "--baseline", str(baseline), "--meta", str(meta_path),
                 "--min-samples", "20", "--out", str(tmp_path / "reports")])
    out = capsys.readouterr().out
    report = json.loads(max((tmp_path / "reports").glob("drift-*.json"),
                            key=lambda p: p.stat().st_mtime_ns).read_text())
    assert report["n_live"] >= len(responses)
    # served originals vs the evaluate stage's cached resized copies of the same images: same population
    assert report["label_psi"] < 0.1, out
    assert code == 0, out

    db = tmp_path / "feedback.db"
    first, second = responses[0], responses[1]
    truth = {first.headers["x-request-id"]: first.json()["label"],
             second.headers["x-request-id"]: "dog" if second.json()["label"] == "cat" else "cat"}
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\n" + "".join(f"{k},{v}\n" for k, v in truth.items()))
    assert main(["feedback", "import", str(labels), "--log", str(log_dir), "--db", str(db),
                 "--meta", str(meta_path)]) == 0
    assert main(["feedback", "report", "--window", "1h", "--db", str(db), "--meta", str(meta_path),
                 "--out", str(tmp_path / "fb.json")]) == 0
    window = json.loads((tmp_path / "fb.json").read_text())
    assert window["n"] == 2 and window["accuracy"] == pytest.approx(0.5)
    assert window["model_versions"] == [served["meta"]["version"]]
