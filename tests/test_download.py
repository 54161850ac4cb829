"""training.download: offline failures are actionable; downloads are atomic; Oxford labels map right.

No test touches the network: urllib.request.urlopen is replaced in every test.
"""
from __future__ import annotations

import io
import socket
import urllib.error
import urllib.request
import zipfile

import pytest
from PIL import Image

from training import download
from training.download import DownloadError, download_oxford_pet, download_petimages


@pytest.fixture
def offline(monkeypatch):
    calls = []

    def no_network(request, *args, **kwargs):
        calls.append(getattr(request, "full_url", request))
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return calls


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("PetImages/Cat/0.jpg", b"not really")
    return out.getvalue()


def assert_actionable(message: str, target) -> None:
    assert "no internet access" in message
    assert str(target) in message
    assert "data.source: path" in message and "data.path" in message


def test_petimages_offline_raises_an_actionable_error(offline, tmp_path):
    with pytest.raises(DownloadError) as info:
        download_petimages(tmp_path / "petimages")
    message = str(info.value)
    assert_actionable(message, tmp_path / "petimages" / download.PETIMAGES_FILE)
    assert download.PETIMAGES_URL in message and "name resolution" in message
    assert offline == [download.PETIMAGES_URL]
    assert list((tmp_path / "petimages").iterdir()) == []          # no .part left behind


def test_petimages_connection_dropped_mid_download(monkeypatch, tmp_path):
    class Dropping(FakeResponse):
        def read(self, size=-1):
            raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Dropping(b"x" * 10))
    with pytest.raises(DownloadError, match="ConnectionResetError"):
        download_petimages(tmp_path / "pets.zip")
    assert list(tmp_path.iterdir()) == []


def test_petimages_download_is_written_atomically(monkeypatch, tmp_path):
    data = zip_bytes()
    seen = []

    def fake_urlopen(request, timeout=None):
        seen.append((request.full_url, timeout))
        assert not (tmp_path / "pets.zip").exists()                # only the .part exists while downloading
        return FakeResponse(data)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert download_petimages(tmp_path / "pets.zip") == tmp_path / "pets.zip"
    assert (tmp_path / "pets.zip").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets.zip"]
    assert seen == [(download.PETIMAGES_URL, download.TIMEOUT_S)]


def test_petimages_present_is_not_downloaded_again(offline, tmp_path):
    target = tmp_path / download.PETIMAGES_FILE
    target.write_bytes(zip_bytes())
    assert download_petimages(tmp_path) == target
    assert offline == []


def test_petimages_error_page_instead_of_zip(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"<html>proxy login</html>"))
    with pytest.raises(DownloadError, match="did not return a zip"):
        download_petimages(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_oxford_pet_offline_fails_fast_with_an_actionable_error(offline, tmp_path):
    with pytest.raises(DownloadError) as info:
        download_oxford_pet(tmp_path / "oxford")
    assert_actionable(str(info.value), tmp_path / "oxford" / download.OXFORD_RAW_DIR / "oxford-iiit-pet")
    assert "Oxford-IIIT Pet" in str(info.value) and "annotations.tar.gz" in str(info.value)
    assert offline and offline[0].startswith("https://www.robots.ox.ac.uk/")   # torchvision tried, and failed


def test_oxford_pet_binary_labels_become_cat_and_dog_folders(offline, tmp_path):
    """A pre-downloaded copy in torchvision's own layout: read by the real OxfordIIITPet, no network."""
    base = tmp_path / "oxford" / download.OXFORD_RAW_DIR / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    # torchvision's annotation format: image id, breed id, species (1 = cat, 2 = dog), breed index
    (base / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\namerican_bulldog_10 2 2 1\n")
    (base / "annotations" / "test.txt").write_text("Bengal_7 6 1 2\nbeagle_3 11 2 5\n")
    originals = {}
    for i, image_id in enumerate(["Abyssinian_1", "american_bulldog_10", "Bengal_7", "beagle_3"]):
        out = io.BytesIO()
        Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(out, "JPEG")
        (base / "images" / f"{image_id}.jpg").write_bytes(out.getvalue())
        originals[image_id] = out.getvalue()

    dest = download_oxford_pet(tmp_path / "oxford")
    assert dest == tmp_path / "oxford"
    assert sorted(p.name for p in (dest / "cat").iterdir()) == ["Abyssinian_1.jpg", "Bengal_7.jpg"]
    assert sorted(p.name for p in (dest / "dog").iterdir()) == ["american_bulldog_10.jpg", "beagle_3.jpg"]
    assert (dest / "dog" / "beagle_3.jpg").read_bytes() == originals["beagle_3"]    # copied, not re-encoded
    assert offline == []

    (base / "annotations" / "test.txt").unlink()                    # complete: a second call does nothing
    assert download_oxford_pet(dest) == dest
