"""training.synthetic: deterministic class-folder output that ingest reads, no colour shortcut."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from training.ingest import IngestReport, scan
from training.synthetic import MARKER_FILE, generate


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_count(tmp_path):
    assert generate(tmp_path / "out", ["cat", "dog"], 3, 64, seed=1, progress=False) == 6
    images = {k: v for k, v in files(tmp_path / "out").items() if not k.startswith(".")}
    assert sorted(images) == [f"{c}/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(3)]
    for relpath in images:
        with Image.open(tmp_path / "out" / relpath) as img:
            assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    generate(tmp_path / "a", ["cat", "dog"], 4, 80, seed=7, progress=False)
    generate(tmp_path / "b", ["cat", "dog"], 4, 80, seed=7, progress=False)
    generate(tmp_path / "c", ["cat", "dog"], 4, 80, seed=8, progress=False)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert sorted(a) == sorted(c)
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))
    assert len({v for k, v in a.items() if k.endswith(".jpg")}) == 8        # every image is different


def test_stale_files_are_removed(tmp_path):
    out = tmp_path / "out"
    generate(out, ["cat", "dog"], 5, 48, seed=1, progress=False)
    (out / "cat" / "leftover.jpg").write_bytes(b"x")
    generate(out, ["cat", "dog"], 2, 48, seed=1, progress=False)
    assert sorted(p.name for p in (out / "cat").iterdir()) == ["cat.0.jpg", "cat.1.jpg"]


def test_refuses_to_clear_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "photos"
    (mine / "cat").mkdir(parents=True)
    (mine / "cat" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ValueError, match="refusing to delete"):
        generate(mine, ["cat", "dog"], 2, 48, seed=1, progress=False)
    assert (mine / "cat" / "holiday.jpg").read_bytes() == b"precious"
    assert not (mine / MARKER_FILE).exists()


def test_unknown_class_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"'horse'.*data.source: path"):
        generate(tmp_path / "out", ["cat", "horse"], 2, 48, seed=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_ingest_reads_the_generated_set(tmp_path):
    generate(tmp_path / "out", ["cat", "dog"], 6, 64, seed=3, progress=False)
    report = IngestReport()
    rows = list(scan(tmp_path / "out", ["cat", "dog"], max_pixels=10**6, draft_size=None, report=report))
    assert [label for _, label, _, _ in rows] == ["cat"] * 6 + ["dog"] * 6
    assert report.to_dict()["skipped"] == {} and report.seen == 12       # the marker file is hidden


def test_colour_alone_does_not_tell_cats_from_dogs(tmp_path):
    """Per-image colour statistics must not separate the classes: the shapes have to be learnt."""
    generate(tmp_path / "out", ["cat", "dog"], 150, 64, seed=11, progress=False)
    features, labels = [], []
    for label, name in enumerate(("cat", "dog")):
        for path in sorted((tmp_path / "out" / name).glob("*.jpg")):
            pixels = np.asarray(Image.open(path), dtype=np.float32).reshape(-1, 3) / 255
            hist = np.concatenate([np.histogram(pixels[:, c], bins=8, range=(0, 1))[0] for c in range(3)])
            features.append(np.concatenate([pixels.mean(0), pixels.std(0), hist / len(pixels)]))
            labels.append(label)
    model = LogisticRegression(max_iter=2000)
    accuracy = cross_val_score(model, np.array(features), np.array(labels), cv=5).mean()
    assert accuracy < 0.7, f"colour statistics separate the classes ({accuracy:.2f} accuracy)"
