"""Monitoring: pure functions (PSI, log parsing, metric comparison, feedback window, PromQL names) and the
CLI over log files written here. Fast: no TorchServe, no Prometheus."""
from __future__ import annotations

import csv
import gzip
import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from monitoring import dashboard, evaluate, feedback, logs
from monitoring.__main__ import main
from tests import promql_names as promql
from training import drift
from training.ingest import LabelledImage
from training.metrics import classification_metrics

CLASSES = ["cat", "dog"]
# The shape of a real model_log.log line (TorchServe 0.12 default log4j2 pattern, worker stdout).
PREFIX = "2026-11-25T13:12:04,211 [INFO ] W-9000-catsdogs_1.0-stdout MODEL_LOG - "


def record(request_id="r1", label="dog", confidence=0.9, status=200, version="3.abc1234", **extra) -> dict:
    base = {"event": "prediction", "request_id": request_id, "model": "catsdogs", "model_version": version,
            "status": status, "batch_size": 1, "handler_ms": 5.0}
    if status == 200:
        base.update(label=label, confidence=confidence)
    else:
        base.update(error=extra.pop("error", "corrupt"))
    return {**base, **extra}


def log_line(rec: dict, stamp: str = "2026-11-25T13:12:04,211") -> str:
    return f"{stamp} [INFO ] W-9000-catsdogs_1.0-stdout MODEL_LOG - {json.dumps(rec, sort_keys=True)}\n"


# --------------------------------------------------------------------------- PSI ---------------

def test_psi_is_zero_for_identical_shares_and_matches_the_formula():
    assert drift.psi([10, 30, 60], [1, 3, 6]) == pytest.approx(0.0, abs=1e-12)
    expected = 0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5)
    assert drift.psi([50, 50], [90, 10]) == pytest.approx(expected, rel=1e-9)
    assert drift.psi([90, 10], [50, 50]) == pytest.approx(expected, rel=1e-9)  # symmetric


def test_psi_smooths_empty_bins_and_rejects_mismatched_histograms():
    value = drift.psi([100, 0], [50, 50])
    assert math.isfinite(value) and value > 1.0
    with pytest.raises(ValueError):
        drift.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        drift.psi([0, 0], [1, 1])


def test_quantile_bins_split_the_baseline_evenly():
    values = np.linspace(0.5, 1.0, 1000)
    edges = drift.quantile_edges(values, bins=10)
    assert len(edges) == 9
    counts = drift.histogram(values, edges)
    assert sum(counts) == 1000 and max(counts) - min(counts) <= 2
    assert drift.quantile_edges([0.99] * 50, bins=10) == [0.99]  # piled-up baseline -> fewer bins


def test_compare_flags_a_confidence_shift_and_not_a_resample():
    rng = np.random.default_rng(0)
    baseline = {"labels": list(rng.choice(CLASSES, 2000)), "confidences": list(rng.beta(8, 1.5, 2000) * 0.5 + 0.5)}
    same = drift.compare(baseline, list(rng.choice(CLASSES, 2000)), list(rng.beta(8, 1.5, 2000) * 0.5 + 0.5), CLASSES)
    assert same["label_psi"] < drift.STABLE and same["confidence_psi"] < drift.STABLE
    assert drift.drifted(same, 0.25) == []
    unsure = drift.compare(baseline, ["dog"] * 1800 + ["cat"] * 200, list(rng.uniform(0.5, 0.7, 2000)), CLASSES)
    assert unsure["confidence_psi"] > 0.25 and unsure["label_psi"] > 0.25
    assert drift.drifted(unsure, 0.25) == ["label_psi", "confidence_psi"]
    assert unsure["mean_confidence"]["live"] < unsure["mean_confidence"]["baseline"]


def test_drift_without_a_baseline_is_a_clear_error(tmp_path, capsys):
    """A model-meta.json without drift_baseline (an old export) is refused with what to do, not guessed at."""
    from monitoring.__main__ import main

    meta = tmp_path / "model-meta.json"
    meta.write_text(json.dumps({"classes": CLASSES, "version": "1", "test_metrics": {"accuracy": 0.9}}))
    log = tmp_path / "model_log.log"
    log.write_text("")
    assert main(["drift", "--meta", str(meta), "--log", str(log), "--out", str(tmp_path)]) == 2
    assert "no drift baseline" in capsys.readouterr().err


