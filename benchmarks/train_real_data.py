"""Benchmark: a training recipe on a real photo set (e.g. ../shared/data/dogs-vs-cats-10k.tar).

prepare -> train -> evaluate -> export in a work folder (the repo's artifacts untouched), each stage timed; the
exported model's CPU latency in-process and, unless --no-serve or wrk is missing, served by TorchServe under
`wrk` (benchmarks/serving.py). Each --label is one entry of benchmarks/results/train_real_data.json, from which
docs/training-benchmark.md is rewritten. Nothing is asserted.

    python -m benchmarks.train_real_data --data ../shared/data/dogs-vs-cats-10k.tar            # params.yaml
    python -m benchmarks.train_real_data --data ... --preset scratch --label scratch            # a preset
    python -m benchmarks.train_real_data --data ... -S train.finetune_blocks=1 --label ft1      # a variant
    python -m benchmarks.train_real_data --data ... --label pretrained --serve-only             # re-measure serving
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.report import load_average, machine, write_block
from model.runtime import reuse_freed_memory
from training import presets
from training.params import check_params, load_params

RESULTS = Path("benchmarks/results/train_real_data.json")
REPORT = Path("docs/training-benchmark.md")


def latency(model_dir: Path, data: bytes, seconds: float = 5.0) -> dict:
    """benchmarks.serving.in_process on the engine the handler serves this model with (model-meta.json's choice,
    CATSDOGS_ENGINE/CATSDOGS_PRECISION override) at the current thread count: batch 1 (decode + preprocess +
    forward of one photo) and batch 8."""
    from benchmarks import serving

    threads = torch.get_num_threads()
    one, eight = (serving.in_process(model_dir, data, None, b, threads, seconds) for b in (1, 8))
    return {"engine": one["runs_on"], "end_to_end_p50_ms": one["p50_ms"], "end_to_end_p95_ms": one["p95_ms"],
            "batch8_img_s": eight["images_per_s"], "threads": threads}


def served_throughput(model_dir: Path, data: bytes, seconds: int) -> dict:
    """The exported model served by TorchServe with the committed handler/model-config.yaml, loaded by wrk
    posting `data` at concurrency 1 and 16 (req/s, p50/p99, failures)."""
    from benchmarks import serving

    cfg = serving.committed_config()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-real-serve-") as tmp, \
            serving.served(model_dir, cfg, {}, {}, Path(tmp) / "serve") as (url, token):
        body = Path(tmp) / "payload.jpg"
        body.write_bytes(data)
        serving.run_wrk(url, token, body, 4, 10)  # warm-up: the frontend's JIT compiler, the worker's first batches
        for connections in (1, 16):
            rows.append(serving.run_wrk(url, token, body, connections, seconds))
    keep = ("concurrency", "requests_per_s", "p50_ms", "p99_ms", "failed")
    return {"config": cfg, "seconds": seconds, "runs": [{k: r[k] for k in keep} for r in rows]}


def conditions() -> dict:
    m = machine()
    return {"cpu": m["cpu"], "logical_cpus": m["cores"], "torch_threads": torch.get_num_threads(), "gpu": m["gpu"],
            "network": "not used (weights from installed packages or none)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder or archive of labelled photos")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="default: %(default)s")
    parser.add_argument("--preset", choices=presets.available(), help="use a preset's model+train sections")
    parser.add_argument("--label", default="default", help="name of this run in the results (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-real"), help="default: %(default)s")
    parser.add_argument("--results", type=Path, default=RESULTS, help="default: %(default)s")
    parser.add_argument("--report", type=Path, default=REPORT, help="default: %(default)s")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S train.finetune_epochs=2 (like dvc exp run -S)")
    parser.add_argument("--serve-seconds", type=int, default=15, help="wrk run per concurrency (default: %(default)s)")
    parser.add_argument("--no-serve", action="store_true", help="skip the TorchServe measurement")
    parser.add_argument("--serve-only", action="store_true",
                        help="re-measure latency and serving of the run already in --workdir/--label, no training")
    args = parser.parse_args(argv)
    reuse_freed_memory()  # as the training CLI and the handler do (model/runtime.py)
    serve = not args.no_serve and shutil.which("wrk") is not None
    if not args.no_serve and not serve:
        print("wrk not found (apt-get install -y wrk): the served throughput is not measured")
    if args.serve_only:
        return remeasure(args, serve)

    params = load_params(args.params)
    if args.preset:
        params.update(presets.load(args.preset))
    params["data"].update(source="path", path=str(args.data))
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        params[section][name] = yaml.safe_load(value)
    params["evaluate"] = {k: v for k, v in params.get("evaluate", {}).items()
                          if "accuracy" not in k and "loss" not in k}
    check_params(params, "benchmark params")
    work = args.workdir / args.label
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    from training.evaluate import evaluate
    from training.export import export
    from training.prepare import prepare
    from training.train import train

    timings = {}
    load = {"before": load_average()}
    t0 = time.time()
    prepare(args.data, work / "prepared", list(params["data"]["classes"]),
            resize_size=params["model"]["resize_size"], val_ratio=params["prepare"]["val_ratio"],
            test_ratio=params["prepare"]["test_ratio"], seed=params["prepare"]["seed"],
            max_pixels=params["data"]["max_image_pixels"])
    timings["prepare_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    summary = train(params, work / "prepared", work / "train")
    timings["train_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    metrics = evaluate(params, work / "prepared", work / "train", work / "eval")
    timings["evaluate_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    meta = export(work / "prepared", work / "train", work / "eval", work / "model", params.get("export"),
                  params.get("serve"))
    timings["export_s"] = round(time.time() - t0, 1)
    load["after"] = load_average()
    image = test_image(work)
    latency_row = latency(work / "model", image)
    result = {"label": args.label, "preset": args.preset or "params.yaml", "overrides": args.set,
              "data": str(args.data), "model": params["model"], "train": params["train"], "summary": summary,
              **timings, "total_s": round(sum(timings.values()), 1), "test": metrics, "latency": latency_row,
              "model_version": meta["version"],
              "conditions": {**conditions(), "machine_load": load},
              "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if serve:
        result["served"] = served_throughput(work / "model", image, args.serve_seconds)
    return record(args, work, result)


def test_image(work: Path) -> bytes:
    """The payload of the latency and serving measurements: the run's first test-split photo."""
    from training.prepare import read_manifest

    return Path(read_manifest(work / "prepared", "test")[0]["cache"]).read_bytes()


