"""What a TorchServe archive (.mar) is: model name and version from its manifest, metadata from model-meta.json.

torch-model-archiver writes MAR-INF/MANIFEST.json ({"model": {"modelName", "modelVersion", ...}});
`python -m serving archive` sets modelVersion to model-meta.json's "version" and packs model-meta.json
at the archive root. Both are read straight from the zip, nothing is unpacked.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from catsdogs.contract import META_FILE
from model.weights import sha256_of

MANIFEST = "MAR-INF/MANIFEST.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ArchiveError(ValueError):
    """The file is not a usable model archive; the message says what is missing."""


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    model_name: str
    version: str
    meta: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return classes(self.meta)


def classes(meta: dict) -> list[str]:
    """The classes a model-meta.json names (cat, dog when it names none)."""
    return list(meta.get("classes") or ["cat", "dog"])


def read_archive(path: Path | str) -> ArchiveInfo:
    """Model name, version (manifest modelVersion) and model-meta.json of a .mar, read from the zip."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path} not found; build it with `make archive` (python -m serving archive)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if MANIFEST not in names:
                raise ArchiveError(f"{path} has no {MANIFEST}: not a torch-model-archiver archive")
            manifest = json.loads(zf.read(MANIFEST))
            meta = json.loads(zf.read(META_FILE)) if META_FILE in names else {}
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{path} is not a .mar (zip) archive: {exc}") from exc
    model = manifest.get("model") or {}
    version = model.get("modelVersion")
    name = model.get("modelName")
    if not version or not name:
        raise ArchiveError(f"{path}: {MANIFEST} lacks model.modelName or model.modelVersion "
                           f"(build the archive with `python -m serving archive`)")
    if meta and str(meta.get("version", version)) != str(version):
        raise ArchiveError(f"{path}: manifest version {version!r} differs from {META_FILE} version "
                           f"{meta.get('version')!r}; rebuild the archive from one export")
    return ArchiveInfo(path=path, model_name=str(name), version=str(version), meta=meta)


def store_file_name(model_name: str, version: str) -> str:
    """The version-specific archive name in the model store: catsdogs-3.1a2b3c4.mar."""
    return f"{_UNSAFE.sub('_', model_name)}-{_UNSAFE.sub('_', version)}.mar"


def place_in_store(mar: Path, store: Path, file_name: str) -> tuple[Path, bool]:
    """Copy `mar` to store/file_name atomically; (path, copied). Not copied when the same bytes are there."""
    store = Path(store)
    if not store.is_dir():
        raise ArchiveError(f"model store {store} is not a directory; pass the server's model_store with "
                           f"--model-store (or run against the run dir whose serve.json names it)")
    dest = store / file_name
    if dest.exists() and (dest.resolve() == Path(mar).resolve() or sha256_of(dest) == sha256_of(mar)):
        return dest, False
    partial = store / f".{file_name}.partial"
    shutil.copyfile(mar, partial)
    os.replace(partial, dest)
    return dest, True
