"""Named model+train configurations (presets/*.yaml) and their application to params.yaml.

params.yaml holds the active configuration; a preset replaces its top-level `model:` and `train:`
blocks text for text, so every other section and every comment stays as it was.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
SECTIONS = ("model", "train")


def available() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_text(name: str) -> str:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"no preset {name!r}; available: {', '.join(available())}")
    return path.read_text()


def blocks(text: str) -> dict[str, str]:
    """Top-level `section:` blocks of a YAML text (each up to the next top-level key), by section name."""
    found = {}
    matches = list(re.finditer(r"^([A-Za-z_]+):", text, flags=re.MULTILINE))
    for match, nxt in zip(matches, [*matches[1:], None]):
        found[match.group(1)] = text[match.start():nxt.start() if nxt else len(text)].rstrip("\n") + "\n"
    return found


def apply(name: str, params_text: str) -> str:
    """params.yaml's text with its model/train blocks replaced by preset `name`'s."""
    new = blocks(preset_text(name))
    old = blocks(params_text)
    missing = [s for s in SECTIONS if s not in new or s not in old]
    if missing:
        raise ValueError(f"preset {name} or params.yaml lacks the top-level section {missing[0]!r}")
    for section in SECTIONS:
        params_text = params_text.replace(old[section].rstrip("\n"), new[section].rstrip("\n"), 1)
    return params_text


def load(name: str) -> dict:
    """A preset's sections as a dict (for merging over params in benchmarks)."""
    return yaml.safe_load(preset_text(name))
