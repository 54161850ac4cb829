"""train stage: two recipes, one loop, best checkpoint on validation loss.

train.recipe
  finetune  (default) an ImageNet-pretrained backbone: the frozen trunk's outputs are computed once
            (and once more mirrored, as augmentation), then phase `head` trains the classifier on them and
            phase `finetune` trains the last `train.finetune_blocks` stages with the classifier.
  scratch   every weight trained from `model.pretrained` (random init by default) with per-epoch augmentation.

Runs on `train.device` (auto: CUDA when present), and on several processes or machines under torchrun
(DistributedDataParallel; rank 0 alone logs to MLflow and writes files). best.pt carries the model params
and preprocessing it was trained with, so evaluate/export rebuild exactly this network.
"""
from __future__ import annotations

import csv
import json
import math
import random
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from model import engines
from model.network import build_model, count_parameters, split_model, with_tta
from model.preprocess import eval_geometry, eval_transform, train_transform
from training import devices, tracking
from training.dataset import CachedImages, load_uint8
from training.params import preprocessing_meta
from training.prepare import read_manifest, read_stats

HISTORY_FIELDS = ("epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
CHECKPOINT = "best.pt"
RECIPES = ("finetune", "scratch")
# The cached trunk outputs are what the classifier trains on, so a faster engine must reproduce torch's: relative
# L2 error of a sample's outputs (model.engines.check_agreement) within params.yaml train.trunk_tolerance.
TRUNK_TOLERANCE = 0.25


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class Trainer:
    """Epoch bookkeeping shared by both recipes: history, best checkpoint, early stopping, MLflow (rank 0)."""

    def __init__(self, ctx: devices.Context, net: nn.Module, checkpoint: dict, out_dir: Path, patience: int):
        self.ctx, self.net, self.checkpoint, self.out_dir, self.patience = ctx, net, checkpoint, out_dir, patience
        self.history: list[dict] = []
        self.best_loss, self.best_epoch = math.inf, 0
        self.trunk: dict = {}  # finetune: the frozen-trunk pass's engine and seconds (summary.json)

    def record(self, phase: str, train: tuple, val: tuple, lr: float, seconds: float, total: int) -> bool:
        """Log one epoch; save best.pt when validation loss improved. Returns True to stop the phase early."""
        epoch = len(self.history) + 1
        row = {"epoch": epoch, "phase": phase, "train_loss": round(train[0], 5), "train_acc": round(train[1], 5),
               "val_loss": round(val[0], 5), "val_acc": round(val[1], 5), "lr": lr, "seconds": round(seconds, 1)}
        self.history.append(row)
        improved = val[0] < self.best_loss
        phase_best = min(r["val_loss"] for r in self.history if r["phase"] == phase)
        if improved:
            self.best_loss, self.best_epoch = val[0], epoch
        if self.ctx.is_main:
            mlflow.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "phase")}, step=epoch)
            if improved:
                torch.save({**self.checkpoint, "state_dict": self.net.state_dict(), "epoch": epoch},
                           self.out_dir / CHECKPOINT)
            write_history(self.out_dir / "history.csv", self.history)
            print(f"epoch {epoch:3d} {phase:8s} {sum(r['phase'] == phase for r in self.history)}/{total} "
                  f"train loss {train[0]:.4f} acc {train[1]:.4f} | val loss {val[0]:.4f} acc {val[1]:.4f} | "
                  f"lr {lr:.2e} | {seconds:.0f}s{'  *best' if improved else ''}", flush=True)
        stale = [r for r in self.history if r["phase"] == phase]
        since_best = len(stale) - 1 - [r["val_loss"] for r in stale].index(phase_best)
        if since_best >= self.patience:
            if self.ctx.is_main:
                print(f"early stopping {phase}: no validation-loss improvement for {self.patience} epochs")
            return True
        return False


def run_epoch(module, batches, loss_fn, ctx: devices.Context, *, amp=None, optimizer=None, scheduler=None,
              scaler=None, desc=""):
    """One pass over `batches` of (x, y); trains when an optimizer is given. (mean loss, accuracy) over all ranks."""
    training = optimizer is not None
    module.train(training)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(batches, desc=desc, unit="batch", leave=False, disable=not ctx.is_main)
    with torch.set_grad_enabled(training):
        for images, targets in bar:
            images = images.to(ctx.device, dtype=torch.float32, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)
            with devices.autocast(ctx.device, amp):
                logits = module(images)
            loss = loss_fn(logits.float(), targets)
            if training:
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
            total_loss += loss.item() * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    total_loss, correct, seen = ctx.sum(total_loss, correct, seen)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, steps: int | None = None,
                   generator: torch.Generator | None = None):
    """Mini-batches of cached tensors: shuffled (generator) and cut to `steps` when training, in order otherwise."""
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    n = len(order) // batch_size if steps is not None else math.ceil(len(order) / batch_size)
    for i in range(n if steps is None else min(n, steps)):
        index = order[i * batch_size:(i + 1) * batch_size]
        yield x[index], y[index]


