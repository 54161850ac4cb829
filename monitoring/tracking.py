"""MLflow logging of monitoring runs (experiment "<model name>-monitoring"), linked to the served model version."""
from __future__ import annotations

import math
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from catsdogs import contract
from training import tracking


def registered_version(meta: dict):
    """The MLflow ModelVersion the served model came from, or None when this store does not have it."""
    name, version = meta.get("registered_model"), meta.get("mlflow_model_version")
    if not name or not version:
        return None
    try:
        return MlflowClient().get_model_version(str(name), str(version))
    except MlflowException:
        return None


def numeric(metrics: dict) -> dict[str, float]:
    """The metrics MLflow can log: numbers, not NaN (the confusion matrix and counts per status are left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v))}


def log_run(kind: str, meta: dict, metrics: dict, params: dict, artifacts_dir: Path,
            offline: dict | None = None) -> tuple[str, str | None]:
    """One run in the monitoring experiment: live_* metrics (and offline_*, delta_*), the report files,
    tags naming the served version and registered model version. When this store holds that model
    version, the metrics are also attached to its logged model (MLflow 3 model_id) and the version gets
    a `monitoring.<kind>.last_run` tag. Returns (run id, linked model version or None)."""
    tracking.configure(contract.experiment("monitoring"))  # training's store, the monitoring experiment
    version = registered_version(meta)
    tags = {"kind": kind, "model_version": str(meta.get("version", "")),
            "registered_model": str(meta.get("registered_model", "")),
            "registered_model_version": str(meta.get("mlflow_model_version", "")),
            "training_run_id": str(meta.get("mlflow_run_id", ""))}
    live, reference = numeric(metrics), numeric(offline or {})
    live_metrics = {f"live_{k}": v for k, v in live.items()}
    with mlflow.start_run(run_name=f"{kind}-{meta.get('version', 'unknown')}", tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({**live_metrics, **{f"offline_{k}": v for k, v in reference.items()},
                            **{f"delta_{k}": live[k] - v for k, v in reference.items() if k in live}})
        if version is not None and getattr(version, "model_id", None):
            mlflow.log_metrics(live_metrics, model_id=version.model_id)
        mlflow.log_artifacts(str(artifacts_dir), "report")
        run_id = run.info.run_id
    if version is not None:
        MlflowClient().set_model_version_tag(version.name, version.version, f"monitoring.{kind}.last_run", run_id)
        return run_id, f"{version.name} v{version.version}"
    return run_id, None
