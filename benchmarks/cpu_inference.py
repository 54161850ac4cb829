"""Benchmark: which form of the exported TorchScript model (artifacts/model/model.pt) runs fastest on this CPU.

Variants, fed random batches at every batch size and torch thread count asked for, each with glibc malloc as
is (`malloc default`) and with model.runtime.reuse_freed_memory (`malloc reuse`):
  exported       torch.jit.load as is, NCHW inputs
  optimize       torch.jit.freeze + torch.jit.optimize_for_inference (oneDNN), NCHW inputs
  channels_last  model.runtime.for_cpu_inference built with several threads: channels_last weights + freeze,
                 channels_last inputs
  channels_last+optimize  the same built with one thread: + torch.jit.optimize_for_inference
Rounds are interleaved; the table (docs/cpu-inference.md, reports/cpu-inference.json) gives the median images/s
and the ratio to `exported`, with the machine's load. Nothing is asserted.

    python -m benchmarks.cpu_inference --model-dir build/bench-real/pretrained/model --batches 1 8 64
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

from benchmarks.report import load_average, measured, measured_line, model_line, write_block, write_json
from catsdogs.contract import MODEL_DIR, read_meta
from model.runtime import channels_last, for_cpu_inference, reuse_freed_memory


def variants(model_file: Path, size: int) -> dict:
    """name -> (module, input conversion)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
        load = lambda: torch.jit.load(str(model_file)).eval()
        example = torch.rand(2, 3, size, size)
        return {"exported": (load(), lambda x: x),
                "optimize": (torch.jit.optimize_for_inference(torch.jit.freeze(load())), lambda x: x),
                "channels_last": (built_with_threads(2, load(), example), channels_last),
                "channels_last+optimize": (built_with_threads(1, load(), example), channels_last)}


def built_with_threads(threads: int, model, example: torch.Tensor):
    """model.runtime.for_cpu_inference as it builds with `threads` torch threads (one thread adds
    optimize_for_inference)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return for_cpu_inference(model, example)
    finally:
        torch.set_num_threads(before)


def images_per_s(module, x: torch.Tensor, seconds: float, reuse: bool | None = None) -> float:
    if reuse is not None:
        reuse_freed_memory(reuse)
    with torch.inference_mode():
        began, n = time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            module(x)
            n += len(x)
        return n / (time.perf_counter() - began)


def interleaved(runs: dict, rounds: int, seconds: float, measure=images_per_s) -> dict[object, list]:
    """key -> measure(module, input, seconds[, reuse]) of each round (images/s by default); runs (key -> (module,
    input[, reuse])) alternate round by round, so that a slow spell of the machine hits all of them alike, after a
    0.3 s warm-up each (TorchScript profiling, allocator)."""
    for module, x, *_ in runs.values():
        measure(module, x, 0.3)
    samples = {key: [] for key in runs}
    for _ in range(rounds):
        for key, (module, x, *reuse) in runs.items():
            samples[key].append(measure(module, x, seconds, *reuse))
    return samples


def measure(model_file: Path, size: int, batches: list[int], threads: list[int], rounds: int,
            seconds: float) -> list[dict]:
    rows = []
    models = variants(model_file, size)
    for t in threads:
        torch.set_num_threads(t)
        for b in batches:
            inputs = {name: convert(torch.rand(b, 3, size, size)) for name, (_, convert) in models.items()}
            samples = interleaved({(name, reuse): (module, inputs[name], reuse) for name, (module, _) in models.items()
                                   for reuse in (False, True)}, rounds, seconds)
            base = statistics.median(samples["exported", False])
            for (name, reuse), values in samples.items():
                name = f"{name}, malloc {'reuse' if reuse else 'default'}"
                median = statistics.median(values)
                rows.append({"threads": t, "batch_size": b, "variant": name, "images_per_s": round(median, 1),
                             "vs_exported": round(median / base, 2), "min": round(min(values), 1),
                             "max": round(max(values), 1)})
                print(f"threads {t} batch {b:>3} {name:<30} {median:7.1f} images/s  x{median / base:.2f} "
                      f"(rounds {min(values):.1f}-{max(values):.1f})", flush=True)
    return rows


def render(report: dict) -> list[str]:
    lines = ["# CPU inference: which form of the exported model runs fastest", "",
             ("Written by `python -m benchmarks.cpu_inference`; every number below was measured by it in one run, "
             "variants interleaved round by round."), "",
             measured_line(report),
             (f"- {model_line(report['model'])} ({report['model_dir']}), {report['rounds']} rounds of "
              f"{report['seconds']} s per variant and setting."), "",
             "| torch threads | batch | variant | images/s (median) | vs exported, malloc default | rounds min-max |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['threads']} | {r['batch_size']} | {r['variant']} | {r['images_per_s']} | "
                     f"x{r['vs_exported']} | {r['min']}-{r['max']} |")
    lines += ["", ("Variants: *exported* = the TorchScript file as exported (NCHW inputs); *optimize* = "
              "`torch.jit.freeze` + `torch.jit.optimize_for_inference`; *channels_last* = "
              "`model.runtime.for_cpu_inference` built with several torch threads (channels_last weights and inputs, "
              "frozen); *channels_last+optimize* = the same built with one thread, which adds "
              "`torch.jit.optimize_for_inference`; the handler (`handler.optimize: true`) and the training trunk pass "
              "use the form for their thread count. *malloc default* = glibc's initial "
              "settings (blocks above 128 KiB are mmapped and unmapped on free); *malloc reuse* = "
              "`model.runtime.reuse_freed_memory()` (freed memory kept for the next forward), which the training "
              "CLI, the handler and the benchmarks call at start.")]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR, help="export stage output")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per variant (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per round (default: %(default)s)")
    parser.add_argument("--report", type=Path, default=Path("docs/cpu-inference.md"))
    parser.add_argument("--no-docs", action="store_true", help="print and write the JSON only")
    args = parser.parse_args(argv)
    meta = read_meta(args.model_dir / "model-meta.json")
    load_before = load_average()
    rows = measure(args.model_dir / "model.pt", int(meta["image_size"]), args.batches, args.threads, args.rounds,
                   args.seconds)
    report = {**measured(load_before, meta), "model_dir": str(args.model_dir),
              "rounds": args.rounds, "seconds": args.seconds, "rows": rows}
    write_json("reports/cpu-inference.json", report)
    if not args.no_docs:
        write_block(args.report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
