"""Read a labelled cats/dogs image set from a folder or an archive, skipping what is unusable.

Accepted layouts (at any folder depth, in a folder or a .zip / .tar / .tar.gz / .tgz archive,
which is read in place: nothing is extracted to disk):
  - Kaggle Dogs vs Cats: the label is the file name's prefix, `train/cat.123.jpg`, `dog.45.jpg`
  - Microsoft PetImages: `PetImages/Cat/1.jpg`, `PetImages/Dog/2.jpg`
  - class folders: `cat/`, `cats/`, `Dogs/`, `train/cats/x.jpg` (any case, singular or plural)
A class folder wins over a file-name prefix. `scan()` yields the usable images in relpath order and
counts everything it skips (empty, not an image, corrupt or truncated, decompression bomb, unlabelled,
duplicate bytes) in an IngestReport. Hidden files and `__MACOSX` entries are ignored silently.
"""
from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from model.preprocess import ImageError, decode_image

LAYOUTS = ("Kaggle Dogs vs Cats (cat.1.jpg, dog.2.jpg), Microsoft PetImages (PetImages/Cat/*.jpg, "
           "PetImages/Dog/*.jpg) or class folders (cat/, cats/, Dog/, train/dogs/ ...)")
ARCHIVES = ".zip, .tar, .tar.gz or .tgz"
EXAMPLES_PER_REASON = 5
_PREFIX = re.compile(r"^([a-z]+)(?=[._\-\s(]|\d)")  # "cat" in cat.1.jpg, cat_1.jpg, cat1.jpg, Cat (1).jpg
# zipfile raises RuntimeError for encrypted and NotImplementedError for unsupported-compression members
_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error, RuntimeError,
                NotImplementedError)


@dataclass
class IngestReport:
    """What a scan saw, kept and skipped (by reason), with a few example relpaths per reason."""

    seen: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, relpath: str) -> None:
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(relpath)

    def to_dict(self) -> dict:
        return {"seen": self.seen, "kept": self.kept, "skipped": dict(sorted(self.skipped.items())),
                "examples": {reason: list(paths) for reason, paths in sorted(self.examples.items())}}

    def summary(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()))
        return (f"seen {self.seen} files, kept {self.kept}, skipped {sum(self.skipped.values())}"
                + (f" ({reasons})" if reasons else ""))


