"""Benchmark: the default training config on a real photo set (e.g. ../shared/data/dogs-vs-cats-10k.tar).

Runs prepare -> train -> evaluate -> export in a separate work folder (the repo's own artifacts are not
touched), times each stage, measures the exported model's single-image CPU latency, and writes a
markdown report. Nothing is asserted: it prints numbers and writes them down.

    python -m benchmarks.train_real_data --data ../shared/data/dogs-vs-cats-10k.tar
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from model.export import read_metadata
from model.preprocess import decode_image, eval_transform
from training.params import load_params


def single_image_latency(model_dir: Path, image_bytes: list[bytes], repeats: int = 200) -> dict:
    """p50/p95 ms of forward only and of decode + preprocess + forward, batch of one, current thread count."""
    meta = read_metadata(model_dir / "model-meta.json")
    net = torch.jit.load(str(model_dir / "model.pt")).eval()
    transform = eval_transform(meta)
    forward, full = [], []
    with torch.inference_mode():
        for i in range(repeats + 10):
            data = image_bytes[i % len(image_bytes)]
            t0 = time.perf_counter()
            x = transform(decode_image(data, draft_size=meta["resize_size"])).unsqueeze(0)
            t1 = time.perf_counter()
            net(x)
            t2 = time.perf_counter()
            if i >= 10:
                forward.append((t2 - t1) * 1000)
                full.append((t2 - t0) * 1000)
    pct = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1]
    return {"forward_p50_ms": round(statistics.median(forward), 2), "forward_p95_ms": round(pct(forward, 95), 2),
            "end_to_end_p50_ms": round(statistics.median(full), 2), "end_to_end_p95_ms": round(pct(full, 95), 2),
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder or archive of labelled photos")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="default: %(default)s")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-real"), help="default: %(default)s")
    parser.add_argument("--report", type=Path, default=Path("docs/training-benchmark.md"), help="default: %(default)s")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S train.epochs=5 (like dvc exp run -S)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    params["data"].update(source="path", path=str(args.data))
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        params[section][name] = yaml.safe_load(value)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    from training.evaluate import evaluate
    from training.export import export
    from training.prepare import prepare, read_manifest
    from training.train import train

    timings = {}
    t0 = time.time()
    prepare(args.data, work / "prepared", list(params["data"]["classes"]), resize_size=params["model"]["resize_size"],
            val_ratio=params["prepare"]["val_ratio"], test_ratio=params["prepare"]["test_ratio"],
            seed=params["prepare"]["seed"], max_pixels=params["data"]["max_image_pixels"])
    timings["prepare_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    summary = train(params, work / "prepared", work / "train")
    timings["train_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    metrics = evaluate(params, work / "prepared", work / "train", work / "eval")
    timings["evaluate_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    meta = export(params, work / "prepared", work / "train", work / "eval", work / "model")
    timings["export_s"] = round(time.time() - t0, 1)

    test_rows = read_manifest(work / "prepared", "test")[:50]
    payloads = [Path(r["cache"]).read_bytes() for r in test_rows]
    latency = single_image_latency(work / "model", payloads)
    result = {"data": str(args.data), "arch": params["model"]["arch"], "image_size": params["model"]["image_size"],
              "epochs_planned": params["train"]["epochs"], **summary, **timings,
              "total_s": round(sum(timings.values()), 1), "test": metrics, "latency": latency,
              "model_version": meta["version"], "cpu": platform.processor() or platform.machine(),
              "cores": torch.get_num_threads()}
    (work / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(args.report, result)
    print(json.dumps(result, indent=2))
    return 0


def write_report(path: Path, r: dict) -> None:
    t = r["test"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""# Training benchmark: default config on real photos

Command: `python -m benchmarks.train_real_data --data {r['data']}` (written by the script, {time.strftime('%Y-%m-%d')}).
Machine: {r['cores']} CPU threads, no GPU; random initialisation (no pretrained weights offline).

| what | value |
|---|---|
| architecture | {r['arch']} at {r['image_size']} px |
| epochs run (planned) | {r['epochs_run']} ({r['epochs_planned']}), best epoch {r['best_epoch']} |
| prepare / train / evaluate / export | {r['prepare_s']} s / {r['train_s']} s / {r['evaluate_s']} s / {r['export_s']} s |
| **total wall time** | **{r['total_s'] / 60:.1f} min** |
| **test accuracy** ({t['n']} images) | **{t['accuracy']:.4f}** |
| precision / recall / F1 (dog = positive) | {t['precision']:.4f} / {t['recall']:.4f} / {t['f1']:.4f} |
| ROC-AUC / log loss / ECE | {t['roc_auc']:.4f} / {t['log_loss']:.4f} / {t['ece']:.4f} |
| single-image latency, forward only (p50 / p95) | {r['latency']['forward_p50_ms']} ms / {r['latency']['forward_p95_ms']} ms |
| single-image latency, decode + preprocess + forward (p50 / p95) | {r['latency']['end_to_end_p50_ms']} ms / {r['latency']['end_to_end_p95_ms']} ms |
| model version | {r['model_version']} |
""")


if __name__ == "__main__":
    raise SystemExit(main())