def remeasure(args, serve: bool) -> int:
    """--serve-only: latency and serving of an existing run's exported model, its training numbers kept."""
    work = args.workdir / args.label
    if not (work / "benchmark.json").is_file():
        raise SystemExit(f"{work / 'benchmark.json'} not found: run without --serve-only first")
    result = json.loads((work / "benchmark.json").read_text())
    image = test_image(work)
    load = {"before": load_average()}
    result["latency"] = latency(work / "model", image)
    if serve:
        result["served"] = served_throughput(work / "model", image, args.serve_seconds)
    load["after"] = load_average()
    result["serving_measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["conditions"]["serving_machine_load"] = load
    return record(args, work, result)


def record(args, work: Path, result: dict) -> int:
    (work / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    runs = json.loads(args.results.read_text()) if args.results.exists() else []
    runs = [r for r in runs if r["label"] != args.label] + [result]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(runs, indent=2) + "\n")
    write_block(args.report, render(runs), "runs")
    keys = ("label", "total_s", "train_s", "test", "latency", "served")
    print(json.dumps({k: result.get(k) for k in keys}, indent=2))
    return 0


def recipe(r: dict) -> str:
    m, t = r["model"], r["train"]
    text = (f"{m['arch']} @ {m['image_size']} px, weights {m.get('pretrained')}, {t['recipe']}"
            + (", mirror TTA" if m.get("tta", "none") != "none" else ""))
    if t["recipe"] == "finetune":
        text += (f": head {t['head_epochs']} ep, last {t['finetune_blocks']} stages {t['finetune_epochs']} ep"
                 f"{', mirror cached' if t.get('hflip', True) else ''}")
    else:
        text += f": {r['summary'].get('epochs_run')} epochs"
    return text


def served_note(r: dict) -> str:
    if "served" not in r:
        return "; serving not measured"
    cfg, runs = r["served"]["config"], r["served"]["runs"]
    failed = sum(x["failed"] for x in runs)
    others = ", ".join(f"c={x['concurrency']} {x['others_cores']}" for x in runs if "others_cores" in x)
    when = r.get("serving_measured_at", r["measured_at"])
    return (f"; served {when}: {cfg['workers']} workers x {cfg['threads'] or 'default'} torch threads, batch "
            f"{cfg['batch_size']}, max delay {cfg['max_batch_delay']} ms, {r['served']['seconds']} s per level, "
            f"{failed} failed requests, p99 " + ", ".join(f"c={x['concurrency']} {x['p99_ms']} ms" for x in runs)
            + (f", other processes' CPU {others} cores" if others else ""))


def render(runs: list[dict]) -> list[str]:
    """docs/training-benchmark.md's "runs" block: every recorded run, written by this script only."""
    lines = [("Written by `python -m benchmarks.train_real_data` from `benchmarks/results/train_real_data.json`; "
             "every number below was measured by that script, with the conditions it recorded. Each run: "
             "prepare -> train -> evaluate -> export of the 10k shared photos (7,999 / 1,000 / 1,000 train / "
             "val / test), no network."), "",
             ("| run | recipe | train | total | test acc | log loss | ECE | ROC-AUC | engine | 1-image p50 | "
              "batch-8 img/s |"
             " served c=1 p50 | served c=16 req/s | other CPU load | measured |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        t, lat = r["test"], r["latency"]
        served = {s["concurrency"]: s for s in r.get("served", {}).get("runs", [])}
        c1 = f"{served[1]['p50_ms']} ms" if 1 in served else "-"
        c16 = f"{served[16]['requests_per_s']}" if 16 in served else "-"
        lines.append(
            f"| {r['label']} | {recipe(r)} | {r['train_s'] / 60:.1f} min | {r['total_s'] / 60:.1f} min | "
            f"{t['accuracy']:.4f} | {t['log_loss']:.4f} | {t['ece']:.4f} | {t['roc_auc']:.4f} | "
            f"{lat.get('engine', 'torchscript f32')} | {lat['end_to_end_p50_ms']} ms | "
            f"{lat.get('batch8_img_s', lat.get('batch8_forward_img_s', '-'))} | {c1} | {c16} | "
            f"{cpu_load(r['conditions'])} | {r['measured_at']} |")
    lines += ["", ("Columns: *train* and *total* are wall time (total = prepare + train + evaluate + export); "
              "*engine* is what the handler serves the exported model with (runs measured before the engine choice "
              "existed ran TorchScript); *1-image p50* is decode + preprocess + forward of one photo on that engine; "
              "*batch-8 img/s* is the same on batches of 8 (runs up to 2026-12-07: the forward alone); *served* is "
              "the exported model in a real TorchServe (handler/model-config.yaml as committed) loaded by `wrk` "
              "posting one test photo, "
              "concurrency 1 (median latency) and 16 (requests/s); *other CPU load* is the CPU time other "
              "processes used during the run, in cores (older runs), or the machine's 1-minute load average "
              "before -> after the run (newer runs)."), ""]
    for r in runs:
        c = r["conditions"]
        lines.append(f"- **{r['label']}**: {c['cpu']}, {c['logical_cpus']} logical CPUs, {c['torch_threads']} torch "
                     f"threads, GPU {c['gpu']}; overrides {r['overrides'] or 'none'}; best epoch "
                     f"{r['summary'].get('best_epoch')} of {r['summary'].get('epochs_run')}; "
                     + (f"frozen-trunk pass {r['summary']['trunk_seconds']} s on {r['summary']['trunk_engine']}; "
                        if "trunk_seconds" in r["summary"] else "") + "precision / recall "
                     f"{r['test']['precision']:.4f} / {r['test']['recall']:.4f}; model {r['model_version']}"
                     + served_note(r) + ".")
    return lines


def cpu_load(c: dict) -> str:
    if "machine_load" in c:
        return f"load {c['machine_load']['before']} -> {c['machine_load']['after']}"
    return f"{c['other_processes_cores']} cores"


if __name__ == "__main__":
    raise SystemExit(main())
