"""A converted SDLLM model spread over CPU memory and disk with accelerate's device_map (tasks.language.offload):
the same outputs as the model loaded whole, and one-line errors for maps that cannot work."""

from __future__ import annotations

import sys

import pytest
import torch

import zoo
from zoo.errors import ZooError

from .test_layerwise import OPTS, _generate, _save, _tied_llama
from .conftest import tiny_llama

pytest.importorskip("accelerate", reason="device_map needs accelerate (pip install accelerate; the [test] extra has it)")


@pytest.mark.parametrize("arch,convert", [("llama", "cached"), ("llama", "whole"), ("tied", "layerwise")])
def test_blocks_on_disk_give_the_outputs_of_the_whole_model(zoo_home, tmp_path, tokenizer, arch, convert):
    """``convert``: loaded from a cache the plain load wrote, or converted by this load (whole / layer by layer)."""
    base = tiny_llama(layers=3) if arch == "llama" else _tied_llama()
    path = _save(base, tmp_path / "base", tokenizer)
    opts = dict(OPTS, rotate=arch == "llama")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    load_spread = lambda: zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), device_map=device_map,  # noqa: E731
                                   offload_folder=str(tmp_path / "offload"), layerwise=convert == "layerwise", **opts)
    spread = load_spread() if convert != "cached" else None
    whole = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), layerwise=False, **opts)
    assert whole.sdllm["from_cache"] == (convert != "cached")
    if spread is None:
        spread = load_spread()
        assert spread.sdllm["from_cache"]
    else:
        assert not spread.sdllm["from_cache"] and spread.sdllm["layerwise"] == (convert == "layerwise")
    assert spread.hf_device_map == device_map
    assert spread.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # on disk, brought in per forward
    assert (tmp_path / "offload" / "index.json").exists()
    ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(spread(ids).logits, whole(ids).logits)
    assert torch.equal(_generate(spread, ids[:1, :8]), _generate(whole, ids[:1, :8]))
    auto = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), device_map="auto", **opts)
    assert set(auto.hf_device_map.values()) == {"cpu"}  # no GPU here: everything in CPU memory
    with torch.no_grad():
        assert torch.equal(auto(ids).logits, whole(ids).logits)


def test_device_map_errors_are_one_line(zoo_home, tmp_path, tokenizer, monkeypatch):
    path = _save(tiny_llama(layers=2), tmp_path / "base", tokenizer)
    load = lambda **kw: zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), **OPTS, **kw)  # noqa: E731
    with pytest.raises(ZooError, match="pass offload_folder"):
        load(device_map={"": "disk"})
    with pytest.raises(ZooError, match="places no module holding"):
        load(device_map={"model.layers": "cpu"})
    with pytest.raises(ZooError, match="one of auto, balanced"):
        load(device_map="everywhere")
    with pytest.raises(ZooError, match="drop cache=False"):
        load(device_map="auto", cache=False)
    with pytest.raises(ZooError, match="device_map or device, not both"):
        load(device_map="auto", device="cuda")
    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if not installed
    with pytest.raises(ZooError, match="pip install accelerate"):
        load(device_map="auto")
