"""Release gates for a candidate version: a smoke test and a golden-set accuracy check.

The golden set (docs/deploy-versions.md) is the test split the candidate was trained on (manifest_golden), a
labelled folder (load_golden) or a cached synthetic set (synthetic_golden). gate_decision: the candidate must
reach `min_accuracy`, must not score below the current default minus `margin`, and no golden request may fail.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catsdogs import contract
from training.ingest import LabelledImage, labelled
from training.prepare import read_manifest, read_stats
from training.synthetic import DRAWERS, MARKER_FILE, draw_image, generate

GOLDEN_SEED = 2024_11  # not params.yaml synthetic.seed: golden images are never training images
SMOKE_SEED = 99


@dataclass
class Tally:
    """Answers scored against the labels of the images sent (golden gate, load tests); a failed request
    counts as wrong, an image whose path names no class is not scored."""

    n: int = 0                   # scored: labelled answers and failed requests
    correct: int = 0
    errors: int = 0
    unlabelled: int = 0
    per_label: dict = field(default_factory=dict)   # true label -> [right, total]
    versions: dict = field(default_factory=dict)    # model_version -> answers
    mistakes: list[str] = field(default_factory=list)  # the first few "name: expected x, got y" lines

    def add(self, truth: str | None, predicted: str, version: str, name: str = "") -> None:
        self.versions[version] = self.versions.get(version, 0) + 1
        if truth is None:
            self.unlabelled += 1
            return
        self.n += 1
        right = truth == predicted
        self.correct += right
        counts = self.per_label.setdefault(truth, [0, 0])
        counts[0] += right
        counts[1] += 1
        if not right:
            self._mistake(f"{name}: expected {truth}, got {predicted}")

    def fail(self, name: str, problem: str) -> None:
        self.n += 1
        self.errors += 1
        self._mistake(f"{name}: {problem}")

    def _mistake(self, line: str) -> None:
        if len(self.mistakes) < 5:
            self.mistakes.append(line)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def summary(self) -> str:
        accuracy = "n/a" if self.accuracy is None else f"{self.accuracy:.3f}"
        failed = f", {self.errors} failed requests" if self.errors else ""
        return f"{self.correct}/{self.n} right ({accuracy}){failed}"

    def to_dict(self) -> dict:
        return {"accuracy": None if self.accuracy is None else round(self.accuracy, 4), "labelled": self.n,
                "correct": self.correct, "unlabelled": self.unlabelled,
                "per_label": {k: {"correct": v[0], "total": v[1]} for k, v in sorted(self.per_label.items())},
                "versions": dict(self.versions)}


# --- pure checks -----------------------------------------------------------------------------------

def check_prediction(status: int, body, classes: list[str], version: str | None) -> list[str]:
    """Problems with one prediction response (empty list: a valid answer from `version`, contract schema)."""
    if status != 200:
        detail = body.get("message") or body.get("error") if isinstance(body, dict) else str(body)[:200]
        return [f"HTTP {status}: {detail}"]
    problem = contract.check_prediction(body, classes, version)
    return [problem] if problem else []


def gate_decision(candidate: Tally, baseline: Tally | None, min_accuracy: float, margin: float) -> tuple[bool, str]:
    """(passed, reason) for the golden-set gate: the candidate's tally against the serving default's."""
    if candidate.n == 0:
        return False, "the golden set is empty"
    if candidate.errors:
        return False, f"{candidate.errors} of {candidate.n} golden requests failed ({candidate.summary()})"
    if candidate.accuracy < min_accuracy:
        return False, (f"golden accuracy {candidate.accuracy:.3f} < required {min_accuracy:.3f} "
                       f"({candidate.summary()})")
    if baseline is not None and baseline.n and not baseline.errors:
        floor = baseline.accuracy - margin
        if candidate.accuracy < floor:
            return False, (f"golden accuracy {candidate.accuracy:.3f} is below the serving default's "
                           f"{baseline.accuracy:.3f} minus margin {margin:.3f} (candidate {candidate.summary()}; "
                           f"default {baseline.summary()})")
        return True, (f"golden accuracy {candidate.accuracy:.3f} >= {min_accuracy:.3f} and >= default's "
                      f"{baseline.accuracy:.3f} - {margin:.3f}")
    return True, f"golden accuracy {candidate.accuracy:.3f} >= {min_accuracy:.3f} (no comparable default score)"


# --- golden set --------------------------------------------------------------------------------------

def load_golden(folder: Path, classes: list[str]) -> list[LabelledImage]:
    """Labelled images under `folder` (hidden files skipped); raises when a class has no image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"golden set {folder} is not a directory")
    items, unlabelled = [], []
    for rel, label, read in labelled(folder, classes):
        if rel.lower().endswith(contract.IMAGE_SUFFIXES):
            if label:
                items.append(LabelledImage(rel, label, read()))
            else:
                unlabelled.append(rel)
    missing = [c for c in classes if not any(i.label == c for i in items)]
    if missing:
        raise ValueError(f"golden set {folder} has no images for {missing} (labels come from folder or file "
                         f"names, e.g. cat/1.jpg or dog.2.jpg; {len(unlabelled)} unlabelled files)")
    return items


