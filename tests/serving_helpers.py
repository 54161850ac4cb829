"""A throwaway TorchScript model with a meaningful answer, for the handler and TorchServe tests.

RedVsBlue says "cat" when the image's mean red is above its mean blue, else "dog": a red picture
must come back as cat and a blue one as dog, so the tests check that bytes really flow through
decode -> metadata-driven transform -> model -> response in the right class order.
It reads the normalised input the handler builds, so with the default weights' mean/std (0.5) a pure red image
gives red ~ +0.8 and blue ~ -0.84 (and the reverse for pure blue).
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import yaml
from torch import nn

from catsdogs.contract import write_meta

ROOT = Path(__file__).resolve().parents[1]
RED, BLUE = (230, 20, 20), (20, 20, 230)


class RedVsBlue(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = x[:, 0].mean(dim=(1, 2)) - x[:, 2].mean(dim=(1, 2))
        return torch.stack([diff, -diff], dim=1) * 4.0


def throwaway_meta(version: str = "test.0001", image_size: int = 32, resize_size: int = 36, **extra) -> dict:
    """Metadata shaped like the export stage's, with params.yaml's mean/std and small sizes."""
    from training.params import load_params, preprocessing_meta
    meta = preprocessing_meta(load_params(ROOT / "params.yaml"))
    return {"classes": ["cat", "dog"], "image_size": image_size, "resize_size": resize_size,
            "mean": meta["mean"], "std": meta["std"], "arch": "red-vs-blue", "version": version,
            "registered_model": "catsdogs", **extra}


def write_model_dir(out: Path, **meta_overrides) -> dict:
    """out/{model.pt, model-meta.json, index_to_name.json}, like artifacts/model/."""
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.* deprecation notices
        torch.jit.save(torch.jit.script(RedVsBlue()), str(out / "model.pt"))
    meta = throwaway_meta(**meta_overrides)
    write_meta(meta, out)
    return meta


def train_synthetic_model(work: Path, *, images_per_class: int = 500, epochs: int = 10,
                          finetune_epochs: int = 3) -> tuple[Path, Path]:
    """Run the real pipeline functions, scaled down, on generated cartoon cats/dogs (about a minute).

    Returns (model dir like artifacts/model, prepared dir whose test split holds held-out images).
    The caller sets MLFLOW_TRACKING_URI to a throwaway store first.
    """
    from training.evaluate import evaluate
    from training.export import export
    from training.prepare import prepare
    from training.synthetic import generate
    from training.train import train

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthetic"].update(images_per_class=images_per_class)
    params["model"].update(image_size=96, resize_size=110)
    params["train"].update(batch_size=32, head_epochs=epochs, finetune_epochs=finetune_epochs, patience=epochs)
    classes = params["data"]["classes"]
    generate(work / "images", classes, images_per_class, params["synthetic"]["size"], params["synthetic"]["seed"],
             progress=False)
    prepare(work / "images", work / "prepared", classes, resize_size=110, val_ratio=0.15, test_ratio=0.15,
            seed=params["prepare"]["seed"], max_pixels=params["data"]["max_image_pixels"])
    train(params, work / "prepared", work / "train")
    evaluate(params, work / "prepared", work / "train", work / "eval")
    export(work / "prepared", work / "train", work / "eval", work / "model")
    return work / "model", work / "prepared"


def held_out_images(prepared: Path, split: str = "test") -> list[tuple[Path, str]]:
    """(original image file, label) for each image of a prepared split (manifest paths are source-relative)."""
    from training.prepare import read_manifest, read_stats

    source = Path(read_stats(prepared)["source"])
    return [(source / row["path"], row["label"]) for row in read_manifest(prepared, split)]


def serve_model_dir(model_dir: Path, work: Path, **start_kwargs) -> dict:
    """Archive `model_dir` into work/store and start TorchServe on free ports (run dir work/run, logs work/logs).

    Returns serving.server.start's state; the caller stops it with serving.server.stop(work / "run").
    """
    from serving.archive import build_archive
    from serving.config import DEFAULT_CONFIG
    from serving.server import free_ports, start

    build_archive(model_dir, work / "store")
    inference, management, metrics, grpc_i, grpc_m = free_ports(5)
    return start(config=DEFAULT_CONFIG, run_dir=work / "run", log_dir=work / "logs", model_store=work / "store",
                 ports={"inference": inference, "management": management, "metrics": metrics},
                 grpc_ports=(grpc_i, grpc_m), timeout=240, **start_kwargs)


def variant(model_dir: Path, out: Path, version: str, mlflow_version: str | None = None,
            always_cat: bool = False) -> Path:
    """A copy of the export dir with a new version (and optionally a model that always answers "cat")."""
    import torch
    from torch import nn

    shutil.copytree(model_dir, out)
    meta = json.loads((out / "model-meta.json").read_text())
    meta["version"] = version
    if mlflow_version:
        meta["mlflow_model_version"] = mlflow_version
    (out / "model-meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if always_cat:
        class AlwaysCat(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                ones = torch.ones(x.shape[0], 1, dtype=x.dtype)
                return torch.cat([ones * 4.0, ones * -4.0], dim=1)

        torch.jit.save(torch.jit.script(AlwaysCat()), str(out / "model.pt"))
    return out
