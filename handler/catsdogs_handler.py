"""TorchServe handler for the catsdogs classifier.

Built on TorchServe's BaseHandler: the base class loads the TorchScript file named in the archive's
manifest (`serializedFile`, no model code in the archive) and runs `handle()`. This class overrides
only what differs: the engine that runs the forward pass (model/engines.py: OpenVINO compiled from the
TorchScript model at load, or TorchScript itself), per-request input parsing and validation, the batch
forward pass that skips rejected requests, the JSON response, metrics and one structured log line per
prediction.

Everything about preprocessing (sizes, mean/std, class order) comes from `model-meta.json` inside
the archive and from `model/preprocess.py`, which the archive also carries.

TorchServe imports this file as a top-level module and requires it to define exactly one class,
so the helpers below are plain functions.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path

import torch
from PIL import Image
from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

import model.preprocess as preprocess_module
from catsdogs import contract
from catsdogs.contract import META_FILE, read_meta
from model import engines
from model.preprocess import ImageError, decode_image, eval_geometry, eval_normalize
from model.runtime import lowered_priority, reuse_freed_memory

logger = logging.getLogger(__name__)
prediction_log = logging.getLogger("catsdogs.predictions")

# HTTP status for each rejection reason (decode_image's reasons plus the request-level ones below).
STATUS_BY_REASON = {
    "empty": 400,
    "invalid_json": 400,
    "invalid_base64": 400,
    "not_an_image": 415,
    "unsupported_format": 415,
    "unsupported_media_type": 415,
    "corrupt": 422,
    "too_large": 413,
    "too_many_images": 413,
    "decompression_bomb": 413,
    "explanations_disabled": 404,
    "internal_error": 500,
}
PHRASE_BY_STATUS = {400: "Bad Request", 404: "Not Found", 413: "Payload Too Large",
                    415: "Unsupported Media Type", 422: "Unprocessable Entity", 500: "Internal Server Error"}

# Custom metric names; declared (with their dimensions, in this order) in serving/metrics.yaml,
# because TorchServe's Prometheus endpoint only exports metrics that the metrics config declares.
PREDICTIONS_METRIC = "catsdogs_predictions_total"
CONFIDENCE_METRIC = "catsdogs_prediction_confidence"
REJECTED_METRIC = "catsdogs_rejected_inputs_total"
PREPROCESS_METRIC = "catsdogs_preprocess_seconds"


def header(headers: dict, key: str) -> str | None:
    """An HTTP header's value by case-insensitive name (None when absent or not text)."""
    return next((v for k, v in headers.items() if k.lower() == key.lower() and isinstance(v, str)), None)


def request_content_types(headers: dict, field: str) -> tuple[str, str]:
    """(content type of the form field / body, content type of the whole request), lower-case."""
    field_headers = headers.get(field)
    field_type = field_headers.get("content-type", "") if isinstance(field_headers, dict) else ""
    return (field_type or "").lower(), (header(headers, "content-type") or "").lower()


def pick_field(row: dict):
    """The request's payload: the raw body, or the first uploaded file of a multipart form (any field name)."""
    if not row:
        raise ImageError("empty", "empty request: no body and no form fields")
    for name, value in row.items():
        if isinstance(value, (bytes, bytearray)):
            return name, value
    return next(iter(row.items()))


