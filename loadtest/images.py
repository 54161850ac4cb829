"""The images a load test sends: files from a folder or .zip/.tar, labelled by training.ingest.labelled where the
path says (cats/x.jpg, cat.12.jpg); unlabelled files are sent but not scored."""
from __future__ import annotations

from pathlib import Path

from catsdogs.contract import IMAGE_SUFFIXES
from training.ingest import LabelledImage, labelled


def evenly(items: list, limit: int) -> list:
    """At most `limit` items spread over the whole list (sorted sources list cats before dogs)."""
    if limit <= 0 or len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def load_samples(source: Path | str, limit: int = 400, classes=("cat", "dog")) -> list[LabelledImage]:
    """Up to `limit` image files from a folder (recursively) or an archive, spread evenly over its sorted list."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"--images {source} does not exist: pass a folder of cat/dog pictures (or a "
                                f".zip/.tar of them), or run `make synthesize` for data/synthetic")
    found = [e for e in labelled(source, list(classes)) if e[0].lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {source}")
    return [LabelledImage(relpath, label, read()) for relpath, label, read in evenly(found, limit)]
