"""Real TorchServe (Java frontend + Python worker) serving a .mar built by `python -m serving archive`.

The model is really trained on generated cartoon cats/dogs (the session fixture `synthetic_model`), so
the labels checked here are the model's own answers on held-out images, not a stub's.
"""
from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest
import requests
from PIL import Image

from catsdogs import contract
from model import engines
from serving.client import ServingClient
from serving.server import stop
from tests.conftest import image_bytes
from tests.serving_helpers import held_out_images, serve_model_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def served(synthetic_model, tmp_path_factory):
    """(client, state, held-out test rows): TorchServe on free ports with the synthetic model."""
    model_dir, prepared = synthetic_model
    work = tmp_path_factory.mktemp("serve")
    state = serve_model_dir(model_dir, work)
    client = ServingClient.from_run_dir(work / "run", timeout=30)
    rows = [{"path": path, "label": label} for path, label in held_out_images(prepared)]
    try:
        yield client, state, rows
    finally:
        stop(work / "run")


def original_bytes(row: dict) -> bytes:
    return open(row["path"], "rb").read()


def test_served_predictions_are_right_on_held_out_cartoons(served):
    client, _, rows = served
    correct = 0
    for row in rows:
        response = client.predict(original_bytes(row))
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"label", "confidence", "probabilities", "model_version"}
        assert list(body["probabilities"]) == ["cat", "dog"]
        assert body["confidence"] == max(body["probabilities"].values())
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
        correct += body["label"] == row["label"]
    assert correct / len(rows) >= 0.8, f"{correct}/{len(rows)} held-out synthetic images right"


def test_curl_upload_multipart_and_json_give_the_same_answer(served):
    client, state, rows = served
    data = original_bytes(rows[0])
    url = f"{state['inference_url']}/predictions/catsdogs"
    headers = {"Authorization": f"Bearer {client.key('inference')}"}
    put = requests.put(url, data=data, headers=headers, timeout=30)  # what `curl -T cat.jpg` sends
    form = requests.post(url, files={"data": ("cat.jpg", data, "image/jpeg")}, headers=headers, timeout=30)
    as_json = requests.post(url, json={"data": base64.b64encode(data).decode()}, headers=headers, timeout=30)
    answers = [r.json() for r in (put, form, as_json)]
    assert [r.status_code for r in (put, form, as_json)] == [200, 200, 200], answers
    assert answers[0] == answers[1] == answers[2]


def test_requests_without_a_token_are_refused(served):
    _, state, rows = served
    response = requests.post(f"{state['inference_url']}/predictions/catsdogs", data=original_bytes(rows[0]), timeout=30)
    # TorchServe 0.12 answers a missing/invalid key with 400 {"type": "InvalidKeyException"} (not 401)
    assert response.status_code in (400, 401), response.text
    assert response.json().get("type") == "InvalidKeyException" or response.status_code == 401
    assert requests.get(f"{state['management_url']}/models", timeout=30).status_code in (400, 401)


def png_bomb() -> bytes:
    """A 7000x7000 PNG: 49 Mpx, over the 40 Mpx cap (handler/model-config.yaml), yet only ~50 KB on the wire."""
    buffer = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_INPUTS = {
    "empty": (b"", 400, "empty"),
    "not_an_image": (b"hello, I am not a picture" * 20, 415, "not_an_image"),
    "truncated_jpeg": (image_bytes(size=(300, 300))[:400], 422, "corrupt"),
    "unsupported_format": (None, 415, "unsupported_format"),
    "decompression_bomb": (None, 413, "decompression_bomb"),
    "too_large": (b"\xff\xd8\xff" + b"\0" * (9 * 1024 * 1024), 413, "too_large"),
}


def bad_payload(name: str) -> bytes:
    if name == "unsupported_format":
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32)).save(buffer, format="TIFF")
        return buffer.getvalue()
    if name == "decompression_bomb":
        return png_bomb()
    return BAD_INPUTS[name][0]


def test_every_bad_input_gets_its_4xx_and_the_worker_survives(served):
    client, state, rows = served
    pids = client.worker_pids()
    for name, (_, status, reason) in BAD_INPUTS.items():
        response = client.predict(bad_payload(name))
        assert response.status_code == status, (name, response.status_code, response.text)
        assert response.json()["error"] == reason, (name, response.text)
        assert response.json()["message"]
    url = f"{state['inference_url']}/predictions/catsdogs"
    headers = {"Authorization": f"Bearer {client.key('inference')}"}
    for body, reason in (('{"data": "***not base64***"}', "invalid_base64"), ('{"image": "x"}', "invalid_json"),
                         ("{not json", "invalid_json")):
        response = requests.post(url, data=body, headers={**headers, "Content-Type": "application/json"}, timeout=30)
        assert 400 <= response.status_code < 500 and response.json()["error"] == reason, (body, response.text)
    good = client.predict(original_bytes(rows[0]))
    assert good.status_code == 200 and good.json()["label"] in ("cat", "dog")
    assert client.worker_pids() == pids, "a worker restarted because of bad input"


def test_management_api_lists_and_describes_the_model(served):
    client, _, _ = served
    listed = client.request("management", "GET", "/models").json()
    assert [m["modelName"] for m in listed["models"]] == ["catsdogs"]
    described = client.describe()
    assert described[0]["workers"][0]["status"] == "READY"
    assert described[0]["modelVersion"]
    custom = client.request("management", "GET", "/models/catsdogs?customized=true").json()
    meta = custom[0]["customizedMetadata"]  # TorchServe parses describe_handle's JSON string
    assert meta["classes"] == ["cat", "dog"] and meta["version"] == described[0]["modelVersion"]


