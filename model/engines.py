"""Which engine runs the network's forward pass, and at which precision: chosen here, built from the TorchScript model.

    engine, precision, why = choose("auto", "auto", device, cpu_capabilities(), gated=meta_gate)
    forward = compile_forward(scripted, example, engine, precision)      # NCHW float batch -> logits (float32)

Engines: `torchscript` (torch.jit, model.runtime's fastest CPU form) and `openvino` (OpenVINO's CPU plugin, the
network converted from the same TorchScript module at load time). Precisions: `f32`, and `bf16` where the CPU
computes it natively (OpenVINO reports BF16 in its optimization capabilities: AVX-512 BF16 or AMX). Chosen by
measurement (`python -m benchmarks.engines`, docs/engines.md). A reduced precision is used only when the export
stage's accuracy gate measured it on the test split (model-meta.json "engine" -> gate); otherwise f32, with the
reason. This file travels in the .mar: it imports only torch, the standard library and (lazily) openvino.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

ENGINES = ("torchscript", "openvino")
PRECISIONS = ("f32", "bf16")
# Operators may override the archive's choice per worker (benchmarks compare engines on one archive this way).
ENGINE_ENV, PRECISION_ENV = "CATSDOGS_ENGINE", "CATSDOGS_PRECISION"


class EngineError(RuntimeError):
    """An engine was asked for that cannot run here, or its output disagrees with TorchScript's."""


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_capabilities() -> frozenset[str]:
    """OpenVINO's CPU optimization capabilities (FP32, BF16, INT8, ...): BF16 only with native support.
    Empty when OpenVINO is not installed."""
    if not openvino_available():
        return frozenset()
    import openvino as ov

    return frozenset(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def choose(engine: str, precision: str, device: str, capabilities, gated=None) -> tuple[str, str, str]:
    """(engine, precision, reason) to run on `device` ("cpu", "cuda", ...).

    `engine`: auto | torchscript | openvino; `precision`: auto | f32 | bf16. `capabilities`: cpu_capabilities()
    (empty = OpenVINO missing). `gated`: the reduced precisions the export stage's accuracy gate passed
    (None = no gate ran: every precision allowed, for benchmarks and training). Guarantees: never openvino off the
    CPU or without OpenVINO; never bf16 without BF16 in `capabilities` or without the gate's pass; an explicit
    engine that cannot run raises EngineError, an explicit precision that cannot falls back to f32 with the reason.
    """
    if engine not in ("auto", *ENGINES):
        raise EngineError(f"engine {engine!r}: use auto or one of {', '.join(ENGINES)}")
    if precision not in ("auto", *PRECISIONS):
        raise EngineError(f"precision {precision!r}: use auto or one of {', '.join(PRECISIONS)}")
    reasons = []
    if device != "cpu":
        if engine == "openvino":
            raise EngineError(f"engine openvino runs on the CPU only, the model is on {device}; use torchscript")
        return "torchscript", "f32", f"TorchScript on {device}"
    has_openvino = bool(capabilities)
    if engine == "openvino" and not has_openvino:
        raise EngineError("engine openvino asked for but OpenVINO is not installed (pip install openvino, "
                          "requirements.txt pins it)")
    if engine == "auto":
        engine = "openvino" if has_openvino else "torchscript"
        reasons.append("OpenVINO (measured fastest on CPUs)" if has_openvino else "TorchScript (OpenVINO missing)")
    if engine == "torchscript":
        if precision == "bf16":
            reasons.append("bf16 is served by OpenVINO only: f32")
        return "torchscript", "f32", "; ".join(reasons) or "TorchScript as asked"
    want_bf16 = precision in ("auto", "bf16")
    if want_bf16 and "BF16" not in capabilities:
        if precision == "bf16":
            reasons.append("bf16 asked for but this CPU has no native bf16 (OpenVINO capabilities "
                           f"{sorted(capabilities)}): f32")
        return engine, "f32", "; ".join(reasons + ["f32"])
    if want_bf16 and gated is not None and "bf16" not in gated:
        reasons.append("bf16 not used: the export's accuracy gate did not pass it (model-meta.json engine.gate): f32")
        return engine, "f32", "; ".join(reasons)
    if want_bf16:
        return engine, "bf16", "; ".join(reasons + ["bf16 (native on this CPU)"])
    return engine, "f32", "; ".join(reasons + ["f32 as asked"])


def requested(meta_engine: dict | None, environ=os.environ) -> tuple[str, str]:
    """(engine, precision) asked for: the environment override, else model-meta.json's "engine" (params.yaml
    serve.engine / serve.precision at export), else auto."""
    meta_engine = meta_engine or {}
    return (environ.get(ENGINE_ENV) or meta_engine.get("requested_engine") or "auto",
            environ.get(PRECISION_ENV) or meta_engine.get("requested_precision") or "auto")


@dataclass
class OpenVinoForward:
    """An OpenVINO compiled model called like a torch module: NCHW batch (of the model's input type) -> float32
    outputs."""
    compiled: object
    precision: str

    def __post_init__(self):
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: x.detach().contiguous().numpy()}, share_inputs=True)
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def openvino_model(module, example: torch.Tensor, normalize: dict | None = None):
    """The OpenVINO model converted from `module` (TorchScript or eager) for float batches like `example`, batch
    dimension dynamic. With `normalize` (a dict with "mean" and "std", model-meta.json's) it takes uint8 batches
    instead and runs model.preprocess.eval_normalize's arithmetic itself, (x / 255 - mean) / std per channel, in
    the compiled graph (OpenVINO's preprocessing API)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    shape = [-1, *example.shape[1:]]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        ov_model = ov.convert_model(module.eval(), example_input=example, input=[shape])
    if normalize is None:
        return ov_model
    ppp = PrePostProcessor(ov_model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0).mean(
        [float(m) for m in normalize["mean"]]).scale([float(s) for s in normalize["std"]])
    return ppp.build()


def compile_openvino(ov_model, precision: str, threads: int = 0) -> OpenVinoForward:
    """`ov_model` compiled for this CPU: latency mode (one stream, every thread on one request), `precision` as
    the inference precision hint, `threads` inference threads (0 = torch's thread count, which follows the
    handler's torch_threads and the container's CPU limit)."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision,
              "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
    return OpenVinoForward(ov.Core().compile_model(ov_model, "CPU", config), precision)


