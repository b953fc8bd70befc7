"""Layer-by-layer SDLLM conversion (tasks.language.layerwise): the same model as the whole-model conversion,
at a peak memory of a few blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from tasks.language import layerwise as lw
from zoo.errors import ZooError

from .conftest import tiny_bert, tiny_llama, tiny_qwen2

ROOT = Path(__file__).resolve().parents[2]
# two calibration batches, the sampling draws in both
OPTS = dict(calib_samples=4, calib_seq_len=24, group_size=32, calib_batch=2, samples_per_layer=4096)


def _tied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _save(model, path: Path, tokenizer, shard="60KB") -> Path:
    model.save_pretrained(path, max_shard_size=shard)
    tokenizer.save_pretrained(path)
    return path


def _generate(model, ids):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=2)


@pytest.mark.parametrize("arch,options", [
    ("llama", {}),  # defaults: per-token gamma, multi-step T, rotation
    ("llama", dict(gptq=True)),
    ("llama", dict(samples_per_layer=2000)),  # the sampling draws end inside the first batch
    ("qwen2", {}),  # q/k/v biases
    ("tied", {}),  # tied embeddings, untied by the rotation
    ("tied", dict(rotate=False, gamma="static", steps=1)),  # tied embeddings kept tied
])
def test_layer_by_layer_equals_whole_model(zoo_home, tmp_path, tokenizer, arch, options):
    base = {"llama": lambda: tiny_llama(layers=3), "qwen2": tiny_qwen2, "tied": _tied_llama}[arch]()
    path = _save(base, tmp_path / "base", tokenizer)
    assert (path / lw.SAFE_INDEX).exists()  # sharded: blocks are read shard by shard
    opts = dict(OPTS, **options)
    whole = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), layerwise=False, cache=False, **opts)
    layered = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), layerwise=True, **opts)
    assert layered.sdllm["layerwise"] and not whole.sdllm["layerwise"] and not layered.sdllm["from_cache"]
    assert layered.sdllm["gammas"] == whole.sdllm["gammas"]
    a, b = whole.state_dict(), layered.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(whole(ids).logits, layered(ids).logits)
    assert torch.equal(_generate(whole, ids[:1, :8]), _generate(layered, ids[:1, :8]))
    # the layer-by-layer cache file is the cache of these settings, whichever path asks next
    again = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), layerwise=False, **opts)
    assert again.sdllm["from_cache"] and again.sdllm["cache"] == layered.sdllm["cache"]
    with torch.no_grad():
        assert torch.equal(again(ids).logits, whole(ids).logits)


def test_single_file_checkpoint_and_auto_mode(zoo_home, tmp_path, tokenizer, monkeypatch):
    path = _save(tiny_llama(layers=2), tmp_path / "base", tokenizer, shard="10GB")
    assert (path / lw.SAFE_SINGLE).exists() and not (path / lw.SAFE_INDEX).exists()
    monkeypatch.setattr(lw, "available_memory", lambda: 10**12)  # plenty: the whole model
    big = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), cache=False, **OPTS)
    monkeypatch.setattr(lw, "available_memory", lambda: 10**5)  # too little: layer by layer
    small = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), cache=False, **OPTS)
    assert not big.sdllm["layerwise"] and small.sdllm["layerwise"]
    ids = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(big(ids).logits, small(ids).logits)
    assert not list((zoo_home / "language").glob("*.safetensors")) and not list((zoo_home / "language").glob(".*"))
    # auto with an architecture layer-by-layer cannot do: the whole model, with a warning that says why
    with pytest.warns(UserWarning, match="cannot be converted layer by layer"):
        sa = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(path), cache=False, spiking_attention=True, **OPTS)
    assert not sa.sdllm["layerwise"]


def test_layerwise_bad_input_is_one_line(zoo_home, tmp_path, tokenizer):
    pickled = tmp_path / "bin"  # a base without safetensors
    model = tiny_llama(layers=2)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    llama = _save(tiny_llama(layers=2), tmp_path / "llama", tokenizer)
    bert = tmp_path / "bert"
    tiny_bert().save_pretrained(bert)
    cases = [(dict(base=str(pickled)), "reads safetensors"),
             (dict(base=str(llama), spiking_attention=True), "spiking attention"),
             (dict(base=str(bert)), "not a Llama / Qwen2-style decoder"),
             (dict(base=str(llama), layerwise="yes"), "layerwise must be")]
    for kw, match in cases:
        kw.setdefault("layerwise", True)
        with pytest.raises(ZooError, match=match) as e:
            zoo.load("sdllm-llama2-7b", pretrained=False, cache=False, **OPTS, **kw)
        assert "\n" not in str(e.value)
    left = list((zoo_home / "language").iterdir()) if (zoo_home / "language").exists() else []
    assert not left  # no temporary data file left behind


# ----------------------------------------------------------------------------------------------- memory

_MEASURE = r'''
import json, resource, sys, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from pathlib import Path
import scipy.linalg  # noqa: F401 (imported by the rotation; before the baseline)
from tasks.language.sdllm import SDLLMConfig, convert
from tasks.language.layerwise import convert_checkpoint
from tasks.language.build import load_base

base, warm, mode, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
cfg = SDLLMConfig(group_size=64, calib_batch=2, samples_per_layer=4096)
ids = torch.randint(3, 300, (4, 32), generator=torch.Generator().manual_seed(1))


def run(path, target):
    if mode == "layerwise":
        convert_checkpoint(path, target, cfg, ids)
    else:  # the control: the whole-model conversion (from_pretrained maps the file: loading alone touches nothing)
        model, _ = load_base(path)
        convert(model, ids, cfg)
        del model


def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def hwm():  # this process's peak RSS (VmHWM: not ru_maxrss, which keeps the parent's RSS across fork + exec)
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


run(warm, out / "warm.safetensors")  # every code path once, on a one-block model
try:
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
except OSError:
    pass  # then the warm-up's (smaller) peak stays in it
before = rss()
run(base, out / "big.safetensors")
print(json.dumps({"delta": hwm() - before}))
'''


def _wide_llama(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=320, hidden_size=512, intermediate_size=1024, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def _peak(tmp_path: Path, mode: str) -> int:
    script = tmp_path / "measure.py"
    script.write_text(_MEASURE)
    out = tmp_path / mode
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="1",
               MALLOC_MMAP_THRESHOLD_="65536")  # large buffers mmapped: freed memory leaves the process at once
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "big"), str(tmp_path / "warm"), mode, str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])["delta"]


def test_peak_memory_is_a_few_blocks_not_the_model(tmp_path):
    """Peak RSS growth (VmHWM of a fresh process over its RSS after a warm-up conversion) of converting a
    12-block random Llama layer by layer: below 8 fp32 blocks + 16 MiB, while its weights alone are 12 blocks
    (the control: the whole-model conversion of the same base exceeds the cap)."""
    model = _wide_llama(12)
    block = sum(p.numel() for p in model.model.layers[0].parameters()) * 4
    weights = sum(p.numel() for p in model.parameters()) * 4
    model.save_pretrained(tmp_path / "big", max_shard_size="20MB")
    _wide_llama(1).save_pretrained(tmp_path / "warm")
    del model
    cap = 8 * block + (16 << 20)
    assert weights > cap
    layered = _peak(tmp_path, "layerwise")
    assert layered < cap, f"layer-by-layer peak {layered / 2**20:.1f} MiB, cap {cap / 2**20:.1f} MiB"
    whole = _peak(tmp_path, "whole")
    assert whole > cap, f"the control measured {whole / 2**20:.1f} MiB for the whole model: the measure is blind"
    print(f"peak over baseline: layer by layer {layered / 2**20:.1f} MiB, whole model {whole / 2**20:.1f} MiB, "
          f"one block {block / 2**20:.1f} MiB, weights {weights / 2**20:.1f} MiB")


# the bases' config.json (hidden, MLP, heads, kv heads, vocab, layers) as published on the Hugging Face hub
CONFIGS = {"sdllm-llama2-7b": (4096, 11008, 32, 32, 32000, 32), "sdllm-llama2-13b": (5120, 13824, 40, 40, 32000, 40),
           "sdllm-llama3-8b": (4096, 14336, 32, 8, 128256, 32), "sdllm-qwen2.5-14b": (5120, 13824, 40, 8, 152064, 48)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cards_state_the_computed_peak(name):
    from transformers import LlamaConfig

    h, f, heads, kv, vocab, layers = CONFIGS[name]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=f, num_attention_heads=heads, num_key_value_heads=kv,
                      vocab_size=vocab, num_hidden_layers=layers)
    est = lw.peak_estimate(cfg, samples=128, seq_len=2048)
    half = lw.peak_estimate(cfg, samples=128, seq_len=2048, dtype_bytes=2)
    assert est["hidden"] == 128 * 2048 * h * 4 and est["total"] > half["total"]
    assert est["total"] < zoo.info(name).params * 4 / 2  # far below the fp32 weights
    notes = zoo.info(name).notes
    assert f"peak memory {est['total'] / 2**30:.1f} GiB in float32, {half['total'] / 2**30:.1f} GiB" in notes
