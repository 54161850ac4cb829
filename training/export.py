"""export stage: TorchScript model + metadata, logged to MLflow and registered as a new version of serve.model_name."""
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
from model.export import to_torchscript, write_metadata
from model.preprocess import eval_transform
from monitoring.drift import baseline_from_predictions, summarise
from training import tracking
from training.dataset import load_uint8
from training.prepare import read_manifest, read_stats
from training.train import load_trained

MODEL_FILE = "model.pt"


def example_batch(prepared_dir: Path, meta: dict, n: int = 8) -> torch.Tensor:
    """Real test images (not random noise) for tracing and the parity check."""
    rows = read_manifest(prepared_dir, "test")[:n] or read_manifest(prepared_dir)[:n]
    transform = eval_transform(meta)
    return torch.stack([transform(image) for image in load_uint8([r["cache"] for r in rows], desc="example")])


def export(prepared_dir: Path, train_dir: Path, eval_dir: Path, out_dir: Path) -> dict:
    net, meta = load_trained(train_dir)
    meta = dict(meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    scripted = to_torchscript(net, example_batch(prepared_dir, meta))
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
        write_metadata(meta, out_dir)
        mlflow.log_artifacts(str(out_dir), "torchscript")
        mlflow.set_tag("model_version", meta["version"])
    client.set_registered_model_alias(name, contract.CANDIDATE_ALIAS, registered_version)
    client.set_model_version_tag(name, registered_version, "serving_version", meta["version"])
    print(f"export: {model_path} ({model_path.stat().st_size / 1e6:.1f} MB), version {meta['version']}, "
          f"registered {name} v{registered_version} alias {contract.CANDIDATE_ALIAS}")
    return meta