def manifest_golden(prepared: Path, classes: list[str], per_class: int,
                    data_hash: str | None) -> tuple[list[LabelledImage], dict]:
    """(items, record): the first per_class test-split rows of each class by sha256 (the same manifest always
    gives the same set), for a candidate trained on that data; the record names the set by a content hash."""
    prepared = Path(prepared)
    if not (prepared / "stats.json").is_file():
        raise FileNotFoundError(f"no prepare output at {prepared} (stats.json, manifest.csv) to draw the golden "
                                f"set from: run `make pipeline` (or dvc pull/checkout), or pass --golden DIR")
    trained_on = read_stats(prepared)["data_hash"]
    if not data_hash:
        raise ValueError("the archive's model-meta.json has no data_hash: cannot tell which data it was trained on; "
                         "pass --golden DIR (or --synthetic-golden)")
    if trained_on != data_hash:
        raise ValueError(f"the candidate was trained on data {data_hash[:12]}, but {prepared} holds data "
                         f"{trained_on[:12]}: check out the candidate's data (dvc checkout) or pass --golden DIR")
    rows = read_manifest(prepared, "test")
    picked = []
    for label in classes:
        of_class = sorted((r for r in rows if r["label"] == label), key=lambda r: r["sha256"])[:per_class]
        if not of_class:
            raise ValueError(f"the test split of {prepared} has no image of class {label!r}")
        picked += of_class
    digest = hashlib.sha256("".join(f"{r['sha256']} {r['label']}\n" for r in picked).encode()).hexdigest()
    record = {"source": "prepare manifest, test split", "prepared": str(prepared), "data_hash": trained_on,
              "images": len(picked), "sha256": digest}
    return [LabelledImage(r["path"], r["label"], Path(r["cache"]).read_bytes()) for r in picked], record


def synthetic_golden(cache_root: Path, classes: list[str], per_class: int, size: int,
                     seed: int = GOLDEN_SEED) -> Path:
    """A deterministic synthetic golden set in cache_root/synthetic-<settings>/, drawn once then reused."""
    folder = Path(cache_root) / f"synthetic-s{seed}-n{per_class}-px{size}-{'-'.join(classes)}"
    marker = folder / MARKER_FILE
    wanted = {"classes": list(classes), "images_per_class": per_class, "size": size, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    generate(folder, list(classes), per_class, size, seed, progress=False)
    return folder


def smoke_image(classes: list[str], size: int = 128) -> bytes:
    """One synthetic JPEG of the first class (in memory), for schema checks."""
    name = classes[0] if classes[0] in DRAWERS else "cat"
    image, quality = draw_image(name, size, np.random.default_rng(SMOKE_SEED))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# --- scoring through the server ------------------------------------------------------------------------

Predict = Callable[[bytes], tuple[int, object]]  # image bytes -> (HTTP status, parsed JSON body or text)


def score(predict: Predict, items: list[LabelledImage], classes: list[str], version: str) -> Tally:
    """Send every golden image through `predict` and tally the answers of `version`."""
    tally = Tally()
    for item in items:
        status, body = predict(item.data)
        problems = check_prediction(status, body, classes, version)
        if problems:
            tally.fail(item.name, "; ".join(problems))
        else:
            tally.add(item.label, body["label"], version, item.name)
    return tally
