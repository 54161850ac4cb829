"""`python -m monitoring {evaluate,feedback,drift,rules,check-dashboard}`: production monitoring of the served model.

  evaluate         send a labelled image batch to the live endpoint, compare with the offline test metrics
  feedback         store true labels for served request ids (add / import) and score a time window (report)
  drift            PSI of live predicted labels and confidences (model_log.log) against the test split
  rules            the model's drift baseline as Prometheus recording rules (make drift-rules)
  check-dashboard  every PromQL expression of the Grafana dashboard parses (promtool)
See docs/monitoring.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from catsdogs import contract
from catsdogs.contract import EVAL_DIR, META_FILE, MODEL_DIR, RUN_DIR, add_server_args
from monitoring.dashboard import DASHBOARD
from serving.client import client_from_args

REPORTS = Path("reports/monitoring")
FEEDBACK_DB = REPORTS / "feedback.db"
EVAL_PREDICTIONS = EVAL_DIR / "predictions.csv"


class UsageError(RuntimeError):
    """Bad input or an unreachable dependency: exit 2 with the message."""


def local_meta(path: Path | None) -> dict:
    """model-meta.json at `path`; without that file, {"classes": params.yaml data.classes}."""
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text())
    try:
        return {"classes": list(contract.read_params()["data"]["classes"])}
    except contract.ContractError as exc:
        raise UsageError(f"no class list: {path} is missing and {exc}; "
                         "pass --meta path/to/model-meta.json") from exc


def log_path(args) -> Path:
    """--log, else model_log.log in the log dir of --run-dir's TorchServe (serve.json), else logs/model_log.log."""
    if args.log:
        return args.log
    state = contract.read_serve_state(args.run_dir)
    return Path(state["log_dir"] if state else "logs") / "model_log.log"


def new_path(folder: Path, prefix: str, suffix: str = "") -> Path:
    """folder/<prefix>-<UTC time><suffix>, with -2, -3 ... appended when that name is taken."""
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{prefix}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    path, n = folder / f"{base}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{base}-{n}{suffix}"
    return path


def print_metrics(title: str, metrics: dict) -> None:
    from monitoring.evaluate import COMPARED

    print(title, " ".join(f"{k}={metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
                          for k in ("n", *COMPARED) if k in metrics))


def cmd_evaluate(args) -> int:
    from monitoring import evaluate as ev
    from training import plots

    client = client_from_args(args)
    try:
        meta = contract.parse_description(client.describe(customized=True))
    except requests.HTTPError as exc:
        raise UsageError(f"describe-model {client.model_name} answered {exc}") from exc
    except Exception as exc:  # requests errors, missing key file: all mean "cannot reach the server"
        raise UsageError(f"cannot reach the management API at {client.urls['management']}: {exc}. Is TorchServe "
                         f"running (make serve / make ready), and is --run-dir the one it was started with?") from exc
    classes, offline = list(meta["classes"]), meta.get("test_metrics")
    items = ev.list_labelled(args.images, classes)
    chosen = ev.choose(items, classes, limit=args.limit, sample=args.sample, seed=args.seed)
    samples = ev.read_samples(args.images, chosen)
    print(f"evaluate: sending {len(samples)} of {len(items)} labelled images from {args.images} to "
          f"{client.urls['inference']}/predictions/{client.model_name} (model {meta.get('version')})")
    results = ev.send(client.predict, samples, concurrency=args.concurrency)
    live = ev.score(samples, results, classes)
    comparison = ev.compare_metrics(live, offline, args.max_drop)

    out = new_path(Path(args.out), "evaluate")
    out.mkdir(parents=True)
    ev.write_predictions(out / "predictions.csv", samples, results, classes)
    plots.confusion_matrix_png(live["confusion_matrix"], classes, out / "confusion_matrix.png")
    summary = {"model": meta, "source": str(args.images), "live": live, "comparison": comparison}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")

    def write_report(mlflow_run: str | None) -> None:
        (out / "report.md").write_text(ev.markdown_report(source=str(args.images), meta=meta, live=live,
                                                          comparison=comparison, classes=classes,
                                                          endpoint=client.urls["inference"], mlflow_run=mlflow_run))

    run_id = linked = None
    if not args.no_mlflow:
        from monitoring.tracking import log_run

        write_report("the run holding this file")  # logged with the run, then rewritten with its id
        params = {"images": str(args.images), "n_sent": len(samples), "limit": args.limit, "sample": args.sample,
                  "seed": args.seed, "max_drop": args.max_drop}
        run_id, linked = log_run("evaluate", meta, live, params, out, offline=offline)
    write_report(run_id)
    print(f"{live['n']} answered, {live['refused']} refused {live['refused_by_status']}")
    print(ev.format_table(comparison))
    if run_id:
        print(f"MLflow run {run_id} in experiment {contract.experiment('monitoring')}"
              + (f", linked to {linked}" if linked else " (the served model version is not in this MLflow store)"))
    print(f"report: {out / 'report.md'}")
    print(("FAIL: " if comparison["failed"] else "ok: ") + comparison["reason"])
    return 1 if comparison["failed"] else 0


