"""Build the classifier: a torchvision architecture, or a timm one with packaged weights, with a `len(classes)` head.

`pretrained` picks where the starting weights come from (model/weights.py); `split_model` cuts a network into
the frozen trunk, the fine-tuned body and the head that the finetune recipe trains.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from model import weights as W

log = logging.getLogger(__name__)


def known_archs() -> list[str]:
    return sorted(models.list_models(module=models)) + sorted(W.PACKAGE_WEIGHTS)


def build_model(arch: str, num_classes: int, pretrained: str = "none", *, weights_file: str | Path | None = None,
                weights_sha256: str | None = None) -> nn.Module:
    """`arch` with the starting weights of `pretrained` and its classifier replaced by `num_classes` outputs."""
    if pretrained not in W.SOURCES:
        raise ValueError(f"model.pretrained must be one of {', '.join(W.SOURCES)}, not {pretrained!r}")
    return replace_head(imagenet_model(arch, pretrained, weights_file=weights_file, weights_sha256=weights_sha256),
                        num_classes)


def imagenet_model(arch: str, pretrained: str, *, weights_file=None, weights_sha256=None) -> nn.Module:
    """The network with its original (ImageNet, 1000-class) head and the requested weights loaded."""
    if arch in W.PACKAGE_WEIGHTS:
        import timm  # only the packaged-weights architectures need it
        net = timm.create_model(W.PACKAGE_WEIGHTS[arch].timm_arch, pretrained=False)
    elif arch in models.list_models(module=models):
        net = torchvision_model(arch, pretrained)
    else:
        raise ValueError(f"model.arch={arch!r} is not a known classification model; pick one of: "
                         f"{', '.join(known_archs())}")
    if pretrained == "package":
        path = W.package_weights_file(arch)
        net.load_state_dict(W.match_in_order(net.state_dict(), W.load_state_dict(path), str(path)))
        log.info("%s: ImageNet weights from %s", arch, path)
    elif pretrained == "file":
        if not weights_file:
            raise W.WeightsError("model.pretrained: file needs model.weights_file (a state-dict .pth file)")
        path = Path(weights_file)
        W.check_sha256(path, weights_sha256, "model.weights_file")
        state = W.load_state_dict(path)
        if list(state) != list(net.state_dict()):
            state = W.match_in_order(net.state_dict(), state, str(path))
        net.load_state_dict(state)
        log.info("%s: weights from %s", arch, path)
    return net


def torchvision_model(arch: str, pretrained: str) -> nn.Module:
    if pretrained != "torchvision":
        return models.get_model(arch, weights=None)
    weights = models.get_model_weights(arch).DEFAULT
    try:
        return models.get_model(arch, weights=weights)
    except Exception as exc:  # network errors surface as URLError/OSError/RuntimeError
        raise W.WeightsError(
            f"could not download the ImageNet weights {weights} for {arch} ({exc.__class__.__name__}: {exc}). "
            f"Offline: copy {weights.url.rsplit('/', 1)[-1]} into {torch.hub.get_dir()}/checkpoints, or use "
            f"model.pretrained: file with model.weights_file, or an architecture with packaged weights "
            f"({', '.join(W.PACKAGE_WEIGHTS)}, model.pretrained: package)") from exc


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


def split_model(net: nn.Module, blocks: int) -> tuple[nn.Sequential, nn.Sequential, nn.Module]:
    """(trunk, body, head) sharing `net`'s modules, with head(body(trunk(x))) == net(x) in eval mode.

    body holds the last `blocks` stages (timm EfficientNet `blocks[i]`, torchvision ResNet `layer1..4`)
    and the pooling; blocks=0 leaves only the pooling in it (a linear probe on frozen features).
    """
    if hasattr(net, "blocks") and hasattr(net, "conv_head"):  # timm EfficientNet family
        stages, family = list(net.blocks), "EfficientNet"
        cut = len(stages) - blocks
        last = [net.conv_head, net.bn2]  # the 1x1 conv after the stages trains with them
        trunk = [net.conv_stem, net.bn1, *stages[:max(cut, 0)], *(last if blocks == 0 else [])]
        body = [*stages[max(cut, 0):], *(last if blocks else []), net.global_pool]
        head = net.classifier
    elif all(hasattr(net, name) for name in ("layer1", "layer4", "fc")):  # torchvision ResNet family
        stages, family = [net.layer1, net.layer2, net.layer3, net.layer4], "ResNet"
        cut = len(stages) - blocks
        trunk = [net.conv1, net.bn1, net.relu, net.maxpool, *stages[:max(cut, 0)]]
        body = [*stages[max(cut, 0):], net.avgpool, nn.Flatten(1)]
        head = net.fc
    else:
        raise ValueError(f"the finetune recipe knows EfficientNet (timm) and ResNet networks, not "
                         f"{net.__class__.__name__}; use train.recipe: scratch for it")
    if not 0 <= blocks <= len(stages):
        raise ValueError(f"train.finetune_blocks must be 0..{len(stages)} for {family}, not {blocks}")
    return nn.Sequential(*trunk), nn.Sequential(*body), head


class MirrorAverage(nn.Module):
    """Mirror test-time augmentation (params.yaml model.tta: mirror): `net` runs on the image and its mirror image
    in one batch; softmax of the output is the mean of the two softmax outputs (it returns the log of that mean),
    so every consumer that applies softmax to logits gets the averaged probabilities. Twice the forward work."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(self.net(torch.cat([x, x.flip(-1)])).float(), dim=1)
        plain, mirrored = probabilities.chunk(2)
        return torch.log((plain + mirrored) / 2)


TTA = ("none", "mirror")


def with_tta(net: nn.Module, tta: str) -> nn.Module:
    """`net` as evaluated and served under params.yaml model.tta (none | mirror)."""
    if tta not in TTA:
        raise ValueError(f"model.tta must be one of {', '.join(TTA)}, not {tta!r}")
    return MirrorAverage(net) if tta == "mirror" else net


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def predict_proba(net: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities for a normalised batch [N, 3, S, S]."""
    return torch.softmax(net(batch).float(), dim=1)
