"""Image decoding and preprocessing: the one definition used by training, evaluation and serving.

Every number (input size, resize size, mean/std) comes from the model metadata
(`params.yaml` -> `model-meta.json` inside the `.mar`), never from constants here.
This module travels inside the TorchServe archive, so it imports only torch, torchvision, PIL and
the contract (catsdogs/contract.py, also in the archive).
"""
from __future__ import annotations

import io
import warnings

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2

from catsdogs.contract import MAX_IMAGE_PIXELS

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "MPO")


class ImageError(ValueError):
    """An input that is not a usable image. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS, draft_size: int | None = None,
                 max_bytes: int | None = None) -> Image.Image:
    """Bytes -> RGB PIL image with EXIF orientation applied (first frame of animations).

    `draft_size` lets JPEG decode at a reduced scale (DCT scaling) when the image is much larger
    than needed; the result is still at least `draft_size` on its short side.
    Raises ImageError with reason empty | too_large | not_an_image | unsupported_format |
    decompression_bomb | corrupt.
    """
    if not data:
        raise ImageError("empty", "empty input: no image bytes received")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError("too_large", f"input is {len(data)} bytes, above the limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in SUPPORTED_FORMATS:
                raise ImageError("unsupported_format",
                                 f"image format {img.format} is not supported; send one of "
                                 f"{', '.join(SUPPORTED_FORMATS[:-1])}")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError("decompression_bomb",
                                 f"image is {width}x{height} = {width * height} pixels, above the "
                                 f"limit of {max_pixels} pixels")
            if draft_size and img.format in ("JPEG", "MPO"):
                img.draft("RGB", (draft_size, draft_size))  # keeps short side >= draft_size
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decompression_bomb", f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not_an_image", "input is not a recognised image (JPEG, PNG, WebP, BMP or GIF)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt", f"image is truncated or corrupt: {exc}") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, ...) -> RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit / 32-bit greyscale: scale to 8 bits before converting.
        img = img.point(lambda v: v * (255.0 / 65535.0)).convert("L") if img.mode.startswith("I") \
            else img.convert("L")
    return img.convert("RGB")


def eval_transform(meta: dict) -> v2.Compose:
    """PIL image or uint8 tensor -> normalised float tensor [3, S, S]: eval_geometry then eval_normalize."""
    return v2.Compose([*eval_geometry(meta).transforms, *eval_normalize(meta).transforms])


def eval_geometry(meta: dict) -> v2.Compose:
    """PIL image or uint8 tensor -> uint8 tensor [3, S, S]: resize the short side, centre crop."""
    return v2.Compose([v2.ToImage(), v2.Resize(int(meta["resize_size"]), antialias=True),
                       v2.CenterCrop(int(meta["image_size"]))])


def eval_normalize(meta: dict) -> v2.Compose:
    """uint8 tensor [..., 3, S, S] -> float32 scaled to [0, 1], minus mean, over std (per channel). The OpenVINO
    engine runs this same arithmetic inside its compiled model (model.engines.openvino_model)."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean=list(meta["mean"]), std=list(meta["std"]))])


def train_transform(meta: dict, augment: dict) -> v2.Compose:
    """Training-time augmentation ending in the same normalisation as eval_transform."""
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(int(meta["image_size"]), scale=tuple(augment.get("crop_scale", (0.35, 1.0))),
                             antialias=True),
        v2.RandomHorizontalFlip(float(augment.get("hflip", 0.5))),
    ]
    if augment.get("rotation"):
        steps.append(v2.RandomRotation(float(augment["rotation"])))
    jitter = float(augment.get("color_jitter", 0.0))
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(jitter / 4, 0.5)))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(meta["mean"]), std=list(meta["std"]))]
    return v2.Compose(steps)


def cache_resize(img: Image.Image, resize_size: int) -> Image.Image:
    """Shrink so the short side equals resize_size (never enlarges): the prepare stage's cache."""
    width, height = img.size
    scale = resize_size / min(width, height)
    if scale >= 1:
        return img
    return img.resize((max(resize_size, round(width * scale)), max(resize_size, round(height * scale))),
                      Image.Resampling.BILINEAR, reducing_gap=3.0)