@torch.no_grad()
def trunk_forward(module: nn.Module, example: torch.Tensor, meta: dict, device: torch.device, engine: str = "auto",
                  tolerance: float = TRUNK_TOLERANCE):
    """The frozen trunk as a forward-only callable taking uint8 batches (eval_geometry's output, normalised with
    `meta`'s mean/std inside) on the fastest engine whose outputs agree with torch's on `example` (a real uint8
    batch) within `tolerance`: model.engines.choose's pick for this device, else OpenVINO f32,
    else TorchScript (each disagreement or failure printed). Returns (forward, "engine precision")."""
    module.eval()
    first = engines.choose(engine, "auto", device.type, engines.cpu_capabilities())[:2]
    converted = {}  # one OpenVINO conversion for both precisions
    for choice in dict.fromkeys([first, (first[0], "f32"), ("torchscript", "f32")]):
        try:
            forward = engines.compile_forward(module, example, *choice, rtol=tolerance, normalize=meta,
                                              converted=converted)
            return forward, " ".join(choice)
        except Exception as exc:  # noqa: BLE001 - converters raise assorted errors; the next engine is tried
            print(f"frozen trunk: {' '.join(choice)} not used ({exc})", flush=True)
    raise RuntimeError("no engine could run the frozen trunk")


@torch.no_grad()
def cache_outputs(forward, rows: list[dict], classes: list[str], meta: dict, ctx: devices.Context, *,
                  mirror: bool, batch_size: int, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """forward(image) for every row (and for its mirror image when `mirror`), float16 on the CPU, with labels;
    `forward` takes uint8 batches (trunk_forward)."""
    transform = eval_geometry(meta)
    outputs, labels = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", leave=False, disable=not ctx.is_main):
        chunk = rows[start:start + batch_size]
        x = torch.stack([transform(img) for img in load_uint8([r["cache"] for r in chunk], progress=False)])
        y = torch.tensor([classes.index(r["label"]) for r in chunk])
        for view in ((x, x.flip(-1)) if mirror else (x,)):
            outputs.append(forward(view.to(ctx.device)).to("cpu", torch.float16))
            labels.append(y)
    return torch.cat(outputs), torch.cat(labels)


def first_batch(rows: list[dict], meta: dict, n: int) -> torch.Tensor:
    """The first `n` images of `rows` as a uint8 batch (eval_geometry): a real batch to check an engine on."""
    transform = eval_geometry(meta)
    return torch.stack([transform(img) for img in load_uint8([r["cache"] for r in rows[:n]], progress=False)])


def fit_tensors(trainer: Trainer, phase: str, module: nn.Module, groups: list[dict], data: tuple, val: tuple,
                cfg: dict, epochs: int, generator: torch.Generator, amp) -> None:
    """Train `module` (param groups with their own lr) on cached tensors for up to `epochs` epochs."""
    ctx = trainer.ctx
    batch_size = int(cfg["batch_size"])
    steps = ctx.min(len(data[0]) // batch_size)  # every rank takes the same number of steps (DDP)
    if steps == 0:
        raise ValueError(f"train split too small: fewer than train.batch_size={batch_size} images per process")
    wrapped = DistributedDataParallel(module) if ctx.distributed else module
    optimizer = torch.optim.AdamW(groups, weight_decay=float(cfg["weight_decay"]))
    # 10 % warm-up, but at least 2 steps of it: OneCycleLR divides by the warm-up length.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups], epochs=epochs,
                                                    steps_per_epoch=steps,
                                                    pct_start=min(0.5, max(0.1, 2 / (epochs * steps))))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg.get("label_smoothing", 0.0)))
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        train = run_epoch(wrapped, tensor_batches(*data, batch_size, steps=steps, generator=generator), loss_fn, ctx,
                          amp=amp, optimizer=optimizer, scheduler=scheduler, desc=f"{phase} {epoch}/{epochs}")
        result = run_epoch(module, tensor_batches(*val, batch_size * 4), loss_fn, ctx, amp=amp, desc="val")
        if trainer.record(phase, train, result, optimizer.param_groups[-1]["lr"], time.time() - t0, epochs):
            break


