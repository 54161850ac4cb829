"""Build model-store/<name>.mar with torch-model-archiver from an export directory.

The archive holds the TorchScript file, the handler and its model-config.yaml, and at its root model-meta.json,
index_to_name.json and the packages the handler imports (PACKAGE_FILES: model/ preprocessing, the contract),
so it preprocesses exactly as training did. --extra-files copies a directory's contents, hence the staging.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from catsdogs import contract
from catsdogs.contract import INDEX_TO_NAME_FILE, META_FILE, REPO_ROOT, read_meta

HANDLER_FILE = REPO_ROOT / "handler" / "catsdogs_handler.py"
MODEL_CONFIG = REPO_ROOT / "handler" / "model-config.yaml"
# package -> files copied into the archive (the handler imports them); the contract's package by its path, since
# its name is also the model name, which only params.yaml spells out (tests/test_contract.py)
PACKAGE_FILES = {"model": ("__init__.py", "preprocess.py", "export.py", "runtime.py", "engines.py"),
                 Path(contract.__file__).parent.name: ("__init__.py", Path(contract.__file__).name)}
SERIALIZED_FILE = "model.pt"


def tool(name: str) -> str:
    """The executable `name` (torchserve, torch-model-archiver) next to this Python (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found; run `make install` (it is in requirements.txt)")
    return found


def stage_extra_files(model_dir: Path, staging: Path) -> Path:
    """staging/{model-meta.json, index_to_name.json, model/..., catsdogs/...} (PACKAGE_FILES)."""
    staging.mkdir(parents=True)
    for name in (META_FILE, INDEX_TO_NAME_FILE):
        shutil.copy2(model_dir / name, staging / name)
    for package, names in PACKAGE_FILES.items():
        (staging / package).mkdir()
        for name in names:
            shutil.copy2(REPO_ROOT / package / name, staging / package / name)
    return staging


def check_export_dir(model_dir: Path) -> dict:
    missing = [n for n in (SERIALIZED_FILE, META_FILE, INDEX_TO_NAME_FILE) if not (model_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {', '.join(missing)}: run the export stage first "
                                f"(`make export` or `python -m training export`)")
    return read_meta(model_dir / META_FILE)


def build_archive(model_dir: Path, export_path: Path, model_name: str | None = None, *,
                  config_file: Path = MODEL_CONFIG, handler: Path = HANDLER_FILE) -> Path:
    """Run torch-model-archiver; returns the .mar path. The version is model-meta.json's "version"."""
    model_dir, export_path, handler = Path(model_dir), Path(export_path), Path(handler)
    model_name = model_name or contract.model_name()
    meta = check_export_dir(model_dir)
    export_path.mkdir(parents=True, exist_ok=True)
    # A private temp dir holds the staged extra files and is the archiver's TMPDIR (it assembles the
    # archive in $TMPDIR/<model-name>), so concurrent builds never share files.
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        staging = stage_extra_files(model_dir, Path(tmp) / "mar-extra")
        cmd = [tool("torch-model-archiver"), "--model-name", model_name, "--version", str(meta["version"]),
               "--serialized-file", str(model_dir / SERIALIZED_FILE), "--handler", str(handler),
               "--extra-files", str(staging), "--config-file", str(config_file),
               "--export-path", str(export_path), "--force"]
        result = subprocess.run(cmd, check=False, env={**os.environ, "TMPDIR": tmp}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed ({result.returncode}):\n{result.stderr or result.stdout}")
    mar = export_path / f"{model_name}.mar"
    verify_archive(mar, handler.name, Path(config_file).name)
    return mar


def verify_archive(mar: Path, handler_name: str = HANDLER_FILE.name, config_name: str = MODEL_CONFIG.name) -> list[str]:
    """The files the handler needs at run time are in the archive (fails loudly otherwise)."""
    with zipfile.ZipFile(mar) as zf:
        names = zf.namelist()
    needed = [SERIALIZED_FILE, handler_name, META_FILE, INDEX_TO_NAME_FILE, config_name,
              "MAR-INF/MANIFEST.json", *(f"{p}/{n}" for p, names in PACKAGE_FILES.items() for n in names)]
    missing = [n for n in needed if n not in names]
    if missing:
        raise RuntimeError(f"{mar} lacks {', '.join(missing)}")
    return names
