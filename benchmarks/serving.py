"""Benchmark: the served model (real TorchServe) against the same model in one Python process.

For each serving configuration (workers, torch threads per worker, batch size, max batch delay) it
builds a .mar from the export directory with that model-config, starts TorchServe on free ports, and
sends the same images at concurrency 1, 4 and 16 (threads, one HTTP session each), recording
throughput and p50/p95/p99 latency. The in-process baseline decodes, preprocesses and runs the
TorchScript model on the same images at batch size 1 and at each configuration's batch size.
Nothing is asserted: it prints the table and writes it into docs/performance.md (between markers,
so the load-test sections of that file are kept).

    python -m benchmarks.serving                       # artifacts/model, synthetic test images
    python -m benchmarks.serving --images ../shared/data/dogs-vs-cats-10k.tar --configs 1:2:8:10 2:1:8:10
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

from model.export import read_metadata
from model.preprocess import decode_image, eval_transform
from serving.archive import MODEL_CONFIG, build_archive
from serving.client import ServingClient
from serving.config import DEFAULT_CONFIG
from serving.server import free_ports, start, stop

START, END = "<!-- serving-benchmark:start -->", "<!-- serving-benchmark:end -->"


def load_images(source: Path, limit: int) -> list[bytes]:
    """Up to `limit` image files from a folder (recursively) or a .tar archive."""
    suffixes = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
    if source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(suffixes)]
            return [tar.extractfile(m).read() for m in sorted(members, key=lambda m: m.name)[:limit]]
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in suffixes)[:limit]
    if not files:
        raise SystemExit(f"no images under {source}; pass --images DIR_OR_TAR")
    return [p.read_bytes() for p in files]


def percentiles(latencies_ms: list[float]) -> dict:
    qs = statistics.quantiles(latencies_ms, n=100)
    return {"p50_ms": round(statistics.median(latencies_ms), 1), "p95_ms": round(qs[94], 1),
            "p99_ms": round(qs[98], 1)}


def in_process(model_dir: Path, images: list[bytes], batch_size: int, threads: int) -> dict:
    """Images/s for decode + preprocess + forward in this process, `batch_size` images per forward."""
    torch.set_num_threads(threads)
    meta = read_metadata(model_dir / "model-meta.json")
    net = torch.jit.load(str(model_dir / "model.pt")).eval()
    transform = eval_transform(meta)

    def run(batch: list[bytes]):
        x = torch.stack([transform(decode_image(b, draft_size=meta["resize_size"])) for b in batch])
        with torch.inference_mode():
            net(x)

    for i in range(0, min(len(images), 4 * batch_size), batch_size):  # warm-up
        run(images[i:i + batch_size])
    t0 = time.perf_counter()
    for i in range(0, len(images), batch_size):
        run(images[i:i + batch_size])
    seconds = time.perf_counter() - t0
    return {"batch_size": batch_size, "threads": threads, "images_per_s": round(len(images) / seconds, 1)}


def load(client: ServingClient, images: list[bytes], concurrency: int, total: int) -> dict:
    """`total` requests from `concurrency` threads; throughput, percentiles, failures."""
    latencies, failures, lock = [], 0, threading.Lock()
    local = threading.local()
    counter = iter(range(total))

    def worker():
        nonlocal failures
        if not hasattr(local, "client"):
            local.client = ServingClient(**{f"{k}_url": v for k, v in client.urls.items()},
                                         key_file=client.key_file, timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            ok = local.client.predict(images[i % len(images)]).status_code == 200
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                latencies.append(ms)
                failures += not ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    seconds = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": total, "failed": failures,
            "requests_per_s": round(total / seconds, 1), **percentiles(latencies)}


def parse_config(text: str) -> dict:
    workers, threads, batch, delay = (int(x) for x in text.split(":"))
    return {"workers": workers, "threads": threads, "batch_size": batch, "max_batch_delay": delay}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("artifacts/model"), help="export stage output")
    parser.add_argument("--images", type=Path, default=Path("data/synthetic"),
                        help="folder or .tar of images to send (default: %(default)s)")
    parser.add_argument("--n-images", type=int, default=200, help="distinct images used (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--configs", nargs="+", default=["1:2:1:0", "1:2:8:10", "2:1:8:10", "1:2:16:20"],
                        metavar="W:T:B:D", help="workers:torch-threads:batch-size:max-batch-delay-ms")
    parser.add_argument("--report", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args(argv)

    images = load_images(args.images, args.n_images)
    configs = [parse_config(c) for c in args.configs]
    print(f"{len(images)} images from {args.images}; model {args.model_dir}")
    baseline = [in_process(args.model_dir, images * max(1, 200 // len(images)), b, 2)
                for b in sorted({1, *(c["batch_size"] for c in configs)})]
    for row in baseline:
        print(f"in-process batch {row['batch_size']:>2}: {row['images_per_s']} images/s")
    results = []
    for cfg in configs:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            rows = run_served(args.model_dir, images, cfg, args.concurrency, args.requests, Path(tmp))
        for row in rows:
            print(f"served W{cfg['workers']} T{cfg['threads']} B{cfg['batch_size']} D{cfg['max_batch_delay']} "
                  f"c={row['concurrency']:>2}: {row['requests_per_s']} req/s, p50 {row['p50_ms']} ms, "
                  f"p95 {row['p95_ms']} ms, p99 {row['p99_ms']} ms, failed {row['failed']}")
            results.append({**cfg, **row})
    meta = read_metadata(args.model_dir / "model-meta.json")
    write_report(args.report, meta, args, baseline, results)
    Path("reports").mkdir(exist_ok=True)
    Path("reports/serving-benchmark.json").write_text(json.dumps({"in_process": baseline, "served": results},
                                                                  indent=2) + "\n")
    return 0


def run_served(model_dir: Path, images: list[bytes], cfg: dict, concurrencies: list[int], total: int,
               work: Path) -> list[dict]:
    model_config = yaml.safe_load(MODEL_CONFIG.read_text())
    model_config.update(minWorkers=cfg["workers"], maxWorkers=cfg["workers"], batchSize=cfg["batch_size"],
                        maxBatchDelay=cfg["max_batch_delay"])
    model_config.setdefault("handler", {})["torch_threads"] = cfg["threads"]
    config_file = work / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(model_config))
    build_archive(model_dir, work / "store", config_file=config_file)
    ports = free_ports(5)
    os.environ["OMP_NUM_THREADS"] = str(cfg["threads"])  # inherited by the workers TorchServe forks
    start(config=DEFAULT_CONFIG, run_dir=work / "run", log_dir=work / "logs", model_store=work / "store",
          ports=dict(zip(("inference", "management", "metrics"), ports[:3])), grpc_ports=(ports[3], ports[4]),
          timeout=240)
    try:
        client = ServingClient.from_run_dir(work / "run", timeout=60)
        load(client, images, 4, 40)  # warm-up
        return [load(client, images, c, total) for c in concurrencies]
    finally:
        stop(work / "run")
        os.environ.pop("OMP_NUM_THREADS", None)


def write_report(path: Path, meta: dict, args, baseline: list[dict], results: list[dict]) -> None:
    command = (f"`python -m benchmarks.serving --images {args.images} --configs {' '.join(args.configs)}` "
               f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, no GPU). Model {meta.get('arch')} at "
               f"{meta.get('image_size')} px, version {meta.get('version')}; {args.requests} requests per level, "
               f"client threads on the same machine.")
    lines = [START, "## Serving benchmark (TorchServe vs in-process)", "", command, "",
             "In-process (decode + preprocess + forward, one Python process, 2 torch threads):", "",
             "| batch size | images/s |", "|---|---|"]
    lines += [f"| {r['batch_size']} | {r['images_per_s']} |" for r in baseline]
    lines += ["", "Served (HTTP, token auth on, one image per request):", "",
              "| workers | threads/worker | batch | delay ms | concurrency | req/s | p50 ms | p95 ms | p99 ms | failed |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['threads']} | {r['batch_size']} | {r['max_batch_delay']} | {r['concurrency']} | "
              f"{r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['failed']} |"
              for r in results]
    lines += ["", END]
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Performance\n\n"
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
