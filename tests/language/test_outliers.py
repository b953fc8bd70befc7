"""Outlier-robust SDLLM encoding: per-token gamma, multi-step spike trains, Hadamard rotation, int8 kernels."""

from __future__ import annotations

import warnings

import pytest
import torch

import neurons
from tasks.language import int_kernels
from tasks.language.rotation import HadamardLinear, apply_hadamard, block_size, fwht, hadamard, rotate
from tasks.language.sdllm import SDLinear, SDLLMConfig, convert, sqp_encode
from zoo.errors import ZooError

from .conftest import tiny_bert, tiny_llama, tiny_qwen2

OUTLIER = dict(gamma="per_token", steps="auto", rotate=True)


def _with_norm_weights(model):
    g = torch.Generator().manual_seed(3)
    for n, p in model.named_parameters():
        if "norm" in n:
            p.data = torch.rand(p.shape, generator=g) + 0.5
    return model


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2])
def test_rotation_keeps_full_precision_logits(build, calib_ids):
    model = _with_norm_weights(build())
    with torch.no_grad():
        ref = model(calib_ids).logits
        assert rotate(model) == "residual"
        out = model(calib_ids).logits
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    # it did rotate: the weights changed, norms are folded, the head is untied, down_proj has the online transform
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.model.layers[0].input_layernorm.weight, torch.ones(model.config.hidden_size))
    assert isinstance(model.model.layers[0].mlp.down_proj, HadamardLinear)
    H = hadamard(96)
    assert torch.allclose(H @ H.t(), torch.eye(96, dtype=H.dtype))
    assert torch.allclose(H.abs().unique(), torch.tensor([0.0, 32 ** -0.5], dtype=H.dtype))  # blocks of 32: +-1/sqrt(32)


