"""python -m deploy: pure decisions (unit tests) and a real zero-downtime swap on TorchServe under Locust load.

The integration test serves the synthetic-trained model as version A, then under continuous Locust
traffic deploys B (same weights, new version string: must pass and take over with zero failed
requests), deploys C (a TorchScript model that always says "cat": the golden gate must reject it and
traffic must never reach it), rolls back to A, and checks the MLflow `champion` alias at every step.
Locust runs in a child process (`run_load` below): importing locust monkey-patches the interpreter
with gevent, which must not leak into the rest of the pytest session.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from deploy.archive import ArchiveError, place_in_store, read_archive, store_file_name
from deploy.gates import (
    Tally,
    check_prediction,
    gate_decision,
    load_golden,
    manifest_golden,
    score,
    synthetic_golden,
)
from deploy.management import (
    Management,
    ManagementError,
    inference_count,
    pending_requests,
)
from deploy.versions import (
    append_history,
    read_history,
    rollback_target,
    versions_to_prune,
)
from tests.conftest import ROOT
from tests.serving_helpers import variant
from training.ingest import LabelledImage

CLASSES = ["cat", "dog"]


# --- archive metadata ----------------------------------------------------------------------------------

def write_mar(path: Path, name="catsdogs", version="3.abc1234", meta: dict | None = None, manifest=True) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        if manifest:
            zf.writestr("MAR-INF/MANIFEST.json", json.dumps(
                {"runtime": "python", "model": {"modelName": name, "modelVersion": version, "handler": "h.py"}}))
        if meta is not None:
            zf.writestr("model-meta.json", json.dumps(meta))
        zf.writestr("model.pt", b"weights")
    return path


def test_read_archive_gives_manifest_version_and_metadata(tmp_path):
    meta = {"version": "3.abc1234", "classes": ["cat", "dog"], "registered_model": "catsdogs",
            "mlflow_model_version": "3"}
    info = read_archive(write_mar(tmp_path / "a.mar", meta=meta))
    assert (info.model_name, info.version, info.meta, info.classes) == ("catsdogs", "3.abc1234", meta, CLASSES)


@pytest.mark.parametrize("kwargs, message", [
    ({"manifest": False, "meta": {"version": "1"}}, "MANIFEST"),
    ({"version": "2.x", "meta": {"version": "1.y"}}, "differs"),
    ({"version": ""}, "modelVersion"),
])
def test_read_archive_refuses_inconsistent_archives(tmp_path, kwargs, message):
    with pytest.raises(ArchiveError, match=message):
        read_archive(write_mar(tmp_path / "bad.mar", **kwargs))


def test_read_archive_refuses_non_zip_and_missing_files(tmp_path):
    (tmp_path / "x.mar").write_text("not a zip")
    with pytest.raises(ArchiveError, match="not a .mar"):
        read_archive(tmp_path / "x.mar")
    with pytest.raises(ArchiveError, match="not found"):
        read_archive(tmp_path / "missing.mar")


def test_store_file_name_is_version_specific_and_safe():
    assert store_file_name("catsdogs", "3.abc1234") == "catsdogs-3.abc1234.mar"
    assert store_file_name("catsdogs", "../x y") == "catsdogs-.._x_y.mar"
    assert "/" not in store_file_name("catsdogs", "a/../../b")


def test_place_in_store_copies_once_and_replaces_changed_bytes(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    mar = write_mar(tmp_path / "a.mar")
    dest, copied = place_in_store(mar, store, "catsdogs-1.mar")
    assert copied and dest.read_bytes() == mar.read_bytes()
    assert place_in_store(mar, store, "catsdogs-1.mar") == (dest, False)
    other = write_mar(tmp_path / "b.mar", version="9")
    assert place_in_store(other, store, "catsdogs-1.mar")[1] and dest.read_bytes() == other.read_bytes()
    assert sorted(p.name for p in store.iterdir()) == ["catsdogs-1.mar"]  # no partial file left
    with pytest.raises(ArchiveError, match="not a directory"):
        place_in_store(mar, tmp_path / "nowhere", "x.mar")


# --- version selection ----------------------------------------------------------------------------------

def h(previous, version, action="deploy"):
    return {"action": action, "from": previous, "to": version}


def test_prune_keeps_default_and_most_recent_previous_defaults():
    history = [h("A", "B"), h("B", "C")]
    assert versions_to_prune(["A", "B", "C"], "C", history, keep=2) == ["A"]
    assert versions_to_prune(["A", "B", "C"], "C", history, keep=1) == ["A", "B"]  # oldest first
    assert versions_to_prune(["A", "B", "C"], "C", history, keep=3) == []
    assert versions_to_prune(["C"], "C", history, keep=2) == []


def test_prune_counts_a_rollback_as_recent_use():
    history = [h("A", "B"), h("B", "A", "rollback"), h("A", "C")]
    assert versions_to_prune(["A", "B", "C"], "C", history, keep=2) == ["B"]


def test_prune_treats_versions_missing_from_history_as_oldest():
    # "boot" was loaded at start-up (never deployed by the tool), X/Y were
    assert versions_to_prune(["boot", "X", "Y"], "Y", [h("boot", "X"), h("X", "Y")], keep=2) == ["boot"]
    assert versions_to_prune(["old2", "old1", "X"], "X", [], keep=2) == ["old1"]  # ties: by name, stable


def test_prune_needs_keep_of_at_least_one():
    with pytest.raises(ValueError, match="keep"):
        versions_to_prune(["A"], "A", [], keep=0)


def test_rollback_goes_to_the_previous_default_and_toggles():
    history = [h("A", "B"), h("B", "C")]
    assert rollback_target(history, "C", ["A", "B", "C"]) == "B"
    history.append(h("C", "B", "rollback"))
    assert rollback_target(history, "B", ["A", "B", "C"]) == "C"


def test_rollback_skips_unregistered_and_falls_back_to_the_only_other_version():
    assert rollback_target([h("A", "B"), h("B", "C")], "C", ["A", "C"]) == "A"  # B was pruned
    assert rollback_target([], "C", ["A", "C"]) == "A"
    assert rollback_target([], "C", ["A", "B", "C"]) is None  # ambiguous: the CLI asks for --to
    assert rollback_target([], "C", ["C"]) is None


def test_history_file_round_trip(tmp_path):
    path = tmp_path / ".deploy-history.json"
    assert read_history(path) == [] and read_history(None) == []
    append_history(path, action="deploy", previous="A", version="B")
    append_history(path, action="rollback", previous="B", version="A")
    assert [(e["action"], e["from"], e["to"]) for e in read_history(path)] == [("deploy", "A", "B"),
                                                                                ("rollback", "B", "A")]
    path.write_text("{corrupt")
    assert read_history(path) == []


# --- gates ------------------------------------------------------------------------------------------------

def golden(correct, n=20, errors=0):
    return Tally(n=n, correct=correct, errors=errors)


def test_gate_passes_a_candidate_as_good_as_the_default():
    ok, reason = gate_decision(golden(18), golden(18), min_accuracy=0.8, margin=0.02)
    assert ok, reason


@pytest.mark.parametrize("candidate, baseline, words", [
    (golden(15), golden(15), "< required 0.800"),           # absolute floor
    (golden(17), golden(19), "below the serving default"),  # 0.85 < 0.95 - 0.02
    (golden(20, errors=1), None, "requests failed"),
    (golden(0, n=0), None, "empty"),
])
def test_gate_rejects(candidate, baseline, words):
    ok, reason = gate_decision(candidate, baseline, min_accuracy=0.8, margin=0.02)
    assert not ok and words in reason


def test_gate_margin_allows_a_small_drop_and_ignores_a_broken_baseline():
    assert gate_decision(golden(89, n=100), golden(90, n=100), 0.8, margin=0.02)[0]
    assert not gate_decision(golden(87, n=100), golden(90, n=100), 0.8, margin=0.02)[0]
    assert gate_decision(golden(17), golden(20, errors=3), 0.8, margin=0.0)[0]


def good_body(version="1.a", label="cat"):
    return {"label": label, "confidence": 0.9, "probabilities": {"cat": 0.9, "dog": 0.1} if label == "cat"
            else {"cat": 0.1, "dog": 0.9}, "model_version": version}


def test_check_prediction_accepts_the_handler_schema_and_names_each_problem():
    assert check_prediction(200, good_body(), CLASSES, "1.a") == []
    assert "expected '2.b'" in check_prediction(200, good_body(), CLASSES, "2.b")[0]
    assert "HTTP 503" in check_prediction(503, {"message": "no worker"}, CLASSES, "1.a")[0]
    assert "keys" in check_prediction(200, {"label": "cat"}, CLASSES, "1.a")[0]
    bad_sum = {**good_body(), "probabilities": {"cat": 0.9, "dog": 0.3}}
    assert "sum" in check_prediction(200, bad_sum, CLASSES, "1.a")[0]
    wrong_order = {**good_body(), "probabilities": {"dog": 0.1, "cat": 0.9}}
    assert "classes" in check_prediction(200, wrong_order, CLASSES, "1.a")[0]
    assert "not a JSON object" in check_prediction(200, "<html>", CLASSES, "1.a")[0]


def test_score_counts_right_wrong_and_failed_answers():
    names = ("cat.1.jpg", "cat.2.jpg", "dog.1.jpg", "dog.2.jpg")
    items = [LabelledImage(name, name[:3], name.encode()) for name in names]
    answers = {b"cat.1.jpg": (200, good_body("v", "cat")), b"cat.2.jpg": (200, good_body("v", "dog")),
               b"dog.1.jpg": (200, good_body("v", "dog")), b"dog.2.jpg": (500, {"message": "boom"})}
    result = score(answers.__getitem__, items, CLASSES, "v")
    assert (result.n, result.correct, result.errors) == (4, 2, 1)
    assert any("expected cat, got dog" in m for m in result.mistakes)


def test_load_golden_reads_labels_from_folders_and_file_names(tmp_path):
    for rel in ("cats/a.jpg", "Dog/b.png", "mixed/cat.3.jpeg", "mixed/dog_4.jpg", ".hidden/cat.5.jpg",
                "notes.txt", "mixed/unknown.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    items = load_golden(tmp_path, CLASSES)
    assert sorted((i.name, i.label) for i in items) == [
        ("Dog/b.png", "dog"), ("cats/a.jpg", "cat"), ("mixed/cat.3.jpeg", "cat"), ("mixed/dog_4.jpg", "dog")]
    shutil.rmtree(tmp_path / "Dog")
    (tmp_path / "mixed" / "dog_4.jpg").unlink()
    with pytest.raises(ValueError, match="no images for \\['dog'\\]"):
        load_golden(tmp_path, CLASSES)


def test_synthetic_golden_set_is_deterministic_and_cached(tmp_path):
    first = synthetic_golden(tmp_path / "a", CLASSES, per_class=3, size=64)
    second = synthetic_golden(tmp_path / "b", CLASSES, per_class=3, size=64)
    files = sorted(p.relative_to(first) for p in first.rglob("*.jpg"))
    assert len(files) == 6
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    stamp = (first / files[0]).stat().st_mtime_ns
    assert synthetic_golden(tmp_path / "a", CLASSES, per_class=3, size=64) == first
    assert (first / files[0]).stat().st_mtime_ns == stamp  # reused, not redrawn
    assert {i.label for i in load_golden(first, CLASSES)} == set(CLASSES)


def test_golden_images_are_not_the_training_images(tmp_path):
    from training.synthetic import generate

    generate(tmp_path / "train", CLASSES, 3, 64, seed=7, progress=False)  # params.yaml synthetic.seed
    gold = synthetic_golden(tmp_path / "gold", CLASSES, per_class=3, size=64)
    train_bytes = {p.read_bytes() for p in (tmp_path / "train").rglob("*.jpg")}
    assert not train_bytes & {p.read_bytes() for p in gold.rglob("*.jpg")}


def prepared_data(tmp_path: Path, per_class: int = 10, seed: int = 7) -> Path:
    from training.prepare import prepare
    from training.synthetic import generate

    generate(tmp_path / f"images-{seed}", CLASSES, per_class, 64, seed=seed, progress=False)
    prepare(tmp_path / f"images-{seed}", tmp_path / f"prepared-{seed}", CLASSES, resize_size=40, val_ratio=0.2,
            test_ratio=0.4, seed=42, max_pixels=10**7)
    return tmp_path / f"prepared-{seed}"


def test_default_golden_set_is_the_test_split_of_the_candidates_data(tmp_path):
    from deploy.gates import manifest_golden
    from training.prepare import read_manifest, read_stats

    prepared = prepared_data(tmp_path)
    data_hash = read_stats(prepared)["data_hash"]
    items, record = manifest_golden(prepared, CLASSES, per_class=3, data_hash=data_hash)
    test_rows = {row["path"]: row for row in read_manifest(prepared, "test")}
    assert [i.label for i in items] == ["cat"] * 3 + ["dog"] * 3
    assert all(i.name in test_rows and test_rows[i.name]["label"] == i.label for i in items)
    assert all(Path(test_rows[i.name]["cache"]).read_bytes() == i.data for i in items)
    assert (record["images"], record["data_hash"]) == (6, data_hash)
    again, record_again = manifest_golden(prepared, CLASSES, per_class=3, data_hash=data_hash)
    assert again == items and record_again["sha256"] == record["sha256"]  # deterministic, same content hash
    assert manifest_golden(prepared, CLASSES, per_class=2, data_hash=data_hash)[1]["sha256"] != record["sha256"]


def test_golden_set_refuses_data_the_candidate_was_not_trained_on(tmp_path):
    from deploy.gates import manifest_golden
    from training.prepare import read_stats

    prepared = prepared_data(tmp_path)
    other = read_stats(prepared_data(tmp_path, seed=8))["data_hash"]
    with pytest.raises(ValueError, match="trained on data"):
        manifest_golden(prepared, CLASSES, per_class=3, data_hash=other)
    with pytest.raises(ValueError, match="no data_hash"):
        manifest_golden(prepared, CLASSES, per_class=3, data_hash=None)
    with pytest.raises(FileNotFoundError, match="no prepare output"):
        manifest_golden(tmp_path / "nowhere", CLASSES, per_class=3, data_hash=other)


def test_inference_count_reads_one_version_from_prometheus_text():
    text = """\
# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="catsdogs",model_version="1.a",hostname="h",} 7.0
ts_inference_requests_total{model_name="catsdogs",model_version="default",hostname="h",} 90.0
ts_inference_requests_total{model_name="other",model_version="1.a",hostname="h",} 3.0
"""
    assert inference_count(text, "catsdogs", "1.a") == 7.0
    assert inference_count(text, "catsdogs", "2.b") is None


def test_pending_requests_reads_the_job_queue_of_a_description():
    assert pending_requests({"jobQueueStatus": {"remainingCapacity": 97, "pendingRequests": 3}}) == 3
    assert pending_requests({"workers": []}) == 0 and pending_requests(None) == 0


# --- MLflow registry -------------------------------------------------------------------------------------

def make_registry(path: Path, versions: int, name: str = "catsdogs") -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, source=str(path.parent), run_id=None)
    return uri


class DescribedManagement(Management):
    """Management whose describe-model answers come from a list (one per poll), no server."""

    def __init__(self, answers):
        super().__init__(client=None, model_name="m")
        self.answers = list(answers)

    def describe(self, version):
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def described(*workers, min_workers=1):
    return {"minWorkers": min_workers, "workers": [{"id": "9001", "status": s, "pid": pid} for pid, s in workers]}


def test_wait_ready_returns_once_the_workers_serve(monkeypatch):
    monkeypatch.setattr("deploy.management.time.sleep", lambda s: None)
    api = DescribedManagement([None, described((-1, "UNLOADING")), described((41, "UNLOADING")),
                               described((41, "READY"))])
    assert api.wait_ready("2", timeout=30)["workers"][0]["status"] == "READY"


def test_wait_ready_fails_fast_when_the_loading_worker_keeps_dying(monkeypatch):
    """An asynchronous registration of a model that cannot load: TorchServe restarts the worker process forever."""
    monkeypatch.setattr("deploy.management.time.sleep", lambda s: None)
    api = DescribedManagement([described((41, "UNLOADING")), described((41, "UNLOADING")),
                               described((57, "UNLOADING"))])
    with pytest.raises(ManagementError, match="died and TorchServe restarted it.*41 -> 57"):
        api.wait_ready("2", timeout=30)


def test_metadata_of_a_version_is_empty_when_torchserve_does_not_describe_it():
    import requests

    class Client:
        def describe(self, target, customized=False):
            if target != "m/1" or not customized:
                raise requests.HTTPError("404 Client Error: Not Found")
            return [{"modelVersion": "1", "customizedMetadata": json.dumps({"classes": CLASSES})}]

    api = Management(Client(), "m")
    assert api.metadata("1") == {"classes": CLASSES} and api.metadata("2") == {}


@pytest.mark.slow
def test_champion_alias_moves_and_missing_versions_warn_or_fail(tmp_path):
    from deploy import registry

    uri = make_registry(tmp_path / "mlflow.db", versions=2)
    assert registry.champion(uri, "catsdogs") is None
    assert "version 2" in registry.move_champion(uri, {"registered_model": "catsdogs", "mlflow_model_version": "2"})
    assert registry.champion(uri, "catsdogs") == "2"
    registry.move_champion(uri, {"registered_model": "catsdogs", "mlflow_model_version": "1"})
    assert registry.champion(uri, "catsdogs") == "1"
    missing = {"registered_model": "catsdogs", "mlflow_model_version": "9"}
    assert registry.move_champion(uri, missing).startswith("warning")
    assert registry.champion(uri, "catsdogs") == "1"
    with pytest.raises(registry.RegistryError, match="version 9"):
        registry.check(uri, missing, required=True)
    nowhere = tmp_path / "none.db"
    assert "no MLflow store" in registry.move_champion(f"sqlite:///{nowhere}", missing)
    assert not nowhere.exists()  # a missing store is reported, never created
    assert "no registered_model" in registry.move_champion(uri, {"version": "x"})


# --- CLI ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["deploy"], ["rollback"], ["status"], ["scale"]])
def test_every_command_has_help(command):
    result = subprocess.run([sys.executable, "-m", "deploy", *command, "--help"], check=False, cwd=ROOT,
                            capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "usage: python -m deploy" in result.stdout, result.stderr


def test_deploy_of_a_missing_archive_fails_with_a_clear_reason(tmp_path):
    stale = tmp_path / "deploy-result.json"
    stale.write_text(json.dumps({"status": "switched", "version": "old", "previous": "older"}))
    result = subprocess.run([sys.executable, "-m", "deploy", "deploy", str(tmp_path / "nope.mar"),
                             "--run-dir", str(tmp_path), "--result", str(stale)],
                            check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "nope.mar not found" in result.stderr, result.stderr
    # an earlier build's "switched" must not survive: a rollback would demote the healthy default
    assert json.loads(stale.read_text())["status"] == "failed"


def test_deploy_result_round_trip_and_unreadable_files(tmp_path):
    from deploy.deployer import read_result, write_result

    path = tmp_path / "reports" / "deploy-result.json"
    assert read_result(path) is None
    write_result(path, {"status": "switched", "version": "B", "previous": "A"})
    assert read_result(path) == {"status": "switched", "version": "B", "previous": "A"}
    path.write_text('{"status": "maybe"}')
    assert read_result(path) is None
    path.write_text("{corrupt")
    assert read_result(path) is None


# --- integration: a real swap under Locust load ----------------------------------------------------------

def run_load(spec_json: str) -> None:
    """Child process: Locust users POST golden images to /predictions/<model> until the stop file appears.

    Writes cumulative counts to spec["out"] twice a second: requests, failures (from events.request),
    and how many answers each model version gave.
    """
    import gevent
    from locust import HttpUser, constant, task
    from locust.env import Environment

    from serving.client import ServingClient

    spec = json.loads(spec_json)
    images = [Path(p).read_bytes() for p in spec["images"]]
    client = ServingClient(spec["inference_url"], spec["management_url"], "", key_file=spec["key_file"])
    key = client.key("inference")
    counts = {"requests": 0, "failures": 0, "versions": {}, "errors": []}

    class Predictor(HttpUser):
        host = spec["inference_url"]
        wait_time = constant(spec["wait"])

        @task
        def predict(self):
            data = images[counts["requests"] % len(images)]
            with self.client.post(f"/predictions/{spec['model']}", data=data, name="predict", catch_response=True,
                                  headers={"Authorization": f"Bearer {key}",
                                           "Content-Type": "application/octet-stream"}) as response:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                problems = check_prediction(response.status_code, body, CLASSES, None)
                if problems:
                    response.failure("; ".join(problems))
                    return
                version = body["model_version"]
                counts["versions"][version] = counts["versions"].get(version, 0) + 1
                response.success()

    env = Environment(user_classes=[Predictor])

    def on_request(exception=None, **_):
        counts["requests"] += 1
        if exception is not None:
            counts["failures"] += 1
            if len(counts["errors"]) < 10:
                counts["errors"].append(str(exception))

    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    runner.start(spec["users"], spawn_rate=spec["users"])
    out, stop_file = Path(spec["out"]), Path(spec["stop"])
    deadline = time.monotonic() + spec["max_seconds"]
    while not stop_file.exists() and time.monotonic() < deadline:
        gevent.sleep(0.5)
        out.write_text(json.dumps(counts))
    runner.quit()
    out.write_text(json.dumps({**counts, "done": True}))


class Load:
    """Runs run_load in a child process; snapshot() reads its cumulative counts."""

    def __init__(self, work: Path, state: dict, images: list[Path], users: int = 2, wait: float = 0.1):
        self.out, self.stop_file = work / "load.json", work / "load.stop"
        spec = {"inference_url": state["inference_url"], "management_url": state["management_url"],
                "key_file": state["key_file"], "model": "catsdogs", "images": [str(p) for p in images],
                "users": users, "wait": wait, "out": str(self.out), "stop": str(self.stop_file), "max_seconds": 400}
        code = "import locust, sys; from tests.test_deploy import run_load; run_load(sys.argv[1])"
        self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], cwd=ROOT)

    def snapshot(self) -> dict:
        time.sleep(0.6)  # one more periodic write
        return json.loads(self.out.read_text()) if self.out.is_file() else {"requests": 0, "failures": 0,
                                                                            "versions": {}}

    def wait_for_traffic(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.snapshot()["requests"] >= 5:
                return
            assert self.proc.poll() is None, "the Locust child process died"
        raise AssertionError("no Locust traffic after 60 s")

    def stop(self) -> dict:
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return json.loads(self.out.read_text())


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "deploy", *args], check=False, cwd=ROOT, capture_output=True,
                            text=True,
                            timeout=timeout)
    print(f"\n$ python -m deploy {' '.join(args)}   ({time.monotonic() - began:.1f} s, exit {result.returncode})\n"
          f"{result.stdout}{result.stderr}")
    return result


def management_api(state: dict):
    from catsdogs import contract
    from deploy.management import Management
    from serving.client import ServingClient

    return Management(ServingClient(state["inference_url"], state["management_url"], state["metrics_url"],
                                    key_file=state["key_file"]), contract.model_name())


def versions_of(state: dict) -> tuple[str | None, list[str]]:
    api = management_api(state)
    return api.default_version(), sorted(str(d["modelVersion"]) for d in api.versions())


@pytest.mark.slow
@pytest.mark.integration
def test_zero_downtime_swap_golden_gate_rollback_and_champion(synthetic_model, tmp_path_factory):
    from deploy import registry
    from serving.archive import build_archive
    from serving.config import DEFAULT_CONFIG
    from serving.server import free_ports, start, stop

    model_dir, prepared = synthetic_model
    work = tmp_path_factory.mktemp("deploy")
    meta_a = json.loads((model_dir / "model-meta.json").read_text())
    version_a, mlflow_a = meta_a["version"], meta_a["mlflow_model_version"]
    mlflow_b = str(int(mlflow_a) + 1)
    version_b, version_c = f"{version_a}.b", f"{version_a}.c"
    # A throwaway registry holding the registry versions A and B name (champion must move between them)
    uri = make_registry(work / "mlflow.db", versions=int(mlflow_b))
    store = work / "store"
    build_archive(model_dir, store)  # store/catsdogs.mar = A, loaded at start-up
    mar_b = build_archive(variant(model_dir, work / "model-b", version_b, mlflow_b), work / "b")
    mar_c = build_archive(variant(model_dir, work / "model-c", version_c, always_cat=True), work / "c")
    assert read_archive(mar_b).version == version_b and read_archive(mar_c).version == version_c

    golden_cache = work / "golden"
    golden_dir = synthetic_golden(golden_cache, CLASSES, per_class=12, size=160)
    load_images = sorted(golden_dir.rglob("*.jpg"))[::4]
    run = work / "run"
    inference, management, metrics, grpc_i, grpc_m = free_ports(5)
    state = start(config=DEFAULT_CONFIG, run_dir=run, log_dir=work / "logs", model_store=store,
                  ports={"inference": inference, "management": management, "metrics": metrics},
                  grpc_ports=(grpc_i, grpc_m), timeout=240)
    common = ["--run-dir", str(run), "--tracking-uri", uri]
    # golden set: 12 test-split images per class of the data the model was trained on (the default source).
    # The gate is what the test model itself measures on it (A, the same weights as B), less a small margin:
    # B must pass it; a constant answer (C) gets 0.5 on the balanced set and must not.
    api = management_api(state)
    items, _ = manifest_golden(prepared, CLASSES, 12, meta_a["data_hash"])
    measured = score(lambda data: api.predict(version_a, data), items, CLASSES, version_a)
    assert measured.errors == 0 and measured.accuracy >= 0.75, \
        f"the test model is too weak to test a gate: {measured.summary()}"
    threshold = round(measured.accuracy - 0.1, 3)
    gates = ["--prepared", str(prepared), "--golden-per-class", "12", "--min-accuracy", str(threshold),
             "--drain-seconds", "1"]
    load = None
    try:
        assert versions_of(state) == (version_a, [version_a])
        load = Load(work, state, load_images)
        load.wait_for_traffic()
        before = load.snapshot()

        # 1. B passes every gate and takes over while Locust keeps sending requests
        deployed = cli("deploy", str(mar_b), *common, *gates)
        assert deployed.returncode == 0, deployed.stderr
        assert versions_of(state) == (version_b, sorted([version_a, version_b]))  # A kept for rollback
        assert (store / store_file_name("catsdogs", version_b)).is_file()
        assert registry.champion(uri, "catsdogs") == mlflow_b
        time.sleep(3)  # B answers default traffic now
        after_b = load.snapshot()

        # 2. C (always "cat") is rejected by the golden gate; B keeps serving, C is gone
        rejected = cli("deploy", str(mar_c), *common, *gates)
        assert rejected.returncode == 1
        assert "golden gate failed" in rejected.stderr and f"0.500 < required {threshold:.3f}" in rejected.stderr
        assert versions_of(state) == (version_b, sorted([version_a, version_b]))
        assert not (store / store_file_name("catsdogs", version_c)).exists()
        assert registry.champion(uri, "catsdogs") == mlflow_b
        after_c = load.snapshot()

        # 3. rollback: A is the default again, champion follows
        rolled = cli("rollback", *common)
        assert rolled.returncode == 0, rolled.stderr
        assert versions_of(state)[0] == version_a
        assert registry.champion(uri, "catsdogs") == mlflow_a
        time.sleep(3)
        final, load = load.stop(), None

        phases = {"before deploy": before, "deploy B": after_b, "deploy C (rejected)": after_c, "rollback": final}
        print("\nLocust load during the swap (cumulative counts):")
        for phase, snap in phases.items():
            print(f"  after {phase:<20} requests {snap['requests']:>5}  failures {snap['failures']}  "
                  f"answers by version {snap['versions']}")
        assert final["failures"] == 0, final["errors"]
        assert final["requests"] > before["requests"] > 0
        assert after_b["versions"].get(version_a, 0) > 0 and after_b["versions"].get(version_b, 0) > 0
        assert version_c not in final["versions"], "the rejected version answered user traffic"
        assert final["versions"][version_a] > after_c["versions"].get(version_a, 0), "A did not serve after rollback"

        # 4. re-deploying a registered version is not an error: B is gated again and made default;
        #    --keep 1 drains and unregisters A. Then B again: already the default, nothing to do.
        again = cli("deploy", str(mar_b), *common, *gates, "--keep", "1")
        assert again.returncode == 0, again.stderr
        assert "already registered" in again.stdout and f"unregistered old version {version_a}" in again.stdout
        assert versions_of(state) == (version_b, [version_b])
        assert (store / "catsdogs.mar").is_file()  # the start-up archive is never deleted
        unchanged = cli("deploy", str(mar_b), *common, *gates)
        assert unchanged.returncode == 0 and "already registered and the default" in unchanged.stdout

        # 5. scale and status
        scaled = cli("scale", "--min", "2", *common)
        assert scaled.returncode == 0, scaled.stderr
        report = cli("status", "--json", *common)
        assert report.returncode == 0, report.stderr
        status = json.loads(report.stdout)
        assert status["default"] == version_b and status["mlflow_champion"] == mlflow_b
        [entry] = status["versions"]
        assert entry["health"] == "ok" and entry["min_workers"] == 2
        assert [w["status"] for w in entry["workers"]] == ["READY", "READY"]
        text = cli("status", *common)
        assert text.returncode == 0 and f"* {version_b}" in text.stdout and "health: ok" in text.stdout

        # 6. nothing left to roll back to: a clear refusal, the default stays
        nothing = cli("rollback", *common)
        assert nothing.returncode == 1 and "nothing to roll back to" in nothing.stderr
        assert versions_of(state)[0] == version_b
    finally:
        if load is not None:
            load.stop()
        stop(run)


# --- integration: Jenkins' Deploy stage and its failure handling, as make targets ---------------------------

def red_blue_model(work: Path, per_class: int = 16) -> tuple[Path, Path]:
    """(model dir, prepared dir): tests.serving_helpers.RedVsBlue "trained on" a prepared set of reddish cats
    and bluish dogs (its model-meta.json carries that set's data_hash), so its test split is a golden set
    the model gets right and a constant answer gets half right. No training: seconds, not minutes."""
    from tests.conftest import image_bytes
    from tests.serving_helpers import write_model_dir
    from training.prepare import prepare, read_stats

    for i in range(per_class):
        for label, color in (("cat", (230 - 3 * i, 20 + i, 30)), ("dog", (30, 20 + i, 230 - 3 * i))):
            (work / "images" / label).mkdir(parents=True, exist_ok=True)
            (work / "images" / label / f"{i}.jpg").write_bytes(image_bytes(color, size=(48 + i, 40)))
    prepare(work / "images", work / "prepared", CLASSES, resize_size=36, val_ratio=0.0, test_ratio=0.5, seed=42,
            max_pixels=10**7)
    write_model_dir(work / "model", version="rb.1", data_hash=read_stats(work / "prepared")["data_hash"])
    return work / "model", work / "prepared"


@pytest.fixture(scope="module")
def jenkins_target(tmp_path_factory):
    """A real TorchServe that serves A at start-up, then B through `make ci-deploy` (B is the healthy default).

    Yields (make, state, versions): make(target, mar=None) runs a target like Jenkins does, with the target
    server given through the CATSDOGS_* environment variables of the Jenkins credentials.
    """
    import os

    from serving.archive import build_archive
    from serving.server import stop
    from tests.serving_helpers import serve_model_dir

    work = tmp_path_factory.mktemp("jenkins-deploy")
    model_dir, prepared = red_blue_model(work)
    version_a = json.loads((model_dir / "model-meta.json").read_text())["version"]
    versions = {"A": version_a, "B": f"{version_a}.b", "C": f"{version_a}.c", "D": f"{version_a}.d"}
    mars = {name: build_archive(variant(model_dir, work / f"model-{name}", versions[name], always_cat=name == "C"),
                                work / name)
            for name in ("B", "C", "D")}
    try:
        state = serve_model_dir(model_dir, work)
    except BaseException:
        stop(work / "run")  # a start that timed out leaves TorchServe running
        raise
    result_file = work / "deploy-result.json"
    env = {**os.environ, "CATSDOGS_MANAGEMENT_URL": state["management_url"],
           "CATSDOGS_INFERENCE_URL": state["inference_url"], "CATSDOGS_METRICS_URL": state["metrics_url"],
           "CATSDOGS_KEY_FILE": state["key_file"], "CATSDOGS_MODEL_STORE": str(work / "store")}
    # the default golden source: the test split of the data the model was trained on
    args = (f"--tracking-uri sqlite:///{work / 'none.db'} --prepared {prepared} --golden-per-class 8 "
            f"--min-accuracy 0.9 --drain-seconds 1")

    def make(target: str, mar: str | None = None) -> subprocess.CompletedProcess:
        command = ["make", "--no-print-directory", target, f"DEPLOY_RESULT={result_file}",
                   f"DEPLOY_RUN_DIR={work / 'nowhere'}", f"DEPLOY_ARGS={args}",
                   f"ROLLBACK_ARGS=--tracking-uri sqlite:///{work / 'none.db'}"]
        if mar:
            command.append(f"MAR={mars[mar]}")
        began = time.monotonic()
        done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        print(f"\n$ make {target} {mar or ''}  ({time.monotonic() - began:.1f} s, exit {done.returncode})\n"
              f"{done.stdout}{done.stderr}")
        return done

    try:
        assert versions_of(state)[0] == versions["A"]
        first = make("ci-deploy", "B")
        assert first.returncode == 0, first.stderr
        assert versions_of(state) == (versions["B"], sorted([versions["A"], versions["B"]]))
        yield make, state, versions, result_file
    finally:
        stop(work / "run")


@pytest.mark.slow
@pytest.mark.integration
def test_failed_build_after_a_rejected_deploy_keeps_the_healthy_default(jenkins_target):
    make, state, versions, result_file = jenkins_target
    rejected = make("ci-deploy", "C")  # always "cat": the golden gate refuses it
    assert rejected.returncode != 0 and "golden gate failed" in rejected.stderr
    assert json.loads(result_file.read_text())["status"] == "rejected"
    assert versions_of(state)[0] == versions["B"]
    # the build failed: Jenkins' post { failure } runs the rollback target
    handled = make("ci-rollback")
    assert handled.returncode == 0, handled.stderr
    assert "rollback not needed" in handled.stdout
    # B stays the default although A, the version before it, is still registered (plain rollback would pick A)
    assert versions_of(state) == (versions["B"], sorted([versions["A"], versions["B"]]))


@pytest.mark.slow
@pytest.mark.integration
def test_failed_build_after_a_switching_deploy_restores_the_previous_default(jenkins_target):
    make, state, versions, result_file = jenkins_target
    switched = make("ci-deploy", "D")  # passes every gate and becomes the default
    assert switched.returncode == 0, switched.stderr
    record = json.loads(result_file.read_text())
    assert (record["status"], record["version"], record["previous"]) == ("switched", versions["D"], versions["B"])
    assert record["golden"]["source"] == "prepare manifest, test split" and record["golden"]["images"] == 16
    assert versions_of(state)[0] == versions["D"]
    # a later stage fails: the rollback puts B back, the version this deploy replaced
    handled = make("ci-rollback")
    assert handled.returncode == 0, handled.stderr
    assert versions_of(state)[0] == versions["B"]
    assert json.loads(result_file.read_text())["status"] == "rolled back"
    # running the failure handling again changes nothing
    again = make("ci-rollback")
    assert again.returncode == 0 and "rollback not needed" in again.stdout
    assert versions_of(state)[0] == versions["B"]
