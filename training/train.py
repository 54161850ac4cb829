"""train stage: AdamW + one-cycle schedule, augmentation, early stopping on validation loss, best checkpoint."""
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
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.network import build_model, count_parameters
from model.preprocess import eval_transform, train_transform
from training import tracking
from training.dataset import CachedImages
from training.params import preprocessing_meta
from training.prepare import read_manifest, read_stats

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def use_bf16(requested: bool) -> bool:
    """bfloat16 autocast only where the CPU has native bf16 support (else it is slower, not faster)."""
    return bool(requested) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def run_epoch(net, loader, loss_fn, *, optimizer=None, scheduler=None, bf16=False, desc=""):
    """One pass over `loader`; trains when an optimizer is given. Returns (mean loss, accuracy)."""
    training = optimizer is not None
    net.train(training)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False)
    with torch.set_grad_enabled(training):
        for images, targets in bar:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(images)
            loss = loss_fn(logits.float(), targets)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            total_loss += loss.item() * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / seen, correct / seen


def train(params: dict, prepared_dir: Path, out_dir: Path) -> dict:
    """Train on the prepared split, keep the best-validation-loss weights in out_dir/best.pt."""
    cfg, meta = params["train"], preprocessing_meta(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    generator = seed_everything(int(cfg["seed"]))
    classes = meta["classes"]
    train_set = CachedImages(read_manifest(prepared_dir, "train"), classes,
                             train_transform(meta, cfg.get("augment", {})), desc="load train")
    val_set = CachedImages(read_manifest(prepared_dir, "val"), classes, eval_transform(meta), desc="load val")
    if not len(train_set) or not len(val_set):
        raise ValueError(f"{prepared_dir}: empty train or val split; add images or change prepare.val_ratio")
    batch_size = int(cfg["batch_size"])
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=len(train_set) > batch_size,
                              generator=generator)
    val_loader = DataLoader(val_set, batch_size=batch_size * 2)

    net = build_model(params["model"]["arch"], len(classes), params["model"]["pretrained"])
    bf16 = use_bf16(cfg.get("bf16", False))
    epochs = int(cfg["epochs"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(cfg["lr"]), epochs=epochs,
                                                    steps_per_epoch=len(train_loader), pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg.get("label_smoothing", 0.0)))

    tracking.configure()
    stats = read_stats(prepared_dir)
    run = mlflow.start_run(run_name=f"{params['model']['arch']}-{time.strftime('%Y%m%d-%H%M%S')}")
    tracking.save_run_id(out_dir / "run.json", run.info.run_id)
    mlflow.log_params(tracking.flatten({k: params[k] for k in ("data", "prepare", "model", "train")}))
    mlflow.set_tags({"git_commit": tracking.git_commit(), "data_hash": stats["data_hash"],
                     "bf16": str(bf16), "threads": str(torch.get_num_threads())})
    mlflow.log_dict(stats, "data/stats.json")
    print(f"train: {params['model']['arch']} ({count_parameters(net) / 1e6:.1f} M params), "
          f"{len(train_set)} train / {len(val_set)} val images, {epochs} epochs, bf16={bf16}, "
          f"threads={torch.get_num_threads()}, mlflow run {run.info.run_id}")

    history, best_loss, best_epoch, started = [], math.inf, 0, time.time()
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        train_loss, train_acc = run_epoch(net, train_loader, loss_fn, optimizer=optimizer, scheduler=scheduler,
                                          bf16=bf16, desc=f"epoch {epoch}/{epochs} train")
        val_loss, val_acc = run_epoch(net, val_loader, loss_fn, bf16=bf16, desc=f"epoch {epoch}/{epochs} val")
        row = {"epoch": epoch, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
               "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5),
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1)}
        history.append(row)
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        improved = val_loss < best_loss
        if improved:
            best_loss, best_epoch = val_loss, epoch
            torch.save(net.state_dict(), out_dir / "best.pt")
        print(f"epoch {epoch:3d}/{epochs} train loss {train_loss:.4f} acc {train_acc:.4f} | val loss {val_loss:.4f} "
              f"acc {val_acc:.4f} | lr {row['lr']:.2e} | {row['seconds']:.0f}s{'  *best' if improved else ''}",
              flush=True)
        write_history(out_dir / "history.csv", history)
        if epoch - best_epoch >= int(cfg["patience"]):
            print(f"early stopping: no validation-loss improvement for {cfg['patience']} epochs")
            break
    summary = {"best_epoch": best_epoch, "best_val_loss": round(best_loss, 5),
               "best_val_acc": next(r["val_acc"] for r in history if r["epoch"] == best_epoch),
               "epochs_run": len(history), "train_seconds": round(time.time() - started, 1), "bf16": bf16,
               "threads": torch.get_num_threads()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    mlflow.log_metrics({"best_val_loss": summary["best_val_loss"], "best_val_acc": summary["best_val_acc"],
                        "train_seconds": summary["train_seconds"]})
    mlflow.log_artifact(str(out_dir / "history.csv"), "train")
    mlflow.end_run()
    print(f"train: best epoch {best_epoch} (val loss {best_loss:.4f}, acc {summary['best_val_acc']:.4f}) "
          f"in {summary['train_seconds']:.0f}s")
    return summary


def write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)


def load_trained(params: dict, out_dir: Path) -> nn.Module:
    """The best checkpoint as an eval-mode float32 model (no download: weights come from best.pt)."""
    net = build_model(params["model"]["arch"], len(params["data"]["classes"]), pretrained="false")
    net.load_state_dict(torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True))
    return net.eval()
