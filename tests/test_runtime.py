"""model/runtime.py: the CPU inference form (channels_last + freeze, + optimize_for_inference on one thread)
answers as the exported model does."""
from __future__ import annotations

import os
import sys
import threading

import pytest
import torch
from torch import nn

from model.runtime import (
    channels_last,
    for_cpu_inference,
    lowered_priority,
    reuse_freed_memory,
)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 2)).eval()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("scripted", [False, True])
def test_for_cpu_inference_matches_the_original(scripted, threads):
    net = small_net()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
    model = torch.jit.trace(small_net(), x) if scripted else small_net()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = for_cpu_inference(model, x[:2])
    finally:
        torch.set_num_threads(before)
    # one thread: oneDNN's prepacked convolutions (optimize_for_inference); more: ATen's, frozen
    assert ("prim::mkldnn_convolution" in str(fast.graph)) == (threads == 1)
    assert isinstance(fast, torch.jit.ScriptModule)
    with torch.no_grad():
        got = fast(channels_last(x))
    assert torch.allclose(got, expected, atol=1e-5)
    assert "prim::GetAttr" not in str(fast.graph)  # frozen: weights are constants


def test_a_wrong_result_is_refused(monkeypatch):
    other = small_net()
    with torch.no_grad():
        other[-1].bias += 1.0  # a different model of the same shape
    monkeypatch.setattr(torch.jit, "freeze", lambda _m: other)
    with pytest.raises(RuntimeError, match="differs"):
        for_cpu_inference(small_net(), torch.randn(2, 3, 32, 32))


def test_channels_last_keeps_shape_and_values():
    x = torch.randn(2, 3, 8, 8)
    y = channels_last(x)
    assert y.shape == x.shape and torch.equal(x, y) and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_malloc_settings_are_accepted_by_glibc():
    assert reuse_freed_memory(False) is True
    assert reuse_freed_memory() is True


def priorities() -> dict[int, int]:
    return {int(tid): os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir("/proc/self/task")}


def run_in_thread(fn):
    """Run fn in a fresh thread (its own nice value on Linux) and return its result."""
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_lowered_priority_covers_threads_started_inside_and_is_undone():
    def body():
        base = os.getpriority(os.PRIO_PROCESS, 0)
        started = threading.Event()
        stop = threading.Event()
        with lowered_priority(19) as lowered:
            inside = priorities()
            helper = threading.Thread(target=lambda: (started.set(), stop.wait()))  # like an OpenMP thread
            helper.start()
            started.wait()
            helper_inside = os.getpriority(os.PRIO_PROCESS, helper.native_id)
            policy_inside = {os.sched_getscheduler(tid) for tid in priorities()}
        after = priorities()
        policy_after = {os.sched_getscheduler(tid) for tid in after}
        stop.set()
        helper.join()
        return base, lowered, inside, helper_inside, after, helper.native_id, policy_inside, policy_after

    policy = os.sched_getscheduler(0)
    base, lowered, inside, helper_inside, after, helper_tid, policy_inside, policy_after = run_in_thread(body)
    assert lowered is True
    assert set(inside.values()) == {19}
    assert helper_inside == 19
    assert policy_inside == {os.SCHED_IDLE}  # nice 19: only the CPU nothing else wants
    assert after[helper_tid] == base and set(after.values()) == {base}
    assert policy_after == {policy}


def test_lowered_priority_does_nothing_when_it_could_not_be_undone(monkeypatch):
    from model import runtime

    monkeypatch.setattr(runtime, "can_restore_priority", lambda nice: False)

    def body():
        with lowered_priority(19) as lowered:
            return lowered, os.getpriority(os.PRIO_PROCESS, 0)

    lowered, inside = run_in_thread(body)
    assert lowered is False and inside == run_in_thread(lambda: os.getpriority(os.PRIO_PROCESS, 0))
    with lowered_priority(0) as lowered:
        assert lowered is False
