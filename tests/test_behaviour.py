"""Behavioural tests of a model trained on real photos (in the style of Made-With-ML's): invariances the answer must
have and inputs it must not be sure about. The model: the default recipe of params.yaml trained on 1,050 of the
shared photos (150 more for validation); the checks run on 300 photos it never saw. Skipped without ../shared/data.

Where the model does not meet a check, the test is marked xfail(strict=True) with what was measured, so the gap
stays visible and the mark must go when a model meets it (docs/training-benchmark.md keeps the record).
"""
from __future__ import annotations

import io
import tarfile

import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

PER_CLASS = 750            # photos per class taken from the shared set: 1,050 train / 150 val / 300 test
HIGH_CONFIDENCE = 0.9      # an answer at or above this is "sure"
MAX_FLIPS = 0.01           # at most this fraction of unseen photos may change label under a harmless change


@pytest.fixture(scope="module")
def photo_model(shared_tar, tmp_path_factory):
    """(classify, photos, answers): `classify(list of PIL images) -> probabilities [N, 2]` of the trained model
    (OpenVINO f32, checked against torch on a real batch; the exported model's preprocessing), the unseen test
    photos as (PIL image, label index) and the model's probabilities for them."""
    from model.engines import compile_forward
    from model.preprocess import eval_transform
    from training.prepare import prepare, read_manifest
    from training.train import load_trained, train

    tmp = tmp_path_factory.mktemp("behaviour")
    counts = {"cat": 0, "dog": 0}
    with tarfile.open(shared_tar) as tar:
        for member in tar:
            label = member.name.rsplit("/", 1)[-1].split(".")[0]
            if member.isfile() and label in counts and counts[label] < PER_CLASS:
                counts[label] += 1
                (tmp / "images" / "train").mkdir(parents=True, exist_ok=True)
                (tmp / "images" / "train" / member.name.rsplit("/", 1)[-1]).write_bytes(tar.extractfile(member).read())
    assert counts == {"cat": PER_CLASS, "dog": PER_CLASS}, counts
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    size = params["model"]["resize_size"]
    prepare(tmp / "images", tmp / "prepared", ["cat", "dog"], resize_size=size, val_ratio=0.1, test_ratio=0.2,
            seed=1, max_pixels=40_000_000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.chdir(tmp)
        train(params, tmp / "prepared", tmp / "train")
    net, meta = load_trained(tmp / "train")
    transform = eval_transform(meta)
    rows = read_manifest(tmp / "prepared", "test")
    photos = [(Image.open(tmp / "images" / row["path"]).convert("RGB"), meta["classes"].index(row["label"]))
              for row in rows]
    forward = compile_forward(net, torch.stack([transform(image) for image, _ in photos[:8]]), "openvino", "f32")

    @torch.no_grad()
    def classify(images):
        batch = torch.stack([transform(image.convert("RGB")) for image in images])
        return torch.cat([torch.softmax(forward(chunk), 1) for chunk in batch.split(50)])

    return classify, photos, classify([image for image, _ in photos])


def labels_kept(classify, photos, before, change) -> tuple[int, int, list[float]]:
    """(photos whose label changed, of those how many were answered with high confidence, their confidences);
    `before`: the probabilities of the unchanged photos."""
    after = classify([change(image) for image, _ in photos])
    flipped = before.argmax(1) != after.argmax(1)
    confident = before.max(1).values >= HIGH_CONFIDENCE
    return int(flipped.sum()), int((flipped & confident).sum()), before.max(1).values[flipped].tolist()


def zoom(image: Image.Image, fraction: float) -> Image.Image:
    """The central `fraction` of the photo (a closer view of the same scene)."""
    w, h = image.size
    dw, dh = round(w * (1 - fraction) / 2), round(h * (1 - fraction) / 2)
    return image.crop((dw, dh, w - dw, h - dh))


def test_the_model_really_learned_the_photos(photo_model):
    _, photos, proba = photo_model
    accuracy = float((proba.argmax(1) == torch.tensor([label for _, label in photos])).float().mean())
    print(f"accuracy {accuracy:.4f} on {len(photos)} unseen photos")
    assert len(photos) >= 250 and accuracy >= 0.95, (len(photos), accuracy)


@pytest.mark.parametrize("name, change", [
    ("mirrored", lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    ("shrunk to 75 %", lambda image: image.resize((round(image.width * 0.75), round(image.height * 0.75)))),
    ("enlarged to 125 %", lambda image: image.resize((round(image.width * 1.25), round(image.height * 1.25)))),
    ("zoomed in 10 %", lambda image: zoom(image, 0.9)),
    ("re-encoded as JPEG quality 60", lambda image: Image.open(io.BytesIO(jpeg(image, 60)))),
])
def test_a_harmless_change_keeps_the_label(photo_model, name, change):
    classify, photos, before = photo_model
    flipped, confident_flips, confidences = labels_kept(classify, photos, before, change)
    print(f"{name}: {flipped} of {len(photos)} unseen photos changed label, confidences before {confidences}")
    assert confident_flips == 0, f"{name}: {confident_flips} photos answered with >= {HIGH_CONFIDENCE} changed label"
    assert flipped <= MAX_FLIPS * len(photos), f"{name}: {flipped} of {len(photos)} changed label ({confidences})"


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def blank_and_noise_images() -> dict[str, Image.Image]:
    generator = torch.Generator().manual_seed(0)
    noise = [torch.randint(0, 256, (200, 200, 3), generator=generator, dtype=torch.uint8) for _ in range(3)]
    return {"black": Image.new("RGB", (200, 200)), "white": Image.new("RGB", (200, 200), (255, 255, 255)),
            "grey": Image.new("RGB", (200, 200), (128, 128, 128)),
            **{f"noise {i}": Image.fromarray(n.numpy()) for i, n in enumerate(noise)}}


def test_a_blank_or_noise_image_is_not_answered_with_high_confidence(photo_model):
    classify, _, _ = photo_model
    images = blank_and_noise_images()
    confidence = dict(zip(images, classify(list(images.values())).max(1).values.tolist()))
    print("confidence: " + ", ".join(f"{name} {c:.3f}" for name, c in confidence.items()))
    sure = {name: round(c, 3) for name, c in confidence.items() if c >= HIGH_CONFIDENCE}
    assert not sure, f"answered with >= {HIGH_CONFIDENCE} confidence: {sure}"
