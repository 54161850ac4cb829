"""Build the classifier: any torchvision classification architecture with a `len(classes)` head."""
from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision import models

log = logging.getLogger(__name__)


class PretrainedUnavailable(RuntimeError):
    """ImageNet weights were requested but could not be downloaded."""


def build_model(arch: str, num_classes: int, pretrained: str | bool = "auto") -> nn.Module:
    """torchvision `arch` with its classifier replaced by a `num_classes` output layer.

    pretrained: "true" -> ImageNet weights or PretrainedUnavailable; "auto" -> ImageNet weights when
    they can be downloaded, else random init with a warning; "false" -> random init.
    """
    if arch not in models.list_models(module=models):
        raise ValueError(f"model.arch={arch!r} is not a torchvision classification model; "
                         f"pick one of: {', '.join(sorted(models.list_models(module=models)))}")
    mode = str(pretrained).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"model.pretrained must be auto, true or false, not {pretrained!r}")
    net = None
    if mode in ("auto", "true"):
        weights = models.get_model_weights(arch).DEFAULT
        try:
            net = models.get_model(arch, weights=weights)
        except Exception as exc:  # network errors surface as URLError/OSError/RuntimeError
            message = (f"could not download ImageNet weights {weights} for {arch} ({exc.__class__.__name__}: "
                       f"{exc}). Put the file in $TORCH_HOME/hub/checkpoints, or set model.pretrained: false")
            if mode == "true":
                raise PretrainedUnavailable(message) from exc
            log.warning("%s -- falling back to random initialisation (model.pretrained: auto)", message)
    if net is None:
        net = models.get_model(arch, weights=None)
    return replace_head(net, num_classes)


def replace_head(net: nn.Module, num_classes: int) -> nn.Module:
    """Swap the last Linear layer (fc / classifier[-1] / head / heads.head) for a fresh one."""
    for name in ("fc", "classifier", "head", "heads"):
        parent = getattr(net, name, None)
        if parent is None:
            continue
        if isinstance(parent, nn.Linear):
            setattr(net, name, nn.Linear(parent.in_features, num_classes))
            return net
        if isinstance(parent, nn.Sequential):
            for index in range(len(parent) - 1, -1, -1):
                if isinstance(parent[index], nn.Linear):
                    parent[index] = nn.Linear(parent[index].in_features, num_classes)
                    return net
                if isinstance(parent[index], nn.Conv2d):  # squeezenet
                    old = parent[index]
                    parent[index] = nn.Conv2d(old.in_channels, num_classes, old.kernel_size)
                    return net
    raise ValueError(f"do not know how to replace the classifier of {net.__class__.__name__}")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def predict_proba(net: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities for a normalised batch [N, 3, S, S]."""
    return torch.softmax(net(batch).float(), dim=1)
