"""SDLLM conversion: structure, integer == spike-driven, quantisation, events, clipping, bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import neurons
from tasks.language.sdllm import (SDLinear, SDLLMConfig, _pack4, _unpack4, convert, dequantize_weight, find_targets,
                                  pack_state, quantize_weight, replace_structure, unpack_state)
from zoo.errors import ZooError

from .conftest import tiny_bert, tiny_llama, tiny_qwen2

LLAMA_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _sd_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, SDLinear)}


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2])
def test_decoder_conversion_integer_equals_spike(build, calib_ids):
    model = build()
    ids = calib_ids[:1, :24]
    with torch.no_grad():
        ref = model(ids).logits
    convert(model, calib_ids, SDLLMConfig(group_size=32))
    layers = _sd_layers(model)
    assert {n.rsplit(".", 1)[-1] for n in layers} == LLAMA_LINEARS and len(layers) == 14
    # full precision stays: embeddings, norms, lm_head
    assert type(model.lm_head) is nn.Linear and isinstance(model.model.embed_tokens, nn.Embedding)
    assert all(float(m.neuron.gamma) > 0 for m in layers.values())
    with torch.no_grad():
        out = model(ids).logits
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert (out - ref).abs().max() < ref.abs().max()  # close to the FP model, not equal
    eq = neurons.check_equivalence(model, ids)
    assert eq.max_rel < 1e-4, eq
    assert neurons.mode_of(model) == "integer"
    neurons.to_spike_driven(model)
    with torch.no_grad():
        spike = model(ids).logits
    assert ((spike - out).abs().max() / out.abs().max()) < 1e-4


def test_bert_encoder_conversion(calib_ids):
    model = tiny_bert()
    convert(model, calib_ids[:, :32])
    layers = _sd_layers(model)
    assert len(layers) == 12 and all(n.startswith("encoder.layer.") for n in layers)
    assert type(model.pooler.dense) is nn.Linear  # outside the blocks: full precision
    assert neurons.check_equivalence(model, calib_ids[:2, :16]).max_rel < 1e-4


def test_spike_driven_weights_only_see_ternary_events(calib_ids):
    model = convert(tiny_llama(), calib_ids, SDLLMConfig(D=4, steps=1))
    seen = []
    for m in _sd_layers(model).values():
        original = m.linear._partials

        def spy(x, codes, original=original):
            seen.append(torch.unique(x))
            return original(x, codes)

        m.linear._partials = spy
    neurons.to_spike_driven(model)
    with torch.no_grad():
        model(calib_ids[:1, :16])
    assert len(seen) == 14 * 4  # 14 layers, D = 4 slots each (steps=1: one time step)
    values = torch.unique(torch.cat(seen))
    assert set(values.tolist()) <= {-1.0, 0.0, 1.0} and -1.0 in values.tolist() and 1.0 in values.tolist()


def test_integer_and_spike_driven_are_bit_identical_on_long_inputs(calib_ids):
    """Integer partial sums per weight group are exact in fp32, so no count can round differently downstream."""
    model = convert(tiny_llama(), calib_ids, SDLLMConfig(group_size=32))
    ids = torch.randint(3, 300, (2, 200), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        integer = model(ids).logits
        spike = neurons.to_spike_driven(model)(ids).logits
        neurons.to_integer(model)
    assert torch.equal(integer, spike)
    # and the exact accumulation is the dequantised-weight product up to float rounding
    sd = next(iter(_sd_layers(model).values()))
    x = torch.randn(5, sd.in_features, generator=torch.Generator().manual_seed(2))
    counts, g = sd.neuron(x), sd.neuron.row_gamma
    assert torch.equal(counts, counts.round()) and g.shape == (5, 1)  # per-token step: one factor per row
    plain = torch.nn.functional.linear(counts * g, sd.weight, sd.bias)
    assert torch.allclose(sd(x), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,group", [(4, 128), (4, 32), (3, 0), (8, 48)])
def test_groupwise_quantisation_error_bound(bits, group):
    w = torch.randn(24, 200, generator=torch.Generator().manual_seed(0))
    codes, scales = quantize_weight(w, bits, group)
    qmax = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int8 and codes.abs().max() <= qmax and codes.shape == w.shape
    g = group if group and group < 200 else 200
    assert scales.shape == (24, -(-200 // g))
    deq = dequantize_weight(codes, scales, group)
    per_col_scale = scales.repeat_interleave(g, 1)[:, :200]
    assert ((w - deq).abs() <= per_col_scale / 2 + 1e-6).all()
    # each group's largest weight is represented exactly at +-qmax
    assert torch.allclose(deq.abs().amax(1), w.abs().amax(1), rtol=1e-5)
    assert torch.equal(_unpack4(_pack4(codes.clamp(-7, 7)), 200), codes.clamp(-7, 7))


def test_converted_weights_are_on_the_grid(calib_ids):
    model = convert(tiny_llama(), calib_ids, SDLLMConfig(group_size=32))
    m = model.model.layers[0].mlp.down_proj
    codes, scales = quantize_weight(m.weight, 4, 32)
    assert torch.allclose(dequantize_weight(codes, scales, 32), m.weight, atol=1e-6)
    assert codes.abs().max() <= 7


def _rate(model, ids):
    from tasks.language.evaluate import activity

    return activity(model, ids)


def test_clipping_lowers_the_firing_rate(calib_ids):
    ids = calib_ids[:1, :32]
    full = _rate(convert(tiny_llama(), calib_ids, SDLLMConfig(D=7)), ids)
    clipped_model = convert(tiny_llama(), calib_ids, SDLLMConfig(D=7, clip=2))  # bounds T to one step
    clipped = _rate(clipped_model, ids)
    assert all(m.D == 2 for m in _sd_layers(clipped_model).values())
    assert clipped.firing_rate < full.firing_rate and clipped.events_per_token < full.events_per_token
    assert 0 < clipped.energy_per_token_mj < full.energy_per_token_mj
    assert neurons.check_equivalence(clipped_model, ids).max_rel < 1e-4


@pytest.mark.parametrize("rule", ["mse", "mean", "percentile"])
def test_gamma_rules(rule, calib_ids):
    model = convert(tiny_llama(), calib_ids, SDLLMConfig(gamma_rule=rule))
    gammas = model.sdllm["gammas"]
    assert len(gammas) == 14 and all(g > 0 for g in gammas.values())


def test_mse_gamma_beats_max_scaling():
    from tasks.language.sdllm import _Stats, choose_gamma

    x = torch.randn(50000, generator=torch.Generator().manual_seed(0))
    x[:5] = 40.0  # outliers
    s = _Stats(1 << 16, torch.Generator().manual_seed(0))
    s.update(x)
    cfg = SDLLMConfig(D=7)
    g = choose_gamma(s, cfg)

    def err(gamma):
        return float(((torch.round(torch.clamp(x / gamma, -7, 7)) * gamma - x) ** 2).mean())

    assert err(g) < err(40.0 / 7) / 5


def test_pack_unpack_roundtrip(calib_ids):
    model = convert(tiny_llama(), calib_ids, SDLLMConfig(group_size=32))
    state = pack_state(model)
    assert state["model.layers.0.self_attn.q_proj.linear.qweight"].dtype == torch.uint8
    assert "model.layers.0.self_attn.q_proj.linear.weight" not in state
    with torch.device("meta"):
        skeleton = type(model)(model.config)
    replace_structure(skeleton, SDLLMConfig(group_size=32))
    skeleton.to_empty(device="cpu")
    unpack_state(skeleton, state)
    ids = calib_ids[:1, :16]
    with torch.no_grad():
        assert torch.equal(skeleton(ids).logits, model(ids).logits)


def test_bad_inputs(calib_ids, tokenizer):
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 1)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(ZooError, match="unsupported architecture"):
        convert(NoBlocks(), calib_ids)
    with pytest.raises(ZooError, match="empty calibration"):
        convert(tiny_llama(), torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(ZooError, match="empty calibration"):
        convert(tiny_llama(), [], tokenizer=tokenizer)
    with pytest.raises(ZooError, match="tokenizer mismatch"):
        convert(tiny_llama(vocab=128), ["some text"], tokenizer=tokenizer)  # 300-token tokenizer, 128-token model
    with pytest.raises(ZooError, match="tokenizer mismatch"):
        convert(tiny_llama(vocab=128), torch.full((1, 8), 200))
    converted = convert(tiny_llama(), calib_ids)
    with pytest.raises(ZooError, match="already converted"):
        convert(converted, calib_ids)
    with pytest.raises(ZooError, match="clip"):
        SDLLMConfig(D=4, clip=5, steps=1)
    with pytest.raises(ZooError, match="gamma_rule"):
        SDLLMConfig(gamma_rule="max")


def test_text_calibration(tokenizer):
    from .conftest import TEXT

    model = convert(tiny_llama(), [TEXT[:300], TEXT[300:600]], tokenizer=tokenizer)
    assert len(_sd_layers(model)) == 14


def test_find_targets_restriction():
    names = find_targets(tiny_llama(), ["q_proj", "v_proj"])
    assert len(names) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in names)


def test_spiking_attention_option(calib_ids):
    from tasks.language.spiking_attention import SpikingAttention, spiking_attention_forward
    from tasks.language.decode import FusedDecoder

    fp = tiny_llama()
    ids = calib_ids[:2, :40]
    with torch.no_grad():
        ref = fp(ids).logits
    plain = convert(tiny_llama(), calib_ids, SDLLMConfig())
    model = convert(tiny_llama(), calib_ids, SDLLMConfig(spiking_attention=True))
    att = [m for m in model.modules() if isinstance(m, SpikingAttention)]
    assert len(att) == 2 and model.config._attn_implementation == "sdllm_spiking"
    assert all(float(getattr(a, f"gamma_{s}")) != 1.0 for a in att for s in "qkvp")
    assert "model.layers.0.self_attn.spiking.p" in model.sdllm["gammas"]
    seen = []
    original = att[0].product
    att[0].product = lambda a, b, signed: seen.append(a) or original(a, b, signed)
    with torch.no_grad():
        out = model(ids).logits
        base = plain(ids).logits
    # the attention products really take integer counts: Q in [-7, 7], P in [0, 7]
    assert len(seen) == 2 and torch.equal(seen[0], seen[0].round()) and seen[0].abs().max() <= 7
    assert seen[1].min() >= 0 and seen[1].max() <= 7
    # it changes the outputs (it is not a no-op) and stays close to the model it approximates
    assert not torch.equal(out, base)
    err = lambda x: float((x.softmax(-1) - ref.softmax(-1)).abs().sum(-1).mean())
    assert err(out) < 0.5, (err(out), err(base))
    with torch.no_grad():
        spike = neurons.to_spike_driven(model)(ids).logits
    neurons.to_integer(model)
    assert torch.equal(spike, out)  # integer products: bit-identical in both modes
    with pytest.raises(ZooError, match="spiking attention"):
        FusedDecoder(model)
    with pytest.raises(ZooError, match="q/k/v/o_proj"):
        convert(tiny_bert(), calib_ids[:, :32], SDLLMConfig(spiking_attention=True))
