"""The one preprocessing definition: decoding of every format/mode and the transforms built from metadata."""
import io

import pytest
import torch
from PIL import Image

from model.preprocess import (
    ImageError,
    cache_resize,
    decode_image,
    eval_transform,
    to_rgb,
    train_transform,
)
from tests.conftest import image_bytes

META = {"image_size": 32, "resize_size": 36, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_decodes_every_supported_format_to_rgb(fmt):
    img = decode_image(image_bytes(fmt=fmt))
    assert img.mode == "RGB" and img.size == (64, 48)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F"])
def test_any_mode_becomes_rgb(mode):
    img = Image.new("RGB", (8, 8), (10, 200, 30)).convert(mode)
    assert to_rgb(img).mode == "RGB"


def test_transparent_pixels_are_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (20, 40)


def test_gif_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    r, g, _ = decode_image(buffer.getvalue()).getpixel((5, 5))
    assert r > 200 and g < 50


def test_jpeg_draft_decodes_large_photos_smaller_but_not_below_draft_size():
    data = image_bytes(size=(1600, 1200))
    img = decode_image(data, draft_size=150)
    assert min(img.size) >= 150 and img.size[0] < 1600


@pytest.mark.parametrize("data, kwargs, reason", [
    (b"", {}, "empty"),
    (b"definitely not an image", {}, "not_an_image"),
    (image_bytes()[:300], {}, "corrupt"),
    (image_bytes(fmt="TIFF"), {}, "unsupported_format"),
    (image_bytes(size=(400, 400)), {"max_pixels": 10_000}, "decompression_bomb"),
    (image_bytes(), {"max_bytes": 10}, "too_large"),
])
def test_bad_inputs_raise_image_error_with_reason(data, kwargs, reason):
    with pytest.raises(ImageError) as info:
        decode_image(data, **kwargs)
    assert info.value.reason == reason and str(info.value)


def test_eval_transform_shape_and_normalisation_come_from_metadata():
    tensor = eval_transform(META)(Image.new("RGB", (80, 50), (255, 255, 255)))
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.full_like(tensor, (1.0 - 0.5) / 0.25))


def test_eval_transform_same_for_pil_and_uint8_tensor():
    img = Image.effect_mandelbrot((60, 45), (-2, -1.5, 1, 1.5), 50).convert("RGB")
    tensor = torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)
    assert torch.allclose(eval_transform(META)(img), eval_transform(META)(tensor), atol=1e-5)


def test_train_transform_output_matches_eval_geometry():
    out = train_transform(META, {"crop_scale": [0.5, 1.0], "hflip": 0.5, "color_jitter": 0.2, "rotation": 5})(
        Image.new("RGB", (50, 70), (10, 20, 30)))
    assert out.shape == (3, 32, 32)


def test_cache_resize_shrinks_short_side_and_never_enlarges():
    assert min(cache_resize(Image.new("RGB", (300, 200)), 36).size) == 36
    assert cache_resize(Image.new("RGB", (30, 20)), 36).size == (30, 20)
