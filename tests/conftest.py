"""Shared test helpers: tiny images made on the fly, the shared real-photo tar when present."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_TAR = ROOT.parent / "shared" / "data" / "dogs-vs-cats-10k.tar"


def image_bytes(color=(200, 40, 40), size=(64, 48), fmt="JPEG", mode="RGB", **save_kwargs) -> bytes:
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


@pytest.fixture
def shared_tar() -> Path:
    if not SHARED_TAR.exists():
        pytest.skip(f"{SHARED_TAR} not present (real photos are only on developer/CI machines)")
    return SHARED_TAR


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory):
    """(model dir, prepared dir): a small model really trained on synthetic cats/dogs, shared by the session."""
    from tests.serving_helpers import train_synthetic_model

    work = tmp_path_factory.mktemp("synthetic-model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        mp.chdir(work)  # mlartifacts/ of the throwaway store lands here
        return train_synthetic_model(work)
