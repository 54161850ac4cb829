"""`python -m deploy {deploy,rollback,status,scale}`: model version swaps on a running TorchServe.

Where the server is: --run-dir (default .serve, env CATSDOGS_SERVE_DIR), whose serve.json (written by
`python -m serving start`) gives the URLs, key file and model store; or explicit --management-url /
--inference-url / --metrics-url / --key-file / --model-store (env CATSDOGS_MANAGEMENT_URL,
CATSDOGS_INFERENCE_URL, CATSDOGS_METRICS_URL, CATSDOGS_KEY_FILE, CATSDOGS_MODEL_STORE).
Exit status: 0 done (or nothing to do), 1 refused or failed (the previous default keeps serving).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

from catsdogs.contract import add_server_args, read_serve_state, tracking_uri
from deploy import deployer, registry
from deploy.archive import ArchiveError
from deploy.management import Management, ManagementError
from serving.client import client_from_args
from serving.config import REPO_ROOT

FAILURES = (deployer.DeployError, ManagementError, ArchiveError, registry.RegistryError, FileNotFoundError, ValueError)
DEFAULTS = deployer.DeployOptions()
say = functools.partial(print, flush=True)


def model_store(args) -> Path | None:
    store = args.model_store or (read_serve_state(args.run_dir) or {}).get("model_store")
    return Path(store) if store else None


def api_from(args) -> Management:
    client = client_from_args(args)
    return Management(client, client.model_name)


def cmd_deploy(args) -> int:
    # an earlier deploy's result must not survive a run that fails before deploy() starts
    deployer.write_result(args.result, {"status": "failed", "version": None, "previous": None,
                                        "error": "did not start"})
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(deployer.DeployOptions) if hasattr(args, f.name)}
    options = deployer.DeployOptions(**given, result_file=args.result)
    if options.keep < 1:
        raise ValueError(f"--keep must be >= 1, got {options.keep}")
    result = deployer.deploy(api_from(args), model_store(args), args.mar, options, log=say)
    say(f"deploy {result['status']}: default {result['version']} (was {result['previous']}); "
        f"registered {result['registered']}" + (f"; pruned {result['pruned']}" if result["pruned"] else ""))
    return 0


def cmd_rollback(args) -> int:
    back, target = (deployer.rollback_switched, args.if_switched) if args.if_switched else (deployer.rollback, args.to)
    back(api_from(args), model_store(args), target, args.tracking_uri, args.require_registry, log=say)
    return 0


def cmd_status(args) -> int:
    api = api_from(args)
    report = deployer.status(api, smoke=not args.no_smoke)
    champion = registry.champion(args.tracking_uri, api.model)
    report["mlflow_champion"] = champion
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"model {report['model']}: default version {report['default']}, "
              f"MLflow {api.model}@{registry.CHAMPION} = {champion or '(unset or no registry)'}")
        for v in report["versions"]:
            states = ", ".join(f"{w['id']}:{w['status']}" for w in v["workers"]) or "no workers"
            health = f"  health: {v['health']} ({v['smoke_ms']} ms)" if "health" in v else ""
            reg = f"  registry v{v['registry'][1]}" if v["registry"] else ""
            print(f"  {'*' if v['default'] else ' '} {v['version']:<24} workers {len(v['workers'])} "
                  f"(min {v['min_workers']}, max {v['max_workers']}: {states}){health}{reg}  [{v['archive']}]")
    unhealthy = [v["version"] for v in report["versions"] if v.get("health", "ok") != "ok"]
    return 1 if unhealthy or report["default"] is None else 0


def cmd_scale(args) -> int:
    deployer.scale(api_from(args), args.version, args.min, args.max, args.timeout_scale, log=say)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("server")
    add_server_args(where)
    where.add_argument("--model-store", type=Path, default=os.environ.get("CATSDOGS_MODEL_STORE"),
                       help="the server's model_store directory (default: serve.json's, env CATSDOGS_MODEL_STORE)")
    where.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default $MLFLOW_TRACKING_URI, "
                                              f"else {DEFAULTS.tracking_uri})")

    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("deploy", parents=[common],
                       help="register an archive as a new version, gate it, make it default",
                       description="Register the .mar next to the serving version, gate it on "
                                   "/predictions/<model>/<version> (smoke test, golden set), make it the default, "
                                   "move MLflow alias `champion`, prune versions beyond --keep. A failed gate "
                                   "unregisters the candidate and exits 1 (docs/deploy-versions.md).")
    p.add_argument("mar", type=Path, help="the archive, model-store/<serve.model_name>.mar (make archive)")
    p.add_argument("--workers", type=int, help="workers for the new version (default: as many as the current default)")
    p.add_argument("--golden", type=Path, help="labelled golden image folder (cat/x.jpg, dogs/y.png, cat.1.jpg) "
                                               "instead of the default: --golden-per-class test-split images "
                                               "per class from --prepared")
    p.add_argument("--prepared", type=Path, default=REPO_ROOT / DEFAULTS.prepared,
                   help="prepare output the candidate was trained on (its data_hash must match); the golden "
                        "set comes from its test split (default data/prepared)")
    p.add_argument("--synthetic-golden", action="store_true",
                   help="score on a deterministic synthetic cartoon set instead (an archive without its data)")
    p.add_argument("--golden-cache", type=Path, default=REPO_ROOT / DEFAULTS.golden_cache,
                   help="where the synthetic golden set is drawn once and reused")
    p.add_argument("--golden-per-class", type=int, default=DEFAULTS.golden_per_class, help="golden images per class")
    p.add_argument("--golden-size", type=int, default=DEFAULTS.golden_size,
                   help="synthetic golden image side in pixels")
    p.add_argument("--min-accuracy", type=float, default=DEFAULTS.min_accuracy,
                   help="golden accuracy the candidate must reach")
    p.add_argument("--margin", type=float, default=DEFAULTS.margin,
                   help="the candidate may score at most this much below the current default on the golden set")
    p.add_argument("--keep", type=int, default=DEFAULTS.keep, help="versions kept registered, the new default included "
                                                      "(2 = previous one stays warm for rollback)")
    p.add_argument("--drain-seconds", type=float, default=DEFAULTS.drain_seconds,
                   help="an old version is unregistered after receiving no request for this long")
    p.add_argument("--drain-timeout", type=float, default=DEFAULTS.drain_timeout,
                   help="unregister anyway after this long")
    p.add_argument("--ready-timeout", type=float, default=DEFAULTS.ready_timeout,
                   help="seconds for the new workers to be READY")
    p.add_argument("--require-registry", action="store_true",
                   help="fail (before any change) when the archive's MLflow model version is not in the registry")
    p.add_argument("--result", type=Path,
                   help="write the outcome here as JSON: status switched / unchanged / rejected / failed, version, "
                        "previous (the default before); `rollback --if-switched FILE` reads it")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rollback", parents=[common], help="make the previous version the default again",
                       description="Set the default back to the version that was default before the current one "
                                   "(from the deploy history in the model store), or to --to VERSION. The target "
                                   "must still be registered with a READY worker; it is smoke-tested first.")
    p.add_argument("--to", help="version to roll back to (default: the previous default)")
    p.add_argument("--if-switched", type=Path, metavar="RESULT",
                   help="roll back only what the deploy that wrote RESULT (deploy --result) switched: to the "
                        "version it replaced, and only while its version is still the default; otherwise "
                        "nothing changes (exit 0). For CI failure handling")
    p.add_argument("--require-registry", action="store_true", help="fail when the champion alias cannot be moved")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("status", parents=[common], help="versions, default, workers and a smoke check per version",
                       description="List every registered version with its workers and a smoke request to "
                                   "/predictions/<model>/<version>. Exit 1 when a version is unhealthy.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-smoke", action="store_true", help="skip the per-version smoke request")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("scale", parents=[common], help="set min/max workers of a version",
                       description="Set min/max workers of a version and wait until the wanted workers are READY.")
    p.add_argument("--version", help="version to scale (default: the default version)")
    p.add_argument("--min", type=int, required=True, help="minimum workers")
    p.add_argument("--max", type=int, help="maximum workers (default: --min)")
    p.add_argument("--timeout-scale", type=float, default=240.0, help="seconds to wait for the workers")
    p.set_defaults(func=cmd_scale)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.tracking_uri = tracking_uri(args.tracking_uri)  # --tracking-uri, $MLFLOW_TRACKING_URI, default
    try:
        return args.func(args)
    except FAILURES as exc:
        print(f"{args.command}: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
