"""prepare stage: ingest a dataset, split it (stratified, deterministic), cache resized images, write a manifest.

Output folder (one DVC output, not thousands of .dvc files):
    images/<sha256[:20]>.jpg   every kept image, short side shrunk to model.resize_size
    manifest.csv               path, label, sha256, split, cache
    stats.json                 counts per split/label, skipped files by reason, data hash
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

MANIFEST_FIELDS = ("path", "label", "sha256", "split", "cache")
SPLITS = ("train", "val", "test")


def stratified_split(records: list[dict], val_ratio: float, test_ratio: float, seed: int) -> list[str]:
    """Split names for `records` (dicts with label and sha256), stratified by label.

    Depends only on the content hashes and the seed, not on file names or listing order.
    """
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_label[record["label"]].append(index)
    splits = [""] * len(records)
    for label in sorted(by_label):
        indices = sorted(by_label[label], key=lambda i: records[i]["sha256"])
        random.Random(f"{seed}:{label}").shuffle(indices)
        n_test = round(len(indices) * test_ratio)
        n_val = round(len(indices) * val_ratio)
        for rank, index in enumerate(indices):
            splits[index] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return splits


def data_hash(records: list[dict]) -> str:
    """A fingerprint of the dataset: sorted (sha256, label, split) triples."""
    digest = hashlib.sha256()
    for sha, label, split in sorted((r["sha256"], r["label"], r["split"]) for r in records):
        digest.update(f"{sha} {label} {split}\n".encode())
    return digest.hexdigest()


def split_counts(records: list[dict]) -> dict:
    counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    for record in records:
        counts[record["split"]][record["label"]] += 1
    return {split: dict(sorted(c.items())) for split, c in counts.items()}


def prepare(source: Path, out_dir: Path, classes: list[str], *, resize_size: int, val_ratio: float,
            test_ratio: float, seed: int, max_pixels: int) -> dict:
    """Ingest `source`, write the cache, manifest.csv and stats.json into `out_dir`; returns the stats."""
    # torch and torchvision are imported here, not at the top: readers of the manifest (deploy gates) skip them
    from model.preprocess import cache_resize
    from training.ingest import IngestReport, scan

    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "images").mkdir(parents=True)
    report = IngestReport()
    records = []
    sizes = []
    for relpath, label, sha, image in tqdm(scan(source, classes, max_pixels=max_pixels, draft_size=resize_size,
                                                report=report), desc="prepare", unit="img"):
        cache = f"images/{sha[:20]}.jpg"
        sizes.append(image.size)
        cache_resize(image, resize_size).save(out_dir / cache, quality=95)
        records.append({"path": relpath, "label": label, "sha256": sha, "cache": cache})
    if not records:
        raise ValueError(f"no usable images in {source}: {report.summary()}")
    missing = [c for c in classes if not any(r["label"] == c for r in records)]
    if missing:
        raise ValueError(f"{source}: no images of class {', '.join(missing)} (data.classes={classes}); "
                         f"check the layout and data.classes in params.yaml")
    for record, split in zip(records, stratified_split(records, val_ratio, test_ratio, seed)):
        record["split"] = split
    with open(out_dir / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in MANIFEST_FIELDS} for r in records)
    widths, heights = zip(*sizes)
    stats = {
        "source": str(source), "images": len(records), "data_hash": data_hash(records),
        "splits": split_counts(records), "ingest": report.to_dict(),
        "original_size": {"min": [min(widths), min(heights)], "max": [max(widths), max(heights)],
                          "mean": [round(sum(widths) / len(widths), 1), round(sum(heights) / len(heights), 1)]},
        "cache_short_side": resize_size,
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"prepare: kept {len(records)} images from {source} -> {out_dir} | {report.summary()} | "
          f"splits {json.dumps(stats['splits'])}")
    return stats


def read_manifest(prepared_dir: Path, split: str | None = None) -> list[dict]:
    """Rows of manifest.csv (optionally one split), with `cache` resolved to an absolute path."""
    manifest = Path(prepared_dir) / "manifest.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} not found: run `python -m training prepare` (or `dvc repro prepare`)")
    with open(manifest, newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if split is None or row["split"] == split]
    for row in rows:
        row["cache"] = str(Path(prepared_dir) / row["cache"])
    return rows


def read_stats(prepared_dir: Path) -> dict:
    return json.loads((Path(prepared_dir) / "stats.json").read_text())
