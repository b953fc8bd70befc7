"""Registered SDLLM models: base=PATH route, the converted-weights cache and its sha256, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

import neurons
import zoo
from tasks.language.sdllm import SDLinear
from zoo.errors import ZooError

NAMES = ["sdllm-llama2-7b", "sdllm-llama2-13b", "sdllm-llama3-8b", "sdllm-qwen2.5-14b"]
OPTS = dict(calib_samples=2, calib_seq_len=32, group_size=32)


def test_cards_without_building():
    assert set(NAMES) <= set(zoo.list_models(task="language"))
    card = zoo.info("sdllm-llama2-7b")
    assert card.params == 6_738_415_616 and card.task == "language" and card.D == 7
    paper = {m.metric: m.value for m in card.metrics if m.source == "paper"}
    assert paper == {"acc (%)": 61.09, "energy (J)": 0.67, "FP16 acc (%)": 63.72, "FP16 energy (J)": 31.77}
    for name in NAMES:
        assert zoo.info(name).params > 6e9


def test_no_base_offline_is_one_line_error(zoo_home, monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ZooError, match="pass base=PATH") as e:
        zoo.load("sdllm-llama2-7b", pretrained=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ZooError, match="config.json"):
        zoo.load("sdllm-llama2-7b", pretrained=False, base=str(tmp_path))


def test_load_converts_caches_and_reuses(zoo_home, llama_dir, monkeypatch):
    model = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), **OPTS)
    assert not model.sdllm["from_cache"]
    assert sum(isinstance(m, SDLinear) for m in model.modules()) == 14
    files = sorted((zoo_home / "language").iterdir())
    st = [f for f in files if f.name.endswith(".safetensors")]
    assert len(st) == 1 and (st[0].parent / (st[0].name + ".sha256")).exists()
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = model(ids).logits

    # second load: from the cache, no conversion
    import tasks.language.build as models

    def boom(*a, **k):
        raise AssertionError("converted again")

    with monkeypatch.context() as mp:
        mp.setattr(models, "convert", boom)
        again = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), **OPTS)
        assert again.sdllm["from_cache"]
        with torch.no_grad():
            assert torch.equal(again(ids).logits, first)
        assert neurons.check_equivalence(again, ids).max_rel < 1e-4
        spike = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), mode="spike", **OPTS)
        assert neurons.mode_of(spike) == "spike"

    # a corrupt cache file is detected by its sha256 and rebuilt
    data = bytearray(st[0].read_bytes())
    data[-10] ^= 0xFF
    st[0].write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), **OPTS)
    assert not rebuilt.sdllm["from_cache"]
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), **OPTS).sdllm["from_cache"]


def test_other_settings_get_their_own_cache_entry(zoo_home, llama_dir):
    zoo.load("sdllm-qwen2.5-14b", pretrained=False, base=str(llama_dir), **OPTS)
    m = zoo.load("sdllm-qwen2.5-14b", pretrained=False, base=str(llama_dir), clip=3, **OPTS)
    assert not m.sdllm["from_cache"] and all(s.D == 3 for s in m.modules() if isinstance(s, SDLinear))
    assert len(list((zoo_home / "language").glob("*.safetensors"))) == 2


def test_qwen2_and_tied_embeddings_from_cache(zoo_home, tmp_path, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    path = tmp_path / "tiny-qwen2"
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    # without rotation the head stays tied (rotation unties it: tests/language/test_outliers.py)
    a = zoo.load("sdllm-qwen2.5-14b", pretrained=False, base=str(path), rotate=False, **OPTS)
    b = zoo.load("sdllm-qwen2.5-14b", pretrained=False, base=str(path), rotate=False, **OPTS)
    assert b.sdllm["from_cache"] and b.lm_head.weight.data_ptr() == b.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(3, 300, (1, 12))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_bad_builder_options(zoo_home, llama_dir):
    with pytest.raises(ZooError):
        zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), gamma_rule="nope")
    with pytest.raises(ZooError):
        zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), dtype="int3")
