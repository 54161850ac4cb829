"""training.ingest: every layout from a folder and from archives, skip reasons, order, real data."""
from __future__ import annotations

import hashlib
import io
import itertools
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from catsdogs.contract import MAX_IMAGE_PIXELS
from training.ingest import IngestReport, label_from_path, scan

CLASSES = ["cat", "dog"]
_counter = itertools.count()


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (24, 20)) -> bytes:
    """A small image whose pixels differ from every other call (so no accidental duplicates)."""
    rng = np.random.default_rng(next(_counter))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def write(files: dict[str, bytes], container: str, tmp_path: Path) -> Path:
    """Write {relpath: bytes} as a folder or an archive; archive members go in reverse-sorted order."""
    items = sorted(files.items(), reverse=True)
    if container == "dir":
        root = tmp_path / "data"
        for relpath, data in items:
            (root / relpath).parent.mkdir(parents=True, exist_ok=True)
            (root / relpath).write_bytes(data)
        return root
    if container == "zip":
        path = tmp_path / "data.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for relpath, data in items:
                archive.writestr(relpath, data)
        return path
    path = tmp_path / {"tar": "data.tar", "tar.gz": "data.tar.gz", "tgz": "data.tgz"}[container]
    with tarfile.open(path, "w:gz" if container != "tar" else "w") as archive:
        for relpath, data in items:
            info = tarfile.TarInfo(relpath)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def run_scan(path: Path, **kwargs) -> tuple[list[tuple[str, str, str, Image.Image]], IngestReport]:
    report = IngestReport()
    options = {"max_pixels": 40_000_000, "draft_size": None} | kwargs
    return list(scan(path, CLASSES, report=report, **options)), report


LAYOUTS = {
    "kaggle": {"train/cat.1.jpg": "cat", "train/cat.10.jpg": "cat", "train/dog.2.jpg": "dog",
               "dog.7.jpg": "dog", "test1/5.jpg": None},
    "petimages": {"PetImages/Cat/0.jpg": "cat", "PetImages/Cat/1.jpg": "cat", "PetImages/Dog/0.jpg": "dog",
                  "PetImages/Dog/12.png": "dog", "readme[1].txt": None},
    "class-folders": {"train/cats/a.jpg": "cat", "train/Dogs/b.png": "dog", "val/Cat/c.jpg": "cat",
                      "val/DOG/d.webp": "dog", "val/other/e.jpg": None},
}
CONTAINERS = ["dir", "zip", "tar", "tar.gz", "tgz"]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_from_every_container(layout, container, tmp_path):
    expected = LAYOUTS[layout]
    files = {}
    for relpath in expected:
        suffix = Path(relpath).suffix
        files[relpath] = (b"just text\n" if suffix == ".txt"
                          else image_bytes({".png": "PNG", ".webp": "WEBP"}.get(suffix, "JPEG")))
    rows, report = run_scan(write(files, container, tmp_path))

    labelled = {path: label for path, label in expected.items() if label}
    assert [(relpath, label) for relpath, label, _, _ in rows] == sorted(labelled.items())
    assert report.seen == len(expected) and report.kept == len(labelled)
    assert report.skipped == Counter({"unlabelled": len(expected) - len(labelled)})
    for relpath, _, digest, img in rows:
        assert img.mode == "RGB" and img.size == (24, 20)
        assert digest == hashlib.sha256(files[relpath]).hexdigest()


@pytest.mark.parametrize("relpath, label", [
    ("cat.1.jpg", "cat"),
    ("train/dog.4999.jpg", "dog"),
    ("Cat (3).jpg", "cat"),
    ("dog_12.jpeg", "dog"),
    ("cat1.png", "cat"),
    ("PetImages/Cat/1.jpg", "cat"),
    ("PetImages/Dog/1.jpg", "dog"),
    ("data/train/CATS/x.jpg", "cat"),
    ("dogs/x.jpg", "dog"),
    ("a\\b\\Dogs\\x.jpg", "dog"),                 # Windows separators in a zip made on Windows
    ("dogs/cat.5.jpg", "dog"),                    # a class folder wins over the file-name prefix
    ("cats/dogs/x.jpg", "dog"),                   # the nearest class folder wins
    ("catalog.jpg", None),                        # a prefix must be the whole word
    ("concat.1.jpg", None),
    ("test1/12.jpg", None),
    ("dogfood/x.jpg", None),
    ("Cat", None),
    ("", None),
])
def test_label_from_path(relpath, label):
    assert label_from_path(relpath, CLASSES) == label


