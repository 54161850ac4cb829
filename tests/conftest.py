"""Shared test helpers: tiny images made on the fly, the shared real-photo tar when present."""
from __future__ import annotations

import fcntl
import hashlib
import inspect
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from catsdogs.contract import SHARED_PHOTOS

ROOT = Path(__file__).resolve().parents[1]
SHARED_TAR = SHARED_PHOTOS  # ../shared/data/dogs-vs-cats-10k.tar, next to the repository


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """torch's thread count is process-wide, and building an OpenVINO forward drops it to one
    (model.engines.leave_cores_to_openvino): each test gets the count the previous one started with."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def image_bytes(color=(200, 40, 40), size=(64, 48), fmt="JPEG", mode="RGB", **save_kwargs) -> bytes:
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def check_shared_photos(path: Path) -> str | None:
    """None when `path` is a readable set of labelled cat and dog photos, else what is wrong with it."""
    import itertools

    from model.preprocess import ImageError, decode_image
    from training.ingest import labelled

    try:  # read while iterating: an archive's read() works only while its reader is open
        found = labelled(path, ["cat", "dog"])
        decoded = [decode_image(read()) for _relpath, _label, read in itertools.islice((e for e in found if e[1]), 3)]
        if not decoded:
            return "no file in it has a cat/dog label in its path"
    except (OSError, ValueError, ImageError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def shared_tar() -> Path:
    """The real photo set: skip when it is absent, FAIL when it is there but unusable (CI must not skip it)."""
    if not SHARED_TAR.exists():
        pytest.skip(f"{SHARED_TAR} not present (real photos are only on developer/CI machines)")
    problem = check_shared_photos(SHARED_TAR)
    if problem:
        pytest.fail(f"{SHARED_TAR} is present but unusable ({problem}); fix or remove it", pytrace=False)
    return SHARED_TAR


TEST_MODEL_CACHE = ROOT / "build" / "test-model"


def test_model_key() -> str:
    """Hash of everything that shapes the test model: retrain only when training code or params change."""
    from tests.serving_helpers import train_synthetic_model

    files = [ROOT / "params.yaml", *sorted((ROOT / "training").glob("*.py")), *sorted((ROOT / "model").glob("*.py"))]
    digest = hashlib.sha256(inspect.getsource(train_synthetic_model).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def synthetic_model():
    """(model dir, prepared dir): a small model really trained on synthetic cats/dogs.

    Trained once into build/test-model/<key>/ and reused by later sessions and by concurrent pytest
    processes (a file lock makes the others wait instead of training in parallel).
    """
    from tests.serving_helpers import train_synthetic_model

    work = TEST_MODEL_CACHE / test_model_key()
    TEST_MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    with open(TEST_MODEL_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (work / "done").exists():
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
                mp.chdir(work)  # mlartifacts/ of the throwaway store lands here
                train_synthetic_model(work)
            (work / "done").write_text("ok\n")
    return work / "model", work / "prepared"
