"""The contract between the stages: every fact that crosses a stage boundary, defined once.

Training writes model-meta.json, the archive stage names the .mar after the model, serving writes
serve.json, and deploy / loadtest / monitoring / benchmarks read them; all of them import the names,
paths, schemas, limits, ports and MLflow settings from here instead of re-typing them. Standard library
only (PyYAML is imported where params.yaml is read): TorchServe's handler imports this module from the
archive, and `--help` of every CLI must not wait for torch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO_ROOT / "params.yaml"

# --- paths (relative to the repo root, where make and dvc run) --------------------------------------
PREPARED_DIR = Path("data/prepared")        # prepare stage output: manifest.csv, stats.json, the image cache
TRAIN_DIR = Path("artifacts/train")          # train stage output: best.pt, history
MODEL_DIR = Path("artifacts/model")          # export stage output: model.pt, model-meta.json, index_to_name.json
EVAL_DIR = Path("artifacts/eval")            # evaluate stage output: metrics.json, predictions.csv
MODEL_STORE = Path("model-store")            # archive stage output: <model name>.mar
RUN_DIR = Path(os.environ.get("CATSDOGS_SERVE_DIR", ".serve"))  # a TorchServe instance (python -m serving start)
META_FILE = "model-meta.json"
INDEX_TO_NAME_FILE = "index_to_name.json"
SERVE_STATE_FILE = "serve.json"
KEY_FILE = "key_file.json"
# The real photo set on developer/CI machines, next to the repository (never committed; may be absent).
SHARED_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "dogs-vs-cats-10k.tar"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")  # files sent to the model by clients

# --- ports: TorchServe's own defaults; config.properties sets the ones actually used ------------------
PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}
GRPC_PORTS = (7070, 7071)
LOOPBACK = "127.0.0.1"
DEFAULT_URLS = {api: f"http://{LOOPBACK}:{port}" for api, port in PORTS.items()}

# --- the serving container (Dockerfile, docker/entrypoint.py, deploy/k8s) -----------------------------
# torch.set_num_threads of every worker; the handler reads it, docker/entrypoint.py sets it from the CPU limit.
TORCH_THREADS_ENV = "CATSDOGS_TORCH_THREADS"
# The frontend's JVM heap the entrypoint sets (vmargs) when the config sets none: a quarter of the container's
# memory limit, within these bounds (MiB); the rest of the limit is for the Python workers (the model).
JVM_HEAP_MB = (256, 1024)
# The gateway in front of several replicas (deploy/k8s/gateway-*.yaml): clients send its token (a Secret), it
# answers 401 without one; replicas behind it run without TorchServe's per-process keys. Its port is the
# inference port, so clients change only the host name (Service catsdogs-gateway).
GATEWAY_PORT = PORTS["inference"]

# --- input limits (defaults; handler/model-config.yaml `handler:` and params.yaml data.max_image_pixels
#     are the knobs, tests/test_contract.py checks they agree with these) ---------------------------------
MAX_IMAGE_PIXELS = 40_000_000                # width x height above which a decode is refused (bomb guard)
MAX_IMAGE_BYTES = 8 * 1024 * 1024            # one image's bytes (after base64 decoding)
MAX_IMAGES_PER_REQUEST = 16
MAX_REQUEST_IMAGE_BYTES = 8 * 1024 * 1024    # sum of one request's image bytes

# --- MLflow ------------------------------------------------------------------------------------------
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CANDIDATE_ALIAS = "candidate"                # set by the export stage on the new registry version
CHAMPION_ALIAS = "champion"                  # moved by deploy/rollback to the version served by default


class ContractError(ValueError):
    """A file that crosses a stage boundary is missing or malformed; the message says which and what to do."""


def read_params(path: Path | str = PARAMS_FILE) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path} not found: run from the repository root (params.yaml holds serve.model_name)")
    return yaml.safe_load(path.read_text()) or {}


def model_name(params: dict | None = None) -> str:
    """The served/registered model name: params.yaml serve.model_name (the only place it is written)."""
    params = read_params() if params is None else params
    name = (params.get("serve") or {}).get("model_name")
    if not name or not isinstance(name, str):
        raise ContractError(f"{PARAMS_FILE}: serve.model_name is not set; add `serve: {{model_name: <name>}}`")
    return name


def load_models_names(load_models: str) -> list[str]:
    """Model names of a TorchServe load_models value ("catsdogs=catsdogs.mar,b.mar" -> catsdogs, b; ALL -> [])."""
    return [m.split("=", 1)[0].strip().removesuffix(".mar") for m in load_models.split(",")
            if m.strip() and m.strip().lower() != "all"]


def archive_path(name: str | None = None, store: Path | str = MODEL_STORE) -> Path:
    """model-store/<model name>.mar: what the archive stage writes and serving loads."""
    return Path(store) / f"{name or model_name()}.mar"


def tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the local SQLite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def experiment(suffix: str = "") -> str:
    """MLflow experiment of the pipeline (suffix "monitoring": of the live checks); named after the model."""
    return model_name() + (f"-{suffix}" if suffix else "")


# --- model-meta.json -----------------------------------------------------------------------------------
META_REQUIRED = ("classes", "image_size", "resize_size", "mean", "std", "version")


def write_meta(meta: dict, out_dir: Path | str) -> Path:
    """model-meta.json (everything) and index_to_name.json (TorchServe convention) derived from it."""
    out_dir = Path(out_dir)
    check_meta(meta, out_dir / META_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    index_to_name = {str(i): name for i, name in enumerate(meta["classes"])}
    (out_dir / INDEX_TO_NAME_FILE).write_text(json.dumps(index_to_name, indent=2) + "\n")
    return out_dir / META_FILE


def check_meta(meta: dict, where: Path | str = META_FILE) -> dict:
    missing = [k for k in META_REQUIRED if k not in meta]
    if missing:
        raise ContractError(f"{where}: model metadata lacks {', '.join(missing)}; re-run `python -m training export`")
    return meta


def read_meta(path: Path | str = MODEL_DIR / META_FILE) -> dict:
    """model-meta.json (a file, or the export directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / META_FILE
    if not path.is_file():
        raise ContractError(f"{path} not found: run the export stage (`make export`)")
    return check_meta(json.loads(path.read_text()), path)


def parse_description(description) -> dict:
    """describe-model answer (`GET /models/<name>[/<version>]?customized=true`) -> the model metadata dict.

    TorchServe passes the handler's describe_handle() JSON through as text (or, in some versions, parsed).
    """
    entry = description[0] if isinstance(description, list) and description else description
    raw = entry.get("customizedMetadata") if isinstance(entry, dict) else None
    if raw is None:
        raise ContractError("the describe-model answer has no customizedMetadata; is this repo's handler serving "
                            "the model (it implements describe_handle)?")
    try:
        meta = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise ContractError(f"customizedMetadata is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ContractError(f"customizedMetadata is {type(meta).__name__}, not a JSON object")
    return dict(meta)


# --- serve.json: where a running TorchServe is ---------------------------------------------------------
SERVE_REQUIRED = ("pid", "inference_url", "management_url", "metrics_url", "key_file", "log_dir", "model_store",
                  "models")


def write_serve_state(run_dir: Path | str, state: dict) -> Path:
    missing = [k for k in SERVE_REQUIRED if k not in state]
    if missing:
        raise ContractError(f"serve.json state lacks {', '.join(missing)}")
    path = Path(run_dir) / SERVE_STATE_FILE
    path.write_text(json.dumps(state, indent=2) + "\n")
    return path


def read_serve_state(run_dir: Path | str) -> dict | None:
    """<run_dir>/serve.json, None when no server was started from there."""
    path = Path(run_dir) / SERVE_STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    missing = [k for k in SERVE_REQUIRED if k not in state]
    if missing:
        raise ContractError(f"{path} lacks {', '.join(missing)}: written by another version of "
                            f"`python -m serving start`; stop that server and start it again")
    return state


# --- the prediction response (made by the handler, checked by every client) ----------------------------
PREDICTION_KEYS = frozenset({"label", "confidence", "probabilities", "model_version"})
# the "event" of the handler's one JSON line per request in model_log.log (what monitoring/logs.py reads)
PREDICTION_EVENT = "prediction"


def prediction(classes, probabilities, version: str) -> dict:
    """The handler's answer for one image: the most probable class, its probability, all of them, the version."""
    probs = [float(p) for p in probabilities]
    best = max(range(len(probs)), key=probs.__getitem__)
    return {"label": classes[best], "confidence": round(probs[best], 6),
            "probabilities": {name: round(p, 6) for name, p in zip(classes, probs)}, "model_version": version}


def check_prediction(body, classes=None, version: str | None = None) -> str | None:
    """None when `body` (parsed JSON) is a well-formed prediction, else what is wrong with it.

    Well formed: exactly PREDICTION_KEYS; probabilities maps each class (in `classes` order when given) to a
    number in [0, 1] summing to 1; label is the most probable class and confidence its probability;
    model_version is a non-empty string, equal to `version` when one is expected.
    """
    if not isinstance(body, dict):
        return f"response is {type(body).__name__}, not a JSON object: {str(body)[:200]}"
    if set(body) != PREDICTION_KEYS:
        return f"keys {sorted(body)} != {sorted(PREDICTION_KEYS)}"
    probs = body["probabilities"]
    if not isinstance(probs, dict) or not probs:
        return "probabilities is not a non-empty object"
    if classes is not None and list(probs) != list(classes):
        return f"probability classes {list(probs)} != {list(classes)}"
    values = list(probs.values())
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
        return f"probabilities {probs} are not numbers in [0, 1]"
    if not math.isclose(sum(values), 1.0, abs_tol=1e-3):
        return f"probabilities sum to {sum(values):.4f}, not 1"
    if body["label"] not in probs:
        return f"label {body['label']!r} is not one of {list(probs)}"
    confidence = body["confidence"]
    if not isinstance(confidence, (int, float)) or not math.isclose(confidence, probs[body["label"]], abs_tol=1e-6):
        return f"confidence {confidence} != probability of {body['label']!r} {probs[body['label']]}"
    if probs[body["label"]] < max(values) - 1e-6:
        return f"label {body['label']!r} is not the most probable class ({probs})"
    if not isinstance(body["model_version"], str) or not body["model_version"]:
        return "model_version is empty"
    if version is not None and body["model_version"] != str(version):
        return f"answered by version {body['model_version']!r}, expected {version!r}"
    return None


# --- where the server is: one set of flags for every CLI -----------------------------------------------

def add_server_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--run-dir, explicit URLs, key file, model name and timeout (env CATSDOGS_* for the URLs and key file).

    serving.client.client_from_args() turns the parsed flags into a client.
    """
    env = os.environ.get
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR,
                        help=f"run directory of `python -m serving start`: {SERVE_STATE_FILE} (URLs, model store, "
                             f"log dir), {KEY_FILE} (default {RUN_DIR}, env CATSDOGS_SERVE_DIR)")
    parser.add_argument("--inference-url", default=env("CATSDOGS_INFERENCE_URL"),
                        help="inference base URL instead of the run directory's (env CATSDOGS_INFERENCE_URL)")
    parser.add_argument("--management-url", default=env("CATSDOGS_MANAGEMENT_URL"),
                        help="management base URL, with --inference-url (env CATSDOGS_MANAGEMENT_URL)")
    parser.add_argument("--metrics-url", default=env("CATSDOGS_METRICS_URL"),
                        help="metrics base URL (env CATSDOGS_METRICS_URL)")
    parser.add_argument("--key-file", type=Path, default=env("CATSDOGS_KEY_FILE"),
                        help=f"TorchServe {KEY_FILE} (default <run-dir>/{KEY_FILE}, env CATSDOGS_KEY_FILE)")
    parser.add_argument("--no-token", action="store_true", help="the server runs without token authorization")
    parser.add_argument("--model-name", "--model", dest="model_name", default=None,
                        help=f"model name (default: the first model of the run directory's {SERVE_STATE_FILE}, "
                             f"else params.yaml serve.model_name)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")
