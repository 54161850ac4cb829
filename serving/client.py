"""A small TorchServe client: base URLs plus token authorization that survives key rotation and expiry.

TorchServe writes `key_file.json` (inference and management keys that expire, an API key that does not)
into its working directory. A refused key (0.12 answers HTTP 400 InvalidKeyException, not 401) makes the
client re-read the file and retry once: a new key there (restart, another client rotated it) is used as
is; the same, expired key is rotated with the API key (`GET <management>/token?type=...`), under a file
lock so concurrent clients rotate once. Long-running clients never need a restart.
"""
from __future__ import annotations

import fcntl
import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from catsdogs import contract
from catsdogs.contract import DEFAULT_URLS, KEY_FILE, RUN_DIR
from serving.config import DEFAULT_CONFIG, base_urls, read_properties


def seconds_left(keys: dict, api: str) -> float:
    """Seconds until the key_file.json entry of `api` expires (a Java Instant, "2026-01-01T10:00:00.123456789Z");
    inf without an entry or a parsable expiry."""
    text = keys.get(api, {}).get("expiration time") or ""
    try:  # strptime, not fromisoformat: Python 3.10's reads neither "Z" nor nanoseconds
        expiry = datetime.strptime(text.split(".")[0].rstrip("Z"), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return float("inf")
    return (expiry - datetime.now(timezone.utc)).total_seconds()


def is_auth_failure(response: requests.Response) -> bool:
    """TorchServe refused the token: 401, or 0.12's 400 {"type": "InvalidKeyException", ...}."""
    if response.status_code == 401:
        return True
    if response.status_code != 400 or "json" not in response.headers.get("content-type", ""):
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("type") == "InvalidKeyException"


def read_key_file(path: Path, attempts: int = 20) -> dict:
    """key_file.json as a dict; retries briefly because TorchServe rewrites it in place when rotating."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"{path} is not valid JSON: {last}")


class ServingClient:
    """Requests to one TorchServe: `client.predict(image_bytes)`, `client.request("management", "GET", ...)`.

    key_file=None means token authorization is off (no Authorization header is sent).
    """

    def __init__(self, inference_url: str = DEFAULT_URLS["inference"],
                 management_url: str = DEFAULT_URLS["management"], metrics_url: str = DEFAULT_URLS["metrics"],
                 key_file: Path | str | None = RUN_DIR / KEY_FILE, model_name: str | None = None,
                 timeout: float = 30.0, session: requests.Session | None = None):
        self.urls = {"inference": inference_url.rstrip("/"), "management": management_url.rstrip("/"),
                     "metrics": (metrics_url or "").rstrip("/")}
        self.key_file = Path(key_file) if key_file else None
        self.model_name = model_name or contract.model_name()
        self.timeout = timeout
        self.session = session or requests.Session()
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_run_dir(cls, run_dir: Path | str | None = None, **kwargs) -> ServingClient:
        """URLs from `<run_dir>/serve.json` (written by `python -m serving start`), else from config.properties.

        Without a model name, the first model that server loads (serve.json `models`) is the one asked about:
        a container has no params.yaml, and its probes name no model (deploy/k8s/deployment.yaml).
        """
        run_dir = Path(run_dir) if run_dir else RUN_DIR
        state = contract.read_serve_state(run_dir)
        if state:
            kwargs.setdefault("key_file", state["key_file"])
            if not kwargs.get("model_name"):
                kwargs["model_name"] = next(iter(contract.load_models_names(state["models"])), None)
            return cls(state["inference_url"], state["management_url"], state["metrics_url"], **kwargs)
        kwargs.setdefault("key_file", run_dir / KEY_FILE)
        urls = base_urls(read_properties(DEFAULT_CONFIG))
        return cls(urls["inference"], urls["management"], urls["metrics"], **kwargs)

    # --- keys -----------------------------------------------------------------------------------------

    def key(self, api: str) -> str | None:
        """The current key for "inference" or "management" (None: no key file, i.e. auth disabled)."""
        if api == "metrics" or self.key_file is None:
            return None
        if api not in self._keys:
            if not self.key_file.is_file():
                return None
            self._keys[api] = read_key_file(self.key_file)[api]["key"]
        return self._keys[api]

    def refresh_key(self, api: str, stale: str | None = None) -> str | None:
        """A working key for `api`: the key file's if it changed since `stale`, else a freshly rotated one."""
        if self.key_file is None or not self.key_file.is_file():
            return None
        with self._lock, open(self.key_file, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # across processes; released when the file is closed
            keys = read_key_file(self.key_file)
            current = keys[api]["key"]
            if current == stale or (stale is None and seconds_left(keys, api) <= 0):
                self._rotate(api, keys["API"]["key"])
                current = read_key_file(self.key_file)[api]["key"]
            self._keys[api] = current
            return current

    def ensure_fresh(self, api: str, min_valid_s: float = 60.0) -> str | None:
        """The key for `api`, rotated first when it expires within `min_valid_s` (for one-shot tools like curl)."""
        keys = read_key_file(self.key_file) if self.key_file is not None and self.key_file.is_file() else {}
        if seconds_left(keys, api) < min_valid_s:
            return self.refresh_key(api, stale=self.key(api))
        self._keys.pop(api, None)
        return self.key(api)

    def _rotate(self, api: str, api_key: str) -> None:
        response = self.session.get(f"{self.urls['management']}/token", params={"type": api},
                                    headers={"Authorization": f"Bearer {api_key}"}, timeout=self.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"TorchServe refused to rotate the {api} key ({response.status_code}): "
                               f"{response.text[:200]}; is {self.key_file} from the running server?")

    # --- requests -------------------------------------------------------------------------------------

    def request(self, api: str, method: str, path: str, **kwargs) -> requests.Response:
        """One HTTP request to `api` (inference, management, metrics); a refused key is refreshed, retried once."""
        url = self.urls[api] + path
        kwargs.setdefault("timeout", self.timeout)
        headers = dict(kwargs.pop("headers", None) or {})
        key = self.key(api)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        response = self.session.request(method, url, headers=headers, **kwargs)
        if api != "metrics" and self.key_file is not None and is_auth_failure(response):
            fresh = self.refresh_key(api, stale=key)
            if fresh:
                headers["Authorization"] = f"Bearer {fresh}"
                response = self.session.request(method, url, headers=headers, **kwargs)
        return response

    def predict(self, data: bytes, content_type: str = "application/octet-stream",
                model_name: str | None = None, **kwargs) -> requests.Response:
        """POST raw image bytes to /predictions/<model>."""
        headers = {"Content-Type": content_type, **(kwargs.pop("headers", None) or {})}
        return self.request("inference", "POST", f"/predictions/{model_name or self.model_name}",
                            data=data, headers=headers, **kwargs)

    def ping(self) -> bool:
        try:
            response = self.request("inference", "GET", "/ping", timeout=5)
        except requests.RequestException:
            return False
        return response.status_code == 200 and response.json().get("status") == "Healthy"

    def describe(self, model_name: str | None = None, customized: bool = False,
                 version: str | None = None) -> list[dict]:
        """describe-model (`GET /models/<model>[/<version>]`): one entry per version; `customized` adds the
        handler's model metadata."""
        path = f"/models/{model_name or self.model_name}" + (f"/{version}" if version else "")
        response = self.request("management", "GET", path, params={"customized": "true"} if customized else None)
        response.raise_for_status()
        return response.json()

    def worker_pids(self, model_name: str | None = None) -> list[int]:
        return sorted(w["pid"] for m in self.describe(model_name) for w in m.get("workers", []) if w.get("pid"))

    def metrics(self) -> str:
        response = self.request("metrics", "GET", "/metrics")
        response.raise_for_status()
        return response.text


def client_from_args(args, **overrides) -> ServingClient:
    """The client for the flags of catsdogs.contract.add_server_args: explicit URLs, else --run-dir's serve.json."""
    kwargs = {"model_name": args.model_name, "timeout": args.timeout, **overrides}
    if args.no_token:
        kwargs["key_file"] = None
    elif args.key_file:
        kwargs["key_file"] = args.key_file
    if args.inference_url or args.management_url:
        if not (args.inference_url and args.management_url):
            raise ValueError("give both --inference-url and --management-url (or neither, to use --run-dir)")
        kwargs.setdefault("key_file", Path(args.run_dir) / KEY_FILE)
        return ServingClient(args.inference_url, args.management_url, args.metrics_url or "", **kwargs)
    return ServingClient.from_run_dir(args.run_dir, **kwargs)
