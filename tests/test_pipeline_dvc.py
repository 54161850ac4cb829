"""A tiny end-to-end `dvc repro` of the real dvc.yaml in a throwaway git repo (synthetic data, 1 epoch)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from catsdogs import contract
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", "config.properties", ".dvcignore", "Makefile"]
PROJECT_DIRS = ["catsdogs", "model", "training", "handler", "serving", "monitoring", "mk"]


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("pipeline")
    for name in PROJECT_FILES:
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, repo / name)
    for name in PROJECT_DIRS:
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synthetic"].update(images_per_class=80, size=96)
    params["model"].update(image_size=96, resize_size=110)
    params["train"].update(head_epochs=4, finetune_epochs=0, batch_size=16)
    params["evaluate"].update(min_accuracy=0.7, max_log_loss=0.6)  # a random head: ~0.5 and ~0.69
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}", PYTHONPATH=str(repo),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n__pycache__/\n")
    run(["git", "init", "-q"], repo, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "init"], repo, env)
    return repo, env


def test_repro_builds_every_artifact_then_is_a_noop(repo):
    path, env = repo
    out = run([sys.executable, "-m", "dvc", "repro"], path, env)
    assert "Running stage 'train'" in out
    meta = json.loads((path / "artifacts/model/model-meta.json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["image_size"] == 96 and meta["mlflow_run_id"]
    assert (path / "artifacts/model/model.pt").stat().st_size > 0
    assert (path / f"model-store/{meta['registered_model']}.mar").exists()
    metrics = json.loads((path / "artifacts/eval/metrics.json").read_text())
    assert metrics["accuracy"] >= 0.7 and metrics["n"] > 0  # the quality gate let it through
    baseline = meta["drift_baseline"]  # from this model's own test-split predictions, into the Prometheus rules
    assert baseline["n"] == metrics["n"] and abs(sum(baseline["label_shares"].values()) - 1) < 1e-3
    rules = yaml.safe_load((path / "monitoring/generated/baseline.rules.yml").read_text())
    records = {r["record"]: r for r in rules["groups"][0]["rules"]}
    assert records["catsdogs:baseline:dog_share"]["expr"] == f"vector({baseline['label_shares']['dog']})"
    assert records["catsdogs:baseline:mean_confidence"]["labels"]["model_version"] == meta["version"]
    for png in ("confusion_matrix", "roc", "training_curves", "worst_mistakes"):
        assert (path / f"artifacts/eval/plots/{png}.png").exists()
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias(meta["registered_model"], contract.CANDIDATE_ALIAS)
    assert version.run_id == meta["mlflow_run_id"] and meta["version"].startswith(f"{version.version}.")
    run_data = client.get_run(meta["mlflow_run_id"]).data
    assert "test_accuracy" in run_data.metrics and run_data.tags["data_hash"] == meta["data_hash"]

    again = run([sys.executable, "-m", "dvc", "repro"], path, env)
    assert "Running stage" not in again, again


def test_changing_a_train_param_reruns_only_downstream_stages(repo):
    path, env = repo
    run(["git", "add", "-A"], path, env)
    run(["git", "commit", "-qm", "lock"], path, env)
    out = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.head_epochs=6"], path, env)
    assert "Running stage 'train'" in out and "Running stage 'export'" in out
    assert "Running stage 'prepare'" not in out and "Running stage 'synthesize'" not in out
    history = (path / "artifacts/train/history.csv").read_text().strip().splitlines()
    assert [line.split(",")[1] for line in history[1:]] == ["head"] * 6


def test_quality_gate_stops_a_broken_model_before_export(repo):
    """Learning rate 0: the classifier stays at its random init; evaluate fails the gate, export never runs."""
    path, env = repo
    model_before = (path / "artifacts/model/model.pt").read_bytes()
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.lr=0", "-S",
                             "train.finetune_lr=0"], cwd=path, env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "quality gate failed on the test split" in out and "min_accuracy" in out
    assert "Running stage 'export'" not in out
    assert (path / "artifacts/model/model.pt").read_bytes() == model_before


def test_a_new_model_name_in_params_is_what_the_pipeline_builds_and_make_serve_serves(repo):
    """serve.model_name is the only place the name is written: dvc (templated output), make and serving follow it."""
    import requests

    from serving.server import free_ports

    path, env = repo
    run(["git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock"], path, env)  # undo the experiments above
    run([sys.executable, "-m", "dvc", "checkout", "-f"], path, env)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["serve"]["model_name"] = "pets"
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    venv = Path(sys.executable).parent.parent
    make = ["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed"]
    out = run([*make, "pipeline"], path, env)  # (train may rerun: the experiments above left their uncached files)
    assert "Running stage 'archive'" in out and "archive: model-store/pets.mar" in out, out
    assert (path / "model-store/pets.mar").is_file()
    ports = free_ports(5)
    serve_args = " ".join(f"--{api}-port {port}" for api, port in zip(contract.PORTS, ports)) + \
        f" --grpc-inference-port {ports[3]} --grpc-management-port {ports[4]}"
    try:
        out = run([*make, "serve", f"SERVE_ARGS={serve_args}"], path, env)
        assert "/predictions/pets" in out, out
        ready = run([*make, "ready"], path, env)
        assert "model pets version" in ready
        state = contract.read_serve_state(path / ".serve")
        key = json.loads(Path(state["key_file"]).read_text())["inference"]["key"]
        image = next((path / "data/synthetic").rglob("*.png"), None) or next((path / "data/synthetic").rglob("*.jpg"))
        answer = requests.post(f"{state['inference_url']}/predictions/pets", data=image.read_bytes(), timeout=60,
                               headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200 and contract.check_prediction(answer.json(), ["cat", "dog"]) is None
        old = requests.post(f"{state['inference_url']}/predictions/{contract.model_name()}", data=image.read_bytes(),
                            timeout=60,
                            headers={"Authorization": f"Bearer {key}"})
        assert old.status_code == 404, "the old name is still served"
    finally:
        subprocess.run([*make, "stop"], cwd=path, env=env, capture_output=True, timeout=120, check=False)


def test_the_archive_stage_depends_on_every_file_the_archive_carries():
    """A change to any packed source (model.runtime, the contract, ...) must rebuild the .mar under `dvc repro`."""
    from serving.archive import PACKAGE_FILES

    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["archive"]["deps"]
    packed = [f"{package}/{name}" for package, names in PACKAGE_FILES.items() for name in names]
    assert packed and [path for path in packed if path not in deps] == []
