"""TorchScript export with an eager/TorchScript parity check; model-meta.json is catsdogs.contract's."""
from __future__ import annotations

import warnings

import torch
from torch import nn


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

