"""benchmarks/engines.py: the numbers it derives, the docs block it writes, the bounded build, one run end to end
(no speed is asserted anywhere)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch

from benchmarks import engines
from benchmarks.report import write_block


def report(**overrides) -> dict:
    """A results dict shaped like main()'s."""
    base = {"measured_at": "2026-01-01 00:00 UTC", "load": {"before": 0.4, "after": 1.5},
            "conditions": {"cpu": "Test CPU 9000", "cores": 2, "flags": ["avx2", "avx512_bf16"], "gpu": "no GPU",
                           "torch": "2.14.1"},
            "model": {"arch": "tiny", "image_size": 32, "pretrained": "none", "version": "t.1"},
            "model_dir": "m", "data": "p", "threads": 2,
            "rounds": 1, "seconds": 0.2, "openvino": {"device": "Test CPU 9000", "capabilities": ["BF16", "FP32"]},
            "packages": {"torch": "2.14.1", "onnxruntime": None}, "calibration_images": 300,
            "variants": [
                {"variant": "torchscript", "status": "built", "reason": "", "build_s": 0.5,
                 "test": {"n": 10, "accuracy": 0.9, "log_loss": 0.25, "agreement": 1.0, "max_prob_diff": 0.0}},
                {"variant": "onnxruntime", "status": "skipped", "reason": "onnxruntime not installed"},
                {"variant": "aoti", "status": "did not build", "reason": "not built within 1 s", "build_s": 1.0}],
            "speed": [{"variant": "torchscript", "mode": "forward", "batch_size": 1, "images_per_s": 50.0,
                       "p50_ms": 20.0, "rounds_images_per_s": [50.0], "rounds_p50_ms": [20.0], "vs_torchscript": 1.0},
                      {"variant": "torchscript", "mode": "decode", "batch_size": 8, "images_per_s": 40.0,
                       "p50_ms": 200.0, "rounds_images_per_s": [40.0], "rounds_p50_ms": [200.0],
                       "vs_torchscript": None}]}
    return {**base, **overrides}


def test_summarise_gives_medians_over_rounds_and_keeps_every_round():
    rounds = [[0.1, 0.1], [0.2, 0.3, 0.1], [0.05, 0.05, 0.05, 0.05]]   # 4 batches of 2 in 0.2 s, ...
    s = engines.summarise(rounds, batch=4)
    assert s["rounds_images_per_s"] == [40.0, 20.0, 80.0]
    assert s["images_per_s"] == 40.0
    assert s["rounds_p50_ms"] == [100.0, 200.0, 50.0] and s["p50_ms"] == 100.0


def test_ratios_compare_with_torchscript_at_the_same_mode_and_batch():
    rows = [{"variant": "torchscript", "mode": "forward", "batch_size": 1, "images_per_s": 50.0},
            {"variant": "torchscript", "mode": "forward", "batch_size": 8, "images_per_s": 100.0},
            {"variant": "openvino-f32", "mode": "forward", "batch_size": 1, "images_per_s": 75.0},
            {"variant": "openvino-f32", "mode": "forward", "batch_size": 8, "images_per_s": 150.0},
            {"variant": "openvino-f32", "mode": "decode", "batch_size": 1, "images_per_s": 30.0}]
    ratios = [r["vs_torchscript"] for r in engines.with_ratios(rows)]
    assert ratios == [1.0, 1.0, 1.5, 1.5, None]        # no torchscript decode row: no ratio, not a made-up one


