"""MLflow helpers: one run spans train -> evaluate -> export (the run id is kept in artifacts/train/run.json)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow

from catsdogs import contract


def configure(experiment: str | None = None) -> str:
    """Point MLflow at contract.tracking_uri() (a local SQLite store by default) and the model's experiment."""
    uri = contract.tracking_uri()
    experiment = experiment or contract.experiment()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if uri.startswith("sqlite:"):  # keep artifacts beside the SQLite file, not in the CWD of whoever ran first
            location = Path("mlartifacts").resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def git_commit() -> str:
    """HEAD's sha, suffixed with -dirty when tracked files differ; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(params: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1} for mlflow.log_params."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def save_run_id(path: Path, run_id: str) -> None:
    path.write_text(json.dumps({"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri()}) + "\n")


def load_run_id(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m training train` first")
    return json.loads(path.read_text())["run_id"]