def test_label_from_path_uses_the_configured_names():
    assert label_from_path("train/Cats/x.jpg", ["cats", "dogs"]) == "cats"
    assert label_from_path("dog.1.jpg", ["cats", "dogs"]) == "dogs"
    assert label_from_path("foxes/x.jpg", ["fox", "dog"]) == "fox"
    assert label_from_path("horse.1.jpg", CLASSES) is None


def bad_files() -> tuple[dict[str, bytes], Counter]:
    good = image_bytes()
    jpeg = image_bytes(size=(48, 48))
    files = {
        "PetImages/Cat/0.jpg": good,
        "PetImages/Cat/1.jpg": b"",                               # zero bytes
        "PetImages/Cat/2.jpg": jpeg[: len(jpeg) // 2],            # truncated JPEG
        "PetImages/Cat/3.jpg": jpeg[:-2],                         # only the end-of-image marker missing
        "PetImages/Cat/4.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 200,   # JPEG magic, nothing PIL can read
        "PetImages/Cat/Thumbs.db": b"\xd0\xcf\x11\xe0 not an image",
        "PetImages/Dog/0.jpg": image_bytes(size=(300, 300)),      # above max_pixels below
        "PetImages/Dog/1.jpg": image_bytes(),
        "PetImages/Dog/2.jpg": good,                              # same bytes as Cat/0.jpg
        "PetImages/Dog/3.tif": _tiff(),                           # an image, but not a supported format
        "notes.txt": b"hello",                                    # no label at all
        ".DS_Store": b"\x00\x00",                                 # hidden: ignored silently
        "PetImages/Dog/._1.jpg": b"\x00\x05\x16\x07",
        "__MACOSX/PetImages/Cat/._0.jpg": b"\x00\x05\x16\x07",
    }
    expected = Counter({"empty": 1, "corrupt": 2, "not_an_image": 2, "decompression_bomb": 1,
                        "duplicate": 1, "unsupported_format": 1, "unlabelled": 1})
    return files, expected


def _tiff() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, "TIFF")
    return out.getvalue()


@pytest.mark.parametrize("container", CONTAINERS)
def test_bad_files_are_skipped_and_counted_by_reason(container, tmp_path):
    files, expected = bad_files()
    rows, report = run_scan(write(files, container, tmp_path), max_pixels=200 * 200)

    assert [(relpath, label) for relpath, label, _, _ in rows] == [("PetImages/Cat/0.jpg", "cat"),
                                                                 ("PetImages/Dog/1.jpg", "dog")]
    assert report.skipped == expected
    assert report.seen == 11 and report.kept == 2          # the three hidden entries are not even seen
    assert report.examples["corrupt"] == ["PetImages/Cat/2.jpg", "PetImages/Cat/3.jpg"]   # truncated: rejected
    assert report.examples["not_an_image"] == ["PetImages/Cat/4.jpg", "PetImages/Cat/Thumbs.db"]
    assert report.examples["duplicate"] == ["PetImages/Dog/2.jpg"]   # first in relpath order wins
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_order_is_sorted_and_repeatable_whatever_the_archive_order(tmp_path):
    names = [f"train/{c}.{i}.jpg" for c in CLASSES for i in range(30)]
    files = {name: image_bytes() for name in names}
    shuffled = list(np.random.default_rng(3).permutation(names))
    path = tmp_path / "shuffled.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name in shuffled:
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            archive.addfile(info, io.BytesIO(files[name]))
    first = [(r, label, digest) for r, label, digest, _ in run_scan(path)[0]]
    second = [(r, label, digest) for r, label, digest, _ in run_scan(path)[0]]
    from_dir = [(r, label, digest) for r, label, digest, _ in run_scan(write(files, "dir", tmp_path))[0]]
    assert [r for r, _, _ in first] == sorted(names)
    assert first == second == from_dir


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_truncated_archive_keeps_what_it_can(suffix, mode, tmp_path):
    path = tmp_path / f"data{suffix}"
    with tarfile.open(path, mode) as archive:
        for i in range(20):
            data = image_bytes(size=(64, 64))
            info = tarfile.TarInfo(f"cats/{i:02d}.jpg")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 2 // 3])
    rows, report = run_scan(path)
    assert 0 < report.kept < 20
    assert [r for r, *_ in rows] == [f"cats/{i:02d}.jpg" for i in range(report.kept)]
    assert report.kept + report.skipped["corrupt"] == report.seen


