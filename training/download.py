"""Download the public cats/dogs data sets (needs internet access; everything else works offline).

  petimages  : Microsoft's PetImages zip (Kaggle Cats and Dogs, ~800 MB, 25k photos), kept as the zip;
               `training.ingest` reads it in place.
  oxford-pet : Oxford-IIIT Pet via torchvision (binary-category labels), written as class folders.

Without internet access both raise DownloadError, saying what failed and how to get the data by hand.
"""
from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

PETIMAGES_URL = ("https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
                 "kagglecatsanddogs_5340.zip")
PETIMAGES_FILE = "kagglecatsanddogs_5340.zip"
OXFORD_PET_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
OXFORD_RAW_DIR = ".torchvision"        # hidden, so ingest ignores torchvision's own copy
OXFORD_DONE = ".complete"
TIMEOUT_S = 60
CHUNK = 1 << 20
NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, socket.gaierror, ConnectionError, TimeoutError, OSError)


class DownloadError(RuntimeError):
    """A data set could not be downloaded; the message says what to do instead."""


def _offline_help(what: str, url: str, cause: BaseException, by_hand: str) -> DownloadError:
    return DownloadError(
        f"could not download {what} from {url}: {type(cause).__name__}: {cause}. This machine appears to have "
        f"no internet access (or the server is unreachable). {by_hand} (or use data.source: synthetic to train "
        f"offline).")


def download_petimages(dest: Path) -> Path:
    """Fetch the PetImages zip to dest (a .zip path, or a folder to hold kagglecatsanddogs_5340.zip); return its path.

    Skips the download when a valid zip is already there. Writes to <zip>.part and renames when complete.
    """
    dest = Path(dest)
    target = dest if dest.suffix.lower() == ".zip" else dest / PETIMAGES_FILE
    if target.is_file() and zipfile.is_zipfile(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        request = urllib.request.Request(PETIMAGES_URL, headers={"User-Agent": "catsdogs-download"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(part, "wb") as out, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                     desc=PETIMAGES_FILE) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    except NETWORK_ERRORS as exc:
        part.unlink(missing_ok=True)
        raise _offline_help("the Microsoft PetImages zip", PETIMAGES_URL, exc,
                            f"Download it by hand to {target}, then set data.source: path and "
                            f"data.path: {target} in params.yaml") from exc
    if not zipfile.is_zipfile(part):
        part.unlink(missing_ok=True)
        raise DownloadError(f"{PETIMAGES_URL} did not return a zip file (a proxy or error page?). Download it by "
                            f"hand to {target}, then set data.source: path and data.path: {target} in params.yaml")
    os.replace(part, target)
    return target


def download_oxford_pet(dest: Path) -> Path:
    """Fetch Oxford-IIIT Pet (trainval + test) with torchvision and write it as dest/cat/*.jpg, dest/dog/*.jpg.

    Labels come from torchvision's "binary-category" target, whose classes are ["Cat", "Dog"] (0 = cat,
    1 = dog). Original JPEG bytes are copied, not re-encoded. Skips all work when dest is already complete;
    torchvision's download and extraction live in dest/.torchvision (ignored by ingest).
    """
    from torchvision.datasets import OxfordIIITPet

    dest = Path(dest)
    if (dest / OXFORD_DONE).exists():
        return dest
    raw = dest / OXFORD_RAW_DIR
    splits = []
    try:
        for split in ("trainval", "test"):
            splits.append(OxfordIIITPet(root=raw, split=split, target_types="binary-category", download=True))
    except Exception as exc:  # torchvision raises URLError, RuntimeError, md5 mismatch, ...
        raise _offline_help(
            "the Oxford-IIIT Pet data set (torchvision)", OXFORD_PET_URL, exc,
            f"Download images.tar.gz and annotations.tar.gz from {OXFORD_PET_URL} by hand, extract both into "
            f"{raw / 'oxford-iiit-pet'} and run this again (it then needs no network) to get {dest}/cat and "
            f"{dest}/dog; or put any cat/dog photos at a path and set data.source: path and data.path in "
            f"params.yaml") from exc
    for name in ("cat", "dog"):
        shutil.rmtree(dest / name, ignore_errors=True)
        (dest / name).mkdir(parents=True)
    for dataset in splits:
        names = [c.lower() for c in dataset.bin_classes]          # ["cat", "dog"]
        # torchvision keeps the image paths and binary labels in these attributes (see its __getitem__)
        for image_path, label in zip(dataset._images, dataset._bin_labels, strict=True):
            shutil.copyfile(image_path, dest / names[label] / Path(image_path).name)
    (dest / OXFORD_DONE).write_text("written by training.download.download_oxford_pet\n")
    return dest
