"""How a model runs fast on the CPU here: the process's allocator settings and the model's memory layout.

Both chosen by measurement (docs/cpu-inference.md; re-measured by the torchscript and
torchscript-plain rows of `python -m benchmarks.engines`) and used by every
process that runs the network: training (trunk pass), evaluation, the TorchServe handler (this file travels
in the .mar) and the benchmarks.

    reuse_freed_memory()                    # once per process, before the first forward
    fast = for_cpu_inference(model, example); fast(channels_last(x))
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import warnings
from contextlib import contextmanager, suppress

import torch
from torch import nn

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Keep freed memory in the process instead of handing it back to the kernel (glibc only).

    By default glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps
    it on free, so each forward pass over a batch of 224 px activations page-faults all of them in again: the
    kernel time equalled the compute time in the measurement. With a 1 GiB mmap threshold and no trimming the
    activations' memory is reused from one forward to the next; the process keeps its peak size.
    `enabled=False` sets glibc's initial values back (128 KiB thresholds, no top pad; for comparisons).
    Returns False (and changes nothing) where the C library has no mallopt."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    values = ((1 << 30, (1 << 31) - 1, 64 << 20) if enabled else (128 << 10, 128 << 10, 0))
    return all(mallopt(param, value) == 1
               for param, value in zip((_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, _M_TOP_PAD), values))


def for_cpu_inference(model: nn.Module, example: torch.Tensor, rtol: float = 1e-3) -> torch.jit.ScriptModule:
    """`model` (eager or TorchScript) as CPU inference runs it fastest here: weights in channels_last (NHWC)
    memory format, traced when eager, torch.jit.freeze'd (constants folded), and when torch runs on one thread
    also torch.jit.optimize_for_inference'd (oneDNN prepacked convolutions). Feed it `channels_last(x)`.

    Chosen by interleaved measurement on EfficientNet-Lite0 (docs/cpu-inference.md; with several
    threads channels_last + freeze beat optimize_for_inference at every batch size tried). With one thread
    PyTorch sends the 1x1 convolutions to its slow reference kernel, which optimize_for_inference avoids: then
    channels_last + freeze + optimize_for_inference is the fastest form (docs/cpu-inference.md). Converts `model`
    in place; raises when the result's output differs from the original's on `example` by more than rtol
    (relative)."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
        expected = model(example).float()
        model.to(memory_format=torch.channels_last)
        example = channels_last(example)
        if not isinstance(model, torch.jit.ScriptModule):
            model = torch.jit.trace(model, example)
        fast = torch.jit.freeze(model)
        if torch.get_num_threads() == 1:  # one thread: oneDNN's prepacked convolutions (see docstring)
            fast = torch.jit.optimize_for_inference(fast)
        got = fast(example).float()
    diff = float((got - expected).abs().max())
    if diff > rtol * max(1.0, float(expected.abs().max())):
        raise RuntimeError(f"the channels_last frozen model differs from the original by {diff:.2e}")
    return fast


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D NCHW batch in channels_last memory format (same shape and values)."""
    return x.contiguous(memory_format=torch.channels_last)


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc (not Linux): the calling thread only
        return [0]


def can_restore_priority(nice: int) -> bool:
    """Whether this process may go back to `nice` after raising it: root, or RLIMIT_NICE allows it (Linux:
    an unprivileged process may lower its nice value down to 20 - RLIMIT_NICE, and the default limit is 0)."""
    if os.geteuid() == 0:
        return True
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or 20 - soft <= nice


@contextmanager
def lowered_priority(nice: int):
    """Every thread of this process at CPU priority `nice` (0..19, higher = lower priority) inside the block, and
    back to what it was afterwards, threads started inside (OpenMP's) included. At 19 the threads also run under
    Linux's SCHED_IDLE policy: they get a core only when no other thread wants it, and a waking serving thread
    takes it back at once (nice 19 alone still let a loading version cause latency spikes in the serving
    benchmark's swap runs).

    For work that must not slow down the processes already serving on the same cores: a TorchServe worker loads,
    freezes and warms up its model this way while another version's workers answer requests (a version swap).
    Does nothing when `nice` is 0 or the process could not go back (see can_restore_priority): a worker must never
    stay at low priority for its serving life. Yields whether the priority was lowered."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if nice <= base or not can_restore_priority(base):
        yield False
        return
    idle = nice >= 19 and hasattr(os, "SCHED_IDLE")
    policy = os.sched_getscheduler(0) if idle else None
    for tid in _threads():
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        if idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    try:
        yield True
    finally:
        for tid in _threads():
            with suppress(ProcessLookupError):  # a thread that ended meanwhile
                if idle:
                    os.sched_setscheduler(tid, policy, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, base)
