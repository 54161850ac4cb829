"""Load and check params.yaml, the pipeline's single source of truth."""
from __future__ import annotations

from pathlib import Path

import yaml

DEFAULT_PARAMS = Path("params.yaml")
SOURCES = ("synthetic", "path", "petimages", "oxford-pet")
REQUIRED = {
    "data": ("source", "path", "classes"),
    "prepare": ("seed", "val_ratio", "test_ratio"),
    "model": ("arch", "pretrained", "image_size", "resize_size", "mean", "std"),
    "train": ("seed", "epochs", "batch_size", "lr", "weight_decay", "patience"),
}


class ParamsError(ValueError):
    pass


def load_params(path: Path = DEFAULT_PARAMS) -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the repository root or pass --params PATH")
    params = yaml.safe_load(path.read_text()) or {}
    check_params(params, path)
    return params


def check_params(params: dict, where: Path | str = "params.yaml") -> None:
    for section, keys in REQUIRED.items():
        missing = [k for k in keys if k not in params.get(section, {})]
        if missing:
            raise ParamsError(f"{where}: {section}.{missing[0]} is missing (section {section} needs {', '.join(keys)})")
    data, model, prepare = params["data"], params["model"], params["prepare"]
    if data["source"] not in SOURCES:
        raise ParamsError(f"{where}: data.source={data['source']!r}; use one of {', '.join(SOURCES)}")
    if len(data["classes"]) < 2 or len(set(data["classes"])) != len(data["classes"]):
        raise ParamsError(f"{where}: data.classes must list at least two distinct class names")
    if model["resize_size"] < model["image_size"]:
        raise ParamsError(f"{where}: model.resize_size ({model['resize_size']}) must be >= model.image_size "
                          f"({model['image_size']})")
    if len(model["mean"]) != 3 or len(model["std"]) != 3:
        raise ParamsError(f"{where}: model.mean and model.std need three values (R, G, B)")
    if not 0 < prepare["val_ratio"] + prepare["test_ratio"] < 1:
        raise ParamsError(f"{where}: prepare.val_ratio + prepare.test_ratio must be between 0 and 1")


def preprocessing_meta(params: dict) -> dict:
    """The preprocessing facts that travel with the model (consumed by model.preprocess)."""
    model = params["model"]
    return {"classes": list(params["data"]["classes"]), "image_size": int(model["image_size"]),
            "resize_size": int(model["resize_size"]), "mean": [float(v) for v in model["mean"]],
            "std": [float(v) for v in model["std"]]}
