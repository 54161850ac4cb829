"""Device choice and mixed precision per device (no GPU here: CUDA/MPS availability is injected)."""
import pytest
import torch

from training.devices import Context, amp_dtype, select_device


@pytest.mark.parametrize("requested,cuda,mps,expected", [
    ("auto", True, False, "cuda:0"), ("auto", False, True, "mps"), ("auto", False, False, "cpu"),
    ("cpu", True, True, "cpu"), ("cuda", True, False, "cuda:0"), ("mps", False, True, "mps"),
])
def test_select_device(requested, cuda, mps, expected):
    assert str(select_device(requested, cuda_available=cuda, mps_available=mps)) == expected


def test_auto_on_this_machine_without_cuda_is_cpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert select_device("auto").type == "cpu"


def test_each_torchrun_process_gets_its_local_gpu():
    assert select_device("auto", local_rank=3, cuda_available=True, mps_available=False) == torch.device("cuda", 3)


def test_absent_or_unknown_device_is_an_actionable_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        select_device("cuda", cuda_available=False, mps_available=False)
    with pytest.raises(ValueError, match="MPS"):
        select_device("mps", cuda_available=False, mps_available=False)
    with pytest.raises(ValueError, match="auto, cpu, cuda, mps"):
        select_device("tpu")


def test_mixed_precision_per_device():
    cuda, cpu, mps = torch.device("cuda", 0), torch.device("cpu"), torch.device("mps")
    assert amp_dtype("auto", cuda, cuda_bf16=True) == torch.bfloat16
    assert amp_dtype("auto", cuda, cuda_bf16=False) == torch.float16
    assert amp_dtype("fp16", cuda, cuda_bf16=True) == torch.float16
    assert amp_dtype("auto", cpu) is None and amp_dtype("auto", mps) is None
    assert amp_dtype("bf16", cpu, cpu_bf16=True) == torch.bfloat16
    assert amp_dtype("bf16", cpu, cpu_bf16=False) is None  # emulated bf16 is slower than float32
    assert amp_dtype("off", cuda, cuda_bf16=True) is None
    with pytest.raises(ValueError, match="train.amp"):
        amp_dtype("int8", cpu)


def test_single_process_context_reduces_to_identity():
    ctx = Context(torch.device("cpu"))
    assert ctx.is_main and not ctx.distributed
    assert ctx.sum(1.5, 2) == [1.5, 2] and ctx.min(7) == 7
