"""The point-cloud cards, and loading an SVL-format checkpoint through zoo.load."""

from __future__ import annotations

import pytest
import torch

import neurons
import zoo
from tasks.pointcloud.e3dsnn import text_proj_from_checkpoint
from tasks.pointcloud.models import CARDS, DEMO, name_of
from zoo.errors import WeightsError, ZooError


def test_cards_are_registered_with_the_official_parameter_counts():
    names = zoo.list_models(task="pointcloud")
    assert names == sorted([*(name_of(s) for s in CARDS), DEMO])
    params = {s: zoo.info(name_of(s)).params for s in CARDS}
    assert params == {"t": 2_034_176, "s": 3_470_784, "l": 17_649_280, "h": 47_051_648}
    h = zoo.info(name_of("h"))
    assert [(m.dataset, m.value, m.source) for m in h.metrics] == [("ModelNet40", 85.4, "paper")]


def test_unknown_option_is_a_zoo_error():
    with pytest.raises(ZooError, match="unknown E-3DSNN option"):
        zoo.load(name_of("t"), pretrained=False, channels=3)


def test_no_released_file_is_claimed():
    with pytest.raises(ZooError, match="no released weights"):
        zoo.load(name_of("h"))


def test_loads_an_svl_checkpoint_as_saved_by_its_trainer(tmp_path):
    """SVL's save_model: a dict with a DDP-prefixed state_dict plus the projections and training state."""
    torch.manual_seed(0)
    source = zoo.load(name_of("t"), pretrained=False)
    ckpt = {
        "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()},
        "logit_scale": {"module.logit_scale": torch.tensor(2.66)},
        "text_proj": {"module.weight": torch.randn(1280, 1280), "module.bias": torch.zeros(1280)},
        "image_proj": None, "optimizer": {}, "epoch": 3,
    }
    path = tmp_path / "best_modelnet40_overall.pt"
    torch.save(ckpt, path)
    model = zoo.load(name_of("t"), weights=path, mode="spike")
    proj = text_proj_from_checkpoint(path)
    assert torch.equal(proj.weight, ckpt["text_proj"]["module.weight"]) and torch.equal(proj.bias, ckpt["text_proj"]["module.bias"])
    assert neurons.mode_of(model) == "spike"
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    pts = torch.cat([torch.randn(1, 600, 3), torch.rand(1, 600, 3)], 2)
    with torch.no_grad():
        assert torch.allclose(model(pts), source.eval()(pts), rtol=1e-4, atol=1e-4)


def test_checkpoint_without_text_proj_is_a_weights_error():
    with pytest.raises(WeightsError, match="text_proj"):
        text_proj_from_checkpoint({"state_dict": {}})
