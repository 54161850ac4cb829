"""TorchScript export with an eager/TorchScript parity check, plus the metadata file every consumer reads."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

META_FILE = "model-meta.json"
INDEX_TO_NAME_FILE = "index_to_name.json"


def to_torchscript(net: nn.Module, example: torch.Tensor, atol: float = 1e-4) -> torch.jit.ScriptModule:
    """Trace `net` (eval mode, float32) and verify that it matches the eager model on `example`."""
    net = net.eval().float()
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated; TorchServe 0.12 still loads TorchScript, so it stays.
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
        scripted = torch.jit.trace(net, example)
        scripted = torch.jit.freeze(scripted)
        check_parity(net, scripted, example, atol)
    return scripted


def for_cpu_inference(model: nn.Module, example: torch.Tensor, rtol: float = 1e-3) -> torch.jit.ScriptModule:
    """`model` (eager or TorchScript) as CPU inference runs it fastest here: weights in channels_last (NHWC)
    memory format, traced when eager, torch.jit.freeze'd (constants folded). Feed it `channels_last(x)`.

    Chosen by interleaved measurement on EfficientNet-Lite0 (`python -m benchmarks.cpu_inference`): faster
    than NCHW and than torch.jit.optimize_for_inference at every batch size tried. Converts `model` in place;
    raises when the result's output differs from the original's on `example` by more than rtol (relative)."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
        expected = model(example).float()
        model.to(memory_format=torch.channels_last)
        example = channels_last(example)
        if not isinstance(model, torch.jit.ScriptModule):
            model = torch.jit.trace(model, example)
        fast = torch.jit.freeze(model)
        got = fast(example).float()
    diff = float((got - expected).abs().max())
    if diff > rtol * max(1.0, float(expected.abs().max())):
        raise RuntimeError(f"the channels_last frozen model differs from the original by {diff:.2e}")
    return fast


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D NCHW batch in channels_last memory format (same shape and values)."""
    return x.contiguous(memory_format=torch.channels_last)


def check_parity(eager: nn.Module, scripted: torch.jit.ScriptModule, batch: torch.Tensor, atol: float = 1e-4) -> float:
    """Max abs difference of the softmax outputs; raises when above atol."""
    with torch.no_grad():
        a = torch.softmax(eager(batch), 1)
        b = torch.softmax(scripted(batch), 1)
    diff = float((a - b).abs().max())
    if diff > atol:
        raise RuntimeError(f"TorchScript output differs from the eager model by {diff:.2e} (> {atol:.0e})")
    return diff


def write_metadata(meta: dict, out_dir: Path) -> None:
    """model-meta.json (everything) and index_to_name.json (TorchServe convention) derived from it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    index_to_name = {str(i): name for i, name in enumerate(meta["classes"])}
    (out_dir / INDEX_TO_NAME_FILE).write_text(json.dumps(index_to_name, indent=2) + "\n")


def read_metadata(path: Path) -> dict:
    meta = json.loads(Path(path).read_text())
    missing = [k for k in ("classes", "image_size", "resize_size", "mean", "std", "version") if k not in meta]
    if missing:
        raise ValueError(f"{path}: model metadata lacks {', '.join(missing)}; re-run `python -m training export`")
    return meta