def test_baseline_from_the_evaluate_stage_csv(tmp_path):
    path = tmp_path / "predictions.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "sha256", "actual", "predicted", "p_cat", "p_dog"])
        writer.writerow(["a.jpg", "x", "cat", "cat", "0.800000", "0.200000"])
        writer.writerow(["b.jpg", "y", "dog", "cat", "0.600000", "0.400000"])
    baseline = drift.baseline_from_predictions(path, CLASSES)
    assert baseline["labels"] == ["cat", "cat"] and baseline["confidences"] == [0.8, 0.6]


# --------------------------------------------------------------------------- log parsing -------

def test_parse_line_reads_the_json_record_and_the_log4j_timestamp():
    rec = logs.parse_line(log_line(record()))
    assert rec["label"] == "dog" and rec["confidence"] == 0.9 and rec["request_id"] == "r1"
    assert rec["time"] == "2026-11-25T13:12:04.211000+00:00"
    with_offset = logs.parse_line("2026-11-25T13:12:04.5+01:00 " + json.dumps(record()))
    assert datetime.fromisoformat(with_offset["time"]) == datetime(2026, 11, 25, 12, 12, 4, 500000, timezone.utc)
    bare = logs.parse_line(json.dumps(record()))  # monitoring/log4j2.xml's message-only file
    assert bare["label"] == "dog" and "time" not in bare


@pytest.mark.parametrize("line", [
    PREFIX + "catsdogs handler ready: model catsdogs version 1.x",
    PREFIX + '{"event": "something else"}',
    PREFIX + '{"event": "prediction", "truncated',
    "2026-11-25T13:12:04,211 [INFO ] W-9000-catsdogs_1.0 org.pytorch.serve.wlm.WorkerThread - Backend response time: 5",
    "",
])
def test_parse_line_skips_everything_else(line):
    assert logs.parse_line(line) is None


def test_read_records_reads_a_folder_with_rotated_gz_files_oldest_first(tmp_path):
    with gzip.open(tmp_path / "model_log.25-Nov.log.gz", "wt") as fh:
        fh.write(log_line(record("old"), "2026-11-25T01:00:00,000"))
    (tmp_path / "model_log.log").write_text("noise\n" + log_line(record("new", status=422)) + log_line(record("n2")))
    records = logs.read_records(tmp_path)
    assert [r["request_id"] for r in records] == ["old", "new", "n2"]
    assert [r["request_id"] for r in logs.answered(records)] == ["old", "n2"]
    assert set(logs.by_request_id(records)) == {"old", "new", "n2"}
    with pytest.raises(FileNotFoundError):
        logs.read_records(tmp_path / "missing")


def test_probabilities_from_label_and_confidence():
    assert logs.probabilities(record(label="dog", confidence=0.8), CLASSES) == pytest.approx([0.2, 0.8])
    assert logs.probabilities(record(label="cat", confidence=0.7), CLASSES) == pytest.approx([0.7, 0.3])
    with pytest.raises(ValueError):
        logs.probabilities(record(label="horse"), CLASSES)


# --------------------------------------------------------------------------- evaluate ----------

def test_choose_limit_is_balanced_and_sample_is_seeded():
    items = [(f"cat.{i}.jpg", "cat") for i in range(50)] + [(f"dog.{i}.jpg", "dog") for i in range(50)]
    limited = evaluate.choose(items, CLASSES, limit=10)
    assert len(limited) == 10 and sum(label == "dog" for _, label in limited) == 5
    a = evaluate.choose(items, CLASSES, sample=20, seed=1)
    assert a == evaluate.choose(items, CLASSES, sample=20, seed=1) != evaluate.choose(items, CLASSES, sample=20, seed=2)
    assert len(a) == 20 and a == sorted(a)
    assert evaluate.choose(items, CLASSES) == sorted(items)


def test_compare_metrics_fails_only_beyond_the_allowed_drop():
    offline = {"accuracy": 0.90, "log_loss": 0.30, "f1": 0.9}
    ok = evaluate.compare_metrics({"accuracy": 0.86, "log_loss": 0.35, "f1": 0.85}, offline, max_drop=0.05)
    assert not ok["failed"] and ok["accuracy_drop"] == pytest.approx(0.04)
    rows = {r["metric"]: r for r in ok["rows"]}
    assert rows["log_loss"]["delta"] == pytest.approx(0.05) and rows["log_loss"]["worse"] is True
    assert rows["roc_auc"]["delta"] is None
    bad = evaluate.compare_metrics({"accuracy": 0.84}, offline, max_drop=0.05)
    assert bad["failed"] and "6.00 pp" in bad["reason"]
    assert not evaluate.compare_metrics({"accuracy": 0.5}, None, 0.05)["failed"]  # nothing to compare with


