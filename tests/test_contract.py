"""The contract between the stages (catsdogs/contract.py): one definition per fact, used everywhere."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from catsdogs import contract
from catsdogs.contract import check_prediction
from tests.conftest import ROOT

GOOD = {"label": "dog", "confidence": 0.9, "probabilities": {"cat": 0.1, "dog": 0.9}, "model_version": "3.abc1234"}

# --- the model name and what follows from it ---------------------------------------------------------


def test_model_name_comes_from_params(tmp_path):
    assert contract.model_name() == yaml.safe_load((ROOT / "params.yaml").read_text())["serve"]["model_name"]
    assert contract.model_name({"serve": {"model_name": "pets"}}) == "pets"
    assert contract.archive_path("pets") == Path("model-store/pets.mar")
    with pytest.raises(contract.ContractError, match="serve.model_name"):
        contract.model_name({"serve": {}})
    with pytest.raises(contract.ContractError, match="not found"):
        contract.read_params(tmp_path / "params.yaml")


def test_dvc_archive_output_follows_the_model_name():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["archive"]
    assert stage["outs"] == ["model-store/${serve.model_name}.mar"]


# Python code outside the contract and the tests. What the literals below would break if re-typed: the served
# model name (params.yaml serve.model_name, renamed in one place) and the ports (config.properties').
CODE = sorted(p for p in ROOT.glob("*/**/*.py")
              if p.parts[len(ROOT.parts)] not in ("tests", ".venv", "build") and p != ROOT / "catsdogs" / "contract.py")
FACTS = {
    # the model name as a name (not the package `catsdogs.`, metric names catsdogs_*, the image catsdogs-serving)
    "model name": re.compile(r"""["']catsdogs["']|catsdogs\.mar|/catsdogs\b(?![_/-])|catsdogs=|-m catsdogs\b"""),
    "ports": re.compile(r"\b(8080|8081|8082|7070|7071)\b"),
}


@pytest.mark.parametrize("fact", sorted(FACTS))
def test_facts_of_the_contract_are_written_nowhere_else_in_code(fact):
    assert CODE, "no Python files found"
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in CODE
             for number, line in enumerate(path.read_text(errors="replace").splitlines(),
                                           1) if FACTS[fact].search(line)]
    assert not found, f"{fact} re-typed outside catsdogs/contract.py:\n" + "\n".join(found)


def test_limits_in_the_config_files_agree_with_the_contract():
    handler = yaml.safe_load((ROOT / "handler" / "model-config.yaml").read_text())["handler"]
    assert handler["max_image_bytes"] == contract.MAX_IMAGE_BYTES
    assert handler["max_image_pixels"] == contract.MAX_IMAGE_PIXELS
    assert handler["max_images_per_request"] == contract.MAX_IMAGES_PER_REQUEST
    assert handler["max_request_image_bytes"] == contract.MAX_REQUEST_IMAGE_BYTES
    assert contract.read_params()["data"]["max_image_pixels"] == contract.MAX_IMAGE_PIXELS


def test_every_cli_takes_the_same_server_flags():
    import deploy.__main__ as deploy_cli
    import monitoring.__main__ as monitoring_cli
    import serving.__main__ as serving_cli

    for parser, argv in ((serving_cli.build_parser(), ["ready"]), (deploy_cli.build_parser(), ["status"]),
                         (monitoring_cli.build_parser(), ["evaluate", "--images", "x"])):
        args = parser.parse_args([*argv, "--inference-url", "http://127.0.0.1:1", "--management-url",
                                  "http://127.0.0.1:2", "--no-token", "--model", "pets"])
        from serving.client import client_from_args

        client = client_from_args(args)
        assert client.urls["inference"] == "http://127.0.0.1:1" and client.model_name == "pets"
        assert client.key_file is None


# --- serve.json and model-meta.json -----------------------------------------------------------------

def test_serve_state_round_trip_and_a_stale_file_is_named(tmp_path):
    state = {k: "x" for k in contract.SERVE_REQUIRED}
    contract.write_serve_state(tmp_path, state)
    assert contract.read_serve_state(tmp_path) == state
    assert contract.read_serve_state(tmp_path / "none") is None
    (tmp_path / "serve.json").write_text(json.dumps({"pid": 1}))
    with pytest.raises(contract.ContractError, match="inference_url"):
        contract.read_serve_state(tmp_path)


def test_load_models_names():
    assert contract.load_models_names("catsdogs=catsdogs.mar") == ["catsdogs"]
    assert contract.load_models_names("a=a.mar, b.mar") == ["a", "b"]
    assert contract.load_models_names("ALL") == contract.load_models_names("") == []


