"""deploy / rollback / status / scale: the procedures behind `python -m deploy`.

Zero downtime comes from TorchServe's model versioning: the candidate is registered next to the
serving version under the same model name, gets its own workers, and is tested on its own URL
(/predictions/<model>/<version>) while /predictions/<model> keeps going to the current default.
Only when every gate passes does `PUT /models/<model>/<version>/set-default` switch the default, an
atomic pointer change in the frontend: requests already queued finish on the old workers, new ones
go to the new version. The old version stays registered (warm) for an instant rollback; versions
beyond --keep are drained (no new requests for a quiet period) and unregistered.
"""
from __future__ import annotations

import fcntl
import hashlib
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from catsdogs import contract
from deploy import archive, gates, management, registry, versions
from deploy.archive import ArchiveInfo
from deploy.management import Management, ManagementError
from model.weights import sha256_of
from training.ingest import LabelledImage

Log = Callable[[str], None]
LOCK_FILE = ".deploy.lock"


class DeployError(RuntimeError):
    """The deploy/rollback did not happen; the previous default still serves. The message says why."""


class GateFailed(DeployError):
    """The candidate failed a release gate and was unregistered."""


@dataclass
class DeployOptions:
    workers: int | None = None          # None: as many as the current default version has
    golden: Path | None = None          # labelled folder; None: test split of `prepared` (or synthetic)
    prepared: Path = contract.PREPARED_DIR  # prepare output the candidate was trained on (manifest.csv)
    synthetic_golden: bool = False      # cartoons from training.synthetic instead of the test split
    golden_cache: Path = Path("data/golden")
    golden_per_class: int = 20
    golden_size: int = 160
    min_accuracy: float = 0.8
    margin: float = 0.02
    keep: int = 2
    drain_seconds: float = 3.0
    drain_timeout: float = 60.0
    ready_timeout: float = 240.0
    tracking_uri: str = contract.DEFAULT_TRACKING_URI
    require_registry: bool = False
    result_file: Path | None = None     # where the outcome is written (write_result); None: nowhere


