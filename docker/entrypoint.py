"""Container entry point: TorchServe in the foreground, configured from the repo's config.properties.

It derives <TS_RUN_DIR>/config.properties (serving.server.prepare_run) changing only: the inference/management/
metrics hosts -> TS_BIND_ADDRESS (default 0.0.0.0: the loopback cannot be published; docker-compose.yml
publishes on the host's 127.0.0.1), gRPC -> TS_GRPC_BIND_ADDRESS (default 127.0.0.1), model_store ->
TS_MODEL_STORE, load_models -> TS_MODELS, else <MODEL_NAME>=<MODEL_NAME>.mar. It writes serve.json (the
HEALTHCHECK `python -m serving ready --run-dir $TS_RUN_DIR` reads it and key_file.json), runs
`torchserve --foreground`, forwards SIGTERM/SIGINT to the Java frontend and exits with TorchServe's status.
Also read: TS_CONFIG (default /app/config.properties), LOG_LOCATION.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from catsdogs import contract
from serving import server
from serving.config import ADDRESS_KEYS, address, read_properties


def bind_overrides(props: dict[str, str], bind: str, grpc_bind: str) -> dict[str, str]:
    """The address keys of `props` with their host replaced by `bind` (scheme and port kept)."""
    out = {key: address(props, api, host=bind) for api, key in ADDRESS_KEYS.items()}
    out["grpc_inference_address"] = out["grpc_management_address"] = grpc_bind
    return out


def prepare(env: dict[str, str]) -> tuple[Path, dict[str, str], dict]:
    """Write the run's config.properties and serve.json; returns (run dir, properties, state)."""
    base = Path(env.get("TS_CONFIG", "/app/config.properties"))
    run_dir = Path(env.get("TS_RUN_DIR", "/home/model-server/run")).resolve()
    log_dir = Path(env.get("LOG_LOCATION", run_dir / "logs")).resolve()
    store = Path(env.get("TS_MODEL_STORE", "/home/model-server/model-store")).resolve()
    name = env.get("MODEL_NAME")  # the image's (it carries no params.yaml)
    models = env.get("TS_MODELS") or (f"{name}={contract.archive_path(name).name}" if name
                                      else server.default_models())
    try:
        overrides = bind_overrides(read_properties(base), env.get("TS_BIND_ADDRESS", "0.0.0.0"),
                                   env.get("TS_GRPC_BIND_ADDRESS", "127.0.0.1"))
        props = server.prepare_run(base, run_dir, log_dir, model_store=store, models=models, extra=overrides)
    except (server.ServeError, FileNotFoundError) as exc:
        raise SystemExit(f"entrypoint: {exc}") from exc
    state = server.serve_state(props, run_dir, log_dir, None)
    contract.write_serve_state(run_dir, state)
    return run_dir, props, state


def main() -> int:
    run_dir, props, state = prepare(dict(os.environ))
    env = server.instance_env(run_dir, Path(state["log_dir"]))
    cmd = [server.tool("torchserve"), "--foreground", "--ncs", "--ts-config", str(run_dir / "config.properties"),
           "--model-store", props["model_store"]]
    print(f"entrypoint: {' '.join(cmd)} (cwd {run_dir}; inference {props['inference_address']}, "
          f"management {props['management_address']}, metrics {props['metrics_address']})", flush=True)
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
