"""What every benchmark and load-test report records, and the one writer of their docs blocks.

The conditions are detected on this machine (never typed into a report by hand): CPU model and flags, GPU,
torch, and the machine's load (1-minute load average) before and after the run. Each benchmark renders its
results JSON into markdown lines; write_block puts them into the docs.
"""
from __future__ import annotations

import json
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


def load_average() -> float:
    """The machine's 1-minute load average (runnable processes, all of them, this run's included)."""
    return round(os.getloadavg()[0], 2)


def load_line(load: dict) -> str:
    """One line of the machine's load around a run: {"before": ..., "after": ...} from load_average()."""
    return (f"machine load (1-min load average, {os.cpu_count()} cores) {load['before']} before the run, "
            f"{load['after']} after")


def model_line(meta: dict) -> str:
    """The served model as its model-meta.json describes it: arch, input size, starting weights, version."""
    weights = meta.get("pretrained")
    start = ("starting weights unknown (model-meta.json has no `pretrained`)" if weights is None
             else "random initialisation" if str(weights) == "none" else f"pretrained weights ({weights})")
    return (f"Model {meta.get('arch', '?')} at {meta.get('image_size', '?')} px, {start}, version "
            f"{meta.get('version', '?')}")


def measured(load_before: float, meta: dict) -> dict:
    """The fields every benchmark report records: when, on what machine, under what load, which model."""
    return {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "conditions": machine(),
            "load": {"before": load_before, "after": load_average()},
            "model": {k: meta.get(k) for k in ("arch", "image_size", "pretrained", "version")}}


def measured_line(report: dict) -> str:
    return f"- Measured {report['measured_at']}: {describe_machine(report['conditions'])}; {load_line(report['load'])}."


def describe_machine(m: dict) -> str:
    flags = ", ".join(m["flags"]) or "none of " + ", ".join(CPU_FLAGS)
    return f"{m['cpu']}, {m['cores']} cores, flags {flags}; {m['gpu']}; torch {m['torch']}"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_block(doc: Path | str, lines: list[str], name: str) -> Path:
    """Write `lines` into `doc` between `name`'s markers (markers kept; the rest of the file untouched; the block
    appended when the markers are missing)."""
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    start, end = markers(name)
    block = "\n".join([start, *lines, end])
    text = doc.read_text() if doc.exists() else ""
    if start in text and end in text and text.index(start) < text.index(end):
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    doc.write_text(text)
    print(f"wrote {doc} ({name} block)")
    return doc


def write_json(path: Path | str, results: dict | list) -> Path:
    """A benchmark's results JSON (the docs block is rendered from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path
