"""Post-training static int8 quantization of a float classifier into a TorchScript file TorchServe loads as is.

FX graph mode (torch.ao.quantization.quantize_fx) with the backend's default qconfig mapping ("x86": fbgemm
kernels with AVX2 / AVX-512 VNNI, or "onednn"). Activations are calibrated on preprocessed training
images; weights are per-channel int8. The result is traced and frozen: `torch.jit.load` + forward on a float
[N, 3, S, S] batch, as for the float export, so the handler and the archive need no change.

    quantize_static(model, calibration, example, backend="x86") -> torch.jit.ScriptModule
    static_padding(model, example) -> nn.Module   # TF-"same" convolutions with fixed pads (FX-traceable)
    preprocessed_batches(images, meta, batch_size) -> Iterator[torch.Tensor]
    agreement(float_model, int8_model, batches) -> float   # share of images with the same top-1 class
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from model.preprocess import decode_image, eval_transform


def quantize_static(model: nn.Module, calibration: Iterable[torch.Tensor], example: torch.Tensor,
                    backend: str = "x86") -> torch.jit.ScriptModule:
    """Float eager `model` -> int8 TorchScript, observers calibrated on every batch of `calibration`.

    `model` is not modified; TF-"same" convolutions get the fixed padding of `example`'s size. Raises ValueError
    when `calibration` is empty (an uncalibrated model is garbage) or the backend is not available in this PyTorch
    build. A mirror test-time-augmentation wrapper (model.network.MirrorAverage) keeps its averaging of the two
    probabilities in float around the int8 network: quantized, softmax outputs would come in steps of 1/256.
    """
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(converted(model, calibration, example, backend), example).eval())


def converted(model: nn.Module, calibration: Iterable[torch.Tensor], example: torch.Tensor, backend: str) -> nn.Module:
    """quantize_static's int8 network before tracing (a MirrorAverage's inner network converted, the wrapper kept)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from model.network import MirrorAverage

    if isinstance(model, MirrorAverage):
        return MirrorAverage(converted(model.net, calibration, example, backend)).eval()
    model = static_padding(model, example)
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized backend {backend!r} is not in this PyTorch build "
                         f"({torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        prepared = prepare_fx(model.eval(), get_default_qconfig_mapping(backend), (example,))
        seen = 0
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
                seen += len(batch)
        if not seen:
            raise ValueError("no calibration images: pass preprocessed training batches")
        return convert_fx(prepared)


def static_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of `model` whose TF-"same" convolutions (timm Conv2dSame, used by the tf_efficientnet family:
    padding computed from the input size at run time, which FX cannot trace) are ZeroPad2d + Conv2d with the
    padding they compute for `example`'s size. Same weights, same outputs at that size."""
    model = copy.deepcopy(model).eval()
    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import pad_same_arg
    except ImportError:  # no timm, no such layers
        return model
    sizes: dict[str, tuple] = {}

    def record(name):
        def hook(_module, args):
            sizes.setdefault(name, tuple(args[0].shape[-2:]))  # returns None: the input is left as it is
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    for name, size in sizes.items():
        conv = model.get_submodule(name)
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                          conv.groups, conv.bias is not None)
        plain.weight, plain.bias = conv.weight, conv.bias
        pad = nn.ZeroPad2d(pad_same_arg(list(size), conv.kernel_size, conv.stride, conv.dilation))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Sequential(pad, plain))
    return model


def preprocessed_batches(images: Iterable[bytes], meta: dict, batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Image file contents -> normalised float batches, with the serving decode and eval transform."""
    transform, batch = eval_transform(meta), []
    for data in images:
        batch.append(transform(decode_image(data, draft_size=int(meta["resize_size"]))))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def agreement(reference, candidate, batches: Iterable[torch.Tensor]) -> float:
    """Share of images on which two models give the same top-1 class."""
    same = total = 0
    with torch.inference_mode():
        for batch in batches:
            same += int((reference(batch).argmax(1) == candidate(batch).argmax(1)).sum())
            total += len(batch)
    return same / total if total else float("nan")