def test_corrupt_zip_member_is_skipped(tmp_path):
    path = write({"cats/a.jpg": image_bytes(), "cats/b.jpg": image_bytes()}, "zip", tmp_path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("cats/b.jpg")
    start = info.header_offset + 30 + len(info.filename)     # local header is 30 bytes + name
    raw[start + 100] ^= 0xFF                                  # flip a byte: CRC check fails
    path.write_bytes(bytes(raw))
    rows, report = run_scan(path)
    assert [r for r, *_ in rows] == ["cats/a.jpg"]
    assert report.skipped == Counter({"corrupt": 1})


def test_missing_path_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path"):
        run_scan(tmp_path / "nowhere")


@pytest.mark.parametrize("container", ["dir", "zip", "tar.gz"])
def test_no_usable_images_names_the_accepted_layouts(container, tmp_path):
    path = write({"photos/1.jpg": image_bytes(), "cats/broken.jpg": b"xx"}, container, tmp_path)
    with pytest.raises(ValueError, match="PetImages") as info:
        run_scan(path)
    assert "unlabelled 1" in str(info.value) and "not_an_image 1" in str(info.value)


def test_a_file_that_is_no_archive_is_rejected(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"\.zip, \.tar"):
        run_scan(path)


def test_draft_size_decodes_large_jpegs_smaller(tmp_path):
    path = write({"cats/big.jpg": image_bytes(size=(800, 600))}, "dir", tmp_path)
    (_, _, _, img), = run_scan(path, draft_size=110)[0]
    assert img.size == (200, 150)                            # JPEG DCT scaling by 1/4, short side >= 110


def test_report_summary_and_dict():
    report = IngestReport(seen=9, kept=2)
    for i in range(7):
        report.skip("corrupt", f"c{i}.jpg")
    report.skip("duplicate", "d.jpg")
    assert report.summary() == "seen 9 files, kept 2, skipped 8 (corrupt 7, duplicate 1)"
    assert report.to_dict() == {"seen": 9, "kept": 2, "skipped": {"corrupt": 7, "duplicate": 1},
                                "examples": {"corrupt": [f"c{i}.jpg" for i in range(5)], "duplicate": ["d.jpg"]}}
    assert IngestReport().summary() == "seen 0 files, kept 0, skipped 0"


@pytest.mark.realdata
def test_real_kaggle_sample(tmp_path, shared_tar):
    """Every 50th member of the real tar (200 photos, both classes), copied into a tar in tmp_path."""
    small = tmp_path / "sample.tar"
    with tarfile.open(shared_tar) as source, tarfile.open(small, "w") as out:
        for member in itertools.islice((m for m in source if m.isfile()), 0, None, 50):
            out.addfile(member, source.extractfile(member))
    rows, report = run_scan(small, draft_size=110)
    assert report.seen == 200 and report.kept == len(rows) >= 195
    assert {label for _, label, _, _ in rows} == {"cat", "dog"}
    for relpath, label, _, img in rows:
        assert Path(relpath).name.startswith(label + ".")
        assert img.mode == "RGB" and min(img.size) >= 110


@pytest.mark.realdata
@pytest.mark.slow
def test_real_kaggle_tar_read_in_place(shared_tar):
    rows = 0
    labels = Counter()
    report = IngestReport()
    for _, label, _, _ in scan(shared_tar, CLASSES, max_pixels=MAX_IMAGE_PIXELS, draft_size=110, report=report):
        rows += 1
        labels[label] += 1
    assert report.seen == 10_000
    assert rows == report.kept == 10_000 - sum(report.skipped.values())
    assert set(report.skipped) <= {"duplicate", "corrupt"} and sum(report.skipped.values()) < 20
    assert abs(labels["cat"] - labels["dog"]) < 20


def test_shared_photos_check_tells_a_usable_set_from_a_broken_one(tmp_path):
    """The shared_tar fixture fails (does not skip) on what this says is unusable."""
    from tests.conftest import check_shared_photos, image_bytes

    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tar:
        for name in ("cat.1.jpg", "dog.1.jpg"):
            data = image_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert check_shared_photos(good) is None
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar at all")
    assert "ValueError" in check_shared_photos(broken)
    unlabelled = tmp_path / "photos"
    unlabelled.mkdir()
    (unlabelled / "IMG_1.jpg").write_bytes(image_bytes())
    assert "no file" in check_shared_photos(unlabelled)
    (unlabelled / "cat.2.jpg").write_bytes(b"garbage")
    assert check_shared_photos(unlabelled) is not None  # labelled but not an image
