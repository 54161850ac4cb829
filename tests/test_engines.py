"""model/engines.py: which engine and precision run the model, and that each one answers like TorchScript.

The parity tests run the real packaged network (EfficientNet-Lite0 with its ImageNet weights) on a generated
cartoon photo, so the engines are compared on the kind of input they serve, not on noise.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from model import engines
from model.engines import EngineError, choose
from model.network import build_model
from model.preprocess import eval_geometry, eval_normalize

AVX512 = frozenset({"FP32", "INT8", "BF16"})
AVX2 = frozenset({"FP32", "INT8"})
NONE = frozenset()  # OpenVINO not installed


@pytest.mark.parametrize("engine,precision,device,caps,gated,expected", [
    ("auto", "auto", "cpu", AVX512, ("bf16",), ("openvino", "bf16")),
    ("auto", "auto", "cpu", AVX512, None, ("openvino", "bf16")),      # no gate ran (training, benchmarks)
    ("auto", "auto", "cpu", AVX512, (), ("openvino", "f32")),         # the gate did not pass bf16
    ("auto", "auto", "cpu", AVX2, ("bf16",), ("openvino", "f32")),    # no native bf16
    ("auto", "bf16", "cpu", AVX2, ("bf16",), ("openvino", "f32")),    # asked, not native: f32 with the reason
    ("auto", "f32", "cpu", AVX512, ("bf16",), ("openvino", "f32")),
    ("auto", "auto", "cpu", NONE, None, ("torchscript", "f32")),      # OpenVINO missing
    ("torchscript", "auto", "cpu", AVX512, ("bf16",), ("torchscript", "f32")),
    ("torchscript", "bf16", "cpu", AVX512, ("bf16",), ("torchscript", "f32")),
    ("auto", "auto", "cuda", AVX512, ("bf16",), ("torchscript", "f32")),  # GPUs keep TorchScript
])
def test_choose(engine, precision, device, caps, gated, expected):
    got_engine, got_precision, reason = choose(engine, precision, device, caps, gated=gated)
    assert (got_engine, got_precision) == expected and reason


def test_choose_says_why_a_precision_fell_back():
    assert "no native bf16" in choose("openvino", "bf16", "cpu", AVX2)[2]
    assert "accuracy gate" in choose("openvino", "bf16", "cpu", AVX512, gated=())[2]


@pytest.mark.parametrize("engine,precision,device,caps", [
    ("openvino", "auto", "cpu", NONE),     # asked for, not installed
    ("openvino", "auto", "cuda", AVX512),  # OpenVINO runs on the CPU only
    ("tensorrt", "auto", "cpu", AVX512),
    ("auto", "fp8", "cpu", AVX512),
])
def test_choose_refuses_what_cannot_run(engine, precision, device, caps):
    with pytest.raises(EngineError):
        choose(engine, precision, device, caps)


def test_the_environment_overrides_the_archive():
    record = {"requested_engine": "openvino", "requested_precision": "bf16"}
    assert engines.requested(record, environ={}) == ("openvino", "bf16")
    assert engines.requested(record, environ={engines.ENGINE_ENV: "torchscript"}) == ("torchscript", "bf16")
    assert engines.requested(None, environ={}) == ("auto", "auto")


def test_cpu_capabilities_come_from_openvino():
    caps = engines.cpu_capabilities()
    assert "FP32" in caps  # OpenVINO is a pinned dependency, so it is installed and sees this CPU


def test_gate_failure():
    reference = {"accuracy": 0.990, "log_loss": 0.040}
    assert engines.gate_failure(reference, {"accuracy": 0.989, "log_loss": 0.043}, 0.002, 0.005) is None
    assert "accuracy" in engines.gate_failure(reference, {"accuracy": 0.985, "log_loss": 0.040}, 0.002, 0.005)
    assert "log loss" in engines.gate_failure(reference, {"accuracy": 0.990, "log_loss": 0.050}, 0.002, 0.005)


@pytest.fixture(scope="module")
def lite0_and_photo():
    import numpy as np

    from training.synthetic import draw_image

    net = build_model("efficientnet_lite0", 2, "package").eval()
    meta = {"image_size": 224, "resize_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    images = [draw_image(kind, 224, np.random.default_rng(seed))[0] for kind, seed in (("cat", 1), ("dog", 2))]
    batch = torch.stack([eval_geometry(meta)(image) for image in images])  # uint8, as the handler batches them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.freeze(torch.jit.trace(net, eval_normalize(meta)(batch)))
    return net, scripted, batch, meta


@pytest.mark.slow
@pytest.mark.parametrize("engine,precision,tolerance", [("torchscript", "f32", 1e-4), ("openvino", "f32", 1e-4),
                                                         ("openvino", "bf16", 3e-2)])
def test_each_engine_matches_torchscript_on_a_real_looking_image(lite0_and_photo, engine, precision, tolerance):
    if precision == "bf16" and "BF16" not in engines.cpu_capabilities():
        pytest.skip("this CPU has no native bf16")
    _, scripted, batch, meta = lite0_and_photo
    with torch.no_grad():
        expected = torch.softmax(scripted(eval_normalize(meta)(batch)), 1)
    # uint8 in, normalised inside (OpenVINO: in its compiled graph), as the handler and the trunk pass run it
    forward = engines.compile_forward(scripted, batch[:1], engine, precision, normalize=meta)
    for n in (1, 2):  # the OpenVINO model's batch dimension is dynamic
        got = torch.softmax(forward(batch[:n]), 1)
        assert (got - expected[:n]).abs().max() < tolerance


@pytest.mark.slow
def test_an_engine_that_disagrees_is_refused(lite0_and_photo, monkeypatch):
    """compile_forward checks the compiled model against the module: a conversion that changed the network
    (here: weights scaled after conversion) is an EngineError, never a silently different model."""
    net, _, batch, meta = lite0_and_photo
    original = engines.openvino_model

    def broken(module, example, normalize=None):
        ov_model = original(module, example, normalize)
        import openvino as ov
        from openvino import opset13 as ops

        result = ov_model.get_results()[0]
        scaled = ops.multiply(result.input_value(0), ops.constant(3.0, ov.Type.f32))
        return ov.Model([scaled], ov_model.get_parameters(), "broken")

    monkeypatch.setattr(engines, "openvino_model", broken)
    with pytest.raises(EngineError, match="differs from TorchScript"):
        engines.compile_forward(net, batch, "openvino", "f32", normalize=meta)


@pytest.mark.slow
def test_the_trunk_pass_takes_the_fastest_engine_within_its_tolerance(lite0_and_photo):
    """training.train.trunk_forward: the choose() pick when it agrees with torch within the tolerance, else OpenVINO
    f32, else TorchScript; whichever it returns computes the trunk's outputs within that tolerance."""
    from training.train import split_model, trunk_forward

    if not engines.openvino_available():
        pytest.skip("OpenVINO not installed")
    net, _, batch, meta = lite0_and_photo
    trunk = split_model(net, 0)[0].eval()
    with torch.no_grad():
        expected = trunk(eval_normalize(meta)(batch))
    pick = " ".join(choose("auto", "auto", "cpu", engines.cpu_capabilities())[:2])
    for tolerance, wanted in ((1.0, pick), (0.01, "openvino f32"), (-1.0, "torchscript f32")):
        forward, name = trunk_forward(trunk, batch, meta, torch.device("cpu"), "auto", tolerance)
        assert name == wanted, (tolerance, name)
        error = engines.check_agreement(forward(batch), expected, max(tolerance, 1e-3), name)
        assert error <= max(tolerance, 1e-3)


