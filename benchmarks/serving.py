"""Benchmark: the served model (real TorchServe loaded by `wrk`) on each inference engine against the same model in
one Python process, and a version swap (`python -m deploy deploy` + `rollback`) under load.

Engines (--engines): `torchscript` and `auto` (what the archive serves by default here), set for the workers with
CATSDOGS_ENGINE. One TorchServe per engine, all up together, on free loopback ports; each of --rounds rounds runs
every engine's in-process runs then its wrk runs at every --concurrency. Writes reports/serving-benchmark.json and
docs/performance.md's block (the method: docs/performance.md). Nothing is asserted. Needs `wrk` (Debian package).

    python -m benchmarks.serving                                  # artifacts/model, committed configuration
    python -m benchmarks.serving --configs 2:1:8:10 1:0:8:1 --engines auto --no-docs --no-swap
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import torch
import yaml

from benchmarks.engines import call_times, with_decode
from benchmarks.report import describe_machine, load_average, load_line, machine, model_line, write_block, write_json
from catsdogs.contract import MODEL_DIR, REPO_ROOT, SHARED_PHOTOS, read_meta
from deploy.deployer import DeployOptions
from handler.catsdogs_handler import serving_forward
from model import engines
from model.runtime import reuse_freed_memory
from serving.archive import MODEL_CONFIG, build_archive
from serving.client import ServingClient
from serving.config import DEFAULT_CONFIG
from serving.server import free_ports, start, stop

BLOCK = "serving-benchmark"  # docs/performance.md's block between its markers
LUA = Path(__file__).with_name("wrk_post_image.lua")


def payload(source: Path | None) -> tuple[bytes, str]:
    """(JPEG bytes, description): the first photo of the real-photo tar when present, else a synthetic image."""
    from PIL import Image

    if source is not None and source.is_file():
        with tarfile.open(source) as tar:
            member = min((m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")),
                         key=lambda m: m.name)
            data = tar.extractfile(member).read()
        with Image.open(io.BytesIO(data)) as img:
            return data, f"`{member.name}` from {source.name} ({img.width}x{img.height} JPEG, {len(data)} bytes)"
    img = Image.radial_gradient("L").convert("RGB").resize((200, 200))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data, f"a synthetic 200x200 JPEG ({len(data)} bytes; {SHARED_PHOTOS.name} not found)"


def percentiles_ms(seconds: list[float]) -> dict:
    qs = statistics.quantiles(seconds, n=100)
    return {"p50_ms": round(statistics.median(seconds) * 1000, 1), "p95_ms": round(qs[94] * 1000, 1),
            "p99_ms": round(qs[98] * 1000, 1)}


def in_process(model_dir: Path, data: bytes, engine: str | None, batch_size: int, threads: int,
               seconds: float) -> dict:
    """Decode + resize/crop + forward of `batch_size` copies of `data` in a loop for `seconds`, the forward built as
    the handler builds it (serving_forward) on `engine` (torchscript | auto; None: as the archive and the
    environment ask)."""
    torch.set_num_threads(threads)
    meta = read_meta(model_dir / "model-meta.json")
    net = torch.jit.load(str(model_dir / "model.pt")).eval()
    forward, name, precision, _ = serving_forward(net, meta, torch.device("cpu"), True,
                                                  asked=(engine, "auto") if engine else None)
    run, batch = with_decode(forward, meta, torch.get_num_threads()), [data] * batch_size
    call_times(run, batch, 1.0)  # warm-up (TorchScript profiling runs, allocator, OpenVINO's shapes)
    times = call_times(run, batch, seconds)
    images_per_s = batch_size * len(times) / sum(times)
    return {"engine": engine, "runs_on": f"{name} {precision}", "threads": threads, "batch_size": batch_size,
            "images_per_s": round(images_per_s, 1), **percentiles_ms(times)}


def wrk_command(url: str, token: str, body: Path, connections: int, seconds: int) -> tuple[list[str], dict]:
    """(command, environment) of one wrk run: one client thread, benchmarks/wrk_post_image.lua posting `body`."""
    return (["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url],
            {**os.environ, "WRK_BODY": str(body), "WRK_TOKEN": token})


def parse_wrk(out: str, connections: int) -> dict:
    """wrk's WRK_RESULT line -> requests/s, latency percentiles, failures and requests slower than 1 s."""
    line = next((x for x in out.splitlines() if x.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no WRK_RESULT line:\n{out}")
    r = json.loads(line.split(" ", 1)[1])
    failed = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {"concurrency": connections, "requests": r["requests"], "failed": failed,
            "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 1),
            **{f"p{q}_ms": round(r[f"p{q}_us"] / 1000, 1) for q in (50, 95, 99)},
            "max_ms": round(r["max_us"] / 1000, 1), "over_1s": r["over_1s"],
            "errors": {k: r[k] for k in ("connect", "read", "write", "status", "timeout")}}


def run_wrk(url: str, token: str, body: Path, connections: int, seconds: int) -> dict:
    command, env = wrk_command(url, token, body, connections, seconds)
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + 60, env=env).stdout
    return parse_wrk(out, connections)


def parse_config(text: str) -> dict:
    workers, threads, batch, delay = (int(x) for x in text.split(":"))
    return {"workers": workers, "threads": threads, "batch_size": batch, "max_batch_delay": delay}


def committed_config() -> dict:
    cfg = yaml.safe_load(MODEL_CONFIG.read_text())
    return {"workers": cfg["minWorkers"], "threads": cfg.get("handler", {}).get("torch_threads", 0),
            "batch_size": cfg["batchSize"], "max_batch_delay": cfg["maxBatchDelay"]}


@contextmanager
def served(model_dir: Path, cfg: dict, props: dict, handler: dict, work: Path, engine: str = "auto"):
    """TorchServe on free loopback ports serving a .mar of `model_dir` built with the W:T:B:D configuration `cfg`
    (its model-config.yaml left in `work`), its workers on `engine` (CATSDOGS_ENGINE); yields (prediction URL,
    inference key)."""
    work.mkdir(parents=True, exist_ok=True)
    model_config = yaml.safe_load(MODEL_CONFIG.read_text())
    model_config.update(minWorkers=cfg["workers"], maxWorkers=cfg["workers"], batchSize=cfg["batch_size"],
                        maxBatchDelay=cfg["max_batch_delay"])
    model_config["handler"] = {**(model_config.get("handler") or {}), **handler, "torch_threads": cfg["threads"]}
    config_file = work / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(model_config))
    build_archive(model_dir, work / "store", config_file=config_file)
    ports = free_ports(5)
    with mock.patch.dict(os.environ, {engines.ENGINE_ENV: engine}):  # TorchServe passes it on to its workers
        state = start(config=DEFAULT_CONFIG, run_dir=work / "run", log_dir=work / "logs", model_store=work / "store",
                      ports=dict(zip(("inference", "management", "metrics"), ports[:3])),
                      grpc_ports=(ports[3], ports[4]), timeout=240, extra=props or None)
    try:
        client = ServingClient.from_run_dir(work / "run", timeout=60)
        yield f"{state['inference_url']}/predictions/{client.model_name}", client.key("inference")
    finally:
        stop(work / "run")


