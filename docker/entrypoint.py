"""Container entry point: TorchServe in the foreground, configured from the repo's config.properties.

<TS_RUN_DIR>/config.properties (serving.server.prepare_run) is TS_CONFIG (default /app/config.properties) with only
- the inference/management/metrics hosts set to TS_BIND_ADDRESS (default 0.0.0.0: the loopback cannot be
  published; docker-compose.yml publishes on the host's 127.0.0.1), gRPC's to TS_GRPC_BIND_ADDRESS (127.0.0.1);
- model_store TS_MODEL_STORE, load_models TS_MODELS (default <MODEL_NAME>=<MODEL_NAME>.mar);
- vmargs, when the config sets none: -Xmx a quarter of the container's memory limit within contract.JVM_HEAP_MB.
serve.json goes beside it (the HEALTHCHECK and Kubernetes probes, `python -m serving ready --run-dir $TS_RUN_DIR`,
read it). CATSDOGS_TORCH_THREADS, when unset, comes from the CPU limit (cgroup v2 cpu.max, v1 CFS quota). Logs go to
LOG_LOCATION. SIGTERM/SIGINT are forwarded to the Java frontend; the exit status is TorchServe's.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

from catsdogs import contract
from serving import server
from serving.config import ADDRESS_KEYS, address, read_properties

CGROUP = Path("/sys/fs/cgroup")


def bind_overrides(props: dict[str, str], bind: str, grpc_bind: str) -> dict[str, str]:
    """The address keys of `props` with their host replaced by `bind` (scheme and port kept)."""
    out = {key: address(props, api, host=bind) for api, key in ADDRESS_KEYS.items()}
    out["grpc_inference_address"] = out["grpc_management_address"] = grpc_bind
    return out


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_limit(cgroup: Path = CGROUP) -> float | None:
    """CPUs the container may use (its CFS quota / period), None without a limit.

    cgroup v2: `cpu.max` is "<quota> <period>" or "max <period>"; cgroup v1: cpu.cfs_quota_us (-1: none) and
    cpu.cfs_period_us under cpu/ or cpu,cpuacct/.
    """
    v2 = read_text(cgroup / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = (read_text(cgroup / folder / name) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        if quota is not None and period is not None:
            return None if int(quota) < 0 else int(quota) / int(period)
    return None


def memory_limit(cgroup: Path = CGROUP) -> int | None:
    """The container's memory limit in bytes (cgroup v2 memory.max, v1 memory.limit_in_bytes), None without one."""
    v2 = read_text(cgroup / "memory.max")
    if v2 is not None:
        return None if v2 == "max" else int(v2)
    v1 = read_text(cgroup / "memory" / "memory.limit_in_bytes")
    # v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages)
    return int(v1) if v1 is not None and int(v1) < 1 << 60 else None


def torch_threads(limit: float | None, cpus: int) -> int | None:
    """Threads per worker for a CPU limit: its whole CPUs (at least 1, at most `cpus`); None without a limit.

    More threads than the quota allows only get throttled (the quota is spent by all threads together), and
    torch's default is every core of the node, not of the container.
    """
    if limit is None:
        return None
    return max(1, min(cpus, math.floor(limit)))


def jvm_heap_mb(limit_bytes: int | None) -> int:
    """The frontend's -Xmx: a quarter of the memory limit within contract.JVM_HEAP_MB; the upper bound without one."""
    low, high = contract.JVM_HEAP_MB
    if limit_bytes is None:
        return high
    return max(low, min(high, limit_bytes // 4 // 2**20))


def sized_env(env: dict[str, str], cpu: float | None, cpus: int) -> dict[str, str]:
    """`env` plus CATSDOGS_TORCH_THREADS from the CPU limit, unless it is set already or there is no limit."""
    threads = torch_threads(cpu, cpus)
    if env.get(contract.TORCH_THREADS_ENV) or threads is None:
        return dict(env)
    return {**env, contract.TORCH_THREADS_ENV: str(threads)}


def prepare(env: dict[str, str], cgroup: Path = CGROUP) -> tuple[Path, dict[str, str], dict]:
    """Write the run's config.properties and serve.json; returns (run dir, properties, state)."""
    base = Path(env.get("TS_CONFIG", "/app/config.properties"))
    run_dir = Path(env.get("TS_RUN_DIR", "/home/model-server/run")).resolve()
    log_dir = Path(env.get("LOG_LOCATION", run_dir / "logs")).resolve()
    store = Path(env.get("TS_MODEL_STORE", "/home/model-server/model-store")).resolve()
    models = env.get("TS_MODELS") or server.default_models(env.get("MODEL_NAME"))  # the image has no params.yaml
    try:
        base_props = read_properties(base)
        overrides = bind_overrides(base_props, env.get("TS_BIND_ADDRESS", "0.0.0.0"),
                                   env.get("TS_GRPC_BIND_ADDRESS", "127.0.0.1"))
        if not base_props.get("vmargs"):  # a vmargs in the config is an explicit choice and wins
            overrides["vmargs"] = f"-Xmx{jvm_heap_mb(memory_limit(cgroup))}m -XX:+ExitOnOutOfMemoryError"
        props = server.prepare_run(base, run_dir, log_dir, model_store=store, models=models, extra=overrides)
    except (server.ServeError, FileNotFoundError) as exc:
        raise SystemExit(f"entrypoint: {exc}") from exc
    state = server.serve_state(props, run_dir, log_dir, None)
    contract.write_serve_state(run_dir, state)
    return run_dir, props, state


def main() -> int:
    run_dir, props, state = prepare(dict(os.environ))
    env = sized_env(server.instance_env(run_dir, Path(state["log_dir"])), cpu_limit(), len(os.sched_getaffinity(0)))
    cmd = [server.tool("torchserve"), "--foreground", "--ncs", "--ts-config", str(run_dir / "config.properties"),
           "--model-store", props["model_store"]]
    print(f"entrypoint: {' '.join(cmd)} (cwd {run_dir}; inference {props['inference_address']}, "
          f"management {props['management_address']}, metrics {props['metrics_address']}; JVM {props.get('vmargs')}; "
          f"{contract.TORCH_THREADS_ENV}={env.get(contract.TORCH_THREADS_ENV, 'unset')})", flush=True)
    proc = subprocess.Popen(cmd, cwd=run_dir, env=env)
    state["pid"] = proc.pid
    contract.write_serve_state(run_dir, state)

    def forward(signum, _frame):
        # `torchserve --foreground` is a Python launcher waiting on the Java frontend; the frontend is
        # what must get the signal to stop its workers cleanly. Its pid is in TMPDIR/.model_server.pid.
        pid_file = run_dir / "tmp" / server.TS_PID_FILE
        try:
            os.kill(int(pid_file.read_text().strip()), signum)
        except (OSError, ValueError):
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