def decode_base64(text: str) -> bytes:
    """Standard base64 (line breaks allowed, optional `data:image/...;base64,` prefix) -> bytes."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("invalid_base64", f"field 'data' is not valid base64: {exc}") from exc


def extract_images(row: dict, headers: dict) -> tuple[list, str, bool]:
    """One request -> (payloads, input kind, several).

    Each payload is one image's bytes, or the ImageError of that image alone (bad base64 in one JSON
    instance). `several` is True for the list forms, answered with a list: a multipart form with two or
    more files (one per field name, answered in form order) and JSON {"instances": [...]}, each instance
    a base64 string or {"data": "<base64>"}. Problems with the request as a whole raise ImageError.

    Raw bodies arrive as {"body": bytes}; multipart forms as {field: bytes, ...} (TorchServe 0.12's worker
    keeps one value per field name, so files sharing a name arrive as one); JSON bodies arrive already
    parsed ({"body": {...}}), or as the raw bytes when TorchServe could not parse them.
    """
    name, value = pick_field(row)
    field_type, request_type = request_content_types(headers, name)
    if request_type.startswith("application/x-www-form-urlencoded"):
        raise ImageError("unsupported_media_type",
                         "the body was sent as application/x-www-form-urlencoded (curl --data-binary without "
                         "a Content-Type), which mangles binary data; use `curl -T image.jpg`, add "
                         "-H 'Content-Type: application/octet-stream', or upload with -F data=@image.jpg")
    files = [bytes(v) for v in row.values() if isinstance(v, (bytes, bytearray))]
    if len(files) > 1 and name != "body":
        return files, "multipart", True
    if isinstance(value, (bytes, bytearray)):
        if field_type.startswith("application/json"):
            raise ImageError("invalid_json", "body is declared application/json but is not valid JSON; "
                                             'send {"data": "<base64 image>"} or {"instances": ["<base64>", ...]}')
        return [bytes(value)], "raw" if name == "body" else "multipart", False
    if isinstance(value, dict) and "instances" in value:
        instances = value["instances"]
        if not isinstance(instances, list) or not instances:
            raise ImageError("invalid_json" if not isinstance(instances, list) else "empty",
                             'field "instances" must be a non-empty list of base64 strings or {"data": "<base64>"} '
                             "objects")
        return [instance_bytes(item, i) for i, item in enumerate(instances)], "json", True
    if isinstance(value, dict):
        data = value.get("data")
        if not isinstance(data, str):
            raise ImageError("invalid_json", 'JSON body must be an object with a base64 string field "data" (or a '
                                             f'list "instances"), got keys {sorted(value)[:5]}')
        return [decode_base64(data)], "json", False
    if isinstance(value, str):  # text/* bodies arrive decoded: accept base64 text
        return [decode_base64(value)], "text", False
    raise ImageError("invalid_json", f'JSON body must be an object {{"data": "<base64>"}}, got {type(value).__name__}')


def instance_bytes(item, index: int):
    """One entry of "instances" -> its image bytes, or the ImageError that answers for it alone."""
    data = item.get("data") if isinstance(item, dict) else item
    if not isinstance(data, str):
        return ImageError("invalid_json", f"instance {index} must be a base64 string or {{\"data\": \"<base64>\"}}, "
                                          f"got {type(item).__name__}")
    try:
        return decode_base64(data)
    except ImageError as exc:
        return ImageError(exc.reason, f"instance {index}: {exc}")


def check_request_limits(payloads: list, max_images: int, max_total_bytes: int) -> None:
    """A list request over the image count or total size limit is refused as a whole (413)."""
    if len(payloads) > max_images:
        raise ImageError("too_many_images", f"{len(payloads)} images in one request, above the limit of {max_images}; "
                                            "send them in several requests")
    total = sum(len(p) for p in payloads if isinstance(p, bytes))
    if total > max_total_bytes:
        raise ImageError("too_large", f"the request's images total {total} bytes, above the limit of "
                                      f"{max_total_bytes} bytes per request; send them in several requests")


def image_format(data: bytes) -> str | None:
    """The container format PIL detected (for logs only; reads just the header)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except (OSError, ValueError, SyntaxError):  # logging aid only; the image was already decoded once
        return None