def test_quality_against_labels_and_the_reference():
    labels = torch.tensor([0, 1, 1, 0])
    reference = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    proba = torch.tensor([[0.8, 0.2], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    q = engines.quality(proba, labels, reference, ["cat", "dog"])
    assert q["n"] == 4 and q["accuracy"] == 0.75 and q["agreement"] == 0.75
    assert q["max_prob_diff"] == pytest.approx(0.2)
    expected_loss = -(math.log(0.8) + math.log(0.8) + math.log(0.4) + math.log(0.7)) / 4
    assert q["log_loss"] == pytest.approx(expected_loss, abs=1e-4)
    assert engines.quality(reference, labels, reference, ["cat", "dog"])["max_prob_diff"] == 0.0


def test_torchscript_always_runs_first_as_the_reference():
    assert engines.selected(["aoti", "torch-int8", "openvino-f32"]) == ["torchscript", "openvino-f32", "torch-int8",
                                                                         "aoti"]
    assert engines.selected(list(engines.VARIANTS)) == list(engines.VARIANTS)


def test_spread_picks_evenly_and_never_more_than_there_are():
    assert engines.spread(list(range(10)), 3) == [0, 3, 6]
    assert engines.spread(list(range(2)), 5) == [0, 1]


def test_render_states_conditions_and_every_variant_with_its_reason():
    block = "\n".join(engines.render(report()))
    assert "Test CPU 9000" in block and "avx512_bf16" in block and "BF16, FP32" in block
    assert "onnxruntime not installed" in block                   # packages: missing ones named
    assert "| onnxruntime | skipped |" in block and "| aoti | did not build |" in block
    assert "| torchscript | built | 0.5 | 0.9 | 0.25 | 1.0 | 0.0 |" in block
    assert "| torchscript | 1 | 50.0 | x1.0 | 20.0 | 50.0 |" in block
    assert "| torchscript | 8 | 40.0 | n/a | 200.0 | 40.0 |" in block
    assert "0.4 before the run, 1.5 after" in block
    assert "calibrated on 300" in block
    assert "calibrated on" not in "\n".join(engines.render(report(calibration_images=0)))


def test_the_docs_block_replaces_only_itself(tmp_path):
    doc = tmp_path / "engines.md"
    doc.write_text(f"# Engines\n\nintro\n\n{engines.START}\nold numbers\n{engines.END}\n\n## Why these packages\n"
                   "kept\n")
    write_block(doc, engines.render(report()), engines.BLOCK)
    text = doc.read_text()
    assert "old numbers" not in text and text.count(engines.START) == 1 and text.count(engines.END) == 1
    assert text.startswith("# Engines\n\nintro\n") and text.endswith("## Why these packages\nkept\n")
    assert "Test CPU 9000" in text


def test_error_summary_names_the_error_line():
    output = "compiling\nTraceback (most recent call last):\n  File x\nRuntimeError: gcc failed\nW1207 warning\n"
    assert engines.error_summary(output, 1) == "RuntimeError: gcc failed"
    assert engines.error_summary("just this\n", 2) == "just this"
    assert engines.error_summary("", 3) == "exit status 3, no output"
    assert len(engines.error_summary("ValueError: " + "x" * 1000, 1)) == 300


def test_a_build_past_its_timeout_is_killed_and_reported():
    with pytest.raises(engines.BuildError, match="not built within 1 s"):
        engines.run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    with pytest.raises(engines.BuildError, match="ValueError: no"):
        engines.run_bounded([sys.executable, "-c", "raise ValueError('no')"], timeout=60)


def test_build_turns_failures_into_rows_except_for_the_reference():
    def skip():
        raise engines.Skipped("no native bf16")

    def broken():
        raise RuntimeError("converter failed")

    builders = {"openvino-bf16": skip, "onnxruntime": broken, "torchscript": broken, "aoti": lambda: "forward"}
    assert engines.build("openvino-bf16", builders)["status"] == "skipped"
    row = engines.build("onnxruntime", builders)
    assert row["status"] == "did not build" and row["reason"] == "RuntimeError: converter failed"
    assert engines.build("aoti", builders)["forward"] == "forward"
    with pytest.raises(RuntimeError):
        engines.build("torchscript", builders)


@pytest.mark.slow
def test_end_to_end_on_a_tiny_model(tmp_path):
    from tests.test_deploy import red_blue_model

    model_dir, prepared = red_blue_model(tmp_path)
    out, doc = tmp_path / "engines.json", tmp_path / "engines.md"
    assert engines.main(["--model-dir", str(model_dir), "--prepared", str(prepared), "--seconds", "0.2",
                         "--rounds", "1", "--batches", "1", "--decode-batches", "1", "--engines", "torchscript",
                         "torchscript-plain", "openvino-f32", "torch-int8", "onnxruntime", "--out", str(out),
                         "--docs", str(doc)]) == 0
    r = json.loads(out.read_text())
    variants = {v["variant"]: v for v in r["variants"]}
    assert list(variants) == ["torchscript", "torchscript-plain", "openvino-f32", "torch-int8", "onnxruntime"]
    has_ort = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    expected = {"torchscript": "built", "torchscript-plain": "built",
                "openvino-f32": "built" if engines.openvino_available() else "skipped",
                "torch-int8": "skipped", "onnxruntime": "built" if has_ort else "skipped"}
    assert {name: v["status"] for name, v in variants.items()} == expected
    assert "needs the training checkpoint" in variants["torch-int8"]["reason"]     # no train dir beside the model
    for v in variants.values():
        if v["status"] == "built":     # the red-vs-blue model gets its whole test split right
            assert v["test"]["accuracy"] == 1.0 and v["test"]["agreement"] == 1.0 and v["test"]["n"] == 16
            assert 0 <= v["test"]["log_loss"] < 0.7 and v["test"]["max_prob_diff"] < 1e-3
    assert variants["torchscript"]["test"]["max_prob_diff"] == 0.0     # the reference against itself
    built = [name for name, v in variants.items() if v["status"] == "built"]
    assert sorted((s["variant"], s["mode"], s["batch_size"]) for s in r["speed"]) == sorted(
        (name, mode, 1) for name in built for mode in ("forward", "decode"))
    assert all(s["images_per_s"] > 0 and len(s["rounds_images_per_s"]) == 1 for s in r["speed"])
    assert r["conditions"]["cpu"] and r["packages"]["torch"] and r["threads"] == torch.get_num_threads()
    text = doc.read_text()
    assert engines.START in text and "| openvino-f32 |" in text and r["conditions"]["cpu"] in text
