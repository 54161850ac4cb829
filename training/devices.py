"""Where training runs: device choice, mixed precision per device, and torchrun/DDP process groups.

`torchrun --nproc_per_node N -m training train` sets RANK/WORLD_SIZE/LOCAL_RANK; each process then
trains on its shard, gradients are averaged by DistributedDataParallel, metrics are summed across
ranks, and only rank 0 talks to MLflow and writes files.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("auto", "off", "bf16", "fp16")


def select_device(requested: str = "auto", *, local_rank: int = 0, cuda_available: bool | None = None,
                  mps_available: bool | None = None) -> torch.device:
    """auto -> CUDA when present, else MPS, else CPU; an explicit device that is absent is an error."""
    if requested not in DEVICES:
        raise ValueError(f"train.device must be one of {', '.join(DEVICES)}, not {requested!r}")
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    mps = (torch.backends.mps.is_available() if mps_available is None else mps_available)
    if requested == "cuda" and not cuda:
        raise ValueError("train.device: cuda, but no CUDA device is visible (torch.cuda.is_available() is False); "
                         "install a CUDA build of torch or set train.device: auto")
    if requested == "mps" and not mps:
        raise ValueError("train.device: mps, but Apple's MPS backend is not available; set train.device: auto")
    if requested == "cuda" or (requested == "auto" and cuda):
        return torch.device("cuda", local_rank)
    if requested == "mps" or (requested == "auto" and mps):
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(mode: str, device: torch.device, *, cpu_bf16: bool | None = None,
              cuda_bf16: bool | None = None) -> torch.dtype | None:
    """Autocast dtype for `mode` on `device` (None = full float32).

    auto: bf16 on CUDA where supported, else fp16; float32 on CPU/MPS (bf16 autocast is slower than
    float32 for depthwise convolutions on CPUs); bf16 explicitly on a CPU without native bf16 -> float32.
    """
    if mode not in AMP_MODES:
        raise ValueError(f"train.amp must be one of {', '.join(AMP_MODES)}, not {mode!r}")
    if mode == "off":
        return None
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if mode == "fp16" or (mode == "auto" and not bf16_ok):
            return torch.float16
        return torch.bfloat16
    if device.type == "cpu" and mode == "bf16":
        ok = torch.ops.mkldnn._is_mkldnn_bf16_supported() if cpu_bf16 is None else cpu_bf16
        return torch.bfloat16 if ok else None
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@dataclass
class Context:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum of `values` over all ranks (the values themselves when not distributed)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def min(self, value: int) -> int:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def setup(requested_device: str = "auto") -> Context:
    """The process's Context: joins the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, else gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(requested_device, local_rank=local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(device=device, rank=rank, world_size=world_size)
