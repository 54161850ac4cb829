"""In-memory dataset over the prepare cache: decoded once, augmented per epoch with torchvision transforms."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm


def load_uint8(paths: list[str], desc: str = "load", progress: bool = True) -> list[torch.Tensor]:
    """Decode cached JPEGs into uint8 CHW tensors (the cache is small: short side = resize_size)."""
    tensors = []
    for path in tqdm(paths, desc=desc, unit="img", leave=False, disable=not progress):
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        tensors.append(torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous())
    return tensors


class CachedImages(Dataset):
    """(transformed image, class index) pairs from manifest rows."""

    def __init__(self, rows: list[dict], classes: list[str], transform, desc: str = "load"):
        self.images = load_uint8([row["cache"] for row in rows], desc=desc)
        self.targets = [classes.index(row["label"]) for row in rows]
        self.rows = rows
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.targets[index]
