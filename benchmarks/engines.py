"""Benchmark: every engine and form that can run the exported model's forward pass on this CPU, in one run.

Variants, each fed the handler's uint8 batches and normalising them itself:
  torchscript        model.engines.compile_forward "torchscript" f32, as served: the reference
  torchscript-plain  model.pt as loaded, without model.runtime.for_cpu_inference (channels_last + freeze)
  openvino-f32/bf16  OpenVINO on the network converted from model.pt (bf16 only where native)
  openvino-int8      NNCF post-training quantization (preset performance) of the converted network
  torch-int8         model/quantize.py on the training checkpoint, as the export stage's `export.quantize: int8`
  onnxruntime        model.pt exported by torch.onnx (opset 17), ONNX Runtime's CPU execution provider
  aoti               AOTInductor on the training checkpoint, built in a child process (--aoti-timeout)
For each: build time, speed (images/s, p50 per call) forward-only and with JPEG decode, test-split accuracy, log
loss, agreement with torchscript; a variant that cannot run here is a row with the reason. Writes
reports/engines.json and docs/engines.md's block (the method is described there). Nothing is asserted.

    python -m benchmarks.engines --model-dir artifacts/model --prepared data/prepared
    python -m benchmarks.engines --engines torchscript openvino-f32 --rounds 1 --seconds 0.5 --no-docs
"""
from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.report import load_average, markers, measured, measured_line, model_line, write_block, write_json
from catsdogs.contract import MODEL_DIR, PREPARED_DIR, REPO_ROOT, read_meta
from model.engines import (
    check_agreement,
    compile_forward,
    compile_openvino,
    cpu_capabilities,
    openvino_available,
    openvino_model,
)
from model.preprocess import decode_image, eval_geometry, eval_normalize
from model.runtime import reuse_freed_memory

VARIANTS = ("torchscript", "torchscript-plain", "openvino-f32", "openvino-bf16", "openvino-int8", "torch-int8",
            "onnxruntime", "aoti")
PACKAGES = ("torch", "torchvision", "openvino", "nncf", "onnxruntime", "onnx")
BLOCK = "engines-benchmark"  # docs/engines.md's block between its markers
START, END = markers(BLOCK)
EVAL_BATCH = 32  # batch size of the accuracy pass
BENCH_REQUIREMENTS = "pip install -r benchmarks/requirements.txt"


class Skipped(Exception):
    """The variant does not apply on this machine (no native bf16, a package not installed)."""


class BuildError(RuntimeError):
    """The variant was tried and did not build."""


# ---- building the variants ---------------------------------------------------------------------------------

def on_uint8(module, meta: dict):
    """`module` (float inputs) as a forward over uint8 batches, normalised first as model.preprocess does."""
    to_float = eval_normalize(meta)
    return lambda x: module(to_float(x).contiguous())


def checked(forward, reference, example: torch.Tensor, meta: dict, what: str):
    """`forward` once its outputs on `example` are within 1e-3 relative L2 error per sample of the TorchScript
    `reference`'s (model.engines.check_agreement)."""
    with torch.no_grad():
        expected = on_uint8(reference, meta)(example).float()
    check_agreement(forward(example), expected, 1e-3, what)
    return forward


def needs_checkpoint(train_dir: Path) -> Path:
    """The training checkpoint (--train-dir), or Skipped: torch.export and FX quantization trace the eager
    network, not the TorchScript file."""
    from training.train import CHECKPOINT

    if not (train_dir / CHECKPOINT).is_file():
        raise Skipped(f"needs the training checkpoint {train_dir / CHECKPOINT} (--train-dir): it traces the eager "
                      "network, not the TorchScript file")
    return train_dir


def needs_openvino() -> None:
    if not openvino_available():
        raise Skipped("OpenVINO not installed (pip install openvino; requirements.txt pins it)")


def openvino_forward(module, example: torch.Tensor, precision: str, meta: dict):
    """As the handler serves it: normalisation inside the compiled graph (model.engines.compile_forward)."""
    needs_openvino()
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        raise Skipped(f"no native bf16 on this CPU (OpenVINO capabilities: {', '.join(sorted(cpu_capabilities()))})")
    return compile_forward(module, example, "openvino", precision, normalize=meta)


