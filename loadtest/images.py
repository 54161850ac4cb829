"""The images a load test sends: real files from a folder (or a .zip/.tar archive), with labels when known.

The label comes from the path exactly as the training ingest reads it (training.ingest.label_from_path):
a class-named folder (cats/x.jpg, PetImages/Dog/1.jpg) or a file-name prefix (cat.12.jpg). Files without
one (Oxford breed names, your own photos) are still sent; they just don't count towards accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.ingest import _entries, label_from_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
DEFAULT_CLASSES = ("cat", "dog")


@dataclass(frozen=True)
class Sample:
    name: str            # path relative to the source (what label_from_path saw)
    label: str | None    # None: the path does not say
    data: bytes


def label_for(relpath: str, classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES) -> str | None:
    """"cat.12.jpg" -> "cat", "cats/x.jpg" -> "cat", "PetImages/Dog/1.jpg" -> "dog", "Abyssinian_1.jpg" -> None."""
    return label_from_path(relpath, list(classes))


def evenly(items: list, limit: int) -> list:
    """At most `limit` items spread over the whole list (sorted sources list cats before dogs)."""
    if limit <= 0 or len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def load_samples(source: Path | str, limit: int = 400,
                 classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES) -> list[Sample]:
    """Up to `limit` image files from a folder (recursively) or an archive, spread evenly over its sorted list."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"--images {source} does not exist: pass a folder of cat/dog pictures (or a "
                                f".zip/.tar of them), or run `make synthesize` for data/synthetic")
    entries = [e for e in _entries(source) if e[0].lower().endswith(IMAGE_SUFFIXES)]
    if not entries:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {source}")
    return [Sample(relpath, label_for(relpath, classes), read()) for relpath, _, read in evenly(entries, limit)]