def test_serve_says_when_the_model_learnt_from_generated_data(served, synthetic_model, tmp_path):
    """`make serve` (python -m serving start) warns that a cartoon-trained model answers photos poorly."""
    from serving.__main__ import generated_data_note

    _, state, _ = served
    _, prepared = synthetic_model
    run_dir = Path(state["key_file"]).parent
    assert contract.read_params()["data"]["source"] == "synthetic"  # the repository's default
    note = generated_data_note(run_dir, prepared)
    assert note and "generated cartoon" in note and "data.source: path" in note
    other = tmp_path / "prepared"
    other.mkdir()
    (other / "stats.json").write_text(json.dumps({"data_hash": "0" * 64}))
    assert generated_data_note(run_dir, other) is None  # trained on data this checkout did not prepare
    assert generated_data_note(tmp_path / "no-server", prepared) is None


def test_the_default_engine_serves_and_says_which(served, synthetic_model):
    """The archive as exported (serve.engine/precision auto) runs on what model.engines.choose picks for this CPU
    and the export's gate (OpenVINO where installed, bf16 only where native and gated); the predictions above came
    from it."""
    client, _, _ = served
    model_meta = json.loads((synthetic_model[0] / "model-meta.json").read_text())
    expected = engines.choose("auto", "auto", "cpu", engines.cpu_capabilities(),
                              gated=tuple(model_meta["engine"]["gated"]))
    custom = client.request("management", "GET", "/models/catsdogs?customized=true").json()
    served_on = custom[0]["customizedMetadata"]["serving_engine"]
    assert (served_on["engine"], served_on["precision"]) == expected[:2]
    if engines.openvino_available():
        assert served_on["engine"] == "openvino", served_on


def test_metrics_endpoint_has_torchserve_and_custom_metrics(served):
    client, _, rows = served
    assert client.predict(original_bytes(rows[1])).status_code == 200
    assert client.predict(b"").status_code == 400
    text = client.metrics()
    for name in ("ts_inference_requests_total", "catsdogs_predictions_total", "catsdogs_prediction_confidence",
                 "catsdogs_rejected_inputs_total", "catsdogs_preprocess_seconds"):
        assert name in text, f"{name} missing from /metrics"
    assert 'reason="empty"' in text.replace("Reason", "reason")


@pytest.mark.realdata
def test_real_photos_get_well_formed_answers(served, shared_tar):
    client, _, _ = served
    with tarfile.open(shared_tar) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")][:6]
        photos = [tar.extractfile(m).read() for m in members]
    for data in photos:
        response = client.predict(data)
        assert response.status_code == 200, response.text
        assert response.json()["label"] in ("cat", "dog")


def test_several_images_per_request_mixed_good_and_bad_in_order(served):
    client, state, rows = served
    url = f"{state['inference_url']}/predictions/catsdogs"
    headers = {"Authorization": f"Bearer {client.key('inference')}"}
    good = [original_bytes(row) for row in rows[:3]]
    expected = [client.predict(data).json() for data in good]
    truncated = image_bytes(size=(300, 300))[:400]
    form = requests.post(url, headers=headers, timeout=30, files=[
        ("first", ("a.jpg", good[0], "image/jpeg")), ("second", ("b.jpg", truncated, "image/jpeg")),
        ("third", ("c.jpg", good[1], "image/jpeg")), ("fourth", ("d.tif", bad_payload("unsupported_format"),
                                                                 "image/tiff")),
        ("fifth", ("e.jpg", good[2], "image/jpeg"))])
    assert form.status_code == 200, form.text
    answers = form.json()
    assert [a.get("error") for a in answers] == [None, "corrupt", None, "unsupported_format", None]
    assert [a.get("status") for a in answers[1::2]] == [422, 415]
    assert [answers[0], answers[2], answers[4]] == expected
    as_json = requests.post(url, headers=headers, timeout=30, json={"instances": [
        base64.b64encode(good[2]).decode(), "***not base64***", {"data": base64.b64encode(good[0]).decode()}]})
    assert as_json.status_code == 200, as_json.text
    answers = as_json.json()
    assert answers[0] == expected[2] and answers[2] == expected[0]
    assert (answers[1]["error"], answers[1]["status"]) == ("invalid_base64", 400)


def test_several_images_over_the_count_limit_get_413(served):
    client, state, _ = served
    url = f"{state['inference_url']}/predictions/catsdogs"
    headers = {"Authorization": f"Bearer {client.key('inference')}"}
    one_image = base64.b64encode(image_bytes()).decode()
    response = requests.post(url, headers=headers, timeout=30, json={"instances": [one_image] * 17})
    assert response.status_code == 413 and response.json()["error"] == "too_many_images", response.text


def test_files_sharing_one_field_name_arrive_as_one(served):
    """TorchServe 0.12's worker keeps one value per form field name: documented, so pinned here."""
    client, state, rows = served
    url = f"{state['inference_url']}/predictions/catsdogs"
    headers = {"Authorization": f"Bearer {client.key('inference')}"}
    good = [original_bytes(row) for row in rows[:2]]
    response = requests.post(url, headers=headers, timeout=30,
                             files=[("data", ("a.jpg", good[0], "image/jpeg")), ("data", ("b.jpg", good[1],
                                                                                          "image/jpeg"))])
    assert response.status_code == 200 and response.json() == client.predict(good[1]).json()