def train_finetune(trainer: Trainer, params: dict, meta: dict, rows: dict, generator, amp) -> None:
    cfg, ctx, net = params["train"], trainer.ctx, trainer.net
    classes = meta["classes"]
    trunk, body, head = split_model(net, int(cfg.get("finetune_blocks", 0)))
    for p in trunk.parameters():
        p.requires_grad_(False)
    batch = int(cfg["batch_size"])
    t0 = time.time()
    example = first_batch(rows["train"], meta, min(batch, 8)).to(ctx.device)
    trunk, engine = trunk_forward(trunk, example, meta, ctx.device, str(cfg.get("trunk_engine", "auto")),
                                  float(cfg.get("trunk_tolerance", TRUNK_TOLERANCE)))
    threads = engines.leave_cores_to_openvino() if engine.startswith("openvino") else torch.get_num_threads()
    train_x, train_y = cache_outputs(trunk, rows["train"], classes, meta, ctx, mirror=bool(cfg.get("hflip", True)),
                                     batch_size=batch, desc="frozen trunk: train")
    val_x, val_y = cache_outputs(trunk, rows["val"], classes, meta, ctx, mirror=False, batch_size=batch,
                                 desc="frozen trunk: val")
    torch.set_num_threads(threads)  # the classifier trains in torch
    trainer.trunk = {"trunk_engine": engine, "trunk_seconds": round(time.time() - t0, 1)}
    if ctx.is_main:
        print(f"frozen trunk outputs {tuple(train_x.shape[1:])} for {len(train_x)} train / {len(val_x)} val "
              f"images (rank 0) in {trainer.trunk['trunk_seconds']:.0f}s on {engine}", flush=True)
        mlflow.set_tag("trunk_engine", engine)
        mlflow.log_metric("trunk_seconds", trainer.trunk["trunk_seconds"])
    head_epochs, finetune_epochs = int(cfg.get("head_epochs", 0)), int(cfg.get("finetune_epochs", 0))
    if head_epochs:
        with torch.no_grad():  # pooled features of the frozen-for-now body, once
            pooled = [torch.cat([body.eval()(x.to(ctx.device, torch.float32)).cpu()
                                 for x, _ in tensor_batches(xs, ys, batch * 4)]) for xs, ys in ((train_x, train_y),
                                                                                               (val_x, val_y))]
        fit_tensors(trainer, "head", head, [{"params": head.parameters(), "lr": float(cfg["lr"])}],
                    (pooled[0], train_y), (pooled[1], val_y), cfg, head_epochs, generator, amp)
    if finetune_epochs and any(True for _ in body.parameters()):
        top = nn.Sequential(body, head)
        groups = [{"params": body.parameters(), "lr": float(cfg["finetune_lr"])},
                  {"params": head.parameters(), "lr": float(cfg["finetune_lr"]) * float(cfg.get("head_lr_scale", 1))}]
        fit_tensors(trainer, "finetune", top, groups, (train_x, train_y), (val_x, val_y), cfg, finetune_epochs,
                    generator, amp)


