"""benchmarks/serving.py and benchmarks/train_real_data.py: what they derive from wrk's output and their rounds, the
docs blocks they write (no server is started, nothing is timed)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import serving, train_real_data
from catsdogs.contract import MODEL_DIR

WRK_LINE = ('WRK_RESULT {"requests": 300, "duration_us": 15000000, "connect": 0, "read": 1, "write": 0, "status": 2, '
            '"timeout": 0, "p50_us": 8000, "p95_us": 12500, "p99_us": 20000, "max_us": 1200000, "over_1s": 1}')


def runs(rounds: int = 2) -> tuple[list[dict], list[dict]]:
    """In-process and served rows as measure() returns them: auto twice TorchScript's throughput."""
    inproc = [{"engine": e, "runs_on": f"{e} f32", "threads": 2, "batch_size": b, "images_per_s": 10.0 * b + i,
               "p50_ms": 5.0 + i, "p95_ms": 7.0, "p99_ms": 9.0, "round": i}
              for i in range(rounds) for e in ("torchscript", "auto") for b in (1, 8)]
    served = [{"workers": 1, "threads": 0, "batch_size": 8, "max_batch_delay": 1, "engine": e, "concurrency": c,
               "requests": 100, "failed": 0, "requests_per_s": (2 if e == "auto" else 1) * 50.0, "p50_ms": 7.0 + i,
               "p95_ms": 8.0, "p99_ms": 10.0, "max_ms": 12.0, "over_1s": 0, "round": i}
              for i in range(rounds) for e in ("torchscript", "auto") for c in (1, 16)]
    return inproc, served


def test_wrk_result_line_is_parsed():
    row = serving.parse_wrk(f"Running 15s test\n{WRK_LINE}\n", 4)
    assert row["concurrency"] == 4 and row["requests"] == 300 and row["requests_per_s"] == 20.0
    assert row["failed"] == 3 and row["errors"]["status"] == 2
    assert (row["p50_ms"], row["p95_ms"], row["p99_ms"], row["max_ms"], row["over_1s"]) == (8.0, 12.5, 20.0, 1200.0, 1)
    with pytest.raises(RuntimeError, match="no WRK_RESULT"):
        serving.parse_wrk("wrk: connection refused\n", 4)


def test_wrk_gets_the_payload_and_key_through_its_environment(tmp_path):
    command, env = serving.wrk_command("http://127.0.0.1:1/predictions/m", "KEY", tmp_path / "p.jpg", 16, 15)
    assert command[:4] == ["wrk", "-t1", "-c16", "-d15s"] and command[-1] == "http://127.0.0.1:1/predictions/m"
    assert env["WRK_TOKEN"] == "KEY" and env["WRK_BODY"] == str(tmp_path / "p.jpg")


def test_configurations():
    assert serving.parse_config("2:1:8:10") == {"workers": 2, "threads": 1, "batch_size": 8, "max_batch_delay": 10}
    assert set(serving.committed_config()) == {"workers", "threads", "batch_size", "max_batch_delay"}


def test_medians_over_rounds_and_the_targets_of_each_round():
    inproc, served = runs()
    baseline = serving.medians(inproc, ("engine", "batch_size"), ("p50_ms",))
    assert {"engine": "auto", "batch_size": 1, "p50_ms": 5.5, "rounds": 2} in baseline
    results = serving.medians(served, ("engine", *serving.CONFIG_KEYS, "concurrency"), ("requests_per_s", "p50_ms"))
    v = serving.verdict(baseline, results, inproc, served, None)
    assert v["configs"] == [{"config": "W1:T0:B8:D1", "c1_gap_ms": 2.0, "c16_ratio": 2.0}]
    assert [r["configs"][0]["c1_gap_ms"] for r in v["per_round"]] == [2.0, 2.0] and "swap" not in v


