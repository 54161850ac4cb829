"""Where a real TorchServe may load a model from: only archives already in its model store.

TorchServe 0.12 resolves `POST /models?url=...` in ModelArchive.downloadModel: a string matching
`allowed_urls` is downloaded with java.net.URL into the store; anything else is looked up as
<model store>/<file name of url>, and then as a directory on the server's file system (absolute, or
relative to TorchServe's working directory), whose handler code the worker runs. config.properties'
allowed_urls therefore matches every string that is neither a bare archive name nor a URL with a
scheme: those go to the download, which fails (java.net.URL finds no protocol), and are refused.
These tests send each kind of source to a real TorchServe started with the repo's config.properties.
"""
from __future__ import annotations

import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from deploy.archive import store_file_name
from serving.client import ServingClient
from serving.server import stop
from tests.serving_helpers import serve_model_dir, write_model_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]

INTRUDER = "intruder"  # the model name every refused registration asks for


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, work dir, model store, TorchServe's working directory): the repo config, a throwaway model."""
    work = tmp_path_factory.mktemp("sources")
    write_model_dir(work / "model")
    state = serve_model_dir(work / "model", work)
    try:
        yield ServingClient.from_run_dir(work / "run", timeout=60), work, Path(state["model_store"]), work / "run"
    finally:
        stop(work / "run")


def register(client: ServingClient, url: str, name: str = INTRUDER, workers: int = 1):
    return client.request("management", "POST", "/models", params={
        "url": url, "model_name": name, "initial_workers": workers, "synchronous": "true"})


def registered_models(client: ServingClient) -> list[str]:
    response = client.request("management", "GET", "/models")
    assert response.status_code == 200, response.text
    return sorted(m["modelName"] for m in response.json()["models"])


def unpack(archive: Path, out: Path) -> Path:
    """The archive's files in a plain directory (MAR-INF/MANIFEST.json, handler, model): what
    TorchServe would load, handler code included, if it accepted the directory."""
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(out)
    assert (out / "MAR-INF" / "MANIFEST.json").is_file()
    return out


def assert_refused(client: ServingClient, url: str) -> None:
    response = register(client, url)
    if INTRUDER in registered_models(client):
        client.request("management", "DELETE", f"/models/{INTRUDER}")  # the next check starts clean
        pytest.fail(f"url={url!r} was registered: {response.status_code} {response.text}")
    # 400 (download failed), 404 (not found), 500 ("Model file already exists": a path ending in '/')
    assert response.status_code >= 400, f"url={url!r}: {response.status_code} {response.text}"


def test_an_unpacked_archive_anywhere_on_the_file_system_is_refused(served):
    client, work, store, run_dir = served
    archive = store / "catsdogs.mar"
    outside = unpack(archive, work / "unpacked")
    assert_refused(client, str(outside))                      # absolute directory
    assert_refused(client, f"{outside}/")
    assert_refused(client, f"/{outside}")                      # //tmp/...: still a local path
    assert_refused(client, f"{outside.parent}/./{outside.name}")
    # relative to TorchServe's working directory (the run directory), with and without a slash
    unpack(archive, run_dir / "unpacked-here")
    assert_refused(client, "unpacked-here")
    assert_refused(client, "./unpacked-here")
    assert_refused(client, f"{run_dir.name}/../{run_dir.name}/unpacked-here")  # '..' (TorchServe's own check)
    assert_refused(client, ".")                                 # the working directory itself
    # the store's own folder and a directory inside it by path (only bare archive names may be registered)
    assert_refused(client, str(store))
    unpack(archive, store / "unpacked-in-store")
    assert_refused(client, str(store / "unpacked-in-store"))


def test_urls_are_refused_and_nothing_is_fetched(served):
    client, work, store, _ = served
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(store / "catsdogs.mar", elsewhere / "other.mar")
    requests_seen = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests_seen.append(self.path)
            body = (elsewhere / "other.mar").read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for url in (f"file://{elsewhere / 'other.mar'}", f"FILE://{elsewhere / 'other.mar'}", f"{base}/other.mar",
                    f"{base.replace('http', 'HTTPS')}/other.mar", "ftp://127.0.0.1/other.mar",
                    f"file:{elsewhere / 'other.mar'}",
                    f"url:{base}/other.mar", f"{elsewhere / 'other.mar'}"):
            assert_refused(client, url)
    finally:
        server.shutdown()
    assert requests_seen == [], f"TorchServe fetched {requests_seen} from a URL it should have refused"
    assert not (store / "other.mar").exists(), "a refused archive was copied into the model store"


def test_an_archive_in_the_model_store_is_registered_by_its_file_name(served):
    """The one source that stays open: what `python -m deploy` sends (deploy.archive.store_file_name)."""
    client, _, store, _ = served
    name = store_file_name("catsdogs", "test.0002")
    shutil.copy(store / "catsdogs.mar", store / name)
    response = register(client, name, name="control", workers=0)
    assert response.status_code == 200, response.text
    try:
        assert "control" in registered_models(client)
    finally:
        client.request("management", "DELETE", "/models/control")


def test_a_url_with_an_empty_file_name_names_the_store_folder_itself(served):
    """What allowed_urls leaves open (config.properties says so): a url with a scheme and an empty file name
    (jar:file:/x!/, ftp://host/) resolves to <model store>/"", the store folder itself, which TorchServe then
    loads as a model. The folder holds only archives, no handler or weights of its own: a worker cannot
    start and the registration is refused; with 0 workers the broken entry is registered, and nothing
    from outside the store is read."""
    client, work, _, _ = served
    url = f"jar:file:{work / 'elsewhere-jar' / 'other.mar'}!/"
    response = register(client, url, workers=1)
    assert response.status_code == 500 and "Failed to start workers" in response.text, response.text
    assert INTRUDER not in registered_models(client)
    response = register(client, "ftp://127.0.0.1/", workers=0)
    try:
        assert response.status_code == 200, response.text
        described = client.request("management", "GET", f"/models/{INTRUDER}").json()
        assert described[0]["workers"] == [], described
    finally:
        client.request("management", "DELETE", f"/models/{INTRUDER}")