def openvino_int8_forward(module, example: torch.Tensor, calibration: list, meta: dict):
    """NNCF post-training quantization (preset performance) of the OpenVINO model, float layers at f32."""
    needs_openvino()
    try:
        import nncf
    except ImportError:
        raise Skipped(f"nncf not installed ({BENCH_REQUIREMENTS})") from None
    quantized = nncf.quantize(openvino_model(module, eval_normalize(meta)(example), meta), nncf.Dataset(calibration),
                              preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calibration))
    return compile_openvino(quantized, "f32")


def torch_int8_forward(train_dir: Path, prepared: Path, calibration_images: int, meta: dict):
    """The int8 TorchScript model the export stage saves with `export.quantize: int8` (training/export.py
    calibration_batches + model.quantize.quantize_static), without the export's accuracy gate."""
    from model.quantize import quantize_static
    from training.export import calibration_batches
    from training.train import load_trained

    net, _ = load_trained(needs_checkpoint(train_dir))
    size = int(meta["image_size"])
    int8 = quantize_static(net, calibration_batches(prepared, meta, calibration_images), torch.rand(2, 3, size, size))
    return on_uint8(int8, meta)


def onnxruntime_forward(module, example: torch.Tensor, path: Path, meta: dict):
    """model.pt through the TorchScript ONNX exporter (opset 17, batch dynamic), checked by onnx.checker, run by
    an ONNX Runtime CPU session on torch's thread count. Normalisation in torch before the session."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise Skipped(f"{exc.name} not installed ({BENCH_REQUIREMENTS})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (eval_normalize(meta)(example),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(str(path), full_check=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    run = lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    return checked(on_uint8(run, meta), module, example, meta, "ONNX Runtime")


def aoti_forward(train_dir: Path, reference, example: torch.Tensor, package: Path, max_batch: int,
                 timeout: float, meta: dict):
    """The AOTInductor package built by a child process (build_aoti_package), loaded here."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(package.parent / "inductor-cache")}
    command = [sys.executable, "-c", ("import sys; from benchmarks.engines import build_aoti_package; "
               "build_aoti_package(*sys.argv[1:])"), str(needs_checkpoint(train_dir).resolve()),
               str(example.shape[-1]), str(max_batch), str(torch.get_num_threads()), str(package.resolve())]
    run_bounded(command, timeout, env)
    loaded = torch._inductor.aoti_load_package(str(package))
    return checked(on_uint8(loaded, meta), reference, example, meta, "AOTInductor")


def build_aoti_package(train_dir: str, size: str, max_batch: str, threads: str, package: str) -> None:
    """(Child process.) The checkpoint's network exported with a dynamic batch dimension (1 to max_batch) and
    compiled by AOTInductor into `package` for `threads` threads (Inductor fixes the OpenMP count at build)."""
    from training.train import load_trained

    torch.set_num_threads(int(threads))
    net, _ = load_trained(Path(train_dir))
    example = torch.rand(2, 3, int(size), int(size))
    batch = torch.export.Dim("batch", min=1, max=int(max_batch))
    with torch.no_grad():
        program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(program, package_path=package)


def run_bounded(command: list[str], timeout: float, env: dict | None = None) -> None:
    """Run `command` in its own process group from the repository root; BuildError with the reason when it fails
    or outlives `timeout` seconds (then the whole group, compiler workers included, is killed)."""
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BuildError(f"not built within {timeout:g} s (--aoti-timeout)") from None
    if proc.returncode:
        raise BuildError(error_summary(output, proc.returncode))


def error_summary(output: str, returncode: int, limit: int = 300) -> str:
    """The last line of a failed child's output that names an error, else its last line (at most `limit` chars)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line.split(":", 1)[0] or "Exception" in line.split(":", 1)[0]]
    text = (named or lines or [f"exit status {returncode}, no output"])[-1]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def build(name: str, builders: dict) -> dict:
    """Build one variant: {"variant", "status": built | skipped | did not build, "reason", "build_s", "forward"}.
    torchscript, the reference, must build; the others become rows with the reason."""
    began = time.perf_counter()
    try:
        forward = builders[name]()
    except Skipped as exc:
        return {"variant": name, "status": "skipped", "reason": str(exc), "forward": None}
    except Exception as exc:
        if name == "torchscript":
            raise
        return {"variant": name, "status": "did not build", "reason": f"{type(exc).__name__}: {exc}"[:400],
                "build_s": round(time.perf_counter() - began, 1), "forward": None}
    return {"variant": name, "status": "built", "reason": "", "build_s": round(time.perf_counter() - began, 1),
            "forward": forward}


# ---- data --------------------------------------------------------------------------------------------------

def split_rows(prepared: Path, split: str, limit: int | None = None) -> list[dict]:
    """Manifest rows of a prepared split (the first `limit`); SystemExit when there are none."""
    from training.prepare import read_manifest

    rows = read_manifest(prepared, split)[:limit]
    if not rows:
        raise SystemExit(f"{prepared}: the {split} split is empty; prepare more images (params.yaml prepare)")
    return rows


def transformed(rows: list[dict], meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images N x 3 x S x S resized and cropped as the handler does, class indices) of manifest rows."""
    from training.dataset import CachedImages

    data = CachedImages(rows, list(meta["classes"]), eval_geometry(meta), desc="load")
    return torch.stack([data[i][0] for i in range(len(data))]), torch.tensor(data.targets)


