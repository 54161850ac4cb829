"""The path off TorchServe: deploy/triton.py's model repository for the exported TorchScript model, and the
KServe InferenceService that serves it (deploy/kserve/).

The model configuration is parsed with Triton's own schema (inference.ModelConfig from tritonclient's
model_config_pb2, `make ci-tools` puts it in build/tools/tritonclient) and checked against the real TorchScript
file: a batch of the configured input shape gives the configured output shape. Triton itself, KServe and a
cluster are not run here (docs/deploy.md).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import yaml

from catsdogs import contract
from deploy import triton
from tests.serving_helpers import write_model_dir

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG_PB2 = ROOT / "build" / "tools" / "tritonclient" / "tritonclient" / "grpc" / "model_config_pb2.py"
KSERVE = ROOT / "deploy" / "kserve"


@pytest.fixture(scope="module")
def model_config_pb2():
    if not MODEL_CONFIG_PB2.is_file():
        message = f"{MODEL_CONFIG_PB2} not found; run `make ci-tools` (tritonclient, files only)"
        if os.environ.get("CATSDOGS_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", MODEL_CONFIG_PB2)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(pb2, text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, pb2.ModelConfig())


def test_repository_layout_and_config_fit_the_exported_model(tmp_path, model_config_pb2):
    meta = write_model_dir(tmp_path / "model")
    folder = triton.write_repository(tmp_path / "model", tmp_path / "repo", "catsdogs")
    assert sorted(str(p.relative_to(tmp_path / "repo")) for p in folder.rglob("*") if p.is_file()) == [
        "catsdogs/1/model.pt", "catsdogs/config.pbtxt", "catsdogs/labels.txt", f"catsdogs/{contract.META_FILE}"]
    config = parse(model_config_pb2, (folder / "config.pbtxt").read_text())
    batching = yaml.safe_load(triton.MODEL_CONFIG.read_text())
    assert (config.name, config.platform, config.max_batch_size) == ("catsdogs", "pytorch_libtorch",
                                                                     batching["batchSize"])
    assert config.dynamic_batching.max_queue_delay_microseconds == batching["maxBatchDelay"] * 1000
    [inp], [out] = config.input, config.output
    size = meta["image_size"]
    assert (inp.name, list(inp.dims), inp.data_type) == ("INPUT__0", [3, size, size], model_config_pb2.TYPE_FP32)
    assert (out.name, list(out.dims), out.label_filename) == ("OUTPUT__0", [len(meta["classes"])], "labels.txt")
    assert (folder / "labels.txt").read_text().split() == meta["classes"]
    # what Triton's libtorch backend will do: load the file, run a batch of the configured shape
    model = torch.jit.load(str(folder / "1" / "model.pt"))
    with torch.inference_mode():
        logits = model(torch.rand(2, *inp.dims))
    assert list(logits.shape) == [2, *out.dims]


def test_a_misspelt_or_mistyped_config_is_refused_by_the_schema(model_config_pb2):
    from google.protobuf import text_format

    good = triton.config_pbtxt("catsdogs", {"image_size": 224, "classes": ["cat", "dog"]}, 8, 1)
    parse(model_config_pb2, good)
    for bad in (good.replace("max_batch_size", "max_batchsize"), good.replace("TYPE_FP32", "TYPE_FLOAT32"),
                good.replace("KIND_CPU", "CPU")):
        with pytest.raises(text_format.ParseError):
            parse(model_config_pb2, bad)


def test_cli_writes_the_repository_and_explains_a_missing_export(tmp_path, capsys):
    write_model_dir(tmp_path / "model")
    assert triton.main(["--model-dir", str(tmp_path / "model"), "--out", str(tmp_path / "repo"),
                        "--model-name", "pets"]) == 0
    assert (tmp_path / "repo" / "pets" / "1" / "model.pt").is_file()
    assert triton.main(["--model-dir", str(tmp_path / "none"), "--out", str(tmp_path / "r2"), "--model-name", "x"]) == 1
    assert "export" in capsys.readouterr().err


# --- KServe ---------------------------------------------------------------------------------------------------

def kserve_objects() -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for path in sorted(KSERVE.glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d}


def test_inference_service_runs_the_repository_on_triton_with_auth_at_the_gateway():
    objects = kserve_objects()
    service = objects["InferenceService/catsdogs"]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    # a plain Deployment + Service (no Knative): the gateway and the NetworkPolicy below front it
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == "kserve-tritonserver" and model["modelFormat"]["name"] == "pytorch"
    assert model["storageUri"].rstrip("/").endswith("model_repository"), "the repository root, not the model"
    assert model["resources"]["limits"]["cpu"] and model["resources"]["limits"]["memory"]
    assert service["spec"]["predictor"]["minReplicas"] >= 2
    policy = objects["NetworkPolicy/catsdogs-predictor"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "catsdogs"}
    [rule] = policy["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert [p["port"] for p in rule["ports"]] == [8080]  # the runtime's --http-port: v2 REST