def test_a_client_of_a_run_dir_asks_about_the_model_that_server_loads(tmp_path, monkeypatch):
    """A container has no params.yaml: `python -m serving ready --run-dir` (its probes) names the model from
    serve.json."""
    from serving.__main__ import build_parser
    from serving.client import client_from_args

    state = {"pid": 1, "inference_url": "http://127.0.0.1:1", "management_url": "http://127.0.0.1:2",
             "metrics_url": "http://127.0.0.1:3", "key_file": str(tmp_path / "key_file.json"), "log_dir": "logs",
             "model_store": "store", "models": "pets=pets.mar"}
    contract.write_serve_state(tmp_path, state)
    monkeypatch.setattr(contract, "PARAMS_FILE", tmp_path / "no-params.yaml")
    monkeypatch.setattr(contract.read_params, "__defaults__", (tmp_path / "no-params.yaml",))
    args = build_parser().parse_args(["ready", "--run-dir", str(tmp_path)])
    assert client_from_args(args).model_name == "pets"
    args = build_parser().parse_args(["ready", "--run-dir", str(tmp_path), "--model", "other"])
    assert client_from_args(args).model_name == "other"
    with pytest.raises(contract.ContractError, match="not found"):  # no serve.json and no params.yaml
        client_from_args(build_parser().parse_args(["ready", "--run-dir", str(tmp_path / "empty")]))


def test_model_meta_round_trip_and_missing_keys(tmp_path):
    meta = {"classes": ["cat", "dog"], "image_size": 96, "resize_size": 110, "mean": [0.5] * 3, "std": [0.2] * 3,
            "version": "1.abc"}
    contract.write_meta(meta, tmp_path)
    assert contract.read_meta(tmp_path) == meta
    assert json.loads((tmp_path / contract.INDEX_TO_NAME_FILE).read_text()) == {"0": "cat", "1": "dog"}
    with pytest.raises(contract.ContractError, match="version"):
        contract.write_meta({k: v for k, v in meta.items() if k != "version"}, tmp_path)


def test_describe_model_metadata_is_parsed_once():
    meta = {"version": "2.abc", "test_metrics": {"accuracy": 0.9}}
    assert contract.parse_description([{"modelName": "m", "customizedMetadata": json.dumps(meta)}]) == meta
    assert contract.parse_description([{"modelName": "m", "customizedMetadata": meta}]) == meta
    with pytest.raises(ValueError, match="customizedMetadata"):
        contract.parse_description([{"modelName": "m"}])
    with pytest.raises(ValueError, match="not JSON"):
        contract.parse_description([{"customizedMetadata": "{"}])


# --- the prediction response ---------------------------------------------------------------------

def test_the_handlers_answer_passes_the_check():
    body = contract.prediction(["cat", "dog"], [0.25, 0.75], "3.abc")
    assert body == {"label": "dog", "confidence": 0.75, "probabilities": {"cat": 0.25, "dog": 0.75},
                    "model_version": "3.abc"}
    assert check_prediction(body, ["cat", "dog"], "3.abc") is None


def test_a_well_formed_prediction_passes():
    assert check_prediction(GOOD, ["cat", "dog"], "3.abc1234") is None
    assert check_prediction(GOOD) is None


@pytest.mark.parametrize("change, problem", [
    ({"extra": 1}, "keys"),
    ({"probabilities": {"dog": 0.9, "cat": 0.1}}, "classes"),
    ({"probabilities": {"cat": 0.3, "dog": 0.9}}, "sum"),
    ({"label": "cat"}, "confidence"),
    ({"label": "cat", "confidence": 0.1}, "most probable"),
    ({"label": "bird"}, "not one of"),
    ({"model_version": ""}, "empty"),
    ({"probabilities": {"cat": "0.1", "dog": 0.9}}, "numbers"),
])
def test_malformed_predictions_are_named(change, problem):
    assert problem in check_prediction({**GOOD, **change}, ["cat", "dog"])


def test_a_prediction_from_another_version_is_caught():
    assert "expected" in check_prediction(GOOD, ["cat", "dog"], "4.def5678")
    assert "not a JSON object" in check_prediction(["cat"])


# --- the labelled-image reader --------------------------------------------------------------------

@pytest.mark.parametrize("path, label", [
    ("cat.12.jpg", "cat"), ("train/dog.4.jpg", "dog"), ("cats/x.jpg", "cat"), ("PetImages/Dog/1.jpg", "dog"),
    ("Cat (3).jpg", "cat"), ("dogs/cat.1.jpg", "dog"),  # the folder wins, as in training ingest
    ("Abyssinian_1.jpg", None), ("photos/IMG_0001.jpg", None), ("category/x.jpg", None),
])
def test_label_comes_from_the_folder_or_the_file_name(tmp_path, path, label):
    from training.ingest import labelled

    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_bytes(b"x")
    [(relpath, found, read)] = labelled(tmp_path, ["cat", "dog"])
    assert (relpath, found, read()) == (path, label, b"x")
