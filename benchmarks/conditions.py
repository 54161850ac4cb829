"""The conditions a measurement depends on, detected on this machine (never typed into a report by hand)."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def machine() -> dict:
    """CPU model, cores, the vector/matrix flags that matter to torch, GPU present or not, torch version."""
    import torch

    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    gpu = (f"CUDA GPU present ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available()
           else "no GPU (torch.cuda.is_available() is False)")
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags], "gpu": gpu,
            "torch": torch.__version__}


def model_line(meta: dict) -> str:
    """The served model as its model-meta.json describes it: arch, input size, starting weights, version."""
    weights = meta.get("pretrained")
    start = ("starting weights unknown (model-meta.json has no `pretrained`)" if weights is None
             else "random initialisation" if str(weights) == "none" else f"pretrained weights ({weights})")
    return (f"Model {meta.get('arch', '?')} at {meta.get('image_size', '?')} px, {start}, version "
            f"{meta.get('version', '?')}")


def measured(others_cores: float, meta: dict) -> dict:
    """The fields every benchmark report records: when, on what machine, beside how much other load, which model."""
    return {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "conditions": machine(),
            "others_cores": others_cores,
            "model": {k: meta.get(k) for k in ("arch", "image_size", "pretrained", "version")}}


def measured_line(report: dict) -> str:
    return (f"- Measured {report['measured_at']}: {describe_machine(report['conditions'])}; other processes used "
            f"{report['others_cores']} cores on average during the run.")


def describe_machine(m: dict) -> str:
    flags = ", ".join(m["flags"]) or "none of " + ", ".join(CPU_FLAGS)
    return f"{m['cpu']}, {m['cores']} cores, flags {flags}; {m['gpu']}; torch {m['torch']}"