@pytest.mark.parametrize("n", [96, 768, 2048])
def test_fast_walsh_hadamard_is_the_matrix_product(n):
    """The online transform's additions-only butterflies equal ``x H`` (the block-diagonal Sylvester matrix)."""
    x = torch.randn(3, 5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    want = x @ hadamard(n)
    assert block_size(n) == {96: 32, 768: 256, 2048: 2048}[n]
    assert torch.allclose(fwht(x, block_size(n)), want, rtol=0, atol=1e-12)
    got = apply_hadamard(x.float())
    assert got.dtype == torch.float32 and float((got - want).abs().max() / want.abs().max()) < 1e-6


def test_rotation_falls_back_for_post_layernorm_encoders(calib_ids):
    model = tiny_bert()
    ids = calib_ids[:2, :24]
    with torch.no_grad():
        ref = model(ids).last_hidden_state
    with pytest.warns(UserWarning, match="BertModel is not a Llama / Qwen2-style decoder.*online Hadamard"):
        assert rotate(model) == "online"
    with torch.no_grad():
        out = model(ids).last_hidden_state
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = convert(tiny_bert(), calib_ids[:, :32], SDLLMConfig(**OUTLIER))
    layers = [m for m in conv.modules() if isinstance(m, SDLinear)]
    assert len(layers) == 12 and all(m.hadamard for m in layers)
    assert neurons.check_equivalence(conv, ids).max_rel == 0.0


@pytest.mark.parametrize("options", [dict(gamma="per_token", steps=1, rotate=False),
                                     dict(gamma="per_token", steps="auto", rotate=False), OUTLIER,
                                     dict(gamma="static", steps=3, rotate=True)])
def test_integer_equals_spike_driven_bit_for_bit(options, calib_ids):
    model = convert(tiny_llama(), calib_ids, SDLLMConfig(D=3, group_size=32, **options))
    ids = torch.randint(3, 300, (2, 120), generator=torch.Generator().manual_seed(5))
    top = []
    hooks = [m.neuron.register_forward_hook(lambda mod, a, out: top.append(float(out.abs().max())))
             for m in model.modules() if isinstance(m, SDLinear)]
    with torch.no_grad():
        integer = model(ids).logits
    for h in hooks:
        h.remove()
    if options.get("steps", 1) != 1:
        assert max(top) > 3  # multi-step trains really occur: some count above D
    with torch.no_grad():
        spike = neurons.to_spike_driven(model)(ids).logits
    neurons.to_integer(model)
    assert torch.equal(integer, spike)


def test_multi_step_trains_spend_events_not_accuracy(calib_ids):
    ids = calib_ids[:1, :40]
    one = convert(tiny_llama(), calib_ids, SDLLMConfig(D=3, gamma="per_token", steps=1, rotate=False))
    many = convert(tiny_llama(), calib_ids, SDLLMConfig(D=3, gamma="per_token", steps="auto", rotate=False))
    fp = tiny_llama()
    with torch.no_grad():
        ref, a, b = fp(ids).logits, one(ids).logits, many(ids).logits
    assert (b - ref).abs().mean() < (a - ref).abs().mean()
    from tasks.language.evaluate import activity

    assert activity(many, ids).events_per_token > activity(one, ids).events_per_token
    # the spike train of a count above D: ceil(|C| / D) steps of D ternary slots, events summing to the count
    lin = next(m for m in many.modules() if isinstance(m, SDLinear)).linear
    assert lin._slots(torch.tensor([[8.0, -2.0]])) == 9 and lin._slots(torch.tensor([[3.0]])) == 3


def test_per_token_gamma_follows_each_token():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    x[2] *= 50.0  # one loud token
    counts, g = sqp_encode(x, torch.tensor(0.5), 7, per_token=True)
    assert g.shape == (4, 1) and torch.allclose(g[:, 0], 0.5 * x.abs().mean(-1))
    quiet, _ = sqp_encode(x / 50.0, torch.tensor(0.5), 7, per_token=True)
    assert torch.equal(counts, quiet)  # scale-free per token
    static, _ = sqp_encode(x, torch.tensor(0.5), 7, per_token=False)
    assert (static[[0, 1, 3]].abs() == 7).float().mean() < (static[2].abs() == 7).float().mean()


def test_int8_kernel_is_exact_and_decodes_the_same_tokens(calib_ids):
    if not int_kernels.available():
        pytest.skip("torch._int_mm does not run on this CPU")
    from tasks.language.decode import FusedDecoder
    from tasks.language.sdllm import group_linear

    model = convert(tiny_llama(), calib_ids, SDLLMConfig(group_size=32, **OUTLIER))
    lin = next(m for m in model.modules() if isinstance(m, SDLinear)).linear
    counts = torch.randint(-126, 127, (3, lin.in_features)).float()
    g = torch.rand(3, 1) + 0.1
    codes, scales = lin._codes()
    assert lin.int8_codes().dtype == torch.int8
    assert torch.equal(int_kernels.group_linear_int8(counts, lin.int8_codes(), scales, g),
                       group_linear(counts, codes, scales, g))
    prompt = calib_ids[:1, :12]
    with torch.no_grad():
        eager = [prompt]
        for _ in range(8):  # the eager converted model, greedy, full recompute
            ids = torch.cat(eager, 1)
            eager.append(model(ids).logits[:, -1].argmax(-1, keepdim=True))
    eager = torch.cat(eager, 1)
    fused = FusedDecoder(model, max_len=32, compile=False, kernel="int8")
    assert fused.layers[0].down[0][2] is not None  # the int8 codes are in use
    assert torch.equal(fused.generate(prompt, max_new_tokens=8), eager)
    fp32 = FusedDecoder(model, max_len=32, compile=False, kernel="fp32")
    assert torch.equal(fp32.generate(prompt, max_new_tokens=8), eager)


def test_config_errors_and_short_calibration(tokenizer):
    from tasks.language.build import calibration_from_tokenizer

    with pytest.raises(ZooError, match="gamma must be one of"):
        SDLLMConfig(gamma="dynamic")
    with pytest.raises(ZooError, match="steps must be"):
        SDLLMConfig(steps=0)
    with pytest.raises(ZooError, match="max_steps"):
        SDLLMConfig(D=7, max_steps=40)
    with pytest.raises(ZooError, match="fewer than one sequence of calib_seq_len=512") as e:
        calibration_from_tokenizer(tokenizer, ["To be, or not to be."], 300, samples=4, seq_len=512, seed=0)
    assert "\n" not in str(e.value)


def test_cache_made_with_other_settings_is_rebuilt(zoo_home, llama_dir):
    import zoo

    opts = dict(calib_samples=2, calib_seq_len=32, group_size=32)
    a = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), gamma="static", **opts)
    b = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), **OUTLIER, **opts)
    assert not a.sdllm["from_cache"] and not b.sdllm["from_cache"] and a.sdllm["cache"] != b.sdllm["cache"]
    again = zoo.load("sdllm-llama2-7b", pretrained=False, base=str(llama_dir), **OUTLIER, **opts)
    assert again.sdllm["from_cache"]
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, b(ids).logits)
    assert again.lm_head.weight.data_ptr() != again.model.embed_tokens.weight.data_ptr()