def train_scratch(trainer: Trainer, params: dict, meta: dict, rows: dict, generator, amp) -> None:
    cfg, ctx, net = params["train"], trainer.ctx, trainer.net
    classes = meta["classes"]
    train_set = CachedImages(rows["train"], classes, train_transform(meta, cfg.get("augment", {})), desc="load train")
    val_set = CachedImages(rows["val"], classes, eval_transform(meta), desc="load val")
    batch_size, workers = int(cfg["batch_size"]), int(cfg.get("num_workers", 0))
    loader_args = {"num_workers": workers, "pin_memory": ctx.device.type == "cuda", "persistent_workers": workers > 0}
    sampler = DistributedSampler(train_set, seed=int(cfg["seed"])) if ctx.distributed else None
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                              drop_last=len(train_set) > batch_size * ctx.world_size, generator=generator,
                              **loader_args)
    val_sampler = DistributedSampler(val_set, shuffle=False) if ctx.distributed else None
    val_loader = DataLoader(val_set, batch_size=batch_size * 2, sampler=val_sampler, **loader_args)
    epochs = int(cfg["epochs"])
    wrapped = DistributedDataParallel(net) if ctx.distributed else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(cfg["lr"]), epochs=epochs,
                                                    steps_per_epoch=len(train_loader), pct_start=0.2)
    scaler = torch.amp.GradScaler(ctx.device.type) if amp == torch.float16 else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg.get("label_smoothing", 0.0)))
    for epoch in range(1, epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0 = time.time()
        train = run_epoch(wrapped, train_loader, loss_fn, ctx, amp=amp, optimizer=optimizer, scheduler=scheduler,
                          scaler=scaler, desc=f"epoch {epoch}/{epochs} train")
        val = run_epoch(net, val_loader, loss_fn, ctx, amp=amp, desc=f"epoch {epoch}/{epochs} val")
        if trainer.record("scratch", train, val, optimizer.param_groups[0]["lr"], time.time() - t0, epochs):
            break


def train(params: dict, prepared_dir: Path, out_dir: Path) -> dict:
    """Train on the prepared split, keep the best-validation-loss weights (and their config) in out_dir/best.pt."""
    cfg, model_cfg, meta = params["train"], params["model"], preprocessing_meta(params)
    recipe = cfg.get("recipe", "scratch")
    if recipe not in RECIPES:
        raise ValueError(f"train.recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
    ctx = devices.setup(str(cfg.get("device", "auto")))
    try:
        return _train(params, cfg, model_cfg, meta, recipe, ctx, Path(prepared_dir), Path(out_dir))
    finally:
        ctx.close()


def _train(params, cfg, model_cfg, meta, recipe, ctx, prepared_dir: Path, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    generator = seed_everything(int(cfg["seed"]))
    rows = {split: read_manifest(prepared_dir, split) for split in ("train", "val")}
    if not rows["train"] or not rows["val"]:
        raise ValueError(f"{prepared_dir}: empty train or val split; add images or change prepare.val_ratio")
    if recipe == "finetune" and ctx.distributed:  # each process caches and trains on its own shard
        rows = {split: r[ctx.rank::ctx.world_size] for split, r in rows.items()}
    net = build_model(model_cfg["arch"], len(meta["classes"]), str(model_cfg["pretrained"]),
                      weights_file=model_cfg.get("weights_file"), weights_sha256=model_cfg.get("weights_sha256"))
    net.to(ctx.device)
    amp = devices.amp_dtype(str(cfg.get("amp", "auto")), ctx.device)
    checkpoint = {"model": dict(model_cfg), "meta": meta, "recipe": recipe}
    trainer = Trainer(ctx, net, checkpoint, out_dir, int(cfg["patience"]))

    stats = read_stats(prepared_dir)
    if ctx.is_main:
        tracking.configure()
        run = mlflow.start_run(run_name=f"{model_cfg['arch']}-{recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
        tracking.save_run_id(out_dir / "run.json", run.info.run_id)
        mlflow.log_params(tracking.flatten({k: params[k] for k in ("data", "prepare", "model", "train")}))
        mlflow.set_tags({"git_commit": tracking.git_commit(), "data_hash": stats["data_hash"], "recipe": recipe,
                         "device": str(ctx.device), "amp": str(amp).replace("torch.", ""),
                         "world_size": str(ctx.world_size), "threads": str(torch.get_num_threads())})
        mlflow.log_dict(stats, "data/stats.json")
        print(f"train: {model_cfg['arch']} ({count_parameters(net) / 1e6:.1f} M params, weights: "
              f"{model_cfg['pretrained']}), recipe {recipe}, {_counts(stats)['train']} train / "
              f"{_counts(stats)['val']} val images, device {ctx.device} x {ctx.world_size} process(es), "
              f"amp {str(amp).replace('torch.', '')}, threads {torch.get_num_threads()}, "
              f"mlflow run {run.info.run_id}", flush=True)
    started = time.time()
    (train_finetune if recipe == "finetune" else train_scratch)(trainer, params, meta, rows, generator, amp)
    ctx.barrier()
    history = trainer.history
    summary = {"best_epoch": trainer.best_epoch, "best_val_loss": round(trainer.best_loss, 5),
               "best_val_acc": next(r["val_acc"] for r in history if r["epoch"] == trainer.best_epoch),
               "epochs_run": len(history), "train_seconds": round(time.time() - started, 1), "recipe": recipe,
               "device": str(ctx.device), "world_size": ctx.world_size, "amp": str(amp).replace("torch.", ""),
               "threads": torch.get_num_threads(), **trainer.trunk}
    if ctx.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_metrics({"best_val_loss": summary["best_val_loss"], "best_val_acc": summary["best_val_acc"],
                            "train_seconds": summary["train_seconds"]})
        mlflow.log_artifact(str(out_dir / "history.csv"), "train")
        mlflow.end_run()
        print(f"train: best epoch {trainer.best_epoch} (val loss {trainer.best_loss:.4f}, acc "
              f"{summary['best_val_acc']:.4f}) in {summary['train_seconds']:.0f}s")
    return summary


def _counts(stats: dict) -> dict:
    return {split: sum(labels.values()) for split, labels in stats["splits"].items()}


def write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)


def load_trained(train_dir: Path) -> tuple[nn.Module, dict]:
    """(eval-mode float32 network as evaluated and served, with the test-time augmentation of model.tta; preprocessing
    meta) rebuilt from best.pt's own config, not today's params.yaml."""
    path = Path(train_dir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m training train` first")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path} is a bare state dict from an older version: retrain (`dvc repro train`)")
    model = checkpoint["model"]
    meta = {**checkpoint["meta"], "arch": model["arch"], "pretrained": model["pretrained"],
            "recipe": checkpoint["recipe"], "tta": str(model.get("tta", "none"))}
    net = build_model(model["arch"], len(meta["classes"]), pretrained="none")
    net.load_state_dict(checkpoint["state_dict"])
    return with_tta(net, meta["tta"]).eval(), meta