def measure(model_dir: Path, data: bytes, cfg: dict, props: dict, handler: dict, args, work: Path) -> tuple[list, list]:
    """(in-process rows, served rows) of `args.rounds` rounds against one TorchServe per engine, all up at once;
    each round takes every engine in turn: its in-process runs (the servers idle), then wrk at every concurrency."""
    body = work / "payload.jpg"
    body.write_bytes(data)
    cores = os.cpu_count() or 1
    inproc, rows = [], []
    with ExitStack() as stack:
        servers = {engine: stack.enter_context(served(model_dir, cfg, props, handler, work / engine, engine))
                   for engine in args.engines}
        for url, token in servers.values():
            run_wrk(url, token, body, 4, args.warmup)  # the frontend's JIT compiler, the worker's first batches
        for round_ in range(args.rounds):
            for engine, (url, token) in servers.items():
                runs = [in_process(model_dir, data, engine, b, cores, min(args.seconds, 6)) for b in (1, 8)]
                inproc += [{**run, "round": round_} for run in runs]
                for c in args.concurrency:
                    row = run_wrk(url, token, body, c, args.seconds)
                    rows.append({**cfg, "engine": engine, **row, "round": round_})
    return inproc, rows


def medians(rows: list[dict], keys: tuple, fields: tuple) -> list[dict]:
    """One row per distinct `keys`, each of `fields` the median over the rounds, plus the number of rounds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return [{**dict(zip(keys, key)), **{f: round(statistics.median(r[f] for r in group), 2) for f in fields},
             "rounds": len(group)} for key, group in groups.items()]


def second_version(model_dir: Path, work: Path) -> Path:
    """A .mar of the same weights under another version (`<version>.swap`): what a deploy registers."""
    copy = work / "second-version-model"
    shutil.copytree(model_dir, copy)
    meta = json.loads((copy / "model-meta.json").read_text())
    meta["version"] = f"{meta['version']}.swap"
    (copy / "model-meta.json").write_text(json.dumps(meta, indent=2))
    config_file = work / "model-config.yaml"  # written by served() with the same configuration
    return build_archive(copy, work / "second-version", config_file=config_file)


def run_swap(model_dir: Path, data: bytes, cfg: dict, props: dict, handler: dict, connections: int, steady: int,
             warmup: int, work: Path) -> dict:
    """Steady load, then the same load across the real `python -m deploy deploy` of a second version and `rollback`
    (subprocesses, a throwaway MLflow URI: no registry alias moves) until 3 s after the rollback returned."""
    body = work / "payload.jpg"
    body.write_bytes(data)
    with served(model_dir, cfg, props, handler, work) as (url, token):
        candidate = second_version(model_dir, work)
        run_wrk(url, token, body, connections, warmup)
        steady_row = run_wrk(url, token, body, connections, steady)
        where = ["--run-dir", str(work / "run"), "--model-store", str(work / "store"),
                 "--tracking-uri", f"sqlite:///{work / 'no-registry.db'}"]
        # the golden set: the test split the model was trained with (beside the model in benchmark work folders,
        # else the repository's prepare output), else drawn cartoons
        prepared = next((p for p in (model_dir.parent / "prepared", REPO_ROOT / DeployOptions.prepared) if p.is_dir()),
                        None)
        golden = ["--prepared", str(prepared)] if prepared else ["--synthetic-golden"]
        command, env = wrk_command(url, token, body, connections, 900)
        load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        steps = {}
        try:
            time.sleep(3)
            for name, cmd in (("deploy", ["deploy", str(candidate), *golden]), ("rollback", ["rollback"])):
                began = time.monotonic()
                done = subprocess.run([sys.executable, "-m", "deploy", *cmd, *where], check=False, capture_output=True,
                                      text=True, cwd=REPO_ROOT, timeout=600)
                steps[name] = {"seconds": round(time.monotonic() - began, 1), "exit": done.returncode}
                if done.returncode != 0:
                    raise RuntimeError(f"python -m deploy {name} failed (exit {done.returncode}):\n"
                                       f"{done.stdout}{done.stderr}")
                time.sleep(3)
        finally:
            load.send_signal(signal.SIGINT)  # wrk stops and prints its summary
            out, _ = load.communicate(timeout=60)
        swap_row = parse_wrk(out, connections)
    return {"connections": connections, "steady_seconds": steady, "steady": steady_row, "swap": swap_row,
            "steps": steps, "p99_ratio": round(swap_row["p99_ms"] / steady_row["p99_ms"], 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR, help="export stage output")
    parser.add_argument("--images", type=Path, default=SHARED_PHOTOS,
                        help="real-photo .tar whose first JPEG is the payload (default: %(default)s; "
                             "a synthetic JPEG when absent)")
    parser.add_argument("--seconds", type=int, default=15, help="wrk duration per concurrency level")
    parser.add_argument("--rounds", type=int, default=3,
                        help="in-process and served runs alternate this many times; tables give the medians")
    parser.add_argument("--warmup", type=int, default=15, help="seconds of wrk load before measuring a server")
    parser.add_argument("--swap-connections", type=int, default=8, help="wrk connections during the version swap")
    parser.add_argument("--swap-steady", type=int, default=30,
                        help="seconds of steady load measured before the swap, the p99 it is compared with")
    parser.add_argument("--no-swap", action="store_true", help="skip the deploy + rollback under load")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--engines", nargs="+", default=["torchscript", "auto"], choices=["auto", *engines.ENGINES],
                        help="inference engines compared, one server each (auto = the archive's default here)")
    parser.add_argument("--configs", nargs="+", metavar="W:T:B:D",
                        help="workers:torch-threads:batch-size:max-batch-delay-ms (default: handler/model-config.yaml)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config.properties overrides for every served run (e.g. netty_client_threads=1)")
    parser.add_argument("--handler", nargs="+", default=[], metavar="KEY=VALUE",
                        help="model-config.yaml handler: overrides (YAML values, e.g. optimize=false)")
    parser.add_argument("--report", type=Path, default=Path("docs/performance.md"))
    parser.add_argument("--no-docs", action="store_true", help="print and write the JSON only")
    args = parser.parse_args(argv)
    reuse_freed_memory()  # as the handler does (model/runtime.py)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)  # TorchScript kept
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: install the Debian package (apt-get install -y wrk)")

    data, described = payload(args.images)
    props = dict(item.split("=", 1) for item in args.set)
    handler = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.handler)}
    configs = [parse_config(c) for c in args.configs] if args.configs else [committed_config()]
    print(f"payload: {described}; model {args.model_dir}")
    load_before = load_average()
    inproc_runs, served_runs = [], []
    for cfg in configs:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            runs, rows = measure(args.model_dir, data, cfg, props, handler, args, Path(tmp))
        inproc_runs += runs
        served_runs += rows
        for row in runs + rows:
            print(json.dumps(row))
    baseline = medians(inproc_runs, ("engine", "runs_on", "threads", "batch_size"),
                       ("images_per_s", "p50_ms", "p95_ms", "p99_ms"))
    results = medians(served_runs, ("engine", "workers", "threads", "batch_size", "max_batch_delay", "concurrency"),
                      ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "failed"))
    swap = None
    if not args.no_swap:
        with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
            swap = run_swap(args.model_dir, data, configs[0], props, handler, args.swap_connections, args.swap_steady,
                            args.warmup, Path(tmp))
        print(json.dumps(swap))
    report = {"conditions": {**machine(), "wrk": shutil.which("wrk")},
              "load": {"before": load_before, "after": load_average()},
              "payload": described, "set": props, "handler": handler,
              "capabilities": sorted(engines.cpu_capabilities()), "rounds": args.rounds, "in_process": baseline,
              "served": results,
              "in_process_runs": inproc_runs, "served_runs": served_runs, "swap": swap,
              "verdict": verdict(baseline, results, inproc_runs, served_runs, swap)}
    print(json.dumps(report["verdict"]))
    meta = read_meta(args.model_dir / "model-meta.json")
    write_json("reports/serving-benchmark.json", report)
    if not args.no_docs:
        write_block(args.report, render(report, meta, args), BLOCK)
    return 0


CONFIG_KEYS = ("workers", "threads", "batch_size", "max_batch_delay")


def targets(baseline: list[dict], results: list[dict]) -> dict:
    """Per served configuration: the default engine's concurrency-16 throughput over TorchScript's, and its
    concurrency-1 p50 minus its own in-process single-image p50 (decode included)."""
    single = {r["engine"]: r["p50_ms"] for r in baseline if r["batch_size"] == 1}
    out = {"in_process_single_p50_ms": single, "configs": []}
    for key in dict.fromkeys(tuple(r[k] for k in CONFIG_KEYS) for r in results):
        rows = {(r["engine"], r["concurrency"]): r for r in results if tuple(r[k] for k in CONFIG_KEYS) == key}
        entry = {"config": "W{}:T{}:B{}:D{}".format(*key)}
        if ("auto", 1) in rows and "auto" in single:
            entry["c1_gap_ms"] = round(rows["auto", 1]["p50_ms"] - single["auto"], 1)
        if ("auto", 16) in rows and ("torchscript", 16) in rows:
            entry["c16_ratio"] = round(rows["auto", 16]["requests_per_s"] / rows["torchscript", 16]["requests_per_s"],
                                       2)
        out["configs"].append(entry)
    return out


def verdict(baseline: list[dict], results: list[dict], inproc_runs: list[dict], served_runs: list[dict],
            swap: dict | None) -> dict:
    """targets() on the medians and on every round alone; the swap's failures, slow requests and p99 ratio."""
    rounds = sorted({r["round"] for r in served_runs})
    out = {**targets(baseline, results),
           "per_round": [targets([r for r in inproc_runs if r["round"] == i],
                                 [r for r in served_runs if r["round"] == i]) for i in rounds]}
    if swap:
        out["swap"] = {"failed": swap["swap"]["failed"], "over_1s": swap["swap"]["over_1s"],
                       "p99_ratio": swap["p99_ratio"]}
    return out


