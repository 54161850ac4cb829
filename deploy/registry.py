"""MLflow model registry: the `champion` alias follows the version TorchServe serves by default.

The export stage registers each model (alias `candidate`) and writes registered_model + mlflow_model_version
into model-meta.json, which the archive carries. A registry without that version gives a warning, or an
error with --require-registry.
"""
from __future__ import annotations

from pathlib import Path

from catsdogs.contract import CHAMPION_ALIAS as CHAMPION


class RegistryError(RuntimeError):
    """The registry lacks the version (only raised when the registry is required)."""


def registry_ref(meta: dict) -> tuple[str, str] | None:
    """(registered model name, registry version) named by model-meta.json, None when absent."""
    name, version = meta.get("registered_model"), meta.get("mlflow_model_version")
    return (str(name), str(version)) if name and version else None


def _sqlite_missing(uri: str) -> Path | None:
    """The file of a sqlite:/// URI that does not exist (MLflow would silently create an empty store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])  # sqlite:///rel.db or sqlite:////abs/path.db
    return None if path.exists() else path


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check(uri: str, meta: dict, required: bool = False) -> str | None:
    """None when the registry has the archive's version; else why not, as a warning (RegistryError if required)."""
    ref, why = registry_ref(meta), None
    if ref is None:
        why = "model-meta.json has no registered_model/mlflow_model_version"
    elif _sqlite_missing(uri) is not None:
        why = f"no MLflow store at {_sqlite_missing(uri)} (MLFLOW_TRACKING_URI={uri})"
    else:
        # imported only when a store exists: importing mlflow costs seconds of CPU beside a serving TorchServe
        from mlflow.exceptions import MlflowException

        try:
            _client(uri).get_model_version(*ref)
        except MlflowException as exc:
            why = f"{ref[0]} version {ref[1]} not in the registry at {uri}: {exc.message.splitlines()[0]}"
    if why and required:
        raise RegistryError(f"{why}; pass the tracking store that registered it with --tracking-uri / "
                            f"MLFLOW_TRACKING_URI, or drop --require-registry")
    return why


def move_champion(uri: str, meta: dict, required: bool = False) -> str:
    """Point alias `champion` at the archive's registry version; returns a one-line report."""
    why = check(uri, meta, required)
    if why:
        return f"warning: champion alias not moved: {why}"
    name, version = registry_ref(meta)
    _client(uri).set_registered_model_alias(name, CHAMPION, version)
    return f"MLflow: {name}@{CHAMPION} -> version {version} ({uri})"


def champion(uri: str, name: str) -> str | None:
    """The registry version the alias points at (None when unset or no store)."""
    if _sqlite_missing(uri) is not None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(uri).get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None
