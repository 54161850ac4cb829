"""export stage: TorchScript model + metadata, logged to MLflow and registered as a new version of serve.model_name.

With `export.quantize: int8` the saved model is the post-training static int8 one (model/quantize.py),
calibrated on training images; it is refused (QuantizationGateError, nothing written) when its test-split
accuracy is more than `export.max_accuracy_drop` below the float model's."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import torch
import torchvision
from mlflow import MlflowClient

from catsdogs import contract
from model import engines
from model.export import to_torchscript
from model.preprocess import eval_geometry, eval_normalize, eval_transform
from training import tracking
from training.dataset import load_uint8
from training.drift import baseline_from_predictions, summarise
from training.metrics import classification_metrics
from training.prepare import read_manifest, read_stats
from training.train import load_trained

MODEL_FILE = "model.pt"


def example_batch(prepared_dir: Path, meta: dict, n: int = 8) -> torch.Tensor:
    """Real test images (not random noise) for tracing and the parity checks, uint8 as eval_geometry makes them."""
    rows = read_manifest(prepared_dir, "test")[:n] or read_manifest(prepared_dir)[:n]
    transform = eval_geometry(meta)
    return torch.stack([transform(image) for image in load_uint8([r["cache"] for r in rows], desc="example")])


class QuantizationGateError(RuntimeError):
    """The int8 model lost more test accuracy than export.max_accuracy_drop allows."""


class EngineGateError(RuntimeError):
    """serve.precision asked for a reduced precision that lost more than the gate allows on the test split."""


def test_batches(prepared_dir: Path, meta: dict, batch_size: int = 64):
    """(uint8 images as eval_geometry makes them, labels) of the test split, batch by batch."""
    rows = read_manifest(prepared_dir, "test")
    classes, transform = list(meta["classes"]), eval_geometry(meta)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        x = torch.stack([transform(img) for img in load_uint8([r["cache"] for r in chunk], progress=False)])
        yield x, torch.tensor([classes.index(r["label"]) for r in chunk])


def test_scores(forwards: dict, prepared_dir: Path, meta: dict) -> dict:
    """name -> {"accuracy", "log_loss"} of each forward (uint8 NCHW batch -> logits, as model.engines.compile_forward
    builds them with normalize=meta) on the test split, every batch decoded once for all of them; the metrics are
    training.metrics.classification_metrics', as the evaluate stage reports them."""
    probs, labels = {name: [] for name in forwards}, []
    with torch.inference_mode():
        for x, y in test_batches(prepared_dir, meta):
            for name, forward in forwards.items():
                probs[name].append(torch.softmax(forward(x).double(), 1))
            labels.append(y)
    y = torch.cat(labels).numpy()
    scores = {}
    for name, parts in probs.items():
        m = classification_metrics(y, torch.cat(parts).numpy(), list(meta["classes"]))
        scores[name] = {"accuracy": round(m["accuracy"], 5), "log_loss": round(m["log_loss"], 5)}
    return scores


def on_uint8(module, meta: dict):
    """`module` (float inputs) as a forward over uint8 batches, normalised by eval_normalize first."""
    normalize = eval_normalize(meta)
    return lambda x: module(normalize(x))


