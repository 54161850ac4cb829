"""model/quantize.py on a tiny convolutional model: int8 TorchScript that loads like the float export."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model.quantize import agreement, preprocessed_batches, quantize_static
from tests.conftest import image_bytes
from tests.serving_helpers import BLUE, RED, throwaway_meta


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()


def test_quantized_model_is_torchscript_that_agrees_with_the_float_one(tmp_path):
    net = tiny_net()
    calibration = [torch.randn(16, 3, 32, 32) for _ in range(4)]
    int8 = quantize_static(net, calibration, torch.randn(1, 3, 32, 32))
    torch.jit.save(int8, str(tmp_path / "model.pt"))
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    held_out = [torch.randn(32, 3, 32, 32) for _ in range(4)]
    assert loaded(torch.randn(5, 3, 32, 32)).shape == (5, 2)  # any batch size, float input
    assert agreement(net, loaded, held_out) >= 0.9
    assert "quantized" in str(loaded.graph) or any("quantized" in str(m.graph) for m in loaded.modules())
    assert isinstance(net[0], nn.Conv2d) and net[0].weight.dtype == torch.float32  # input model untouched


def test_empty_calibration_is_refused():
    with pytest.raises(ValueError, match="calibration"):
        quantize_static(tiny_net(), [], torch.randn(1, 3, 32, 32))


def test_preprocessed_batches_use_the_serving_transform():
    meta = throwaway_meta(image_size=24, resize_size=28)
    batches = list(preprocessed_batches([image_bytes(RED), image_bytes(BLUE), image_bytes(RED)], meta, batch_size=2))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 24, 24), (1, 3, 24, 24)]
    assert batches[0][0, 0].mean() > batches[0][0, 2].mean()  # red image: red channel above blue


def test_static_padding_gives_timm_tf_same_convolutions_fixed_pads():
    timm = pytest.importorskip("timm")
    from timm.layers.conv2d_same import Conv2dSame

    from model.quantize import static_padding

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2).eval()
    assert any(isinstance(m, Conv2dSame) for m in net.modules())
    x = torch.randn(1, 3, 64, 64)
    fixed = static_padding(net, x)
    assert not any(isinstance(m, Conv2dSame) for m in fixed.modules())
    assert any(isinstance(m, Conv2dSame) for m in net.modules())  # the input model is untouched
    with torch.no_grad():
        assert torch.allclose(fixed(x), net(x), atol=1e-6)
    torch.fx.symbolic_trace(fixed)  # FX-traceable now (what quantize_static needs)
