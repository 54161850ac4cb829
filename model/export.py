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