def test_score_uses_training_metrics_and_counts_refusals():
    samples = [LabelledImage("cat.1.jpg", "cat", b""), LabelledImage("dog.1.jpg", "dog", b""),
               LabelledImage("dog.2.jpg", "dog", b""), LabelledImage("dog.3.jpg", "dog", b"")]
    answers = [{"cat": 0.8, "dog": 0.2}, {"cat": 0.3, "dog": 0.7}, {"cat": 0.6, "dog": 0.4}]
    results = [{"status": 200, "body": {"label": max(a, key=a.get), "probabilities": a, "model_version": "v"},
                "request_id": str(i), "seconds": 0.01} for i, a in enumerate(answers)]
    results.append({"status": 422, "body": {"error": "corrupt"}, "request_id": "x", "seconds": 0.01})
    live = evaluate.score(samples, results, CLASSES)
    expected = classification_metrics(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), CLASSES)
    assert live["accuracy"] == pytest.approx(expected["accuracy"]) and live["n"] == 3
    assert live["log_loss"] == pytest.approx(expected["log_loss"])
    assert live["confusion_matrix"] == [[1, 0], [1, 1]]
    assert live["refused"] == 1 and live["refused_by_status"] == {"422": 1} and live["model_versions"] == {"v": 3}


# --------------------------------------------------------------------------- feedback ----------

def test_parse_window():
    assert feedback.parse_window("24h") == timedelta(hours=24)
    assert feedback.parse_window("90m") == timedelta(minutes=90)
    assert feedback.parse_window("7d") == timedelta(days=7)
    for bad in ("", "24", "h", "1y", "-3h"):
        with pytest.raises(ValueError):
            feedback.parse_window(bad)


def test_in_window_uses_prediction_time_with_an_open_start():
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    rows = [{"predicted_at": (now - timedelta(hours=h)).isoformat(), "labelled_at": now.isoformat(), "id": h}
            for h in (0, 1, 23.99, 24, 30)]
    rows.append({"predicted_at": None, "labelled_at": (now - timedelta(hours=2)).isoformat(), "id": "label-time"})
    kept = feedback.in_window(rows, now, timedelta(hours=24))
    assert [r["id"] for r in kept] == [0, 1, 23.99, "label-time"]


def test_make_row_refuses_unknown_labels_and_rejected_requests():
    now = datetime.now(timezone.utc)
    row = feedback.make_row(logs.parse_line(log_line(record())), "cat", CLASSES, now, "cli")
    assert row["predicted"] == "dog" and row["true_label"] == "cat" and row["predicted_at"].startswith("2026-11-25")
    with pytest.raises(ValueError, match="classes"):
        feedback.make_row(record(), "horse", CLASSES, now, "cli")
    with pytest.raises(ValueError, match="not answered"):
        feedback.make_row(record(status=415, error="not_an_image"), "cat", CLASSES, now, "cli")


def test_feedback_store_replaces_a_relabelled_request(tmp_path):
    now = datetime.now(timezone.utc)
    with feedback.connect(tmp_path / "fb.db") as conn:
        feedback.store(conn, [feedback.make_row(record("a"), "cat", CLASSES, now, "t"),
                              feedback.make_row(record("b"), "dog", CLASSES, now, "t")])
        feedback.store(conn, [feedback.make_row(record("a"), "dog", CLASSES, now, "t")])
        rows = {r["request_id"]: r for r in feedback.fetch(conn)}
    assert len(rows) == 2 and rows["a"]["true_label"] == "dog"
    metrics = feedback.window_metrics(list(rows.values()), CLASSES)
    assert metrics["accuracy"] == 1.0 and metrics["n"] == 2


# --------------------------------------------------------------------------- CLI over logs -----