def serving_forward(model, meta: dict, device: torch.device, optimize: bool, asked: tuple | None = None):
    """(forward, engine, precision, reason): the archive's TorchScript model on the engine model.engines.choose picks
    for `device`, this CPU and the export's accuracy gate (model-meta.json "engine"), as `asked` (engine,
    precision), by default what the environment's CATSDOGS_ENGINE / CATSDOGS_PRECISION or the archive ask for.
    The forward takes uint8 batches (eval_geometry's output) and normalises them itself (eval_normalize; OpenVINO
    inside its compiled graph). int8 models and `optimize: false` run as exported on TorchScript. Every engine's
    output is checked against the exported model when it is built."""
    record = meta.get("engine") or {}
    engine, precision = asked or engines.requested(record)
    if meta.get("quantized") or not optimize:
        engine = "torchscript"
    engine, precision, reason = engines.choose(engine, precision, device.type, engines.cpu_capabilities(),
                                               gated=tuple(record.get("gated", ())))
    if meta.get("quantized") or not optimize:
        normalize = eval_normalize(meta)
        return lambda x: model(normalize(x)), engine, precision, "as exported (int8 model or handler.optimize: false)"
    size = int(meta["image_size"])
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, device=device)
    try:
        forward = engines.compile_forward(model, example, engine, precision, normalize=meta)
    except Exception as exc:
        raise RuntimeError(f"building the {engine} {precision} forward pass failed ({exc}); set serve.engine: "
                           "torchscript in params.yaml (or CATSDOGS_ENGINE=torchscript for the workers), or "
                           "handler.optimize: false in model-config.yaml") from exc
    if engine == "openvino":
        engines.leave_cores_to_openvino()
    return forward, engine, precision, reason


def warm_up(forward, image_size: int, batch_sizes, runs: int = 3) -> None:
    """`runs` forwards at every batch size the worker will see, so no request pays an engine's first-run costs
    (TorchScript's profiling runs and graph optimization, OpenVINO's per-shape kernel preparation)."""
    with torch.inference_mode():
        for n in batch_sizes:
            for _ in range(runs):
                forward(torch.zeros(n, 3, image_size, image_size, dtype=torch.uint8))


def error_body(reason: str, message: str) -> dict:
    return {"error": reason, "message": message}