def spread(rows: list, n: int) -> list:
    """`n` rows spread evenly over `rows` (all when there are fewer), as the export stage picks calibration rows."""
    return rows[::max(1, len(rows) // n)][:n]


def with_decode(forward, meta: dict, torch_threads: int):
    """JPEG bytes -> decode + resize/crop on `torch_threads` torch threads -> `forward`. Beside OpenVINO one
    thread, as the handler runs it (model.engines.leave_cores_to_openvino)."""
    transform = eval_geometry(meta)

    def run(batch: list[bytes]):
        before = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
        try:
            return forward(torch.stack([transform(decode_image(data, draft_size=meta["resize_size"]))
                                        for data in batch]))
        finally:
            torch.set_num_threads(before)
    return run


# ---- measuring (pure functions below take numbers, not models) ---------------------------------------------

def call_times(fn, x, seconds: float) -> list[float]:
    """Seconds of each call fn(x) made during `seconds` (at least one call)."""
    times, began = [], time.perf_counter()
    with torch.inference_mode():
        while not times or time.perf_counter() - began < seconds:
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return times


def interleaved(runs: dict, rounds: int, seconds: float) -> dict[object, list[list[float]]]:
    """key -> call_times of each round, for runs {key: (fn, x)} taken in turn round by round (a slow spell of the
    machine hits all alike), after a 0.3 s warm-up each (TorchScript profiling, allocator)."""
    for fn, x in runs.values():
        call_times(fn, x, 0.3)
    samples = {key: [] for key in runs}
    for _ in range(rounds):
        for key, (fn, x) in runs.items():
            samples[key].append(call_times(fn, x, seconds))
    return samples


def summarise(rounds: list[list[float]], batch: int) -> dict:
    """Per-call seconds of each round -> median images/s and median p50 ms per call, with every round's value."""
    per_round = [batch * len(times) / sum(times) for times in rounds]
    p50 = [statistics.median(times) * 1000 for times in rounds]
    return {"images_per_s": round(statistics.median(per_round), 1), "p50_ms": round(statistics.median(p50), 2),
            "rounds_images_per_s": [round(v, 1) for v in per_round], "rounds_p50_ms": [round(v, 2) for v in p50]}


def with_ratios(rows: list[dict], reference: str = "torchscript") -> list[dict]:
    """Each speed row with `vs_torchscript`: its images/s over the reference's at the same mode and batch."""
    base = {(r["mode"], r["batch_size"]): r["images_per_s"] for r in rows if r["variant"] == reference}
    out = []
    for r in rows:
        ref = base.get((r["mode"], r["batch_size"]))
        out.append({**r, "vs_torchscript": round(r["images_per_s"] / ref, 2) if ref else None})
    return out


def quality(proba: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor, classes: list[str]) -> dict:
    """Test-split accuracy and log loss of class probabilities, top-1 agreement and the largest probability
    difference against the reference variant's probabilities."""
    from training.metrics import classification_metrics

    normalised = proba.double() / proba.double().sum(1, keepdim=True)  # float32 softmax rows sum to 1 +- 1e-7
    metrics = classification_metrics(labels.numpy(), normalised.numpy(), classes)
    return {"n": metrics["n"], "accuracy": round(metrics["accuracy"], 4), "log_loss": round(metrics["log_loss"], 4),
            "agreement": round(float((proba.argmax(1) == reference.argmax(1)).float().mean()), 4),
            "max_prob_diff": float(f"{float((proba.float() - reference.float()).abs().max()):.2e}")}


def probabilities(forward, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([torch.softmax(forward(x[i:i + batch_size]).float(), 1)
                          for i in range(0, len(x), batch_size)])


def selected(engines: list[str]) -> list[str]:
    """The variants to run in VARIANTS order; torchscript always (the reference)."""
    return [v for v in VARIANTS if v == "torchscript" or v in engines]


# ---- report ------------------------------------------------------------------------------------------------

def packages() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def openvino_info() -> dict | None:
    if not openvino_available():
        return None
    import openvino as ov

    return {"device": ov.Core().get_property("CPU", "FULL_DEVICE_NAME"), "capabilities": sorted(cpu_capabilities())}


def _num(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def render(r: dict) -> list[str]:
    """The docs block's lines (markers left to write_block) from a results dict."""
    ov = r.get("openvino")
    ov_text = (f"OpenVINO sees {ov['device']} with capabilities {', '.join(ov['capabilities'])}" if ov
               else "OpenVINO not installed")
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in r["packages"].items())
    lines = ["## Measured", "",
             ("Written by `python -m benchmarks.engines` (`make benchmark-engines`); every number below was measured "
              "by it in one run, variants and batch sizes interleaved round by round. Noisy when the machine is "
              "shared: see the machine's load."), "",
             measured_line(r),
             f"- {ov_text}. Packages: {versions}.",
             (f"- {model_line(r['model'])} ({r['model_dir']}); {r['threads']} thread(s) for every engine; "
              f"{r['rounds']} round(s) of {r['seconds']} s per variant and batch; test split of {r['data']}."),
             *([f"- int8 variants calibrated on {r['calibration_images']} training-split images."]
               if r["calibration_images"] else []), "",
             ("| variant | status | build s | test accuracy | log loss | top-1 agreement | max prob. difference "
              "| note |"),
             "|---|---|---|---|---|---|---|---|"]
    for v in r["variants"]:
        q = v.get("test") or {}
        lines.append(f"| {v['variant']} | {v['status']} | {_num(v.get('build_s'))} | {_num(q.get('accuracy'))} | "
                     f"{_num(q.get('log_loss'))} | {_num(q.get('agreement'))} | {_num(q.get('max_prob_diff'))} | "
                     f"{v['reason']} |")
    n = next((v["test"]["n"] for v in r["variants"] if v.get("test")), 0)
    lines += ["", (f"Accuracy and log loss on {n} test-split images; agreement and probability difference against "
              "torchscript."), ""]
    titles = {"forward": "Forward pass only (a batch of test images, resized and cropped; the forward normalises)",
              "decode": "With decode: JPEG bytes of test-split images -> decode_image + resize/crop -> forward"}
    for mode, title in titles.items():
        rows = [s for s in r["speed"] if s["mode"] == mode]
        if not rows:
            continue
        lines += [f"{title}:", "", ("| variant | batch | images/s (median) | vs torchscript | p50 ms per call | "
                  "rounds images/s |"), "|---|---|---|---|---|---|"]
        for s in rows:
            rounds = ", ".join(str(v) for v in s["rounds_images_per_s"])
            lines.append(f"| {s['variant']} | {s['batch_size']} | {s['images_per_s']} | "
                         f"{'n/a' if s['vs_torchscript'] is None else 'x' + str(s['vs_torchscript'])} | "
                         f"{s['p50_ms']} | {rounds} |")
        lines.append("")
    lines += [("p50 ms per call at batch 1 is the single-image latency. The decode rows use the prepare stage's "
               "cached JPEGs (short side = resize_size), so decoding costs less than on full-size photos.")]
    return lines


# ---- main --------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR,
                        help="export stage output: model.pt + model-meta.json (default: %(default)s)")
    parser.add_argument("--prepared", type=Path, default=PREPARED_DIR,
                        help="prepare stage output the model was trained from, with its test split (default: "
                        "%(default)s)")
    parser.add_argument("--train-dir", type=Path,
                        help="training output with best.pt, for torch-int8 and aoti (default: <model-dir>/../train)")
    parser.add_argument("--engines", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="ENGINE",
                        help=f"variants to run, of {', '.join(VARIANTS)}; torchscript always runs, it is the "
                        "reference (default: all)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8],
                        help="forward-only batch sizes (default: %(default)s)")
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8],
                        help="batch sizes with decode (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="seconds per variant, batch and round (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="threads of every engine (default: torch's, %(default)s here)")
    parser.add_argument("--test-images", type=int, help="the first N test-split images only (default: all)")
    parser.add_argument("--calibration", type=int, default=300,
                        help="training images the int8 variants calibrate on (default: %(default)s)")
    parser.add_argument("--aoti-timeout", type=float, default=600,
                        help="seconds the aoti build may take (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("reports/engines.json"), help="default: %(default)s")
    parser.add_argument("--docs", type=Path, default=Path("docs/engines.md"), help="default: %(default)s")
    parser.add_argument("--no-docs", action="store_true", help="print and write the JSON only")
    args = parser.parse_args(argv)
    reuse_freed_memory()  # as the handler does
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)  # TorchScript kept
    torch.set_num_threads(args.threads)
    meta = read_meta(args.model_dir / "model-meta.json")
    model_file, train_dir = args.model_dir / "model.pt", args.train_dir or args.model_dir.parent / "train"
    if not model_file.is_file():
        raise SystemExit(f"{model_file} not found: run `make pipeline` or pass --model-dir")
    size, classes = int(meta["image_size"]), list(meta["classes"])

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        work = Path(tmp)
        prepared = args.prepared
        rows = split_rows(prepared, "test", args.test_images)
        x_test, y_test = transformed(rows, meta)
        example = x_test[:2] if len(x_test) >= 2 else torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
        jpegs = [Path(row["cache"]).read_bytes() for row in rows]
        calibration_rows = lambda: spread(split_rows(prepared, "train"), args.calibration)
        max_batch = max(64, EVAL_BATCH, *args.batches, *args.decode_batches)
        module = lambda: torch.jit.load(str(model_file)).eval()
        builders = {
            "torchscript": lambda: compile_forward(module(), example, "torchscript", "f32", normalize=meta),
            "torchscript-plain": lambda: on_uint8(module(), meta),
            "openvino-f32": lambda: openvino_forward(module(), example, "f32", meta),
            "openvino-bf16": lambda: openvino_forward(module(), example, "bf16", meta),
            "openvino-int8": lambda: openvino_int8_forward(
                module(), example, [x[None].numpy() for x in transformed(calibration_rows(), meta)[0]], meta),
            "torch-int8": lambda: torch_int8_forward(train_dir, prepared, args.calibration, meta),
            "onnxruntime": lambda: onnxruntime_forward(module(), example, work / "model.onnx", meta),
            "aoti": lambda: aoti_forward(train_dir, module(), example, work / "model.pt2", max_batch,
                                         args.aoti_timeout, meta)}
        variants = []
        for name in selected(args.engines):
            print(f"{name}: building", flush=True)
            variants.append(build(name, builders))
            v = variants[-1]
            took = f" in {v['build_s']} s" if "build_s" in v else ""
            print(f"{name}: {v['status']}{took} {v['reason']}", flush=True)
        ready = [v for v in variants if v["forward"] is not None]
        int8_built = any(v["variant"].endswith("int8") for v in ready)

        probs = {v["variant"]: probabilities(v["forward"], x_test) for v in ready}
        for v in ready:
            v["test"] = quality(probs[v["variant"]], y_test, probs["torchscript"], classes)
            print(f"{v['variant']}: test {v['test']}", flush=True)

        runs = {}
        for mode, batches in (("forward", args.batches), ("decode", args.decode_batches)):
            for b in batches:
                pick = [i % len(rows) for i in range(b)]
                for v in ready:
                    if mode == "forward":
                        runs[v["variant"], mode, b] = (v["forward"], x_test[pick])
                    else:
                        threads = 1 if v["variant"].startswith("openvino") else args.threads
                        runs[v["variant"], mode, b] = (with_decode(v["forward"], meta, threads),
                                                       [jpegs[i] for i in pick])
        samples = interleaved(runs, args.rounds, args.seconds)
        speed = with_ratios([{"variant": name, "mode": mode, "batch_size": b, **summarise(values, b)}
                             for (name, mode, b), values in samples.items()])
        for s in speed:
            print(f"{s['variant']:<17} {s['mode']:<8} batch {s['batch_size']:>2} {s['images_per_s']:8.1f} images/s "
                  f"x{s['vs_torchscript']} p50 {s['p50_ms']} ms", flush=True)
        calibration_images = len(calibration_rows()) if int8_built else 0

    report = {**measured(load_before, meta),
              "model_dir": str(args.model_dir), "data": str(prepared), "threads": args.threads,
              "rounds": args.rounds, "seconds": args.seconds, "openvino": openvino_info(), "packages": packages(),
              "calibration_images": calibration_images,
              "variants": [{k: v for k, v in variant.items() if k != "forward"} for variant in variants],
              "speed": speed}
    print(f"wrote {write_json(args.out, report)}")
    if not args.no_docs:
        write_block(args.docs, render(report), BLOCK)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
