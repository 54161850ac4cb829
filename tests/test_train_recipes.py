"""Training for real on tiny synthetic data: a 2-process torchrun (gloo, CPU), the checkpoint's own config,
the evaluate stage's quality gate."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT
from training.evaluate import QualityGateError, quality_gate

pytestmark = pytest.mark.slow


def tiny_params(tmp: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # the smallest packaged backbone: these tests check the recipes' mechanics, not the default's accuracy
    params["model"].update(arch="efficientnet_lite0", image_size=64, resize_size=72)
    params["train"].update(batch_size=16, head_epochs=3, finetune_blocks=1, finetune_epochs=2, patience=5,
                           num_threads=1,
                           trunk_tolerance=0.01)  # the trunk as torch computes it (OpenVINO f32): these tests train
    # for two or three epochs on 72 images of 64 px, where bf16's rounding of the trunk outputs (within the default
    # tolerance) left the classifier at chance in one run
    params["data"].update(source="path", path=str(tmp / "images"))
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from training.prepare import prepare
    from training.synthetic import generate

    tmp = tmp_path_factory.mktemp("recipes")
    generate(tmp / "images", ["cat", "dog"], 60, 96, 3, progress=False)
    prepare(tmp / "images", tmp / "prepared", ["cat", "dog"], resize_size=72, val_ratio=0.2, test_ratio=0.2,
            seed=1, max_pixels=40_000_000)
    return tmp


@pytest.mark.integration
def test_torchrun_two_processes_train_one_checkpoint_and_one_mlflow_run(prepared):
    tmp = prepared
    params = tiny_params(tmp)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1")
    out = tmp / "train-ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "training", "--params", str(params), "train", "--prepared", str(tmp / "prepared"), "--out", str(out)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "x 2 process(es)" in log
    assert list(out.glob("*.pt")) == [out / "best.pt"]
    history = (out / "history.csv").read_text().splitlines()
    assert any(",head," in line for line in history) and any(",finetune," in line for line in history)
    assert max(float(line.split(",")[5]) for line in history[1:]) >= 0.8, history  # it learned (chance: 0.5)
    runs = sqlite3.connect(tmp / "mlflow.db").execute("select count(*) from runs").fetchone()[0]
    assert runs == 1, f"{runs} MLflow runs for one distributed training (only rank 0 may log)"
    checkpoint = torch.load(out / "best.pt", weights_only=True)
    assert checkpoint["model"]["arch"] == "efficientnet_lite0" and checkpoint["meta"]["image_size"] == 64


def test_evaluate_and_export_rebuild_the_network_from_the_checkpoint(prepared, tmp_path, monkeypatch):
    """After training, params.yaml changes (another arch and size): evaluate/export still use best.pt's own."""
    from training.evaluate import evaluate
    from training.export import export
    from training.params import load_params
    from training.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params = load_params(tiny_params(tmp_path))
    params["train"].update(head_epochs=2, finetune_epochs=0)
    train(params, prepared / "prepared", tmp_path / "train")
    params["model"].update(arch="resnet18", image_size=96, resize_size=110)
    params["evaluate"] = {}
    evaluate(params, prepared / "prepared", tmp_path / "train", tmp_path / "eval")
    meta = export(prepared / "prepared", tmp_path / "train", tmp_path / "eval", tmp_path / "model")
    assert meta["arch"] == "efficientnet_lite0" and meta["image_size"] == 64 and meta["mean"] == [0.5] * 3
    assert meta["pretrained"] == "package" and meta["recipe"] == "finetune" and meta["tta"] == "none"


def test_int8_export_is_gated_on_the_accuracy_drop(prepared, tmp_path, monkeypatch):
    """export.quantize: int8 writes a quantized TorchScript model with both accuracies in model-meta.json;
    a drop above export.max_accuracy_drop is refused and nothing is written."""
    from training.evaluate import evaluate
    from training.export import QuantizationGateError, export
    from training.params import load_params
    from training.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params = load_params(tiny_params(tmp_path))
    params["train"].update(head_epochs=2, finetune_epochs=0)
    params["evaluate"] = {}
    train(params, prepared / "prepared", tmp_path / "train")
    evaluate(params, prepared / "prepared", tmp_path / "train", tmp_path / "eval")
    args = (prepared / "prepared", tmp_path / "train", tmp_path / "eval")
    meta = export(*args, tmp_path / "int8", {"quantize": "int8", "calibration_images": 32, "max_accuracy_drop": 1.0})
    q = meta["quantized"]
    assert q["calibration_images"] == 32 and 0 <= q["int8_test_accuracy"] <= 1 and q["fp32_test_accuracy"] > 0.5
    loaded = torch.jit.load(str(tmp_path / "int8" / "model.pt"))
    assert any("quantized" in str(m.graph) for m in [loaded, *loaded.modules()])
    assert loaded(torch.rand(3, 3, 64, 64)).shape == (3, 2)
    with pytest.raises(QuantizationGateError, match="max_accuracy_drop"):
        # an int8 model would have to be more accurate than the float one by over 100 pp: always refused
        export(*args, tmp_path / "refused", {"quantize": "int8", "calibration_images": 32, "max_accuracy_drop": -1.01})
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ValueError, match="export.quantize"):
        export(*args, tmp_path / "bad", {"quantize": "fp8"})


def test_mirror_tta_model_exports_at_int8_and_says_so_in_its_metadata(prepared, tmp_path, monkeypatch):
    """model.tta: mirror travels through train -> evaluate -> int8 export: model-meta.json records it (a reader can
    tell the model runs twice per image) and the quantized file still averages an image with its mirror."""
    from training.evaluate import evaluate
    from training.export import export
    from training.params import load_params
    from training.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params = load_params(tiny_params(tmp_path))
    params["model"]["tta"] = "mirror"
    params["train"].update(head_epochs=2, finetune_epochs=0)
    params["evaluate"] = {}
    train(params, prepared / "prepared", tmp_path / "train")
    evaluate(params, prepared / "prepared", tmp_path / "train", tmp_path / "eval")
    meta = export(prepared / "prepared", tmp_path / "train", tmp_path / "eval", tmp_path / "int8",
                  {"quantize": "int8", "calibration_images": 32, "max_accuracy_drop": 1.0})
    assert meta["tta"] == "mirror" and "quantized" in meta
    loaded = torch.jit.load(str(tmp_path / "int8" / "model.pt"))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.softmax(loaded(x), 1), torch.softmax(loaded(x.flip(-1)), 1), atol=1e-4)


def test_quality_gate_thresholds():
    good = {"accuracy": 0.99, "log_loss": 0.03}
    assert quality_gate(good, {"min_accuracy": 0.95, "max_log_loss": 0.1}) == []
    assert quality_gate(good, {}) == []
    reasons = quality_gate({"accuracy": 0.5, "log_loss": 0.69}, {"min_accuracy": 0.95, "max_log_loss": 0.1})
    assert len(reasons) == 2 and "min_accuracy" in reasons[0] and "max_log_loss" in reasons[1]
    assert quality_gate({"accuracy": float("nan"), "log_loss": 0.1}, {"min_accuracy": 0.5})  # NaN never passes
    assert issubclass(QualityGateError, RuntimeError)
