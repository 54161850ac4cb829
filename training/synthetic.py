"""Synthetic cartoon cats and dogs: the offline default data set (`data.source: synthetic`).

`generate()` draws `images_per_class` JPEGs per class into the class-folder layout
`out_dir/<class>/<class>.<i>.jpg`, which `training.ingest` reads like any other data set.

The classes differ only in the features that tell real cats from dogs:
  cat: pointed triangular ears, almond eyes with slit pupils, small nose, whiskers;
  dog: floppy rounded ears hanging beside the face, a long muzzle with a big nose, round eyes,
       sometimes a tongue.
Everything else is drawn from the same distributions for both classes: fur, eye and nose colours
(one shared palette, so colour is no shortcut), background gradient and clutter, head position,
scale, rotation, body or no body, JPEG quality. Each image has its own random stream seeded by
(seed, class name, index), so the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

MARKER_FILE = ".synthetic.json"  # hidden: ingest ignores it; proves a folder is ours to clear

# Shared palettes: both classes draw from the same lists.
FUR = [(214, 130, 50), (235, 215, 170), (35, 32, 30), (240, 238, 232), (128, 128, 130), (80, 80, 85),
       (120, 75, 40), (190, 150, 100), (218, 170, 80), (90, 55, 35), (160, 80, 40), (185, 185, 190)]
EYES = [(90, 170, 60), (220, 200, 50), (210, 140, 40), (110, 65, 30), (80, 140, 210), (150, 120, 50),
        (45, 35, 28)]
NOSES = [(230, 140, 150), (40, 30, 30), (110, 70, 55), (200, 110, 110)]
TONGUE = (232, 110, 130)
SUPERSAMPLE = 2  # draw at 2x and downsample: smooth (antialiased) edges


def generate(out_dir: Path, classes: list[str], images_per_class: int, size: int, seed: int,
             progress: bool = True) -> int:
    """Write images_per_class JPEGs of size x size per class to out_dir/<class>/; return the count.

    out_dir is cleared first, but only when it is empty or was written by this function (it holds
    MARKER_FILE): a folder of your own photos is never deleted.
    """
    unknown = [c for c in classes if c not in DRAWERS]
    if unknown:
        raise ValueError(f"synthetic data can only draw classes {sorted(DRAWERS)}, not {unknown}; set "
                         f"data.classes to those or use data.source: path with your own images")
    if images_per_class < 1 or size < 32:
        raise ValueError(f"need images_per_class >= 1 and size >= 32, got {images_per_class} and {size}")
    out_dir = Path(out_dir)
    _clear(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"classes": list(classes), "images_per_class": images_per_class, "size": size, "seed": seed}
    (out_dir / MARKER_FILE).write_text(json.dumps(settings, sort_keys=True) + "\n")
    count = 0
    with tqdm(total=len(classes) * images_per_class, desc="synthesize", unit="img", disable=not progress) as bar:
        for name in classes:
            (out_dir / name).mkdir()
            for i in range(images_per_class):
                rng = np.random.default_rng([seed, zlib.crc32(name.encode()), i])
                img, quality = draw_image(name, size, rng)
                img.save(out_dir / name / f"{name}.{i}.jpg", "JPEG", quality=quality)
                count += 1
                bar.update()
    return count


def _clear(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; data.path for synthetic data must be a folder")
    if not (out_dir / MARKER_FILE).exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty and was not written by the synthetic generator "
                         f"(no {MARKER_FILE}); refusing to delete it. Point data.path at a new folder "
                         f"or empty this one")
    for child in out_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def draw_image(name: str, size: int, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """One random scene with one animal of class `name`: (RGB image size x size, JPEG quality)."""
    side = size * SUPERSAMPLE
    canvas = _background(side, rng)
    _clutter(ImageDraw.Draw(canvas), side, rng, int(rng.integers(2, 9)))

    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    with_body = rng.random() < 0.45
    r = side * (rng.uniform(0.12, 0.19) if with_body else rng.uniform(0.15, 0.25))   # head radius: the scale
    cx = rng.uniform(r * 1.2, side - r * 1.2)
    cy = rng.uniform(r * 1.6, side - r * (2.2 if with_body else 1.3))   # a body may run off the bottom
    fur = _jitter(FUR[rng.integers(len(FUR))], rng)
    second = _jitter(FUR[rng.integers(len(FUR))], rng) if rng.random() < 0.6 else _mix(fur, (255, 255, 255), 0.5)
    look = {"fur": fur, "second": second, "line": _mix(fur, (0, 0, 0), rng.uniform(0.55, 0.85)),
            "width": max(2, round(r * rng.uniform(0.04, 0.07))),
            "eye": _jitter(EYES[rng.integers(len(EYES))], rng), "nose": NOSES[rng.integers(len(NOSES))]}
    if with_body:
        _body(draw, cx, cy, r, look, rng)
    DRAWERS[name](draw, cx, cy, r, look, rng)
    angle = rng.uniform(-25, 25)
    layer = layer.rotate(angle, resample=Image.Resampling.BILINEAR, center=(cx, cy))
    if rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas.alpha_composite(layer)
    if rng.random() < 0.15:                                # something in front of the animal
        _clutter(ImageDraw.Draw(canvas), side, rng, 1)

    img = canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, rng.uniform(0, 8), (size, size, 1)).astype(np.int16)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return img, int(rng.integers(75, 96))


# ---------------------------------------------------------------- scene ----

def _background(side: int, rng: np.random.Generator) -> Image.Image:
    a = rng.integers(0, 256, 3)
    b = rng.integers(0, 256, 3) if rng.random() < 0.7 else a
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:32, 0:32] / 31                     # a linear gradient is exact at low resolution
    t = (xs * math.cos(theta) + ys * math.sin(theta))
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    pixels = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    small = Image.fromarray(pixels.round().astype(np.uint8))
    return small.resize((side, side), Image.Resampling.BILINEAR).convert("RGBA")


def _clutter(draw: ImageDraw.ImageDraw, side: int, rng: np.random.Generator, n: int) -> None:
    """Random ellipses, boxes, polygons and lines; colours sometimes taken from the fur palette."""
    for _ in range(n):
        color = tuple(int(v) for v in (_jitter(FUR[rng.integers(len(FUR))], rng) if rng.random() < 0.3
                                       else rng.integers(0, 256, 3)))
        x, y = rng.uniform(-0.1, 1.1, 2) * side
        w, h = rng.uniform(0.05, 0.35, 2) * side
        kind = rng.integers(4)
        if kind == 0:
            draw.ellipse([x, y, x + w, y + h], fill=color)
        elif kind == 1:
            draw.rectangle([x, y, x + w, y + h], fill=color)
        elif kind == 2:
            k = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * math.pi, k))
            draw.polygon([(x + w * math.cos(a), y + h * math.sin(a)) for a in angles], fill=color)
        else:
            draw.line([(x, y), (x + rng.uniform(-1, 1) * w * 2, y + rng.uniform(-1, 1) * h * 2)], fill=color,
                      width=max(1, int(side * rng.uniform(0.005, 0.03))))


def _body(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, look: dict, rng: np.random.Generator) -> None:
    """Sitting body, legs and tail behind the head (the same for both classes)."""
    fur, line, width = look["fur"], look["line"], look["width"]
    bx, by = cx + rng.uniform(-0.3, 0.3) * r, cy + r * rng.uniform(1.3, 1.7)
    bw, bh = r * rng.uniform(1.0, 1.4), r * rng.uniform(0.9, 1.2)
    side = rng.choice([-1, 1])
    tail = [(bx + side * bw * 0.8, by + bh * 0.6)]
    for k in range(1, 5):
        tail.append((tail[-1][0] + side * r * rng.uniform(0.2, 0.45), tail[-1][1] - r * rng.uniform(0.05, 0.4)))
    draw.line(tail, fill=line, width=int(r * 0.28) + 2 * width, joint="curve")
    draw.line(tail, fill=fur, width=int(r * 0.28), joint="curve")
    for dx in (-0.55, -0.2, 0.2, 0.55):
        lx = bx + dx * bw
        draw.rounded_rectangle([lx - r * 0.16, by, lx + r * 0.16, by + bh * 1.15], radius=r * 0.12, fill=fur,
                               outline=line, width=width)
    draw.ellipse([bx - bw, by - bh, bx + bw, by + bh], fill=fur, outline=line, width=width)
    if rng.random() < 0.5:
        draw.ellipse([bx - bw * 0.5, by - bh * 0.4, bx + bw * 0.5, by + bh * 0.8], fill=look["second"])


# ----------------------------------------------------------------- cats ----

def _cat(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, look: dict, rng: np.random.Generator) -> None:
    fur, line, width = look["fur"], look["line"], look["width"]
    hw, hh = r * rng.uniform(1.0, 1.15), r * rng.uniform(0.85, 1.0)
    for s in (-1, 1):                                      # pointed triangular ears
        apex = (cx + s * r * rng.uniform(0.55, 0.95), cy - hh * rng.uniform(1.4, 1.8))
        inner, outer = (cx + s * r * rng.uniform(0.05, 0.3), cy - hh * 0.6), (cx + s * hw * 0.98, cy - hh * 0.1)
        draw.polygon([inner, apex, outer], fill=fur, outline=line, width=width)
        mid = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2)
        draw.polygon([_lerp(mid, inner, 0.55), _lerp(mid, apex, 0.75), _lerp(mid, outer, 0.55)],
                     fill=_mix(look["second"], (240, 150, 170), 0.5))
    draw.ellipse([cx - hw, cy - hh, cx + hw, cy + hh], fill=fur, outline=line, width=width)
    _patch(draw, cx, cy, hw, hh, look, rng)
    if rng.random() < 0.35:                                # tabby stripes on the forehead
        for dx in (-0.2, 0, 0.2):
            draw.line([(cx + dx * r, cy - hh * 0.95), (cx + dx * r * 1.2, cy - hh * 0.55)], fill=line,
                      width=width + 1)
    ex, ey = r * rng.uniform(0.35, 0.45), cy - r * rng.uniform(0.0, 0.15)
    ew, eh, tilt = r * rng.uniform(0.15, 0.22), r * rng.uniform(0.09, 0.14), rng.uniform(0.1, 0.35)
    for s in (-1, 1):                                      # almond eyes with slit pupils
        c, n = math.cos(-s * tilt), math.sin(-s * tilt)     # outer corners raised
        pts = [(cx + s * ex + x * c - y * n, ey + x * n + y * c) for x, y in _almond(ew, eh)]
        draw.polygon(pts, fill=look["eye"], outline=(20, 20, 20), width=max(1, width // 2))
        pw = ew * rng.uniform(0.12, 0.25)
        draw.ellipse([cx + s * ex - pw, ey - eh * 0.9, cx + s * ex + pw, ey + eh * 0.9], fill=(10, 10, 10))
    ny, nw = cy + r * rng.uniform(0.2, 0.3), r * rng.uniform(0.08, 0.13)   # small nose, w-shaped mouth
    draw.polygon([(cx - nw, ny - nw * 0.6), (cx + nw, ny - nw * 0.6), (cx, ny + nw * 0.6)], fill=look["nose"])
    my = ny + nw * 0.6
    for left in (cx - nw * 2.2, cx):
        draw.arc([left, my - nw, left + nw * 2.2, my + nw], 0, 180, fill=line, width=max(1, width - 1))
    whisker = (20, 20, 20) if rng.random() < 0.4 else (245, 245, 245)
    for s in (-1, 1):                                      # whiskers
        for k in range(int(rng.integers(2, 4))):
            start = (cx + s * r * 0.25, ny + r * 0.08 * k)
            end = (cx + s * r * rng.uniform(1.15, 1.5), ny + r * (rng.uniform(-0.25, 0.05) + 0.18 * k))
            draw.line([start, end], fill=whisker, width=max(1, width // 2))


# ----------------------------------------------------------------- dogs ----

def _dog(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, look: dict, rng: np.random.Generator) -> None:
    fur, line, width = look["fur"], look["line"], look["width"]
    hw, hh = r * rng.uniform(0.85, 1.0), r * rng.uniform(0.95, 1.1)
    draw.ellipse([cx - hw, cy - hh, cx + hw, cy + hh], fill=fur, outline=line, width=width)
    _patch(draw, cx, cy, hw, hh, look, rng)
    ear = [fur, look["second"], _mix(fur, (0, 0, 0), 0.35)][rng.integers(3)]
    ear_w, ear_h, ear_tilt = r * rng.uniform(0.3, 0.45), r * rng.uniform(0.75, 1.1), rng.uniform(0.1, 0.5)
    for s in (-1, 1):                                      # floppy ears hanging beside the face
        top = (cx + s * hw * rng.uniform(0.55, 0.8), cy - hh * rng.uniform(0.75, 0.95))
        pts = []
        for t in np.linspace(0, 2 * math.pi, 28):
            x, y = ear_w * math.cos(t), ear_h * (1 + math.sin(t))   # ellipse hanging from its top
            pts.append((top[0] + x * math.cos(ear_tilt) + s * y * math.sin(ear_tilt),   # bottom swings out
                        top[1] - s * x * math.sin(ear_tilt) + y * math.cos(ear_tilt)))
        draw.polygon(pts, fill=ear, outline=line, width=width)
    ex, ey, er = r * rng.uniform(0.3, 0.42), cy - r * rng.uniform(0.15, 0.3), r * rng.uniform(0.1, 0.14)
    for s in (-1, 1):                                      # round eyes with a highlight
        draw.ellipse([cx + s * ex - er, ey - er, cx + s * ex + er, ey + er], fill=look["eye"],
                     outline=(20, 20, 20), width=max(1, width // 2))
        pr = er * rng.uniform(0.5, 0.7)
        draw.ellipse([cx + s * ex - pr, ey - pr, cx + s * ex + pr, ey + pr], fill=(10, 10, 10))
        draw.ellipse([cx + s * ex - pr * 0.2, ey - pr * 0.8, cx + s * ex + pr * 0.4, ey - pr * 0.2],
                     fill=(250, 250, 250))
    mw, mh = r * rng.uniform(0.45, 0.6), r * rng.uniform(0.4, 0.55)   # long muzzle reaching below the head
    my = cy + hh * rng.uniform(0.45, 0.65)
    muzzle = look["second"] if rng.random() < 0.6 else _mix(fur, (255, 255, 255), 0.35)
    tongue = rng.random() < 0.45
    if tongue:
        tw = mw * rng.uniform(0.3, 0.45)
        draw.rounded_rectangle([cx - tw, my, cx + tw, my + mh + r * rng.uniform(0.25, 0.45)], radius=tw * 0.9,
                               fill=TONGUE, outline=_mix(TONGUE, (0, 0, 0), 0.4), width=max(1, width // 2))
    draw.ellipse([cx - mw, my - mh, cx + mw, my + mh], fill=muzzle, outline=line, width=width)
    nw, nh = mw * rng.uniform(0.45, 0.6), mh * rng.uniform(0.35, 0.5)     # big nose
    ny = my - mh * 0.55
    nose = look["nose"] if rng.random() < 0.3 else (25, 20, 20)
    draw.ellipse([cx - nw, ny - nh, cx + nw, ny + nh], fill=nose)
    draw.ellipse([cx - nw * 0.5, ny - nh * 0.7, cx - nw * 0.1, ny - nh * 0.3], fill=(200, 200, 200))
    draw.line([(cx, ny + nh), (cx, my + mh * 0.45)], fill=line, width=width)
    draw.arc([cx - mw * 0.6, my, cx + mw * 0.6, my + mh * 0.8], 20, 160, fill=line, width=width)


# --------------------------------------------------------------- helpers ----

def _patch(draw, cx, cy, hw, hh, look, rng) -> None:
    """Optional coloured marking on the face (both classes)."""
    if rng.random() < 0.4:
        s = rng.choice([-1, 1])
        x, y = cx + s * hw * rng.uniform(0.1, 0.5), cy - hh * rng.uniform(0.0, 0.6)
        w, h = hw * rng.uniform(0.25, 0.5), hh * rng.uniform(0.25, 0.5)
        draw.ellipse([x - w, y - h, x + w, y + h], fill=look["second"])


def _almond(w: float, h: float, n: int = 12) -> list[tuple[float, float]]:
    """A lens with pointed corners, centred on 0: (x, y) points."""
    top = [(w * (1 - 2 * u), -h * math.sin(math.pi * u)) for u in np.linspace(0, 1, n)]
    return top + [(-x, -y) for x, y in top[1:-1]]


def _jitter(color, rng: np.random.Generator, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(round(x * (1 - t) + y * t) for x, y in zip(a, b))


def _lerp(p, q, t: float) -> tuple[float, float]:
    return (p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t)


DRAWERS = {"cat": _cat, "dog": _dog}