def render(report: dict, meta: dict, args) -> list[str]:
    """docs/performance.md's serving-benchmark block (markers left to write_block)."""
    c, v = report["conditions"], report["verdict"]
    flags = [f"--{name} {' '.join(getattr(args, name))}" for name in ("configs", "set", "handler")
             if getattr(args, name)]
    command = f"`python -m benchmarks.serving {' '.join(flags)}`" if flags else "`make benchmark-serving`"
    if args.model_dir != MODEL_DIR:
        command += f" with `--model-dir {args.model_dir}`"
    overrides = f" + {', '.join(args.set)}" if args.set else ""
    lines = ["## Serving benchmark (TorchServe + wrk vs in-process)", "",
             f"Written by {command} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); do not edit by hand.",
             "",
             f"- Machine: {describe_machine(c)}.",
             f"- {model_line(meta)}; payload {report['payload']}, the same bytes in every request.",
             (f"- Served: TorchServe with config.properties{overrides}, token auth on, one image per request (raw "
              f"body); `wrk -t1 -c{{{','.join(map(str, args.concurrency))}}} -d{args.seconds}s` "
              f"(benchmarks/wrk_post_image.lua) on the same machine after {args.warmup} s of load. "
              "Failed = wrk's connect/read/write/timeout errors + non-2xx answers."),
             (f"- {args.rounds} rounds with one server per engine ({', '.join(args.engines)}), all up together; each "
              "round runs every engine's in-process runs (servers idle) then its served runs; the tables give the "
              "median over the rounds, the targets below also each round's own."),
             f"- The {load_line(report['load'])}.",
             (f"- Engines (model/engines.py): `auto` = what the archive serves by default here; OpenVINO's CPU "
              f"capabilities: {', '.join(report['capabilities']) or 'OpenVINO not installed'}."),
             "", ("In-process (decode + resize/crop + the engine's forward as the handler builds it, one Python "
                  "process; latency per forward):"),
             "", "| engine | runs on | torch threads | batch | images/s | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r['runs_on']} | {r['threads']} | {r['batch_size']} | {r['images_per_s']} | "
              f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} |" for r in report["in_process"]]
    lines += ["", "Served:", "",
              ("| engine | workers | threads/worker | batch | delay ms | concurrency | req/s | p50 ms | p95 ms | "
               "p99 ms | failed |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    cores = c.get("cores") or os.cpu_count()
    lines += [f"| {r['engine']} | {r['workers']} | {r['threads'] or f'all ({cores})'} | {r['batch_size']} | "
              f"{r['max_batch_delay']} | {r['concurrency']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['p99_ms']} | {r['failed']} |" for r in report["served"]]
    bf16 = "BF16" in report["capabilities"]
    lines += ["", (f"Targets: the default engine (`auto`) against TorchScript on the same model, concurrency 16 "
                   f"(target >= {2.0 if bf16 else 1.4}x on a CPU {'with' if bf16 else 'without'} native bf16); its "
                   f"concurrency-1 p50 against its own in-process single-image p50 "
                   f"({v['in_process_single_p50_ms'].get('auto', 'n/a')} ms, decode included; target <= +3 ms).")]
    for entry in v["configs"]:
        per_round = [e for r in v["per_round"] for e in r["configs"] if e["config"] == entry["config"]]
        rounds = {key: ", ".join(str(e.get(key, "n/a")) for e in per_round) for key in ("c16_ratio", "c1_gap_ms")}
        lines.append(f"- {entry['config']}: concurrency-16 throughput {entry.get('c16_ratio', 'n/a')}x TorchScript's "
                     f"(rounds: {rounds['c16_ratio']}); concurrency-1 p50 gap {entry.get('c1_gap_ms', 'n/a')} ms "
                     f"(rounds: {rounds['c1_gap_ms']})")
    swap = report["swap"]
    if swap:
        steps = ", ".join(f"{name} {step['seconds']} s" for name, step in swap["steps"].items())
        first = report["served"][0]
        lines += ["", (f"Version swap under load (`W{first['workers']}:T{first['threads']}` as committed, default "
                       f"engine; wrk -c{swap['connections']} posting the payload throughout; `python -m deploy "
                       "deploy` of a second version of the same weights, gates included, against an MLflow URI "
                       f"without a store (no registry work), then `python -m deploy rollback`; {steps}; steady "
                       f"window {swap['steady_seconds']} s before it):"), "",
                  "| window | requests | failed | req/s | p50 ms | p95 ms | p99 ms | max ms | over 1 s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in (("steady (before)", swap["steady"]), ("deploy + rollback", swap["swap"])):
            lines.append(f"| {name} | {r['requests']} | {r['failed']} | {r['requests_per_s']} | {r['p50_ms']} | "
                         f"{r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['over_1s']} |")
        lines += ["", (f"- Swap targets: failed {v['swap']['failed']} (target 0), over 1 s {v['swap']['over_1s']} "
                       f"(target 0), p99 {v['swap']['p99_ratio']}x the steady p99 (target <= 2).")]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