def leave_cores_to_openvino() -> int:
    """One torch thread from now on (returns the previous count): once OpenVINO's compiled model has its threads,
    torch only runs the preprocessing, and OpenMP threads of torch's that wait for work by spinning would compete
    with OpenVINO's for the cores (measured on 2 cores: a decode + resize + bf16 forward of one photo took 7.4 ms
    p50 with torch's 2 threads beside OpenVINO's, 3.8 ms with one; docs/engines.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    return before


def compile_forward(module, example: torch.Tensor, engine: str, precision: str, rtol: float | None = None,
                    normalize: dict | None = None, converted: dict | None = None):
    """A callable forward of `module` on `engine` at `precision`: NCHW batch -> outputs (float32).

    Without `normalize` it takes float batches like `example`. With `normalize` (model-meta.json's mean/std) it
    takes uint8 batches (model.preprocess.eval_geometry's output; `example` too) and normalises them as
    model.preprocess.eval_normalize does: OpenVINO inside its compiled graph, TorchScript in torch first.
    torchscript: model.runtime.for_cpu_inference on the CPU (any input layout), the module as is elsewhere.
    openvino: converted and compiled here. Checked on `example` (best a real batch) against the module
    (check_agreement): within `rtol`, by default 1e-3 for f32 and 0.25 for bf16, which catches a broken conversion
    but not a small loss of accuracy: whether a precision is accurate enough to serve is the export's test-split
    gate (training/export.py); callers that need closer agreement pass a smaller rtol. EngineError otherwise.
    `converted`: a dict the caller keeps to reuse one OpenVINO conversion when it tries several precisions."""
    from model.preprocess import eval_normalize
    from model.runtime import channels_last, for_cpu_inference

    to_float = eval_normalize(normalize) if normalize is not None else (lambda x: x)
    example_float = to_float(example)
    if engine == "torchscript":
        if example.device.type != "cpu":
            return lambda x: module.eval()(to_float(x))
        fast = for_cpu_inference(module, example_float)
        return lambda x: fast(channels_last(to_float(x)))
    if engine != "openvino":
        raise EngineError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    with torch.no_grad():
        expected = module.eval()(example_float).float()
    converted = {} if converted is None else converted
    if "openvino" not in converted:
        converted["openvino"] = openvino_model(module, example_float, normalize)
    forward = compile_openvino(converted["openvino"], precision)
    rtol = rtol if rtol is not None else 1e-3 if precision == "f32" else 0.25
    check_agreement(forward(example), expected, rtol, f"OpenVINO {precision}")
    return forward


def check_agreement(got: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> float:
    """The largest relative L2 error of one sample's outputs, |got - expected| / max(|expected|, 1) over each
    sample; EngineError when above `rtol`. Below a norm of 1 the error is absolute: an uncertain classifier's two
    logits can both be near 0, where a relative error would call a difference of 0.01 in a logit a broken
    conversion (trunk outputs have norms in the hundreds, so for them it is relative)."""
    diff, ref = (got.float() - expected.float()).flatten(1), expected.float().flatten(1)
    error = float((diff.norm(dim=1) / ref.norm(dim=1).clamp_min(1.0)).max())
    if error > rtol:
        raise EngineError(f"{what} differs from TorchScript by {error:.2e} (relative L2 error of a sample's "
                          f"outputs, > {rtol:.0e})")
    return error


def gate_failure(reference: dict, candidate: dict, max_accuracy_drop: float, max_log_loss_rise: float) -> str | None:
    """Why `candidate`'s test scores ({"accuracy", "log_loss"}) fail against the float reference's, or None when
    the accuracy is at most `max_accuracy_drop` lower and the log loss at most `max_log_loss_rise` higher."""
    failures = []
    drop = reference["accuracy"] - candidate["accuracy"]
    if drop > max_accuracy_drop:
        failures.append(f"accuracy {candidate['accuracy']:.4f} vs {reference['accuracy']:.4f} (drop {drop:.4f} > "
                        f"{max_accuracy_drop})")
    rise = candidate["log_loss"] - reference["log_loss"]
    if rise > max_log_loss_rise:
        failures.append(f"log loss {candidate['log_loss']:.4f} vs {reference['log_loss']:.4f} (rise {rise:.4f} > "
                        f"{max_log_loss_rise})")
    return "; ".join(failures) or None
