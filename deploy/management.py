"""TorchServe management-API calls for one model's versions, over serving.client.ServingClient (which renews an
expired key, so a long deploy never fails on key expiry).

Register and scale are asynchronous (synchronous=false), followed by polling describe-model (wait_ready):
a synchronous call holds a frontend thread that inference connections share (docs/deploy-versions.md).
"""
from __future__ import annotations

import re
import time
from urllib.parse import quote

import requests

from catsdogs import contract
from serving.client import ServingClient


class ManagementError(RuntimeError):
    """TorchServe refused or failed a management call; the message carries its answer."""


def _answer(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    return str(body.get("message") or body.get("status") or body if isinstance(body, dict) else body)[:300]


def pending_requests(description: dict | None) -> int:
    """Requests queued for one version (describe-model's jobQueueStatus.pendingRequests)."""
    return int(((description or {}).get("jobQueueStatus") or {}).get("pendingRequests") or 0)


def ready_workers(description: dict) -> tuple[int, int]:
    """(READY workers, workers wanted = minWorkers) of one describe-model entry."""
    workers = description.get("workers") or []
    return sum(w.get("status") == "READY" for w in workers), int(description.get("minWorkers") or 0)


def inference_count(metrics_text: str, model: str, version: str) -> float | None:
    """ts_inference_requests_total for one model version from Prometheus text (None: no such series)."""
    values = []
    for line in metrics_text.splitlines():
        if line.startswith("ts_inference_requests_total{"):
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}", 1)[0]))
            if labels.get("model_name") == model and labels.get("model_version") == version:
                values.append(float(line.rsplit(" ", 1)[1]))
    return sum(values) if values else None


class Management:
    def __init__(self, client: ServingClient, model_name: str):
        self.client = client
        self.model = model_name

    def _path(self, *parts: str, api: str = "models") -> str:
        """/models/<model>/<parts...> (or /predictions/...), every part URL-quoted."""
        return "/".join(["", api, *(quote(p, safe="") for p in (self.model, *parts))])

    def _call(self, method: str, path: str, ok=(200,), **kwargs) -> requests.Response:
        try:
            response = self.client.request("management", method, path, **kwargs)
        except requests.RequestException as exc:
            raise ManagementError(f"{method} {self.client.urls['management']}{path} failed: {exc}; is TorchServe "
                                  f"running there (python -m serving ready)?") from exc
        if response.status_code not in ok:
            raise ManagementError(f"{method} {path}: HTTP {response.status_code} {_answer(response)}")
        return response

    # --- reading --------------------------------------------------------------------------------------

    def versions(self) -> list[dict]:
        """Describe-model entries of every registered version ([] when the model is not registered)."""
        response = self._call("GET", self._path("all"), ok=(200, 404))
        return response.json() if response.status_code == 200 else []

    def default_version(self) -> str | None:
        response = self._call("GET", self._path(), ok=(200, 404))
        return str(response.json()[0]["modelVersion"]) if response.status_code == 200 else None

    def describe(self, version: str) -> dict | None:
        response = self._call("GET", self._path(version), ok=(200, 404))
        return response.json()[0] if response.status_code == 200 else None

    def metadata(self, version: str) -> dict:
        """The handler's model metadata for a version; {} when TorchServe does not give it (e.g. 404)."""
        try:
            return contract.parse_description(self.client.describe(f"{self.model}/{version}", customized=True))
        except (requests.RequestException, contract.ContractError):
            return {}

    def predict(self, version: str, data: bytes, timeout: float = 30.0) -> tuple[int, object]:
        """POST an image to /predictions/<model>/<version>: (status, JSON body or text)."""
        try:
            response = self.client.request("inference", "POST", self._path(version, api="predictions"),
                                           data=data, timeout=timeout,
                                           headers={"Content-Type": "application/octet-stream"})
        except requests.RequestException as exc:
            return 0, f"request failed: {exc}"
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text[:300]

    def inference_count(self, version: str) -> float | None:
        try:
            return inference_count(self.client.metrics(), self.model, version)
        except (requests.RequestException, RuntimeError):
            return None

    # --- changing -------------------------------------------------------------------------------------

    def register(self, file_name: str, workers: int, timeout: float) -> str:
        """Start registering `file_name` with `workers` workers; wait_ready() tells when they serve."""
        response = self._call("POST", "/models", ok=(200, 202), timeout=timeout, params={
            "url": file_name, "model_name": self.model, "initial_workers": workers, "synchronous": "false"})
        return _answer(response)

    def wait_ready(self, version: str, timeout: float) -> dict:
        """Poll until every wanted worker of `version` is READY; returns its description. Fails at once when
        a worker's process dies while loading (TorchServe restarts it under a new pid)."""
        deadline = time.monotonic() + timeout
        last = "not described yet"
        first_pid: dict[str, int] = {}  # worker id -> the first process seen loading it
        while time.monotonic() < deadline:
            description = self.describe(version)
            if description is not None:
                ready, wanted = ready_workers(description)
                if ready >= max(wanted, 1):
                    return description
                workers = description.get("workers") or []
                for worker in workers:
                    wid, pid = str(worker.get("id")), int(worker.get("pid") or -1)
                    if pid > 0 and first_pid.setdefault(wid, pid) != pid:
                        raise ManagementError(f"version {version}: the process loading worker {wid} died and "
                                              f"TorchServe restarted it (pid {first_pid[wid]} -> {pid}): the model "
                                              f"fails to load; see TorchServe's model_log.log")
                states = ", ".join(w.get("status") for w in workers) or "no workers"
                last = f"{ready}/{max(wanted, 1)} workers READY ({states})"
            time.sleep(0.5)
        raise ManagementError(f"version {version} not ready after {timeout:.0f} s: {last}; see TorchServe's "
                              f"model_log.log")

    def scale(self, version: str, min_workers: int, max_workers: int, timeout: float) -> str:
        """Ask for min/max workers; the workers start or stop in the background (wait_ready)."""
        response = self._call("PUT", self._path(version), ok=(200, 202, 206), timeout=timeout, params={
            "min_worker": min_workers, "max_worker": max_workers, "synchronous": "false"})
        return _answer(response)

    def set_default(self, version: str) -> str:
        return _answer(self._call("PUT", self._path(version, "set-default")))

    def unregister(self, version: str, timeout: float = 180.0) -> str:
        return _answer(self._call("DELETE", self._path(version), timeout=timeout))