@contextmanager
def store_lock(store: Path | None):
    """One deploy/rollback at a time per model store (advisory flock, released when the file closes)."""
    if store is None:
        yield
        return
    with open(Path(store) / LOCK_FILE, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeployError(f"another deploy/rollback holds {Path(store) / LOCK_FILE}; wait for it") from None
        yield


def golden_items(options: DeployOptions, info: ArchiveInfo, log: Log) -> tuple[list[LabelledImage], dict]:
    """The golden set and a record of it (source, size, content hash) for the deploy result."""
    if options.golden is None and not options.synthetic_golden:
        items, record = gates.manifest_golden(options.prepared, info.classes, options.golden_per_class,
                                              info.meta.get("data_hash"))
        log(f"golden set: {len(items)} test-split images of {options.prepared} (data {record['data_hash'][:12]}), "
            f"sha256 {record['sha256'][:16]}")
        return items, record
    folder = options.golden or gates.synthetic_golden(options.golden_cache, info.classes, options.golden_per_class,
                                                      options.golden_size)
    items = gates.load_golden(folder, info.classes)
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{hashlib.sha256(item.data).hexdigest()} {item.label}\n".encode())
    record = {"source": "synthetic" if options.golden is None else "folder", "folder": str(folder),
              "images": len(items), "sha256": digest.hexdigest()}
    log(f"golden set: {len(items)} images from {folder}, sha256 {record['sha256'][:16]}")
    return items, record


def registered_versions(api: Management) -> list[str]:
    return [str(d["modelVersion"]) for d in api.versions()]


def stored_archive(store: Path | None, description: dict | None) -> ArchiveInfo | None:
    """The archive in the store a registered version was loaded from (None: not there or unreadable)."""
    url = (description or {}).get("modelUrl")
    if store is None or not url or not (Path(store) / url).is_file():
        return None
    try:
        return archive.read_archive(Path(store) / url)
    except archive.ArchiveError:
        return None


def smoke_test(api: Management, version: str, classes: list[str], timeout: float = 30.0) -> tuple[object, str]:
    """`version`'s answer to the smoke image and what is wrong with it ("" when nothing)."""
    status, body = api.predict(version, gates.smoke_image(classes), timeout=timeout)
    return body, "; ".join(gates.check_prediction(status, body, classes, version))


def drain(api: Management, version: str, quiet_s: float, timeout: float) -> str:
    """Wait until `version` has an empty job queue and got no new request for quiet_s.

    New requests are seen on the metrics API: ts_inference_requests_total{model_version=<version>}
    counts requests pinned to /predictions/<model>/<version> (unversioned requests count as "default").
    """
    began = quiet_since = time.monotonic()
    last = api.inference_count(version)
    while time.monotonic() - began < timeout:
        time.sleep(0.25)
        count = api.inference_count(version)
        if count != last or management.pending_requests(api.describe(version)):
            last, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return f"queue empty and no new request for {quiet_s:g} s"
    return f"still busy after {timeout:g} s (clients pinned to /predictions/{api.model}/{version}?)"


def prune(api: Management, store: Path | None, options: DeployOptions, log: Log) -> list[str]:
    """Drain and unregister versions beyond the options.keep most recent; delete the archives deploy placed."""
    default = api.default_version()
    descriptions = {str(d["modelVersion"]): d for d in api.versions()}
    history = versions.read_history(versions.history_path(store))
    old = versions.versions_to_prune(list(descriptions), default, history, options.keep)
    for version in old:
        how = drain(api, version, options.drain_seconds, options.drain_timeout)
        api.unregister(version)
        placed = archive.store_file_name(api.model, version)
        if store is not None and descriptions[version].get("modelUrl") == placed:
            (Path(store) / placed).unlink(missing_ok=True)
        log(f"unregistered old version {version} (drained: {how})")
    return old


def run_gates(api: Management, info: ArchiveInfo, baseline_version: str | None, items: list[LabelledImage],
              options: DeployOptions, log: Log) -> None:
    """Raise GateFailed unless the smoke test and the golden gate pass."""
    body, problems = smoke_test(api, info.version, info.classes)
    if problems:
        raise GateFailed(f"smoke test of version {info.version} failed: {problems}")
    log(f"smoke test passed: {body['label']} {body['confidence']:.3f} from version {body['model_version']}")

    def golden(version: str, role: str) -> gates.Tally:
        tally = gates.score(lambda data: api.predict(version, data), items, info.classes, version)
        log(f"golden set, {role} {version}: {tally.summary()}")
        return tally

    candidate = golden(info.version, "candidate")
    baseline = golden(baseline_version, "default") if baseline_version not in (None, info.version) else None
    passed, reason = gates.gate_decision(candidate, baseline, options.min_accuracy, options.margin)
    if not passed:
        examples = "".join(f"\n    {m}" for m in candidate.mistakes)
        raise GateFailed(f"golden gate failed for version {info.version}: {reason}{examples}")
    log(f"golden gate passed: {reason}")


def deploy(api: Management, store: Path | None, mar: Path, options: DeployOptions, log: Log = print) -> dict:
    """Register, gate, switch the default, move `champion`, prune. Raises DeployError/GateFailed.

    The outcome goes to options.result_file (see write_result) whatever happens: "switched" is written the
    moment the default changes, so an error after that (champion, pruning) still says the default moved.
    """
    result = {"status": "failed", "version": None, "previous": None, "pruned": []}
    write_result(options.result_file, result)  # a file left by an earlier deploy must never be acted on
    try:
        info = archive.read_archive(mar)
        result["version"] = info.version
        if info.model_name != api.model:
            raise DeployError(f"{mar} is an archive of model {info.model_name!r}, the server model is "
                              f"{api.model!r}; pass --model-name {info.model_name} or rebuild the archive")
        log(f"archive {mar}: model {info.model_name} version {info.version}")
        warning = registry.check(options.tracking_uri, info.meta, options.require_registry)
        if warning:
            log(f"warning: {warning}")
        items, result["golden"] = golden_items(options, info, log)
        with store_lock(store):
            return _deploy_locked(api, store, info, items, options, log, result)
    except BaseException as exc:
        if result["status"] == "failed":
            result["status"] = "rejected" if isinstance(exc, GateFailed) else "failed"
        result["error"] = str(exc) or type(exc).__name__
        raise
    finally:
        write_result(options.result_file, result)


RESULT_STATUSES = ("switched", "unchanged", "rejected", "failed", "rolled back")


def write_result(path: Path | None, result: dict) -> None:
    """The deploy's outcome as JSON, for whoever decides about a rollback (Jenkins: make ci-rollback).

    status: switched (this deploy made `version` the default; `previous` was the default before),
    unchanged (`version` already was the default), rejected (a gate refused the candidate; the default
    was not touched), failed (an error before the switch; the default was not touched), rolled back
    (a later rollback_switched undid the switch).
    """
    if path is not None:
        versions.write_json(path, result)


def read_result(path: Path) -> dict | None:
    data = versions.read_json(path)
    return data if isinstance(data, dict) and data.get("status") in RESULT_STATUSES else None


def _deploy_locked(api: Management, store: Path | None, info: ArchiveInfo, items: list[LabelledImage],
                   options: DeployOptions, log: Log, result: dict) -> dict:
    version = info.version
    default = api.default_version()
    result.update(version=version, previous=default)
    pre_existing = version in registered_versions(api)
    loaded = stored_archive(store, api.describe(version)) if pre_existing else None
    # e.g. the store's .mar rebuilt since start-up under the same version
    if loaded and loaded.version == version and sha256_of(loaded.path) != sha256_of(info.path):
        raise DeployError(f"version {version} is already registered from {loaded.path}, whose bytes "
                          f"differ from {info.path}; give the new model a new version (re-run the export) "
                          f"instead of reusing {version}")
    if version == default:
        log(f"version {version} is already registered and the default: nothing to switch")
        result["status"] = "unchanged"
    else:
        placed = None
        if pre_existing:
            log(f"version {version} is already registered (not default): gating it again")
        else:
            placed = _register(api, store, info, default, options, log)
        try:
            run_gates(api, info, default, items, options, log)
        except BaseException:  # a failed gate, a lost connection or Ctrl-C: never leave a half-deployed candidate
            if not pre_existing:
                _remove(api, version, placed, log)
            raise
        log(api.set_default(version))
        result["status"] = "switched"
        write_result(options.result_file, result)
        versions.append_history(versions.history_path(store), action="deploy", previous=default, version=version)
        log(f"default switched: {default} -> {version}; /predictions/{api.model} now answers with {version}")
    log(registry.move_champion(options.tracking_uri, info.meta, options.require_registry))
    result["pruned"] = prune(api, store, options, log)
    result["registered"] = registered_versions(api)
    return result


def _register(api: Management, store: Path | None, info: ArchiveInfo, default: str | None,
              options: DeployOptions, log: Log) -> Path:
    if store is None:
        raise DeployError("the server's model store is unknown: pass --model-store (the directory TorchServe "
                          "loads archives from; config.properties allowed_urls only permits archives there)")
    file_name = archive.store_file_name(api.model, info.version)
    dest, copied = archive.place_in_store(info.path, store, file_name)
    log(f"{'copied' if copied else 'found'} {dest}")
    base = (api.describe(default) if default else None) or {}  # the new version gets the default's workers
    workers = options.workers or int(base.get("minWorkers") or 1)
    maximum = max(workers, options.workers or int(base.get("maxWorkers") or workers))
    began = time.monotonic()
    try:
        log(api.register(file_name, workers, timeout=options.ready_timeout))
        description = api.wait_ready(info.version, options.ready_timeout)
        # the archive's model-config.yaml minWorkers/maxWorkers win over initial_workers at registration
        if (description.get("minWorkers"), description.get("maxWorkers")) != (workers, maximum):
            log(api.scale(info.version, workers, maximum, timeout=options.ready_timeout))
            description = api.wait_ready(info.version, options.ready_timeout)
    except BaseException as exc:
        _remove(api, info.version, dest, log)
        if isinstance(exc, ManagementError):
            raise DeployError(f"version {info.version} did not start: {exc}") from exc
        raise
    ready, _ = management.ready_workers(description)
    log(f"version {info.version} registered: {ready} READY worker(s) in {time.monotonic() - began:.1f} s")
    return dest


def _remove(api: Management, version: str, placed: Path | None, log: Log) -> None:
    """Undo a failed candidate: unregister it (if TorchServe still lists it) and delete the archive we placed."""
    try:
        if version in registered_versions(api):
            api.unregister(version)
            log(f"unregistered rejected version {version}")
    except ManagementError as exc:
        log(f"warning: could not unregister {version}: {exc}")
    if placed is not None:
        Path(placed).unlink(missing_ok=True)


def rollback(api: Management, store: Path | None, to: str | None, tracking_uri: str, require_registry: bool,
             log: Log = print) -> dict:
    """Make the previous version (or `to`) the default again, after a smoke test of it."""
    with store_lock(store):
        default = api.default_version()
        registered = registered_versions(api)
        history = versions.history_path(store)
        target = to or versions.rollback_target(versions.read_history(history), default, registered)
        if target is None and len(registered) < 2:
            raise DeployError(f"nothing to roll back to: only {registered or 'no version'} is registered for "
                              f"{api.model} (deploy keeps --keep versions; a pruned one must be deployed again)")
        if target is None:
            raise DeployError(f"cannot tell which version to roll back to: registered {registered}, default "
                              f"{default}, no usable deploy history in "
                              f"{history or '(model store unknown: --model-store)'}; pass --to VERSION")
        if target not in registered:
            raise DeployError(f"version {target} is not registered (registered: {registered}); deploy its archive")
        if target == default:
            log(f"version {target} is already the default")
            return {"version": target, "previous": default, "status": "unchanged"}
        description = api.describe(target) or {}
        if management.ready_workers(description)[0] < 1:
            raise DeployError(f"version {target} has no READY worker; scale it first: "
                              f"python -m deploy scale --version {target} --min 1")
        meta = api.metadata(target)
        _, problems = smoke_test(api, target, archive.classes(meta))
        if problems:
            raise DeployError(f"smoke test of rollback target {target} failed: {problems}")
        log(api.set_default(target))
        versions.append_history(history, action="rollback", previous=default, version=target)
        log(f"rolled back: default {default} -> {target}")
        log(registry.move_champion(tracking_uri, meta, require_registry))
        return {"version": target, "previous": default, "status": "rolled back"}


def rollback_switched(api: Management, store: Path | None, result_file: Path, tracking_uri: str,
                      require_registry: bool, log: Log = print) -> dict:
    """Undo the default switch recorded in `result_file`, and nothing else.

    Only a deploy that switched the default is rolled back, to the exact version it replaced, and only
    while the version it switched to is still the default: a rejected or failed deploy left the healthy
    default in place, and a default someone changed since is not this build's to undo.
    """
    record = read_result(result_file)
    if record is None or record["status"] != "switched":
        why = f"status {record['status']!r}" if record else "no readable result"
        log(f"rollback not needed: {result_file}: {why}; the default was not switched by that deploy")
        return {"status": "unchanged", "version": api.default_version()}
    if not record.get("previous"):
        raise DeployError(f"{result_file}: version {record['version']} was the first version served, "
                          f"there is no earlier default to go back to")
    current = api.default_version()
    if current != record["version"]:
        raise DeployError(f"{result_file} says the deploy switched to {record['version']}, but the default is "
                          f"now {current}: changed since, not rolled back (python -m deploy rollback --to V)")
    done = rollback(api, store, record["previous"], tracking_uri, require_registry, log=log)
    write_result(result_file, {**record, "status": "rolled back"})
    return done


def status(api: Management, smoke: bool = True) -> dict:
    """Registered versions with workers and a smoke-request health check of each."""
    default = api.default_version()
    entries = []
    for description in api.versions():
        version = str(description["modelVersion"])
        meta = api.metadata(version)
        entry = {"version": version, "default": version == default, "archive": description.get("modelUrl"),
                 "min_workers": description.get("minWorkers"), "max_workers": description.get("maxWorkers"),
                 "workers": [{"id": w.get("id"), "status": w.get("status"), "pid": w.get("pid")}
                             for w in description.get("workers") or []],
                 "registry": registry.registry_ref(meta)}
        if smoke:
            began = time.perf_counter()
            _, problems = smoke_test(api, version, archive.classes(meta), timeout=15)
            entry["health"] = problems or "ok"
            entry["smoke_ms"] = round((time.perf_counter() - began) * 1000, 1)
        entries.append(entry)
    entries.sort(key=lambda e: (not e["default"], e["version"]))
    return {"model": api.model, "default": default, "versions": entries}


def scale(api: Management, version: str | None, min_workers: int, max_workers: int | None,
          timeout: float, log: Log = print) -> dict:
    version = version or api.default_version()
    if version is None:
        raise DeployError(f"model {api.model} is not registered")
    maximum = max(min_workers, max_workers if max_workers is not None else min_workers)
    log(api.scale(version, min_workers, maximum, timeout=timeout))
    description = api.wait_ready(version, timeout) if min_workers > 0 else api.describe(version) or {}
    ready, wanted = management.ready_workers(description)
    log(f"version {version}: min {description.get('minWorkers')} max {description.get('maxWorkers')}, "
        f"{ready} READY worker(s)")
    return {"version": version, "ready": ready, "min_workers": wanted}
