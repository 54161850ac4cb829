"""Load and check params.yaml, the pipeline's single source of truth."""
from __future__ import annotations

from pathlib import Path

from catsdogs.contract import ContractError, read_params
from model.network import TTA
from model.weights import SOURCES as SOURCES_OF_WEIGHTS
from model.weights import normalization

DEFAULT_PARAMS = Path("params.yaml")
SOURCES = ("synthetic", "path", "petimages", "oxford-pet")
REQUIRED = {
    "data": ("source", "path", "classes"),
    "prepare": ("seed", "val_ratio", "test_ratio"),
    "model": ("arch", "pretrained", "image_size", "resize_size"),
    "train": ("recipe", "seed", "batch_size", "lr", "weight_decay", "patience"),
}
RECIPE_KEYS = {"scratch": ("epochs",), "finetune": ("head_epochs", "finetune_epochs", "finetune_blocks", "finetune_lr")}


class ParamsError(ValueError):
    pass


def load_params(path: Path = DEFAULT_PARAMS) -> dict:
    """params.yaml read by the contract's one reader, then checked (ParamsError says what is wrong)."""
    try:
        params = read_params(path)
    except ContractError as exc:
        raise ParamsError(f"{exc}; or pass --params PATH") from exc
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
    for key in ("mean", "std"):
        if key in model and len(model[key]) != 3:
            raise ParamsError(f"{where}: model.{key} needs three values (R, G, B), or leave it out to use the "
                              f"weights' own normalisation")
    if model["pretrained"] not in SOURCES_OF_WEIGHTS:
        raise ParamsError(f"{where}: model.pretrained={model['pretrained']!r}; use one of "
                          f"{', '.join(SOURCES_OF_WEIGHTS)} (see model/weights.py)")
    if model["pretrained"] == "file" and not model.get("weights_file"):
        raise ParamsError(f"{where}: model.pretrained: file needs model.weights_file (a state-dict .pth file)")
    if model.get("tta", "none") not in TTA:
        raise ParamsError(f"{where}: model.tta={model['tta']!r}; use one of {', '.join(TTA)}")
    recipe = params["train"]["recipe"]
    if recipe not in RECIPE_KEYS:
        raise ParamsError(f"{where}: train.recipe={recipe!r}; use one of {', '.join(RECIPE_KEYS)}")
    missing = [k for k in RECIPE_KEYS[recipe] if k not in params["train"]]
    if missing:
        raise ParamsError(f"{where}: train.{missing[0]} is missing (train.recipe: {recipe} needs "
                          f"{', '.join(RECIPE_KEYS[recipe])})")
    if not 0 < prepare["val_ratio"] + prepare["test_ratio"] < 1:
        raise ParamsError(f"{where}: prepare.val_ratio + prepare.test_ratio must be between 0 and 1")


def preprocessing_meta(params: dict) -> dict:
    """The preprocessing facts that travel with the model (consumed by model.preprocess).

    mean/std are the weights' own normalisation (model/weights.py) unless params.yaml overrides them.
    """
    model = params["model"]
    mean, std = normalization(model["arch"])
    return {"classes": list(params["data"]["classes"]), "image_size": int(model["image_size"]),
            "resize_size": int(model["resize_size"]), "mean": [float(v) for v in model.get("mean", mean)],
            "std": [float(v) for v in model.get("std", std)]}
