"""Start, stop and health-check a TorchServe instance for this repo.

One instance lives in one run directory (default `.serve/`): its derived config.properties, TorchServe's
key_file.json, serve.json (pid, URLs, log dir: what `stop`, `ready`, `token` and serving.client read) and tmp/,
the instance's TMPDIR, where torchserve keeps its pid file and worker sockets; so a test instance can run
next to `make serve`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import requests

from catsdogs import contract
from catsdogs.contract import KEY_FILE, SERVE_STATE_FILE, read_serve_state
from serving.archive import tool
from serving.client import ServingClient
from serving.config import base_urls, derive_config

TS_PID_FILE = ".model_server.pid"  # torchserve writes it to tempfile.gettempdir()


class ServeError(RuntimeError):
    """Start/stop failed; the message says what to look at."""


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on 127.0.0.1 right now (for test and benchmark instances)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# Environment TorchServe passes on to its Python workers (a value already in the environment wins). GOMP_SPINCOUNT:
# OpenMP threads that ran out of work sleep sooner instead of spinning on cores the frontend needs (docs/serving.md).
WORKER_ENV = {"GOMP_SPINCOUNT": "10000"}


def instance_env(run_dir: Path, log_dir: Path) -> dict[str, str]:
    tmp = run_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {**WORKER_ENV, **os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "LOG_LOCATION": str(log_dir),
            "METRICS_LOCATION": str(log_dir)}


def running_pid(run_dir: Path) -> int | None:
    """The frontend's pid if this run directory's TorchServe is alive."""
    state = read_serve_state(run_dir)
    if not state or not state.get("pid"):
        return None
    try:
        proc = psutil.Process(int(state["pid"]))
        return proc.pid if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def model_status(client: ServingClient, model_name: str) -> tuple[bool, str]:
    """(ready, why): /ping is Healthy and every listed version of the model has a READY worker."""
    if not client.ping():
        return False, f"{client.urls['inference']}/ping is not Healthy"
    try:
        response = client.request("management", "GET", f"/models/{model_name}", timeout=5)
    except (requests.RequestException, RuntimeError, OSError, KeyError, ValueError) as exc:
        return False, f"describe-model failed: {exc}"
    if response.status_code != 200:
        return False, f"describe-model {model_name}: HTTP {response.status_code} {response.text.strip()[:200]}"
    versions = response.json()
    workers = [w for v in versions for w in v.get("workers", [])]
    ready = [w for w in workers if w.get("status") == "READY"]
    if not ready:
        states = ", ".join(w.get("status", "?") for w in workers) or "no workers"
        return False, f"model {model_name}: no READY worker yet ({states})"
    return True, f"model {model_name} version {versions[0].get('modelVersion')}: {len(ready)} READY worker(s)"


def connections_to(port: int) -> int:
    """Connections to local `port` that may still carry a request (ESTABLISHED, SYN_RECV), IPv4 and IPv6, in the
    network namespace this process runs in."""
    return sum(1 for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
               and c.status in (psutil.CONN_ESTABLISHED, psutil.CONN_SYN_RECV))


def drain(open_now, settle: float, quiet: float, timeout: float, clock=time.monotonic,
          sleep=time.sleep) -> tuple[bool, float]:
    """A Kubernetes preStop hook: keep serving `settle` s (the Service and the gateway stop sending new
    requests meanwhile), then wait until `open_now()` (connections to the inference port) has been 0 for
    `quiet` s, i.e. the requests in flight have been answered; at most `timeout` s in all.
    Returns (drained, seconds it took).

    The gateway opens one connection per request (nginx: no upstream keepalive), so an open connection is a
    request in flight.
    """
    began = clock()
    sleep(settle)
    idle_since = None
    while clock() - began < timeout:
        if open_now():
            idle_since = None
        elif idle_since is None:
            idle_since = clock()
        elif clock() - idle_since >= quiet:
            return True, clock() - began
        sleep(0.1)
    return False, clock() - began


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def default_models(name: str | None = None) -> str:
    """load_models for one model (default params.yaml serve.model_name): <name>=<name>.mar."""
    name = name or contract.model_name()
    return f"{name}={contract.archive_path(name).name}"


def prepare_run(config: Path, run_dir: Path, log_dir: Path, **derive) -> dict[str, str]:
    """The run directory's config.properties (serving.config.derive_config) and a clean tmp/; its properties."""
    for folder in (run_dir / "tmp", log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    props = derive_config(config, run_dir / "config.properties", **derive)
    store = Path(props["model_store"])
    if not store.is_dir() or not any(store.glob("*.mar")):
        raise ServeError(f"model store {store} has no .mar archive; build one with `make archive` "
                         f"(python -m serving archive), or point the model store at a folder holding one")
    (run_dir / KEY_FILE).unlink(missing_ok=True)  # a stale key file would mislead clients
    shutil.rmtree(run_dir / "tmp" / "models", ignore_errors=True)  # archives unpacked by earlier runs
    return props


def serve_state(props: dict[str, str], run_dir: Path, log_dir: Path, pid: int | None) -> dict:
    """serve.json of a run: what `stop`, `ready`, `token` and serving.client read (0.0.0.0 -> 127.0.0.1)."""
    urls = base_urls(props)
    return {"pid": pid, **{f"{api}_url": url for api, url in urls.items()}, "key_file": str(run_dir / KEY_FILE),
            "config": str(run_dir / "config.properties"), "log_dir": str(log_dir),
            "model_store": props["model_store"], "started_at": time.time(), "models": props.get("load_models", "")}


def start(*, config: Path, run_dir: Path, log_dir: Path, model_store: Path | None = None,
          models: str | None = None, ports: dict[str, int | None] | None = None,
          grpc_ports: tuple[int | None, int | None] | None = None, timeout: float = 180.0,
          extra: dict[str, str] | None = None) -> dict:
    """Start TorchServe in the background, wait for READY workers; returns the serve.json state."""
    run_dir, log_dir = Path(run_dir).resolve(), Path(log_dir).resolve()
    pid = running_pid(run_dir)
    if pid:
        raise ServeError(f"TorchServe from {run_dir} is already running (pid {pid}); "
                         f"`python -m serving stop --run-dir {run_dir}` first")
    props = prepare_run(config, run_dir, log_dir, ports=ports, grpc_ports=grpc_ports, model_store=model_store,
                        models=models or default_models(), extra=extra)
    env = instance_env(run_dir, log_dir)
    cmd = [tool("torchserve"), "--start", "--ncs", "--ts-config", str(run_dir / "config.properties"),
           "--model-store", props["model_store"]]
    console = log_dir / "torchserve.console.log"
    with open(console, "ab") as out:
        launched = subprocess.run(cmd, check=False, cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=60)
    pid_file = run_dir / "tmp" / TS_PID_FILE
    if launched.returncode != 0 or not pid_file.is_file():
        raise ServeError(f"`{' '.join(cmd)}` failed (exit {launched.returncode}); see {console}:\n{tail(console)}")
    state = serve_state(props, run_dir, log_dir, int(pid_file.read_text().strip()))
    contract.write_serve_state(run_dir, state)
    names = contract.load_models_names(state["models"])
    wait_ready(run_dir, names, timeout, console)
    return state


def wait_ready(run_dir: Path, model_names: list[str], timeout: float, console: Path) -> None:
    """Until every model has a READY worker (`console`: the console log in TorchServe's log dir)."""
    client = ServingClient.from_run_dir(run_dir, timeout=5)
    deadline = time.monotonic() + timeout
    why = "not started"
    while time.monotonic() < deadline:
        if not running_pid(run_dir):
            raise ServeError(f"TorchServe exited during start-up; see {console} and "
                             f"{console.parent / 'ts_log.log'}:\n{tail(console)}")
        if client.key_file and client.key_file.is_file():
            statuses = [model_status(client, name) for name in model_names] or [(client.ping(), "ping")]
            if all(ok for ok, _ in statuses):
                return
            why = "; ".join(msg for ok, msg in statuses if not ok)
        else:
            why = f"waiting for TorchServe to write {client.key_file}"
        time.sleep(0.5)
    raise ServeError(f"TorchServe not ready after {timeout:.0f} s: {why}. Logs: {console}, "
                     f"{console.parent}/ts_log.log and model_log.log")


def stop(run_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the run directory's TorchServe (torchserve --stop, then wait). False if none was running."""
    run_dir = Path(run_dir).resolve()
    pid = running_pid(run_dir)
    state = read_serve_state(run_dir) or {}
    if pid is None:
        (run_dir / SERVE_STATE_FILE).unlink(missing_ok=True)
        return False
    env = instance_env(run_dir, Path(state.get("log_dir", run_dir)))
    # torchserve --stop reads the pid file from TMPDIR and deletes key_file.json in its working directory.
    subprocess.run([tool("torchserve"), "--stop"], check=False, cwd=run_dir, env=env, capture_output=True, timeout=60)
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
        proc.wait(timeout=timeout)
        psutil.wait_procs(children, timeout=10)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)  # the frontend we started ignored SIGTERM for `timeout` seconds
    (run_dir / SERVE_STATE_FILE).unlink(missing_ok=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    return True