def label_from_path(relpath: str, classes: list[str]) -> str | None:
    """The class a file belongs to, from its nearest class-named folder, else its file-name prefix."""
    parts = [p for p in PurePosixPath(relpath.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts:
        return None
    for folder in reversed(parts[:-1]):
        label = _match(folder, classes)
        if label:
            return label
    prefix = _PREFIX.match(parts[-1].lower())
    return _match(prefix.group(1), classes) if prefix else None


def _match(word: str, classes: list[str]) -> str | None:
    forms = _forms(word)
    for name in classes:
        if forms & _forms(name):
            return name
    return None


def _forms(word: str) -> set[str]:
    """A word in lower case with its plural/singular variants: cat ~ cats, box ~ boxes."""
    word = word.lower()
    forms = {word, word + "s", word + "es"}
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s"):
        forms.add(word[:-1])
    return forms


def scan(path: Path, classes: list[str], *, max_pixels: int, draft_size: int | None, report: IngestReport,
         max_bytes: int | None = None) -> Iterator[tuple[str, str, str, Image.Image]]:
    """Yield (relpath, label, sha256 of the file bytes, RGB image) for every usable image, sorted by relpath.

    Skipped files are counted in `report` (reasons: ImageError.reason, "unlabelled", "duplicate";
    the first file with given bytes wins). Raises FileNotFoundError for a missing path and ValueError
    when it holds no usable image or is neither a folder nor a supported archive.
    """
    path = Path(path)
    kept_hashes: set[str] = set()
    for relpath, size, read in entries(path):
        report.seen += 1
        label = label_from_path(relpath, classes)
        if label is None:
            report.skip("unlabelled", relpath)
            continue
        if size == 0:
            report.skip("empty", relpath)
            continue
        if max_bytes is not None and size > max_bytes:
            report.skip("too_large", relpath)
            continue
        try:
            data = read()
        except _READ_ERRORS:
            report.skip("corrupt", relpath)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in kept_hashes:
            report.skip("duplicate", relpath)
            continue
        try:
            img = decode_image(data, max_pixels=max_pixels, draft_size=draft_size, max_bytes=max_bytes)
        except ImageError as exc:
            report.skip(exc.reason, relpath)
            continue
        except Exception:  # noqa: BLE001 - PIL plugins raise assorted errors (struct.error, IndexError) on bad files
            report.skip("corrupt", relpath)
            continue
        kept_hashes.add(digest)
        report.kept += 1
        yield relpath, label, digest, img
    if not kept_hashes:
        raise ValueError(f"{path}: no usable {'/'.join(classes)} images ({report.summary()}). Accepted layouts: "
                         f"{LAYOUTS}, in a folder or a {ARCHIVES} archive; class names come from data.classes "
                         f"in params.yaml")


# --------------------------------------------------------------- sources ----
# Each source yields (relpath, size in bytes, read() -> bytes) in relpath order, hidden entries left out.

Entry = tuple[str, int, Callable[[], bytes]]


@dataclass(frozen=True)
class LabelledImage:
    """One image file's bytes with the label its path gives (what load tests and live evaluation send)."""

    name: str            # path relative to the folder or archive (what label_from_path read)
    label: str | None    # None: the path names no class
    data: bytes


def labelled(path: Path | str, classes: list[str]) -> Iterator[tuple[str, str | None, Callable[[], bytes]]]:
    """(relpath, label or None, read() -> bytes) of every file under a folder or in an archive, in relpath order.

    The one labelled-image reader of the project: the label comes from the path as label_from_path reads it;
    callers (deploy golden sets, load tests, live evaluation) decide what to do with unlabelled files.
    """
    for relpath, _size, read in entries(Path(path)):
        yield relpath, label_from_path(relpath, list(classes)), read


def entries(path: Path) -> Iterator[Entry]:
    """(relpath, size in bytes, read() -> bytes) of every non-hidden file of a folder or archive, sorted."""
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist: set data.path in params.yaml to a folder or "
                                f"a {ARCHIVES} archive of cat and dog images, or use data.source: synthetic")
    if path.is_dir():
        return _dir_entries(path)
    if zipfile.is_zipfile(path):
        return _zip_entries(path)
    if tarfile.is_tarfile(path):
        return _tar_entries(path)
    raise ValueError(f"{path} is neither a folder nor a {ARCHIVES} archive; accepted layouts: {LAYOUTS}")


def _hidden(relpath: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in relpath.split("/") if part)


def _dir_entries(root: Path) -> Iterator[Entry]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for name in files:
            full = Path(folder) / name
            relpath = full.relative_to(root).as_posix()
            if not _hidden(relpath) and full.is_file():
                found.append((relpath, full))
    for relpath, full in sorted(found):
        try:
            size = full.stat().st_size
        except OSError:
            size = -1  # vanished or unreadable: read() raises and scan counts it as corrupt
        yield relpath, size, full.read_bytes


def _zip_entries(path: Path) -> Iterator[Entry]:
    with zipfile.ZipFile(path) as archive:
        members = {}
        for info in archive.infolist():
            relpath = _clean(info.filename)
            if not info.is_dir() and relpath and not _hidden(relpath):
                members.setdefault(relpath, info)
        for relpath in sorted(members):
            info = members[relpath]
            yield relpath, info.file_size, lambda info=info: archive.read(info)


def _tar_entries(path: Path) -> Iterator[Entry]:
    """Uncompressed tars are read by seeking; compressed ones in one stream, buffering out-of-order members.

    Sorting needs the member list first, so a compressed tar is decompressed twice (list, then read);
    members that arrive before their turn in relpath order are held in memory until it comes, so a
    tar written in sorted order (GNU tar --sort=name) streams with no buffering.
    """
    with tarfile.open(path, "r:*") as archive:
        names = {}
        try:
            for member in archive:
                relpath = _clean(member.name)
                if member.isfile() and relpath and not _hidden(relpath):
                    names.setdefault(relpath, member)
        except _READ_ERRORS:
            pass  # a truncated archive: use the members listed before the damage
        order = sorted(names)
        if not _compressed(path):
            for relpath in order:
                yield relpath, names[relpath].size, lambda m=names[relpath]: _read_member(archive, m)
            return
    yield from _tar_stream(path, names, order)


def _tar_stream(path: Path, names: dict[str, tarfile.TarInfo], order: list[str]) -> Iterator[Entry]:
    pending: dict[str, bytes | Exception] = {}
    position = 0

    def ready() -> Iterator[Entry]:
        nonlocal position
        while position < len(order) and order[position] in pending:
            relpath = order[position]
            value = pending.pop(relpath)
            position += 1
            yield relpath, names[relpath].size, lambda value=value: _unwrap(value)

    with tarfile.open(path, "r|*") as archive:
        try:
            for member in archive:
                relpath = _clean(member.name)
                if relpath not in names or relpath in pending or names[relpath].offset != member.offset:
                    continue
                try:
                    pending[relpath] = _read_member(archive, member)
                except _READ_ERRORS as exc:
                    pending[relpath] = exc
                    yield from ready()
                    break
                yield from ready()
        except _READ_ERRORS:
            pass
    for relpath in order[position:]:          # listed but unreadable: reported as corrupt by scan
        pending.setdefault(relpath, OSError(f"{relpath}: archive ended before this member"))
    yield from ready()


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    if handle is None:
        raise OSError(f"{member.name} is not a regular file")
    data = handle.read()
    if len(data) != member.size:
        raise OSError(f"{member.name}: expected {member.size} bytes, read {len(data)}")
    return data


def _unwrap(value: bytes | Exception) -> bytes:
    if isinstance(value, Exception):
        raise value
    return value


def _compressed(path: Path) -> bool:
    with open(path, "rb") as handle:
        magic = handle.read(6)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00"


def _clean(name: str) -> str:
    """Archive member name -> relpath: forward slashes, no leading ./ or /."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)
