"""CLI for the pipeline stages; dvc.yaml calls these. `python -m training <stage> --help`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from catsdogs.contract import EVAL_DIR, MAX_IMAGE_PIXELS, MODEL_DIR, PREPARED_DIR, TRAIN_DIR
from model.runtime import reuse_freed_memory
from model.weights import WeightsError
from training.params import ParamsError, load_params


def source_path(params: dict) -> Path:
    """Where prepare reads from; download sources are fetched on first use."""
    data = params["data"]
    path = Path(data["path"])
    if data["source"] == "petimages":
        from training.download import download_petimages
        return download_petimages(path)
    if data["source"] == "oxford-pet":
        from training.download import download_oxford_pet
        return download_oxford_pet(path)
    return path


def cmd_synthesize(params: dict, args) -> None:
    from training.synthetic import generate
    cfg = params["synthetic"]
    out = Path(args.out)
    count = generate(out, list(params["data"]["classes"]), int(cfg["images_per_class"]), int(cfg["size"]),
                     int(cfg["seed"]))
    print(f"synthesize: {count} images -> {out}")


def cmd_prepare(params: dict, args) -> None:
    from training.prepare import prepare
    cfg = params["prepare"]
    prepare(Path(args.source) if args.source else source_path(params), args.out, list(params["data"]["classes"]),
            resize_size=int(params["model"]["resize_size"]), val_ratio=float(cfg["val_ratio"]),
            test_ratio=float(cfg["test_ratio"]), seed=int(cfg["seed"]),
            max_pixels=int(params["data"].get("max_image_pixels", MAX_IMAGE_PIXELS)))


def cmd_train(params: dict, args) -> None:
    from training.train import train
    train(params, args.prepared, args.out)


def cmd_evaluate(params: dict, args) -> None:
    from training.evaluate import QualityGateError, evaluate
    try:
        evaluate(params, args.prepared, args.train_dir, args.out)
    except QualityGateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(3) from exc


def cmd_export(params: dict, args) -> None:
    from training.export import EngineGateError, QuantizationGateError, export
    try:
        export(args.prepared, args.train_dir, args.eval_dir, args.out, params.get("export"), params.get("serve"))
    except (QuantizationGateError, EngineGateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(3) from exc


def cmd_download(params: dict, args) -> None:
    from training import download
    dest = Path(args.dest)
    path = download.download_petimages(dest) if args.dataset == "petimages" else download.download_oxford_pet(dest)
    print(f"downloaded to {path}; now set data.source: {args.dataset} and data.path: {dest} in params.yaml")


def cmd_preset(params: dict, args) -> None:
    from training import presets
    if args.name is None:
        print("presets: " + ", ".join(presets.available()) + f" (in {presets.PRESETS_DIR})")
        return
    args.params.write_text(presets.apply(args.name, args.params.read_text()))
    load_params(args.params)  # the result must still be valid
    print(f"{args.params}: model and train sections set to preset {args.name}; `dvc repro` retrains")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synthesize", help="generate the synthetic cartoon cats/dogs set (offline default data)")
    p.add_argument("--out", type=Path, default=Path("data/synthetic"),
                   help="output folder (default: %(default)s; data.path when data.source is synthetic)")
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("prepare", help="ingest data.source, split, cache resized images, write manifest + stats")
    p.add_argument("--source", type=Path, help="folder or archive to read instead of data.source/data.path")
    p.add_argument("--out", type=Path, default=PREPARED_DIR, help="default: %(default)s")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train model.arch on the prepared split, MLflow run, best checkpoint")
    p.add_argument("--prepared", type=Path, default=PREPARED_DIR, help="default: %(default)s")
    p.add_argument("--out", type=Path, default=TRAIN_DIR, help="default: %(default)s")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test-split metrics.json, plot data and PNG plots")
    p.add_argument("--prepared", type=Path, default=PREPARED_DIR, help="default: %(default)s")
    p.add_argument("--train-dir", type=Path, default=TRAIN_DIR, help="default: %(default)s")
    p.add_argument("--out", type=Path, default=EVAL_DIR, help="default: %(default)s")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="TorchScript model + model-meta.json; register a new MLflow model version")
    p.add_argument("--prepared", type=Path, default=PREPARED_DIR, help="default: %(default)s")
    p.add_argument("--train-dir", type=Path, default=TRAIN_DIR, help="default: %(default)s")
    p.add_argument("--eval-dir", type=Path, default=EVAL_DIR, help="default: %(default)s")
    p.add_argument("--out", type=Path, default=MODEL_DIR, help="default: %(default)s")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("preset", help="set params.yaml's model+train sections to a preset (presets/*.yaml)")
    p.add_argument("name", nargs="?", help="preset name; omit to list them")
    p.set_defaults(func=cmd_preset)

    p = sub.add_parser("download", help="download a public dataset (needs internet)")
    p.add_argument("dataset", choices=("petimages", "oxford-pet"))
    p.add_argument("--dest", default="data/downloads", help="default: %(default)s")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # before any forward pass (model/runtime.py)
    try:
        args.func(load_params(args.params), args)
    except (ParamsError, FileNotFoundError, ValueError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
