"""Presets: params.yaml's model/train sections are the `pretrained` preset; switching keeps everything else."""
import pytest
import yaml

from tests.conftest import ROOT
from training import presets
from training.__main__ import main
from training.params import check_params


def test_params_yaml_is_the_pretrained_preset():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    preset = presets.load("pretrained")
    assert {s: params[s] for s in presets.SECTIONS} == preset


@pytest.mark.parametrize("name", presets.available())
def test_every_preset_is_valid_params(name):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(presets.load(name))
    check_params(params, name)


def test_preset_command_switches_and_back_keeping_other_sections_and_comments(tmp_path, capsys):
    original = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(original)
    assert main(["--params", str(path), "preset", "scratch"]) == 0
    switched = yaml.safe_load(path.read_text())
    assert switched["model"]["arch"] == "resnet18" and switched["train"]["recipe"] == "scratch"
    assert switched["data"] == yaml.safe_load(original)["data"] and "# Single source of truth" in path.read_text()
    assert main(["--params", str(path), "preset", "pretrained"]) == 0
    assert yaml.safe_load(path.read_text()) == yaml.safe_load(original)
    with pytest.raises(ValueError, match="available"):
        presets.apply("nope", original)
