"""Model construction, forward shapes, the pretrained-weights policy offline, TorchScript parity."""
import pytest
import torch
from torchvision import models

from model.export import (
    INDEX_TO_NAME_FILE,
    check_parity,
    read_metadata,
    to_torchscript,
    write_metadata,
)
from model.network import PretrainedUnavailable, build_model


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_0"])
def test_forward_shape_has_one_logit_per_class(arch):
    net = build_model(arch, 2, pretrained="false").eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_unknown_arch_is_an_actionable_error():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet9000", 2, "false")


@pytest.fixture
def offline(monkeypatch):
    """Make every weights download fail the way it does without internet."""
    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(models._api, "load_state_dict_from_url", refuse)


def test_pretrained_auto_falls_back_to_random_init_offline(offline, caplog):
    net = build_model("resnet18", 2, pretrained="auto")
    assert net.fc.out_features == 2
    assert "falling back to random initialisation" in caplog.text


def test_pretrained_true_fails_clearly_offline(offline):
    with pytest.raises(PretrainedUnavailable, match="model.pretrained: false"):
        build_model("resnet18", 2, pretrained="true")


def test_pretrained_true_uses_imagenet_weights_when_downloadable(monkeypatch):
    weights = models.get_model_weights("resnet18").DEFAULT
    reference = models.resnet18().state_dict()
    monkeypatch.setattr(models._api, "load_state_dict_from_url", lambda *a, **k: reference)
    net = build_model("resnet18", 2, pretrained="true")
    assert torch.equal(net.conv1.weight, reference["conv1.weight"]), weights


def test_torchscript_matches_eager_and_metadata_roundtrips(tmp_path):
    net = build_model("resnet18", 2, "false").eval()
    batch = torch.randn(4, 3, 48, 48)
    scripted = to_torchscript(net, batch)
    assert check_parity(net, scripted, torch.randn(3, 3, 48, 48)) < 1e-4
    torch.jit.save(scripted, str(tmp_path / "model.pt"))
    assert torch.jit.load(str(tmp_path / "model.pt"))(batch).shape == (4, 2)
    meta = {"classes": ["cat", "dog"], "image_size": 48, "resize_size": 55, "mean": [0.5] * 3, "std": [0.2] * 3,
            "version": "1.abc"}
    write_metadata(meta, tmp_path)
    assert read_metadata(tmp_path / "model-meta.json") == meta
    assert (tmp_path / INDEX_TO_NAME_FILE).read_text().count("dog") == 1


def test_parity_check_detects_a_different_model():
    a, b = build_model("resnet18", 2, "false").eval(), build_model("resnet18", 2, "false").eval()
    with torch.no_grad():
        b.fc.bias += 5
    with pytest.raises(RuntimeError, match="differs"):
        check_parity(a, torch.jit.trace(b, torch.randn(1, 3, 32, 32)), torch.randn(2, 3, 32, 32))
