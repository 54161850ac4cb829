"""The TorchServe handler, driven the way a TorchServe 0.12 worker drives it, with a throwaway model.

Requests are built in TorchServe's wire shape and turned into the handler's input by TorchServe's own
`Service.retrieve_data_for_inference` (rows + per-request RequestProcessors), and the context is
TorchServe's real `ts.context.Context` with the YAML metrics cache built from serving/metrics.yaml,
exactly as the worker builds it. (TorchServe's unit-test MockContext has neither the per-request
status API nor the YAML metrics cache, so it is used only for the model-loading test.)
"""
from __future__ import annotations

import base64
import io
import json
import logging
import re

import pytest
import torch
from PIL import Image
from ts.context import Context
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.service import Service
from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext

from handler.catsdogs_handler import CatsDogsHandler
from model import engines
from tests.conftest import image_bytes
from tests.serving_helpers import BLUE, RED, ROOT, write_model_dir

MANIFEST = {"model": {"modelName": "catsdogs", "serializedFile": "model.pt", "handler": "catsdogs_handler.py",
                      "modelVersion": "test.0001"}}
HANDLER_CONFIG = {"max_image_bytes": 200_000, "max_image_pixels": 1_000_000}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    write_model_dir(path)
    return path


def make_context(model_dir, handler_config=None) -> Context:
    metrics = MetricsCacheYamlImpl(config_file_path=str(ROOT / "serving" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "catsdogs"
    yaml_config = {"batchSize": 8, "handler": dict(HANDLER_CONFIG if handler_config is None else handler_config)}
    return Context("catsdogs", str(model_dir), MANIFEST, 8, None, "0.12.0", metrics=metrics,
                   model_yaml_config=yaml_config)


@pytest.fixture
def handler_and_context(model_dir):
    context = make_context(model_dir)
    handler = CatsDogsHandler()
    handler.initialize(context)
    return handler, context


def wire(value, content_type="application/octet-stream", field="body", request_type=None, extra_headers=None):
    """One request as the frontend sends it to the worker (parameters + HTTP headers).

    Mirrors ts.protocol.otf_message_handler._retrieve_input_data: JSON parameters arrive parsed (raw
    bytes when parsing fails), text/* parameters arrive as str.
    """
    if content_type.startswith("application/json"):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    elif content_type.startswith("text"):
        value = value.decode("utf-8")
    headers = {"Content-Type": request_type or content_type, **(extra_headers or {})}
    return {"parameters": [{"name": field, "contentType": content_type, "value": value}],
            "headers": [{"name": k.encode(), "value": v.encode()} for k, v in headers.items()]}


def run_batch(handler, context, requests_):
    batch = [{"requestId": f"req-{i}".encode(), **r} for i, r in enumerate(requests_)]
    headers, rows, ids = Service.retrieve_data_for_inference(batch)
    context.request_ids = ids
    context.request_processor = headers
    context.metrics.request_ids = ids
    out = handler.handle(rows, context)
    assert len(out) == len(requests_)
    return [(context.get_response_status(i)[0], context.get_response_content_type(i), out[i])
            for i in range(len(out))]


def one(handler, context, request):
    return run_batch(handler, context, [request])[0]


def assert_prediction(result, label):
    status, content_type, body = result
    assert status == 200 and content_type == "application/json"
    assert set(body) == {"label", "confidence", "probabilities", "model_version"}
    assert body["label"] == label and body["model_version"] == "test.0001"
    assert list(body["probabilities"]) == ["cat", "dog"]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["confidence"] == max(body["probabilities"].values()) > 0.5


# --- accepted inputs -------------------------------------------------------------------------------


def test_raw_body_red_is_cat_blue_is_dog(handler_and_context):
    handler, context = handler_and_context
    assert_prediction(one(handler, context, wire(image_bytes(RED))), "cat")
    assert_prediction(one(handler, context, wire(image_bytes(BLUE, fmt="PNG"), "image/png")), "dog")


def test_multipart_upload_under_any_field_name(handler_and_context):
    handler, context = handler_and_context
    request = wire(image_bytes(BLUE), "image/jpeg", field="my_photo",
                   request_type="multipart/form-data; boundary=x")
    assert_prediction(one(handler, context, request), "dog")


def test_multipart_with_a_text_field_uses_the_file(handler_and_context):
    handler, context = handler_and_context
    request = {"parameters": [{"name": "note", "contentType": "text/plain", "value": "hello"},
                              {"name": "file", "contentType": "image/jpeg", "value": image_bytes(RED)}],
               "headers": [{"name": b"Content-Type", "value": b"multipart/form-data; boundary=x"}]}
    assert_prediction(one(handler, context, request), "cat")


@pytest.mark.parametrize("encode", [
    lambda b: base64.b64encode(b).decode(),
    lambda b: base64.encodebytes(b).decode(),  # wrapped at 76 columns like the `base64` tool
    lambda b: "data:image/jpeg;base64," + base64.b64encode(b).decode(),
], ids=["plain", "line-wrapped", "data-url"])
def test_json_base64(handler_and_context, encode):
    handler, context = handler_and_context
    body = json.dumps({"data": encode(image_bytes(RED))}).encode()
    assert_prediction(one(handler, context, wire(body, "application/json")), "cat")


@pytest.mark.parametrize("fmt,mode,color,label", [
    ("JPEG", "RGB", RED, "cat"), ("PNG", "RGBA", BLUE, "dog"), ("WEBP", "RGB", RED, "cat"),
    ("BMP", "RGB", BLUE, "dog"), ("GIF", "P", RED, "cat"), ("JPEG", "CMYK", BLUE, "dog"),
    ("PNG", "P", BLUE, "dog"), ("PNG", "L", None, None), ("PNG", "I;16", None, None),
])
def test_formats_and_modes(handler_and_context, fmt, mode, color, label):
    handler, context = handler_and_context
    result = one(handler, context, wire(image_bytes(color or (90, 90, 90), fmt=fmt, mode=mode)))
    if label:
        assert_prediction(result, label)
    else:  # grey images have no red/blue preference; they must still be answered
        assert result[0] == 200 and result[2]["label"] in ("cat", "dog")


def test_exif_orientation_is_applied(handler_and_context):
    """A 60x20 JPEG tagged 'rotate 90' is a 20x60 picture; the crop then shows its (blue) middle."""
    handler, context = handler_and_context
    img = Image.new("RGB", (60, 20), RED)
    img.paste(Image.new("RGB", (20, 20), BLUE), (20, 0))  # red | blue | red, left to right
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW -> red / blue / red, top to bottom
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    assert_prediction(one(handler, context, wire(buf.getvalue())), "dog")


def test_large_jpeg_uses_draft_decode_and_is_still_right(handler_and_context):
    handler, context = handler_and_context
    assert handler.draft_size == 36  # resize_size from model-meta.json
    assert_prediction(one(handler, context, wire(image_bytes(RED, size=(900, 700)))), "cat")


# --- rejected inputs -------------------------------------------------------------------------------


def tiny_bomb() -> bytes:
    """A small PNG whose pixel count (1200 x 1000) is above the test handler's 1 Mpx cap."""
    buf = io.BytesIO()
    Image.new("1", (1200, 1000)).save(buf, "PNG")
    return buf.getvalue()


BAD_INPUTS = {
    "empty": (wire(b""), 400, "empty"),
    "not an image": (wire(b"definitely not an image " * 10), 415, "not_an_image"),
    "truncated jpeg": (wire(image_bytes(RED, size=(200, 200))[:600]), 422, "corrupt"),
    "tiff": (wire(image_bytes(RED, fmt="TIFF")), 415, "unsupported_format"),
    "ico": (wire(image_bytes(RED, fmt="ICO")), 415, "unsupported_format"),
    "over-size bytes": (wire(b"\xff\xd8" + b"\0" * 300_000), 413, "too_large"),
    "decompression bomb": (wire(tiny_bomb()), 413, "decompression_bomb"),
    "malformed base64": (wire(b'{"data": "not base64 at all!"}', "application/json"), 400, "invalid_base64"),
    "malformed json": (wire(b'{"data": "abc', "application/json"), 400, "invalid_json"),
    "json without data": (wire(b'{"image": "abc"}', "application/json"), 400, "invalid_json"),
    "json array": (wire(b"[1, 2]", "application/json"), 400, "invalid_json"),
    "url-encoded form": (wire(b"x", "text/plain", field="garbage",
                              request_type="application/x-www-form-urlencoded"), 415, "unsupported_media_type"),
    "explanation request": (wire(image_bytes(RED), extra_headers={"explain": "True"}), 404, "explanations_disabled"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_gets_its_status_and_json_reason(handler_and_context, case):
    handler, context = handler_and_context
    request, status, reason = BAD_INPUTS[case]
    got_status, content_type, body = one(handler, context, request)
    assert (got_status, content_type) == (status, "application/json")
    assert body["error"] == reason and len(body["message"]) > 10
    assert_prediction(one(handler, context, wire(image_bytes(RED))), "cat")  # the handler carries on


def test_mixed_batch_only_the_bad_requests_fail(handler_and_context):
    handler, context = handler_and_context
    calls = []
    model = handler.forward
    handler.forward = lambda x: calls.append(x.shape[0]) or model(x)
    results = run_batch(handler, context, [
        wire(image_bytes(RED)), BAD_INPUTS["truncated jpeg"][0], wire(image_bytes(BLUE, fmt="PNG")),
        wire(b""), wire(json.dumps({"data": base64.b64encode(image_bytes(BLUE)).decode()}).encode(),
                        "application/json"),
    ])
    assert calls == [3]  # one forward pass for the three good images
    assert_prediction(results[0], "cat")
    assert results[1][0] == 422 and results[1][2]["error"] == "corrupt"
    assert_prediction(results[2], "dog")
    assert results[3][0] == 400 and results[3][2]["error"] == "empty"
    assert_prediction(results[4], "dog")


def test_all_bad_batch_skips_the_model(handler_and_context):
    handler, context = handler_and_context
    handler.forward = lambda x: pytest.fail("the model must not run when every request was rejected")
    results = run_batch(handler, context, [wire(b""), BAD_INPUTS["tiff"][0]])
    assert [r[0] for r in results] == [400, 415]


def test_batch_equals_single_requests(handler_and_context):
    handler, context = handler_and_context
    images = [image_bytes(c, size=s) for c, s in [(RED, (64, 48)), (BLUE, (80, 120)), ((120, 30, 160), (50, 50))]]
    singles = [one(handler, context, wire(b))[2]["probabilities"] for b in images]
    batch = [r[2]["probabilities"] for r in run_batch(handler, context, [wire(b) for b in images])]
    for s, b in zip(singles, batch):
        assert s == pytest.approx(b, abs=1e-5)


# --- several images per request --------------------------------------------------------------------


def multipart(*files):
    """A multipart form with one file per (field name, bytes, content type), as the frontend forwards it."""
    return {"parameters": [{"name": name, "contentType": ctype, "value": data} for name, data, ctype in files],
            "headers": [{"name": b"Content-Type", "value": b"multipart/form-data; boundary=x"}]}


def instances(*items):
    return wire(json.dumps({"instances": list(items)}).encode(), "application/json")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_answer(body, label):
    assert set(body) == {"label", "confidence", "probabilities", "model_version"} and body["label"] == label


def test_multipart_with_several_files_gets_a_list_in_form_order(handler_and_context):
    handler, context = handler_and_context
    truncated = image_bytes(RED, size=(200, 200))[:600]
    request = multipart(("a", image_bytes(BLUE), "image/jpeg"), ("b", truncated, "image/jpeg"),
                        ("c", image_bytes(RED, fmt="PNG"), "image/png"), ("d", image_bytes(BLUE), "image/jpeg"))
    status, content_type, body = one(handler, context, request)
    assert (status, content_type) == (200, "application/json") and len(body) == 4
    assert_answer(body[0], "dog")
    assert body[1]["error"] == "corrupt" and body[1]["status"] == 422 and body[1]["message"]
    assert_answer(body[2], "cat")
    assert_answer(body[3], "dog")


def test_json_instances_each_image_validated_on_its_own(handler_and_context):
    handler, context = handler_and_context
    status, _, body = one(handler, context, instances(
        b64(image_bytes(RED)), "***not base64***", {"data": b64(image_bytes(BLUE))}, 42,
        b64(image_bytes(RED, fmt="TIFF"))))
    assert status == 200 and len(body) == 5
    assert_answer(body[0], "cat")
    assert (body[1]["error"], body[1]["status"]) == ("invalid_base64", 400) and "instance 1" in body[1]["message"]
    assert_answer(body[2], "dog")
    assert (body[3]["error"], body[3]["status"]) == ("invalid_json", 400) and "instance 3" in body[3]["message"]
    assert (body[4]["error"], body[4]["status"]) == ("unsupported_format", 415)


def test_one_instance_is_still_a_list_and_the_answer_matches_the_single_form(handler_and_context):
    handler, context = handler_and_context
    data = image_bytes(BLUE, size=(80, 60))
    (_, _, listed), (_, _, single) = run_batch(handler, context, [instances(b64(data)), wire(data)])
    assert isinstance(listed, list) and listed == [single]


def test_list_and_single_requests_share_one_forward_pass(handler_and_context):
    handler, context = handler_and_context
    calls = []
    model = handler.forward
    handler.forward = lambda x: calls.append(x.shape[0]) or model(x)
    results = run_batch(handler, context, [
        wire(image_bytes(RED)),
        multipart(("x", image_bytes(BLUE), "image/jpeg"), ("y", b"", "image/jpeg"), ("z", image_bytes(RED),
                                                                                     "image/jpeg")),
        wire(b""),
    ])
    assert calls == [3]
    assert_prediction(results[0], "cat")
    assert [r.get("label", r.get("error")) for r in results[1][2]] == ["dog", "empty", "cat"]
    assert results[2][0] == 400 and results[2][2]["error"] == "empty"


def test_all_bad_list_request_skips_the_model(handler_and_context):
    handler, context = handler_and_context
    handler.forward = lambda x: pytest.fail("the model must not run when every image was rejected")
    status, _, body = one(handler, context, instances("", "@@@"))
    assert status == 200 and [b["error"] for b in body] == ["empty", "invalid_base64"]


@pytest.mark.parametrize("request_, reason", [
    (lambda: instances(*[b64(image_bytes(RED))] * 4), "too_many_images"),
    (lambda: multipart(*[(f"f{i}", image_bytes(RED, size=(40, 40), fmt="BMP"), "image/bmp") for i in range(3)]),
     "too_large"),
], ids=["count", "total bytes"])
def test_list_request_over_the_limits_is_refused_as_a_whole(model_dir, request_, reason):
    context = make_context(model_dir, {**HANDLER_CONFIG, "max_images_per_request": 3,
                                       "max_request_image_bytes": 5_000})
    handler = CatsDogsHandler()
    handler.initialize(context)
    status, _, body = one(handler, context, request_())
    assert status == 413 and body["error"] == reason and "several requests" in body["message"]


@pytest.mark.parametrize("body", [b'{"instances": []}', b'{"instances": "abc"}'], ids=["empty", "not a list"])
def test_malformed_instances_are_a_400(handler_and_context, body):
    handler, context = handler_and_context
    status, _, answer = one(handler, context, wire(body, "application/json"))
    assert status == 400 and answer["error"] in ("empty", "invalid_json") and "instances" in answer["message"]


def test_one_log_line_per_image_of_a_list_request(handler_and_context, caplog):
    handler, context = handler_and_context
    with caplog.at_level(logging.INFO, logger="catsdogs.predictions"):
        one(handler, context, instances(b64(image_bytes(RED)), "", b64(image_bytes(BLUE))))
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "catsdogs.predictions"]
    assert [(r["image_index"], r["images"], r["status"]) for r in records] == [(0, 3, 200), (1, 3, 400), (2, 3, 200)]
    assert {r["request_id"] for r in records} == {"req-0"} and records[1]["error"] == "empty"
    assert records[0]["label"] == "cat" and records[2]["label"] == "dog"


# --- metadata, metrics, logs -----------------------------------------------------------------------


def test_preprocessing_follows_the_archive_metadata(tmp_path):
    write_model_dir(tmp_path, image_size=24, resize_size=28, version="meta.24")
    handler = CatsDogsHandler()
    handler.initialize(make_context(tmp_path))
    seen = []
    model = handler.forward
    handler.forward = lambda x: seen.append(tuple(x.shape)) or model(x)
    result = one(handler, make_context(tmp_path), wire(image_bytes(RED, size=(300, 200))))
    handler.context = None
    assert seen == [(1, 3, 24, 24)] and result[2]["model_version"] == "meta.24"
    assert handler.draft_size == 28


def test_class_order_mismatch_is_refused(tmp_path):
    write_model_dir(tmp_path)
    (tmp_path / "index_to_name.json").write_text(json.dumps({"0": "dog", "1": "cat"}))
    with pytest.raises(RuntimeError, match="disagrees with the class order"):
        CatsDogsHandler().initialize(make_context(tmp_path))


def test_loads_under_torchserve_mock_context(model_dir):
    """BaseHandler loads the TorchScript file from the manifest's serializedFile (no model code)."""
    context = MockContext(model_pt_file="model.pt", model_dir=str(model_dir), model_file=None, gpu_id=None,
                          model_name="catsdogs")
    handler = CatsDogsHandler()
    handler.initialize(context)
    assert isinstance(handler.model, torch.jit.ScriptModule)
    assert handler.max_image_bytes == 8 * 1024 * 1024  # defaults without a model-config `handler:` section
    assert json.loads(handler.describe_handle())["version"] == "test.0001"


def test_custom_metrics_are_emitted(handler_and_context, caplog):
    handler, context = handler_and_context
    with caplog.at_level(logging.INFO):
        run_batch(handler, context, [wire(image_bytes(RED)), wire(b""), wire(image_bytes(BLUE))])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]

    def find(prefix):
        return [line for line in lines if line.startswith(prefix)]

    assert find("[METRICS]catsdogs_predictions_total.Count:1|#model_name:catsdogs,model_version:test.0001,label:cat")
    assert find("[METRICS]catsdogs_predictions_total.Count:1|#model_name:catsdogs,model_version:test.0001,label:dog")
    assert find("[METRICS]catsdogs_rejected_inputs_total.Count:1|#model_name:catsdogs,model_version:test.0001,"
                "reason:empty")
    assert len(find("[METRICS]catsdogs_prediction_confidence.Probability:")) == 2
    assert len(find("[METRICS]catsdogs_preprocess_seconds.Seconds:")) == 2
    assert all("#type:HISTOGRAM" in line for line in find("[METRICS]catsdogs_prediction_confidence"))
    assert not [r for r in caplog.records if "not declared" in r.getMessage()]


def test_one_structured_log_line_per_request_without_image_bytes(handler_and_context, caplog):
    handler, context = handler_and_context
    jpeg = image_bytes(RED, size=(120, 90))
    with caplog.at_level(logging.INFO, logger="catsdogs.predictions"):
        run_batch(handler, context, [wire(jpeg), BAD_INPUTS["tiff"][0]])
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "catsdogs.predictions"]
    assert len(records) == 2
    ok, bad = sorted(records, key=lambda r: r["request_id"])
    assert ok["request_id"] == "req-0" and ok["status"] == 200 and ok["label"] == "cat"
    assert ok["model_version"] == "test.0001" and ok["input_bytes"] == len(jpeg)
    assert ok["input_format"] == "JPEG" and ok["input_kind"] == "raw" and ok["confidence"] > 0.5
    assert ok["preprocess_ms"] >= 0 and ok["handler_ms"] >= ok["preprocess_ms"] and ok["batch_size"] == 2
    assert bad["request_id"] == "req-1" and bad["status"] == 415 and bad["error"] == "unsupported_format"
    raw_text = " ".join(r.getMessage() for r in caplog.records)
    assert base64.b64encode(jpeg)[:40].decode() not in raw_text and not re.search(r"\\x[0-9a-f]{2}", raw_text)


ENGINE_CASES = [("torchscript", "f32"), ("openvino", "f32"), ("openvino", "bf16")]


@pytest.mark.parametrize("engine,precision", ENGINE_CASES)
def test_each_engine_gives_the_exported_models_answers(tmp_path, monkeypatch, engine, precision):
    """The handler on each engine (CATSDOGS_ENGINE / CATSDOGS_PRECISION, as an operator overrides the archive)
    answers like the TorchScript model as exported, and describes the engine it serves with."""
    if precision == "bf16" and "BF16" not in engines.cpu_capabilities():
        pytest.skip(f"this CPU has no native bf16 (OpenVINO capabilities {sorted(engines.cpu_capabilities())})")
    model_dir = tmp_path / "model"
    write_model_dir(model_dir, engine={"gated": ["bf16"]})  # as if the export's accuracy gate passed bf16
    plain = CatsDogsHandler()
    plain.initialize(make_context(model_dir))
    monkeypatch.setenv(engines.ENGINE_ENV, engine)
    monkeypatch.setenv(engines.PRECISION_ENV, precision)
    served = CatsDogsHandler()
    served.initialize(make_context(model_dir, {**HANDLER_CONFIG, "optimize": True}))
    assert (served.engine, served.precision) == (engine, precision)
    requests_ = [wire(image_bytes(RED)), wire(image_bytes(BLUE, size=(90, 70))), wire(image_bytes((120, 30, 160)))]
    expected = [r[2] for r in run_batch(plain, make_context(model_dir), requests_)]
    got = [r[2] for r in run_batch(served, make_context(model_dir), requests_)]
    tolerance = 1e-5 if precision == "f32" else 2e-2
    for e, g in zip(expected, got):
        assert e["label"] == g["label"] and e["probabilities"] == pytest.approx(g["probabilities"], abs=tolerance)
    described = json.loads(served.describe_handle())["serving_engine"]
    assert (described["engine"], described["precision"]) == (engine, precision)


def test_a_precision_the_gate_did_not_pass_is_served_as_f32(model_dir, monkeypatch):
    """An archive whose model-meta.json records no passed bf16 gate is never served in bf16, even when asked."""
    monkeypatch.setenv(engines.ENGINE_ENV, "openvino")
    monkeypatch.setenv(engines.PRECISION_ENV, "bf16")
    handler = CatsDogsHandler()
    handler.initialize(make_context(model_dir, {**HANDLER_CONFIG, "optimize": True}))
    assert (handler.engine, handler.precision) == ("openvino", "f32")
    assert "f32" in handler.engine_reason
