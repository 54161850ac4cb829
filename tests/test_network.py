"""Model construction, forward shapes, TorchScript parity (weights sources: tests/test_weights.py)."""
import pytest
import torch

from catsdogs.contract import INDEX_TO_NAME_FILE, read_meta, write_meta
from model.export import check_parity, to_torchscript
from model.network import build_model, with_tta


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_0",
                                  "efficientnet_lite0"])
def test_forward_shape_has_one_logit_per_class(arch):
    net = build_model(arch, 2, pretrained="none").eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_unknown_arch_is_an_actionable_error():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet9000", 2, "none")
    with pytest.raises(ValueError, match="none, torchvision, package, file"):
        build_model("resnet18", 2, "auto")


def test_torchscript_matches_eager_and_metadata_roundtrips(tmp_path):
    net = build_model("resnet18", 2, "none").eval()
    batch = torch.randn(4, 3, 48, 48)
    scripted = to_torchscript(net, batch)
    assert check_parity(net, scripted, torch.randn(3, 3, 48, 48)) < 1e-4
    torch.jit.save(scripted, str(tmp_path / "model.pt"))
    assert torch.jit.load(str(tmp_path / "model.pt"))(batch).shape == (4, 2)
    meta = {"classes": ["cat", "dog"], "image_size": 48, "resize_size": 55, "mean": [0.5] * 3, "std": [0.2] * 3,
            "version": "1.abc"}
    write_meta(meta, tmp_path)
    assert read_meta(tmp_path / "model-meta.json") == meta
    assert (tmp_path / INDEX_TO_NAME_FILE).read_text().count("dog") == 1


def test_parity_check_detects_a_different_model():
    a, b = build_model("resnet18", 2, "none").eval(), build_model("resnet18", 2, "none").eval()
    with torch.no_grad():
        b.fc.bias += 5
    with pytest.raises(RuntimeError, match="differs"):
        check_parity(a, torch.jit.trace(b, torch.randn(1, 3, 32, 32)), torch.randn(2, 3, 32, 32))


def test_mirror_tta_averages_the_probabilities_of_the_image_and_its_mirror():
    net = build_model("resnet18", 2).eval()
    tta = with_tta(net, "mirror").eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = (torch.softmax(net(x), 1) + torch.softmax(net(x.flip(-1)), 1)) / 2
        got = torch.softmax(tta(x), 1)
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(torch.softmax(tta(x.flip(-1)), 1), got, atol=1e-6)  # mirror-invariant by design
    assert with_tta(net, "none") is net
    with pytest.raises(ValueError, match="model.tta"):
        with_tta(net, "rotate")


def test_mirror_tta_survives_torchscript_export():
    net = with_tta(build_model("resnet18", 2).eval(), "mirror").eval()
    x = torch.rand(2, 3, 64, 64)
    scripted = to_torchscript(net, x)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)
