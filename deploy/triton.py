"""`python -m deploy.triton`: a Triton Inference Server model repository for the exported TorchScript model.

The path off TorchServe (archived upstream) for the same artifact: Triton's pytorch_libtorch backend serves
artifacts/model/model.pt unchanged, alone or on KServe (deploy/kserve/inferenceservice.yaml, runtime
kserve-tritonserver). It writes

    <out>/<model name>/config.pbtxt        input INPUT__0 FP32 [3, S, S], output OUTPUT__0 FP32 [classes]
    <out>/<model name>/labels.txt          the classes, one a line, in the model's index order
    <out>/<model name>/model-meta.json     preprocessing for clients (resize, crop, mean/std), version
    <out>/<model name>/1/model.pt          the TorchScript file, copied

Batching follows handler/model-config.yaml (batchSize -> max_batch_size, maxBatchDelay ms -> the dynamic
batcher's queue delay). Triton takes tensors, not images: clients decode, resize to resize_size, centre-crop
image_size, scale to [0, 1] and normalise with mean/std (model.preprocess does exactly this) and apply softmax
to OUTPUT__0 (logits); docs/deploy.md.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

from catsdogs import contract
from catsdogs.contract import META_FILE, MODEL_DIR, REPO_ROOT

MODEL_CONFIG = REPO_ROOT / "handler" / "model-config.yaml"
INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"  # the libtorch backend's names for the first positional input/output
LABELS = "labels.txt"


def config_pbtxt(name: str, meta: dict, max_batch_size: int, max_delay_ms: float, instances: int = 1) -> str:
    """Triton's model configuration (protobuf text format, inference.ModelConfig) for the exported model."""
    size = int(meta["image_size"])
    return (f'name: "{name}"\n'
            'platform: "pytorch_libtorch"\n'
            f"max_batch_size: {max_batch_size}\n"
            f'input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]\n'
            f'output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {len(meta["classes"])} ] '
            f'label_filename: "{LABELS}" }} ]\n'
            f"dynamic_batching {{ max_queue_delay_microseconds: {round(max_delay_ms * 1000)} }}\n"
            f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
            '# inference mode (no autograd bookkeeping), as the TorchServe handler runs the model\n'
            'parameters: { key: "INFERENCE_MODE" value: { string_value: "true" } }\n')


def write_repository(model_dir: Path, out: Path, name: str, model_config: Path = MODEL_CONFIG) -> Path:
    """The model repository under `out` for the export in `model_dir`; returns the model's folder."""
    meta = contract.read_meta(model_dir)
    batching = yaml.safe_load(Path(model_config).read_text())
    folder = Path(out) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(model_dir) / "model.pt", folder / "1" / "model.pt")
    shutil.copyfile(Path(model_dir) / META_FILE, folder / META_FILE)
    (folder / LABELS).write_text("".join(f"{label}\n" for label in meta["classes"]))
    (folder / "config.pbtxt").write_text(config_pbtxt(name, meta, int(batching["batchSize"]),
                                                      float(batching["maxBatchDelay"])))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.triton", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR, help=f"export stage output (default {MODEL_DIR})")
    parser.add_argument("--out", type=Path, default=Path("build/triton"),
                        help="model repository root (default build/triton); upload it as the storageUri")
    parser.add_argument("--model-name", help="model name in the repository (default params.yaml serve.model_name)")
    args = parser.parse_args(argv)
    try:
        folder = write_repository(args.model_dir, args.out, args.model_name or contract.model_name())
    except (contract.ContractError, FileNotFoundError) as exc:
        print(f"triton: {exc}", file=sys.stderr)
        return 1
    print(f"triton: model repository {args.out} "
          f"({', '.join(sorted(str(p.relative_to(args.out)) for p in folder.rglob('*') if p.is_file()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
