"""Registry, model cards and zoo.load."""

import pytest
import torch

import neurons
import zoo
from zoo import checkpoint
from zoo.errors import WeightsError, ZooError


def test_list_info_card():
    assert "tinysnn-test" in zoo.list_models()
    assert "tinysnn-test" in zoo.list_models(task="detection")
    assert "tinysnn-test" not in zoo.list_models(task="language")
    assert "tinysnn-test" in zoo.list_models(pretrained=False)
    card = zoo.info("tinysnn-test")
    assert card.params == 4 * 3 * 9 + (4 * 6 * 9 + 6) + 12 + (96 * 5 + 5)
    assert card.task == "detection" and card.T == 2 and card.metrics[0].source == "paper"


def test_unknown_names_suggest():
    with pytest.raises(ZooError, match="did you mean tinysnn-test"):
        zoo.info("tinysnn-tset")
    with pytest.raises(ZooError, match="unknown task"):
        zoo.list_models(task="audio")


def test_load_random_and_modes():
    with pytest.raises(ZooError, match="no released weights"):
        zoo.load("tinysnn-test")
    m = zoo.load("tinysnn-test", pretrained=False)
    assert not m.training and m.card.name == "tinysnn-test" and neurons.mode_of(m) == "integer"
    assert neurons.mode_of(zoo.load("tinysnn-test", pretrained=False, mode="spike")) == "spike"
    with pytest.raises(ZooError, match="mode must be"):
        zoo.load("tinysnn-test", pretrained=False, mode="binary")
    with pytest.raises(ZooError, match="does not take"):
        zoo.load("tinysnn-test", pretrained=False, widht=3)


def test_load_local_weights_and_repeatable_forward(tmp_path, tiny):
    path = checkpoint.save_safetensors(tiny.state_dict(), tmp_path / "tiny.safetensors")
    m = zoo.load("tinysnn-test", weights=path)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(m(x), m(x))  # resets itself
    spike = zoo.load("tinysnn-test", weights=path, mode="spike")
    assert torch.allclose(spike(x), m(x), rtol=1e-4, atol=1e-5)
    torch.save(tiny.state_dict(), tmp_path / "tiny.pt")  # a torch file works too
    assert torch.equal(zoo.load("tinysnn-test", weights=tmp_path / "tiny.pt")(x), m(x))


def test_load_wrong_weights(tmp_path, tiny):
    sd = tiny.state_dict()
    sd["head.weight"] = torch.zeros(5, 7)
    del sd["bn.bias"]
    checkpoint.save_safetensors(sd, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match=r"missing.*bn.bias.*wrong shape.*head.weight"):
        zoo.load("tinysnn-test", weights=tmp_path / "bad.safetensors")
