"""Benchmark: post-training static int8 quantization (model/quantize.py) against the float model as served.

On a finished training run (a benchmarks.train_real_data work folder, or any folder with the pipeline's
prepared/, train/ and model/ outputs): quantizes the trained network (FX graph mode, backend x86 = fbgemm),
calibrated on training images; compares it with the exported float model in the form the handler serves
(model.runtime.for_cpu_inference) on the whole test split (accuracy, top-1 agreement) and in speed (images/s,
rounds interleaved, at the serving thread count and batch sizes). Prints the numbers and writes
docs/int8.md (and reports/int8.json) with the conditions detected. Nothing is asserted.

    python -m benchmarks.int8 --run build/bench-real/pretrained
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

from benchmarks.cpu_inference import interleaved
from benchmarks.report import load_average, measured, measured_line, model_line, write_block, write_json
from catsdogs.contract import read_meta
from model.quantize import preprocessed_batches, quantize_static
from model.runtime import channels_last, for_cpu_inference, reuse_freed_memory
from training.prepare import read_manifest
from training.train import load_trained


def labelled_batches(rows: list[dict], classes: list[str], meta: dict, batch_size: int = 50):
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        x = next(preprocessed_batches([Path(r["cache"]).read_bytes() for r in chunk], meta, batch_size))
        yield x, torch.tensor([classes.index(r["label"]) for r in chunk])


def predictions(model, batches, convert) -> tuple[torch.Tensor, torch.Tensor]:
    preds, labels = [], []
    with torch.inference_mode():
        for x, y in batches:
            preds.append(model(convert(x)).argmax(1))
            labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def top_ops(model, x: torch.Tensor, n: int = 6) -> list[dict]:
    """The operators that take most of a forward pass's CPU time (torch.profiler, 3 passes after warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(x)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "calls_per_pass": e.count // 3, "share": round(e.self_cpu_time_total / total, 3),
             "ms_per_pass": round(e.self_cpu_time_total / 3 / 1000, 2)} for e in events[:n]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("build/bench-real/pretrained"),
                        help="folder with prepared/, train/ and model/ (default: %(default)s)")
    parser.add_argument("--calibration", type=int, default=512, help="training images to calibrate on")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (serving: 1 per worker)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--report", type=Path, default=Path("docs/int8.md"))
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    reuse_freed_memory()
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
    load_before = load_average()

    meta = read_meta(args.run / "model" / "model-meta.json")
    classes, size = list(meta["classes"]), int(meta["image_size"])
    example = torch.rand(2, 3, size, size)
    net, _ = load_trained(args.run / "train")
    train_rows = read_manifest(args.run / "prepared", "train")
    step = max(1, len(train_rows) // args.calibration)
    calibration = [Path(r["cache"]).read_bytes() for r in train_rows[::step][:args.calibration]]
    began = time.time()
    int8 = quantize_static(net, preprocessed_batches(calibration, meta, 32), example)
    quantize_s = round(time.time() - began, 1)
    fp32 = for_cpu_inference(torch.jit.load(str(args.run / "model" / "model.pt")), example)

    test_rows = read_manifest(args.run / "prepared", "test")
    p32, labels = predictions(fp32, labelled_batches(test_rows, classes, meta), channels_last)
    p8, _ = predictions(int8, labelled_batches(test_rows, classes, meta), lambda x: x)
    accuracy = {"fp32": round(float((p32 == labels).float().mean()), 4),
                "int8": round(float((p8 == labels).float().mean()), 4),
                "agreement": round(float((p32 == p8).float().mean()), 4), "n": len(labels)}
    accuracy["drop_pp"] = round(100 * (accuracy["fp32"] - accuracy["int8"]), 2)
    print(f"quantized in {quantize_s} s on {len(calibration)} images; test accuracy fp32 {accuracy['fp32']}, "
          f"int8 {accuracy['int8']} (drop {accuracy['drop_pp']} pp), agreement {accuracy['agreement']}", flush=True)

    torch.set_num_threads(args.threads)
    speed = []
    for b in args.batches:
        x = torch.rand(b, 3, size, size)
        samples = interleaved({"fp32": (fp32, channels_last(x)), "int8": (int8, x)}, args.rounds, args.seconds)
        row = {"batch_size": b, **{f"{k}_images_per_s": round(statistics.median(v), 1) for k, v in samples.items()}}
        row["speedup"] = round(row["int8_images_per_s"] / row["fp32_images_per_s"], 2)
        speed.append(row)
        print(f"batch {b}: fp32 {row['fp32_images_per_s']} images/s, int8 {row['int8_images_per_s']} images/s, "
              f"x{row['speedup']}", flush=True)
    x = torch.rand(4, 3, size, size)
    profiles = {"fp32": top_ops(fp32, channels_last(x)), "int8": top_ops(int8, x)}
    for k, ops in profiles.items():
        print(k, "batch 4:", "; ".join(f"{o['op']} {o['share']:.0%}" for o in ops), flush=True)
    report = {**measured(load_before, meta), "run": str(args.run),
              "calibration_images": len(calibration), "quantize_s": quantize_s, "threads": args.threads,
              "backend": torch.backends.quantized.engine, "accuracy": accuracy, "speed": speed,
              "profiles": profiles}
    write_json("reports/int8.json", report)
    if not args.no_docs:
        write_block(args.report, render(report))
    return 0


def render(r: dict) -> list[str]:
    a = r["accuracy"]
    lines = ["# int8: post-training static quantization against the served float model", "",
             "Written by `python -m benchmarks.int8`; every number below was measured by it in one run.", "",
             measured_line(r) + f" Quantized backend {r['backend']}.",
             (f"- {model_line(r['model'])} ({r['run']}); calibrated on {r['calibration_images']} training images "
              f"in {r['quantize_s']} s."), "",
             "| test split | fp32 (served form) | int8 | drop | top-1 agreement |", "|---|---|---|---|---|",
             f"| {a['n']} images | {a['fp32']:.4f} | {a['int8']:.4f} | {a['drop_pp']} pp | {a['agreement']:.4f} |",
             "", f"| batch | fp32 images/s | int8 images/s | int8 / fp32 | ({r['threads']} torch thread(s)) |",
             "|---|---|---|---|---|"]
    for s in r["speed"]:
        lines.append(f"| {s['batch_size']} | {s['fp32_images_per_s']} | {s['int8_images_per_s']} | "
                     f"x{s['speedup']} | |")
    for k, ops in r.get("profiles", {}).items():
        lines += ["", f"Where a {k} forward pass (batch 4) spends its CPU time (torch.profiler, self time):", "",
                  "| operator | calls per pass | ms per pass | share |", "|---|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['calls_per_pass']} | {o['ms_per_pass']} | {o['share']:.1%} |" for o in ops]
    lines += ["", ("fp32 = the exported TorchScript model as the handler serves it (channels_last + freeze, "
              "model/runtime.py); int8 = model/quantize.py (FX graph mode, per-channel int8 weights, "
              "activations calibrated on training images), traced and frozen. Median of interleaved rounds.")]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