def cmd_feedback_store(args) -> int:
    """`feedback add` (one --request-id) and `feedback import` (a CSV file)."""
    from monitoring import feedback
    from monitoring.logs import by_request_id, parse_time, read_records

    if args.feedback_command == "import":
        items, source = feedback.read_csv(args.file), str(args.file)
    else:
        items, source = [{"request_id": args.request_id, "label": args.label, "labelled_at": args.time}], "cli"
    classes = local_meta(args.meta)["classes"]
    log = log_path(args)
    records = by_request_id(read_records(log))
    rows, problems = [], []
    now = datetime.now(timezone.utc)
    for item in items:
        record = records.get(item["request_id"])
        if record is None:
            problems.append(f"request {item['request_id']}: not in {log} (wrong id, another server's log, "
                            f"or rotated away: pass --log with the folder holding model_log*.log)")
            continue
        try:
            at = parse_time(item["labelled_at"]) if item.get("labelled_at") else now
            rows.append(feedback.make_row(record, item["label"], classes, at, source))
        except ValueError as exc:
            problems.append(f"request {item['request_id']}: {exc}")
    with feedback.connect(args.db) as conn:
        written = feedback.store(conn, rows)
    print(f"feedback: stored {written} label(s) in {args.db}" + (f"; {len(problems)} skipped" if problems else ""))
    for problem in problems:
        print(f"  skipped: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_feedback_report(args) -> int:
    from monitoring import feedback

    classes = local_meta(args.meta)["classes"]
    window = feedback.parse_window(args.window)
    if not Path(args.db).is_file():
        raise UsageError(f"{args.db} does not exist yet; add labels with `python -m monitoring feedback add`")
    with feedback.connect(args.db) as conn:
        rows = feedback.in_window(feedback.fetch(conn), datetime.now(timezone.utc), window)
    if not rows:
        print(f"feedback report: no labelled predictions in the last {args.window} in {args.db}")
        return 0
    metrics = feedback.window_metrics(rows, classes)
    print_metrics(f"feedback last {args.window}:", metrics)
    print(f"confusion matrix (rows = true {classes}): {metrics['confusion_matrix']}; versions "
          f"{metrics['model_versions']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"window": args.window, **metrics}, indent=2) + "\n")
        print(f"written {args.out}")
    return 0


def cmd_drift(args) -> int:
    from monitoring.feedback import parse_window
    from monitoring.logs import answered, parse_time, read_records
    from training import drift

    meta = local_meta(args.meta)
    classes, log = meta["classes"], log_path(args)
    records = answered(read_records(log))
    version = None if args.all_versions else args.model_version or meta.get("version")
    if version:
        records = [r for r in records if str(r.get("model_version")) == str(version)]
    if args.window:
        start = datetime.now(timezone.utc) - parse_window(args.window)
        records = [r for r in records if r.get("time") and parse_time(r["time"]) > start]
    if args.baseline:
        baseline = drift.baseline_from_predictions(args.baseline, classes)
    elif meta.get("drift_baseline"):
        baseline = {**meta["drift_baseline"], "source": f"{args.meta} drift_baseline"}
    else:
        raise UsageError(f"no drift baseline: {args.meta} has no drift_baseline (written by the export stage since "
                         f"drift monitoring exists); re-export the model (make pipeline) or pass --baseline "
                         f"{EVAL_PREDICTIONS}")
    scope = f"model version {version}" if version else "all versions"
    if len(records) < args.min_samples:
        print(f"drift: only {len(records)} answered predictions for {scope} in {log} (need {args.min_samples}); "
              f"not evaluated")
        return 0
    result = drift.compare(baseline, [r["label"] for r in records], [float(r["confidence"]) for r in records],
                           classes, bins=args.bins)
    flagged = drift.drifted(result, args.threshold)
    result.update(log=str(log), scope=scope, baseline_source=baseline["source"], threshold=args.threshold,
                  drifted=flagged)
    print(f"drift ({scope}, {result['n_live']} live vs {result['n_baseline']} baseline predictions from "
          f"{baseline['source']}):")
    print(f"  label PSI      {result['label_psi']:.4f} ({drift.severity(result['label_psi'])}); shares "
          f"baseline {result['label_shares']['baseline']} live {result['label_shares']['live']}")
    if "confidence_psi" in result:
        print(f"  confidence PSI {result['confidence_psi']:.4f} ({drift.severity(result['confidence_psi'])}); mean "
              f"baseline {result['mean_confidence']['baseline']:.4f} live {result['mean_confidence']['live']:.4f}")
    out = new_path(Path(args.out), "drift", ".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"report: {out}")
    if flagged:
        print(f"DRIFT: {', '.join(flagged)} above {args.threshold}")
        return 1
    print(f"ok: every PSI is at most {args.threshold}")
    return 0


def cmd_rules(args) -> int:
    from monitoring.rules import render

    meta = contract.read_meta(args.meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(meta, str(args.meta)))
    print(f"rules: {args.out} (drift baseline of model version {meta['version']})")
    return 0


def cmd_check_dashboard(args) -> int:
    from monitoring import dashboard

    problems = dashboard.check_dashboard(args.dashboard, args.promtool)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        n = len(dashboard.dashboard_targets(dashboard.load_dashboard(args.dashboard)))
        print(f"dashboard: {n} expressions parse (promtool)")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    # flags shared by several subcommands (argparse parents)
    meta = argparse.ArgumentParser(add_help=False)
    meta.add_argument("--meta", type=Path, default=MODEL_DIR / META_FILE,
                      help="model-meta.json: class list, version, drift baseline (default %(default)s)")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", type=Path, default=FEEDBACK_DB, help="SQLite store (default %(default)s)")
    log = argparse.ArgumentParser(add_help=False)
    log.add_argument("--run-dir", type=Path, default=RUN_DIR,
                     help=f"run directory whose serve.json names the log dir (default {RUN_DIR})")
    log.add_argument("--log", type=Path, help="model_log.log, or a folder of model_log*.log(.gz) "
                                              "(default <log dir of --run-dir>/model_log.log, else logs/model_log.log)")

    parser = argparse.ArgumentParser(prog="python -m monitoring", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evaluate", help="score a labelled batch on the live endpoint against offline metrics")
    p.add_argument("--images", type=Path, required=True,
                   help="folder or .zip/.tar(.gz) of labelled images (cat.1.jpg, dogs/x.jpg, PetImages/Cat/1.jpg)")
    p.add_argument("--limit", type=int, help="at most this many images, balanced per class, first in path order")
    p.add_argument("--sample", type=int, help="a seeded random subset of this many images")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--max-drop", type=float, default=0.05,
                   help="fail (exit 1) when live accuracy is more than this below offline (absolute, default 0.05)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--out", type=Path, default=REPORTS, help="reports go to OUT/evaluate-<time>/")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    add_server_args(p)
    p.set_defaults(func=cmd_evaluate)

    fb = sub.add_parser("feedback", help="true labels for served requests: add, import, report")
    fsub = fb.add_subparsers(dest="feedback_command", required=True)
    p = fsub.add_parser("add", parents=[db, log, meta], help="store the true label of one request id")
    p.add_argument("--request-id", required=True, help="the x-request-id header of the prediction's response")
    p.add_argument("--label", required=True, help="the true class")
    p.add_argument("--time", help="when the label was given (ISO 8601; default now)")
    p.set_defaults(func=cmd_feedback_store)
    p = fsub.add_parser("import", parents=[db, log, meta],
                        help="store true labels from a CSV (request_id,label[,labelled_at])")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_feedback_store)
    p = fsub.add_parser("report", parents=[db, meta], help="metrics of the labelled predictions made in a time window")
    p.add_argument("--window", default="24h", help="how far back: 30m, 24h, 7d ... (default 24h)")
    p.add_argument("--out", type=Path, help="also write the metrics as JSON here")
    p.set_defaults(func=cmd_feedback_report)

    p = sub.add_parser("drift", parents=[log, meta],
                       help="PSI of live labels/confidences (model_log.log) against the test split")
    p.add_argument("--baseline", type=Path,
                   help=f"an evaluate-stage predictions.csv, e.g. {EVAL_PREDICTIONS} "
                        "(default: --meta's drift_baseline)")
    p.add_argument("--model-version", help="only predictions of this served version (default --meta's version)")
    p.add_argument("--all-versions", action="store_true", help="use predictions of every version in the log")
    p.add_argument("--window", help="only predictions logged in this window (e.g. 24h)")
    p.add_argument("--threshold", type=float, default=0.25, help="exit 1 when a PSI exceeds this (default 0.25)")
    p.add_argument("--bins", type=int, default=10, help="confidence bins (baseline quantiles)")
    p.add_argument("--min-samples", type=int, default=50, help="fewer live predictions: report 'not evaluated'")
    p.add_argument("--out", type=Path, default=REPORTS, help="report JSON goes to OUT/drift-<time>.json")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("rules", parents=[meta],
                       help="Prometheus recording rules with the model's drift baseline (model-meta.json)")
    p.add_argument("--out", type=Path, default=Path("monitoring/generated/baseline.rules.yml"),
                   help="rules file to write (default %(default)s)")
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("check-dashboard", help="every dashboard PromQL expression parses (promtool)")
    p.add_argument("--dashboard", type=Path, default=DASHBOARD)
    p.add_argument("--promtool", help="promtool binary (default: from PATH)")
    p.set_defaults(func=cmd_check_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # UsageError, ContractError included
        print(f"monitoring {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