class CatsDogsHandler(BaseHandler):
    """Image bytes in, {"label", "confidence", "probabilities", "model_version"} out: one per single-image
    request, a list in order for a request with several images."""

    def initialize(self, context):
        reuse_freed_memory()  # before the model's first forward (model/runtime.py)
        # limits and settings: model-config.yaml's `handler:` section, else the contract's defaults
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        # Load, optimize and warm up at low CPU priority, so that a version being registered next to a serving
        # one (deploy) takes only the CPU the serving workers leave; back to normal priority before serving.
        with lowered_priority(int(settings.get("background_nice", 0))) as lowered:
            self._load(context, settings)
        logger.info("catsdogs handler ready: model %s version %s, classes %s, input %s px, engine %s %s (%s), "
                    "threads %d, loaded at low priority %s, preprocessing from %s", self.model_name, self.version,
                    self.classes, self.meta["image_size"], self.engine, self.precision, self.engine_reason,
                    torch.get_num_threads(), lowered, preprocess_module.__file__)

    def _load(self, context, settings: dict) -> None:
        with warnings.catch_warnings():  # TorchServe 0.12 serves TorchScript: torch 2.14's deprecation notice is noise
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)
            super().initialize(context)  # loads the TorchScript file and index_to_name.json
        model_dir = Path(context.system_properties["model_dir"])
        self.meta = read_meta(model_dir / META_FILE)
        self.classes = list(self.meta["classes"])
        if self.mapping and [self.mapping[str(i)] for i in range(len(self.mapping))] != self.classes:
            raise RuntimeError(f"{model_dir}: index_to_name.json {self.mapping} disagrees with the class order "
                               f"{self.classes} in {META_FILE}; rebuild the archive from one export")
        self.version = str(self.meta["version"])
        self.transform = eval_geometry(self.meta)  # uint8; the forward normalises (serving_forward)
        self.max_image_bytes = int(settings.get("max_image_bytes", contract.MAX_IMAGE_BYTES))
        self.max_image_pixels = int(settings.get("max_image_pixels", contract.MAX_IMAGE_PIXELS))
        self.max_images = int(settings.get("max_images_per_request", contract.MAX_IMAGES_PER_REQUEST))
        self.max_request_image_bytes = int(settings.get("max_request_image_bytes", contract.MAX_REQUEST_IMAGE_BYTES))
        self.draft_size = int(self.meta["resize_size"])  # JPEG DCT-scaled decode down to the resize size
        threads = int(os.environ.get("CATSDOGS_TORCH_THREADS", settings.get("torch_threads", 0)) or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.model_name = getattr(context, "model_name", None) or context.manifest["model"].get("modelName", "")
        self._state = None
        self.forward, self.engine, self.precision, self.engine_reason = serving_forward(
            self.model, self.meta, self.device, bool(settings.get("optimize", False)))
        batch_size = int((getattr(context, "model_yaml_config", None) or {}).get("batchSize", 1))
        warm_up(self.forward, int(self.meta["image_size"]), range(1, batch_size + 1))

    # --- BaseHandler hooks -------------------------------------------------------------------------

    def preprocess(self, data):
        """Decode and transform every image of every request on its own; bad ones are recorded, never raised."""
        self._state = state = {"start": time.perf_counter(), "errors": {}, "requests": {}}
        tensors = []
        for idx, row in enumerate(data):
            try:
                if self._header(idx, "explain") == "True":
                    raise ImageError("explanations_disabled", "explanations are not served for this model; "
                                                              "use /predictions")
                payloads, kind, several = extract_images(row or {}, self._headers(idx))
                if several:
                    check_request_limits(payloads, self.max_images, self.max_request_image_bytes)
            except ImageError as exc:
                state["errors"][idx] = (exc.reason, str(exc))
                continue
            except Exception as exc:  # one bad request must not fail the batch or the worker
                logger.exception("unexpected error while reading request %s", self._request_id(idx))
                state["errors"][idx] = ("internal_error", f"could not process this input: {type(exc).__name__}")
                continue
            images = []
            for payload in payloads:
                info, tensor = self._prepare(idx, payload, kind)
                if tensor is not None:
                    info["row"] = len(tensors)
                    tensors.append(tensor)
                images.append(info)
            state["requests"][idx] = {"several": several, "images": images}
        return torch.stack(tensors) if tensors else None

    def _prepare(self, idx: int, payload, kind: str) -> tuple[dict, torch.Tensor | None]:
        """One image's bytes (or its ImageError) -> (log fields, tensor or None with info["error"] set)."""
        began = time.perf_counter()
        info = {"input_kind": kind}
        try:
            if isinstance(payload, ImageError):
                raise payload
            info["input_bytes"] = len(payload)
            image = decode_image(payload, max_pixels=self.max_image_pixels, draft_size=self.draft_size,
                                 max_bytes=self.max_image_bytes)
            tensor = self.transform(image)
        except ImageError as exc:
            info["error"] = (exc.reason, str(exc))
            return info, None
        except Exception as exc:  # one bad image must not fail the batch or the worker
            logger.exception("unexpected error while preprocessing request %s", self._request_id(idx))
            info["error"] = ("internal_error", f"could not process this input: {type(exc).__name__}")
            return info, None
        seconds = time.perf_counter() - began
        info.update(input_format=image_format(payload), preprocess_ms=round(seconds * 1000, 2))
        self._observe(PREPROCESS_METRIC, seconds, [], idx)
        return info, tensor

    def inference(self, data, *args, **kwargs):
        if data is None:  # every image in the batch was rejected
            return None
        began = time.perf_counter()
        with torch.inference_mode():
            probabilities = torch.softmax(self.forward(data.to(self.device)).float(), dim=1).cpu()
        self._state["inference_ms"] = round((time.perf_counter() - began) * 1000, 2)
        return probabilities

    def postprocess(self, data):
        state = self._state
        size = len(state["requests"]) + len(state["errors"])
        results: list = [None] * size
        handler_ms = round((time.perf_counter() - state["start"]) * 1000, 2)
        common = {"handler_ms": handler_ms, "batch_size": size}
        for idx, (reason, message) in state["errors"].items():
            results[idx] = error_body(reason, message)
            status = STATUS_BY_REASON.get(reason, 400)
            self._respond(idx, status)
            self._count(REJECTED_METRIC, [reason], idx)
            self._log(idx, status=status, error=reason, **common)
        for idx, request in state["requests"].items():
            images = request["images"]
            answers = []
            for position, info in enumerate(images):
                where = {"image_index": position, "images": len(images)} if request["several"] else {}
                answers.append(self._answer(idx, info, data, {**where, **common}))
            if request["several"]:
                results[idx] = [body for body, _ in answers]
                self._respond(idx, 200)
            else:
                (body, status), = answers
                results[idx] = {k: v for k, v in body.items() if k != "status"}
                self._respond(idx, status)
        self._state = None
        return results

    def _answer(self, idx: int, info: dict, probabilities, fields: dict) -> tuple[dict, int]:
        """One image's answer (prediction, or error with its status) and HTTP status; records metrics and log."""
        inputs = {k: v for k, v in info.items() if k not in ("row", "error")}
        if "error" in info:
            reason, message = info["error"]
            status = STATUS_BY_REASON.get(reason, 400)
            self._count(REJECTED_METRIC, [reason], idx)
            self._log(idx, status=status, error=reason, **inputs, **fields)
            return {**error_body(reason, message), "status": status}, status
        body = contract.prediction(self.classes, probabilities[info["row"]], self.version)
        label, confidence = body["label"], body["confidence"]
        self._count(PREDICTIONS_METRIC, [label], idx)
        self._observe(CONFIDENCE_METRIC, confidence, [label], idx)
        self._log(idx, status=200, label=label, confidence=confidence, inference_ms=self._state.get("inference_ms"),
                  **inputs, **fields)
        return body, 200

    def _is_explain(self):
        # Explanations are not exposed: TorchServe always routes /explanations to the handler, so
        # preprocess() answers each such request with 404 instead of running Captum.
        return False

    def describe_handle(self):
        """`GET /models/<name>?customized=true` -> the model's metadata (contract.parse_description reads it)."""
        keys = ("version", "classes", "arch", "pretrained", "image_size", "resize_size", "git_commit", "data_hash",
                "mlflow_run_id", "mlflow_model_version", "registered_model", "test_metrics", "drift_baseline",
                "created_at")
        served = {"engine": self.engine, "precision": self.precision, "reason": self.engine_reason}
        return json.dumps({**{k: self.meta[k] for k in keys if k in self.meta}, "serving_engine": served})

    # --- helpers -----------------------------------------------------------------------------------

    def _headers(self, idx: int) -> dict:
        try:
            return self.context.get_all_request_header(idx) or {}
        except (AttributeError, IndexError, TypeError):
            return {}

    def _header(self, idx: int, key: str):
        return header(self._headers(idx), key)

    def _request_id(self, idx: int):
        getter = getattr(self.context, "get_request_id", None)
        return getter(idx) if getter else None

    def _respond(self, idx: int, status: int) -> None:
        self.context.set_response_status(status, PHRASE_BY_STATUS.get(status, "OK" if status == 200 else ""), idx=idx)
        self.context.set_response_content_type(idx, "application/json")

    def _metric(self, name: str, metric_type: MetricTypes):
        try:
            return self.context.metrics.get_metric(name, metric_type)
        except (MetricsCacheKeyError, AttributeError):  # undeclared metric: never break a prediction
            logger.warning("metric %s is not declared in the metrics config; not recorded", name)
            return None

    def _count(self, name: str, dims: list, idx: int) -> None:
        metric = self._metric(name, MetricTypes.COUNTER)
        if metric is not None:
            metric.add_or_update(1, [self.model_name, self.version, *dims], self._request_id(idx) or "")

    def _observe(self, name: str, value: float, dims: list, idx: int) -> None:
        metric = self._metric(name, MetricTypes.HISTOGRAM)
        if metric is not None:
            metric.add_or_update(value, [self.model_name, self.version, *dims], self._request_id(idx) or "")

    def _log(self, idx: int, **fields) -> None:
        record = {"event": contract.PREDICTION_EVENT, "request_id": self._request_id(idx), "model": self.model_name,
                  "model_version": self.version, **fields}
        prediction_log.info(json.dumps(record, sort_keys=True))