def test_agreement_is_absolute_for_small_outputs_and_relative_for_large_ones():
    """An uncertain classifier's logits sit near 0: 0.03 off there is agreement, not a broken conversion; a trunk's
    large outputs 50 % off is not."""
    near_zero = torch.tensor([[0.02, -0.02]])
    assert engines.check_agreement(near_zero + 0.03, near_zero, 0.25, "small") < 0.05
    large = torch.full((1, 64), 10.0)
    assert engines.check_agreement(large * 1.1, large, 0.25, "large") == pytest.approx(0.1, rel=1e-3)
    with pytest.raises(EngineError, match="differs from TorchScript"):
        engines.check_agreement(large * 1.5, large, 0.25, "large")


@pytest.mark.slow
def test_the_export_refuses_a_reduced_precision_whose_conversion_disagrees(tmp_path, monkeypatch):
    """training.export.engine_record: a bf16 build that fails compile_forward's check is the gate refusing bf16
    (f32 is served), not a failed export; asked for explicitly (serve.precision: bf16), it stops the export."""
    from model.export import to_torchscript
    from training.export import EngineGateError, engine_record, example_batch
    from training.prepare import prepare
    from training.synthetic import generate

    generate(tmp_path / "images", ["cat", "dog"], 8, 64, 1, progress=False)
    prepare(tmp_path / "images", tmp_path / "prepared", ["cat", "dog"], resize_size=64, val_ratio=0.25,
            test_ratio=0.5, seed=1, max_pixels=40_000_000)
    meta = {"classes": ["cat", "dog"], "image_size": 64, "resize_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    example = example_batch(tmp_path / "prepared", meta)
    scripted = to_torchscript(build_model("resnet18", 2).eval(), eval_normalize(meta)(example))
    original = engines.compile_forward

    def bf16_disagrees(module, example, engine, precision, **kwargs):
        if precision == "bf16":
            raise EngineError("OpenVINO bf16 differs from TorchScript by 1.3e+00")
        return original(module, example, engine, precision, **kwargs)

    monkeypatch.setattr(engines, "compile_forward", bf16_disagrees)
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: frozenset({"FP32", "BF16"}))
    record = engine_record(scripted, example, tmp_path / "prepared", meta, {})
    assert record["gate"]["bf16"].startswith("refused: OpenVINO bf16 differs"), record["gate"]
    assert "bf16" not in record["gated"] and set(record["scores"]) == {"torchscript-f32", "openvino-f32"}
    with pytest.raises(EngineGateError, match="serve.precision bf16"):
        engine_record(scripted, example, tmp_path / "prepared", meta, {"precision": "bf16"})