def calibration_batches(prepared_dir: Path, meta: dict, n: int, batch_size: int = 32):
    rows = read_manifest(prepared_dir, "train")
    rows = rows[::max(1, len(rows) // n)][:n]
    transform = eval_transform(meta)
    for start in range(0, len(rows), batch_size):
        paths = [r["cache"] for r in rows[start:start + batch_size]]
        yield torch.stack([transform(img) for img in load_uint8(paths, progress=False)])


def quantized(net, fp32_acc: float, prepared_dir: Path, meta: dict, cfg: dict) -> tuple:
    """(int8 TorchScript, its record for model-meta.json) or QuantizationGateError; `fp32_acc` is the float
    model's test accuracy measured by the evaluate stage (metrics.json), not measured again here."""
    from model.quantize import quantize_static

    size = int(meta["image_size"])
    int8 = quantize_static(net, calibration_batches(prepared_dir, meta, int(cfg.get("calibration_images", 256))),
                           torch.rand(2, 3, size, size))
    int8_acc = test_scores({"int8": on_uint8(int8, meta)}, prepared_dir, meta)["int8"]["accuracy"]
    record = {"method": "int8 static (FX, x86)", "fp32_test_accuracy": round(fp32_acc, 5),
              "int8_test_accuracy": round(int8_acc, 5), "calibration_images": int(cfg.get("calibration_images", 256))}
    limit = float(cfg.get("max_accuracy_drop", 0.005))
    if fp32_acc - int8_acc > limit:
        raise QuantizationGateError(
            f"int8 model refused: test accuracy {int8_acc:.4f} vs float {fp32_acc:.4f}, a drop of "
            f"{fp32_acc - int8_acc:.4f} > export.max_accuracy_drop {limit} in params.yaml; export the float "
            f"model (export.quantize: none) or allow a larger drop")
    print(f"export: int8 test accuracy {int8_acc:.4f} (float {fp32_acc:.4f})")
    return int8, record


def engine_record(scripted, example: torch.Tensor, prepared_dir: Path, meta: dict, serve: dict) -> dict:
    """model-meta.json "engine": what params.yaml serve.engine / serve.precision ask for, the test-split scores of
    TorchScript f32 and of each OpenVINO precision this CPU runs natively, and the reduced precisions that passed
    the accuracy gate (serve.max_accuracy_drop, serve.max_log_loss_rise against TorchScript f32): only those may
    be served (model.engines.choose); `example`: real test images, uint8. EngineGateError when serve.precision
    names one that failed."""
    asked_engine, asked_precision = str(serve.get("engine", "auto")), str(serve.get("precision", "auto"))
    capabilities = engines.cpu_capabilities()
    record = {"requested_engine": asked_engine, "requested_precision": asked_precision, "gated": [], "gate": {},
              "capabilities": sorted(capabilities)}
    engines.choose(asked_engine, asked_precision, "cpu", capabilities)  # refuses an engine that cannot run here
    forwards = {"torchscript-f32": on_uint8(scripted, meta)}
    if capabilities and not meta.get("quantized") and asked_engine != "torchscript":
        for precision in engines.PRECISIONS:
            if precision != "f32" and precision.upper() not in capabilities:
                record["gate"][precision] = f"not measured: this CPU has no native {precision}"
                continue
            try:
                forwards[f"openvino-{precision}"] = engines.compile_forward(scripted, example, "openvino", precision,
                                                                            normalize=meta)
            except engines.EngineError as exc:
                if precision == "f32":
                    raise  # a broken conversion, not a loss of precision
                if asked_precision == precision:
                    raise EngineGateError(f"serve.precision {precision}: {exc}; serve f32 (serve.precision: f32 or "
                                          f"auto)") from exc
                record["gate"][precision] = f"refused: {exc}"
    record["scores"] = scores = test_scores(forwards, prepared_dir, meta)
    for name in scores:
        precision = name.rsplit("-", 1)[1]
        if precision == "f32":
            continue
        failure = engines.gate_failure(scores["torchscript-f32"], scores[name], float(serve.get("max_accuracy_drop",
                                       0.002)), float(serve.get("max_log_loss_rise", 0.005)))
        record["gate"][precision] = f"refused: {failure}" if failure else "passed"
        if not failure:
            record["gated"].append(precision)
        elif asked_precision == precision:
            raise EngineGateError(f"serve.precision {precision} refused by the accuracy gate on the test split: "
                                  f"{failure}. Serve f32 (serve.precision: f32 or auto) or loosen "
                                  f"serve.max_accuracy_drop / serve.max_log_loss_rise in params.yaml")
    print("export: engine scores on the test split: " + "; ".join(
        f"{name} accuracy {s['accuracy']:.4f} log loss {s['log_loss']:.4f}" for name, s in scores.items())
        + "; gate: " + (", ".join(f"{p} {why}" for p, why in record["gate"].items()) or "no reduced precision"))
    return record


def export(prepared_dir: Path, train_dir: Path, eval_dir: Path, out_dir: Path, options: dict | None = None,
           serve: dict | None = None) -> dict:
    """`options`: params.yaml `export` section (quantize: none | int8, calibration_images, max_accuracy_drop);
    `serve`: its `serve` section (engine, precision and their accuracy gate, engine_record)."""
    options = options or {}
    net, meta = load_trained(train_dir)
    meta = dict(meta)
    example = example_batch(prepared_dir, meta)
    scripted = to_torchscript(net, eval_normalize(meta)(example))
    if options.get("quantize", "none") == "int8":
        fp32_acc = float(json.loads((eval_dir / "metrics.json").read_text())["accuracy"])
        scripted, meta["quantized"] = quantized(net, fp32_acc, prepared_dir, meta, options)
    elif options.get("quantize", "none") != "none":
        raise ValueError(f"params.yaml export.quantize: {options['quantize']!r}; use none or int8")
    meta["engine"] = engine_record(scripted, example, prepared_dir, meta, serve or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    torch.jit.save(scripted, str(model_path))
    weights_sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    test_metrics = json.loads((eval_dir / "metrics.json").read_text())
    # the model's own test-split predictions: the drift baseline monitoring compares live answers with
    predictions = baseline_from_predictions(eval_dir / "predictions.csv", meta["classes"])
    drift_baseline = summarise(predictions["labels"], predictions["confidences"], meta["classes"],
                               source="test split predictions of the evaluate stage")
    run_id = tracking.load_run_id(train_dir / "run.json")

    tracking.configure()
    client = MlflowClient()
    name = contract.model_name()
    with mlflow.start_run(run_id=run_id):
        # MLflow 3's default 'pt2' format cannot hold a ScriptModule; 'pickle' stores it with torch.save.
        info = mlflow.pytorch.log_model(scripted, name="model", registered_model_name=name,
                                        serialization_format="pickle",
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                          f"torchvision=={torchvision.__version__.split('+')[0]}"])
        registered_version = str(info.registered_model_version)
        meta.update({
            "version": f"{registered_version}.{weights_sha[:7]}",
            "weights_sha256": weights_sha,
            "git_commit": tracking.git_commit(),
            "data_hash": read_stats(prepared_dir)["data_hash"],
            "mlflow_run_id": run_id,
            "mlflow_model_version": registered_version,
            "registered_model": name,
            "test_metrics": test_metrics,
            "drift_baseline": drift_baseline,
            "torch": torch.__version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        contract.write_meta(meta, out_dir)
        mlflow.log_artifacts(str(out_dir), "torchscript")
        mlflow.set_tag("model_version", meta["version"])
    client.set_registered_model_alias(name, contract.CANDIDATE_ALIAS, registered_version)
    client.set_model_version_tag(name, registered_version, "serving_version", meta["version"])
    print(f"export: {model_path} ({model_path.stat().st_size / 1e6:.1f} MB), version {meta['version']}, "
          f"registered {name} v{registered_version} alias {contract.CANDIDATE_ALIAS}")
    return meta