def test_render_names_the_command_the_numbers_and_the_swap():
    inproc, served = runs()
    baseline = serving.medians(inproc, ("engine", "runs_on", "threads", "batch_size"),
                               ("images_per_s", "p50_ms", "p95_ms", "p99_ms"))
    results = serving.medians(served, ("engine", *serving.CONFIG_KEYS, "concurrency"),
                              ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "failed"))
    window = serving.parse_wrk(WRK_LINE, 8)
    swap = {"connections": 8, "steady_seconds": 30, "steady": window, "swap": window, "p99_ratio": 1.0,
            "steps": {"deploy": {"seconds": 21.5, "exit": 0}, "rollback": {"seconds": 0.5, "exit": 0}}}
    report = {"conditions": {"cpu": "Test CPU 9000", "cores": 2, "flags": [], "gpu": "no GPU", "torch": "2.x"},
              "load": {"before": 0.1, "after": 0.2}, "payload": "a JPEG", "capabilities": ["BF16"],
              "in_process": baseline, "served": results, "swap": swap,
              "verdict": serving.verdict(baseline, results, inproc, served, swap)}
    args = argparse.Namespace(model_dir=MODEL_DIR, configs=None, set=[], handler=[], concurrency=[1, 16], seconds=15,
                              warmup=15, rounds=2, engines=["torchscript", "auto"])
    meta = {"arch": "tiny", "image_size": 32, "pretrained": "none", "version": "t.1"}
    text = "\n".join(serving.render(report, meta, args))
    assert "Written by `make benchmark-serving` (" in text and "Test CPU 9000" in text
    assert "| auto | auto f32 | 2 | 1 | 10.5 | 5.5 | 7.0 | 9.0 |" in text
    assert "| auto | 1 | all (2) | 8 | 1 | 16 | 100.0 | 7.5 | 8.0 | 10.0 | 0.0 |" in text
    assert "W1:T0:B8:D1: concurrency-16 throughput 2.0x TorchScript's (rounds: 2.0, 2.0)" in text
    assert "deploy 21.5 s, rollback 0.5 s" in text and "failed 3 (target 0), over 1 s 1 (target 0)" in text
    args = argparse.Namespace(**{**vars(args), "model_dir": Path("x/model"), "configs": ["2:1:8:10"],
                                 "handler": ["optimize=false"]})
    first = serving.render(report, meta, args)[2]
    assert first.startswith("Written by `python -m benchmarks.serving --configs 2:1:8:10 --handler optimize=false` "
                            "with `--model-dir x/model` (")


def test_training_benchmark_latency_is_the_serving_benchmarks_in_process_run(monkeypatch):
    calls = []

    def in_process(model_dir, data, engine, batch_size, threads, seconds):
        calls.append((engine, batch_size))
        return {"runs_on": "openvino bf16", "images_per_s": 100.0 * batch_size, "p50_ms": 4.0 * batch_size,
                "p95_ms": 6.0 * batch_size, "p99_ms": 9.0}

    monkeypatch.setattr(serving, "in_process", in_process)
    row = train_real_data.latency(Path("m"), b"jpeg")
    assert calls == [(None, 1), (None, 8)]          # None: the engine the archive asks for, as served
    assert row["engine"] == "openvino bf16" and row["end_to_end_p50_ms"] == 4.0 and row["end_to_end_p95_ms"] == 6.0
    assert row["batch8_img_s"] == 800.0


def test_training_benchmark_renders_every_recorded_run():
    recorded = json.loads(train_real_data.RESULTS.read_text())
    text = "\n".join(train_real_data.render(recorded))
    assert all(f"| {r['label']} |" in text and f"- **{r['label']}**" in text for r in recorded)
    new = {**recorded[-1], "label": "new", "latency": {"engine": "openvino bf16", "end_to_end_p50_ms": 4.0,
                                                        "end_to_end_p95_ms": 6.0, "batch8_img_s": 321.0}}
    assert "| openvino bf16 | 4.0 ms | 321.0 |" in "\n".join(train_real_data.render([new]))