def write_log(path, records, start: datetime) -> None:
    with open(path, "w") as fh:
        for i, rec in enumerate(records):
            stamp = (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S,000")
            fh.write(log_line(rec, stamp))


def test_feedback_cli_add_import_and_window_report(tmp_path, capsys):
    now = datetime.now(timezone.utc)
    log = tmp_path / "model_log.log"
    recent = [record(f"id{i}", label=("dog" if i % 2 else "cat"), confidence=0.8) for i in range(6)]
    write_log(log, [record("old", label="cat", confidence=0.9)], now - timedelta(days=3))
    with open(log, "a") as fh:
        fh.writelines(log_line(rec, (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S,000")) for rec in recent)
        fh.write(log_line(record("refused", status=422), now.strftime("%Y-%m-%dT%H:%M:%S,000")))
    db = tmp_path / "feedback.db"
    common = ["--log", str(log), "--db", str(db), "--meta", str(tmp_path / "none.json")]
    assert main(["feedback", "add", "--request-id", "id0", "--label", "cat", *common]) == 0
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nid1,cat\nid2,cat\nid3,dog\nold,dog\nrefused,cat\nunknown,dog\n")
    assert main(["feedback", "import", str(labels), *common]) == 1  # two rows skipped, and said so
    assert "refused" in capsys.readouterr().err
    out = tmp_path / "window.json"
    assert main(["feedback", "report", "--window", "24h", "--db", str(db), "--meta", str(tmp_path / "none.json"),
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    # id0 cat->cat ok, id1 dog->cat wrong, id2 cat->cat ok, id3 dog->dog ok; "old" is 3 days back
    assert report["n"] == 4 and report["accuracy"] == pytest.approx(0.75)
    assert report["confusion_matrix"] == [[2, 1], [0, 1]]
    assert main(["feedback", "report", "--window", "7d", "--db", str(db), "--meta", str(tmp_path / "none.json"),
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 5


def test_drift_cli_exits_1_on_shifted_predictions_and_0_on_the_baseline_itself(tmp_path):
    rng = np.random.default_rng(1)
    baseline = tmp_path / "predictions.csv"
    p_dog = rng.beta(1.2, 1.2, 400)
    with open(baseline, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "sha256", "actual", "predicted", "p_cat", "p_dog"])
        for i, p in enumerate(p_dog):
            writer.writerow([f"{i}.jpg", str(i), "cat", "dog" if p > 0.5 else "cat", f"{1 - p:.6f}", f"{p:.6f}"])
    meta = tmp_path / "model-meta.json"
    meta.write_text(json.dumps({"classes": CLASSES, "version": "3.abc1234"}))
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    same = tmp_path / "same.log"
    write_log(same, [record(str(i), label="dog" if p > 0.5 else "cat", confidence=max(p, 1 - p))
                     for i, p in enumerate(p_dog)], start)
    shifted = tmp_path / "shifted.log"
    write_log(shifted, [record(str(i), label="dog", confidence=0.55) for i in range(300)]
              + [record("other", version="2.old")] * 100, start)
    args = ["--baseline", str(baseline), "--meta", str(meta), "--out", str(tmp_path / "reports")]
    assert main(["drift", "--log", str(same), *args]) == 0
    assert main(["drift", "--log", str(shifted), *args]) == 1
    report = json.loads(max((tmp_path / "reports").glob("drift-*.json"),
                            key=lambda p: p.stat().st_mtime_ns).read_text())
    assert report["n_live"] == 300 and report["scope"] == "model version 3.abc1234"
    assert report["drifted"] == ["label_psi", "confidence_psi"]
    assert main(["drift", "--log", str(tmp_path / "nope.log"), *args]) == 2


# --------------------------------------------------------------------------- PromQL names ------

@pytest.mark.parametrize("expr,names", [
    ('sum(rate(Requests5XX{Hostname=~"$host"}[5m])) / sum(rate(Requests2XX[$__rate_interval]))',
     {"Requests5XX", "Requests2XX"}),
    ("histogram_quantile(0.95, sum by (le, label) (rate(catsdogs_prediction_confidence_bucket[5m])))",
     {"catsdogs_prediction_confidence_bucket"}),
    ('sum(increase(ts_inference_requests_total[1h] offset 1d)) by (model_version) or vector(0)',
     {"ts_inference_requests_total"}),
    ('a_total / on (model_name) group_left (label) b:ratio5m > bool 0.5 unless up == 0',
     {"a_total", "b:ratio5m", "up"}),
    ('label_replace(x, "dst", "$1", "src", "(.*)")', {"x"}),
])
def test_metric_names_of_promql(expr, names):
    assert promql.metric_names(expr) == names


def test_exposition_names_and_grafana_variables():
    text = ("# HELP Requests2XX x\n# TYPE Requests2XX counter\nRequests2XX{Level=\"Host\",} 3.0\n"
            "h_bucket{le=\"0.1\",} 1.0\nh_sum 2.0\nh_count 1.0\n")
    assert promql.exposition_names(text) == {"Requests2XX", "h_bucket", "h_sum", "h_count"}
    assert dashboard.substitute_variables("rate(x{m=~\"$model\"}[$__rate_interval])") == 'rate(x{m=~".*"}[5m])'


def test_dashboard_is_json_with_targets_that_use_only_exported_metrics():
    board = dashboard.load_dashboard()
    targets = dashboard.dashboard_targets(board)
    assert len(targets) >= 8
    known = promql.exposition_names(promql.METRICS_SNAPSHOT.read_text())
    import yaml

    from monitoring.rules import RECORDS

    known |= promql.recording_rules(yaml.safe_load(promql.ALERTS.read_text())) | set(RECORDS)
    assert promql.unknown_metrics(board, known) == {}
    rules = dashboard.dashboard_rules(board)["groups"][0]["rules"]
    assert len(rules) == len(targets) and all("$" not in r["expr"] for r in rules)
    assert promql.unknown_metrics({"panels": [{"title": "t", "targets": [{"expr": "rate(nope_total[5m])"}]}]},
                                  known) == {"t / ?": {"nope_total"}}


def test_log4j2_config_is_xml_and_its_predictions_filter_matches_handler_records():
    import re
    import xml.etree.ElementTree as ET

    root = ET.parse(dashboard.MONITORING / "log4j2.xml").getroot()
    appenders = {a.get("name"): a for a in root.find("Appenders")}
    assert {"model_log", "access_log", "ts_log", "predictions"} <= set(appenders)
    regex = appenders["predictions"].find("RegexFilter").get("regex")
    assert re.match(regex, json.dumps(record(), sort_keys=True))          # what the handler logs
    assert re.match(regex, json.dumps(record(status=415, error="not_an_image"), sort_keys=True))
    assert not re.match(regex, "catsdogs handler ready: model catsdogs version 1.x")
    loggers = {lg.get("name"): [ref.get("ref") for ref in lg] for lg in root.find("Loggers") if lg.get("name")}
    assert "predictions" in loggers["MODEL_LOG"]


def test_a_summarised_baseline_compares_like_the_raw_predictions():
    rng = np.random.default_rng(3)
    labels, confidences = list(rng.choice(CLASSES, 1000)), list(rng.beta(8, 1.5, 1000) * 0.5 + 0.5)
    summary = drift.summarise(labels, confidences, CLASSES, source="test")
    assert summary["n"] == 1000 and len(summary["confidence_shares"]) == len(summary["confidence_edges"]) + 1
    live_labels, live_conf = ["dog"] * 800 + ["cat"] * 200, list(rng.uniform(0.5, 0.7, 1000))
    raw = drift.compare({"labels": labels, "confidences": confidences}, live_labels, live_conf, CLASSES)
    carried = drift.compare(summary, live_labels, live_conf, CLASSES)
    assert carried["label_psi"] == pytest.approx(raw["label_psi"], rel=1e-3)
    assert carried["confidence_psi"] == pytest.approx(raw["confidence_psi"], rel=1e-3)
    assert drift.drifted(carried, 0.25) == ["label_psi", "confidence_psi"]


def test_baseline_rules_come_from_model_meta_and_promtool_accepts_them(tmp_path):
    import subprocess

    from monitoring import rules

    meta = {"version": "4.abc", "registered_model": "pets", "drift_baseline": drift.summarise(
        ["dog", "cat", "dog", "dog"], [0.9, 0.8, 0.7, 0.95], CLASSES)}
    doc = rules.baseline_rules(meta)
    records = {(r["record"], r["labels"].get("label")): r["expr"] for r in doc["groups"][0]["rules"]}
    assert records[("catsdogs:baseline:dog_share", None)] == "vector(0.75)"
    assert records[("catsdogs:baseline:label_share", "cat")] == "vector(0.25)"
    assert records[("catsdogs:baseline:mean_confidence", None)] == "vector(0.8375)"
    assert doc["groups"][0]["name"] == "pets-baseline"
    with pytest.raises(ValueError, match="drift_baseline"):
        rules.baseline_rules({"version": "1"})
    path = tmp_path / "baseline.rules.yml"
    path.write_text(rules.render(meta, "test"))
    from tests.test_monitoring_tools import require_tool

    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
