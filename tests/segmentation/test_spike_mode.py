"""Spike-driven Spike2Former: every product with spiking operands on events (neurons.SpikeProduct), equal to
integer mode; the profiler counts those products' accumulates; the fast inference path gives the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import neurons
from tasks.segmentation.convert import from_official
from tasks.segmentation.fast import optimize
from tasks.segmentation.spike2former import build_spike2former
from zoo.profiling import profile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "segmentation"


@pytest.fixture(scope="module")
def tiny():
    desc = json.loads((FIXTURES / "spike2former_tiny.json").read_text())
    io = load_file(FIXTURES / "spike2former_tiny_io.safetensors")
    model = build_spike2former(**desc["config"])
    model.load_state_dict(from_official(load_file(FIXTURES / "spike2former_tiny_official.safetensors")))
    return desc, io, model.eval()


def test_spike_product_expands_spiking_operands_into_binary_events():
    q, k = neurons.NILIF(D=4, step_mode="s"), neurons.NILIF(D=4, step_mode="s")
    prod = neurons.SpikeProduct(q, k)
    a, b = q(torch.rand(2, 5, 3) * 5), k(torch.rand(2, 3, 7) * 5)
    seen = []
    op = prod._op
    prod._op = lambda x, y: (seen.append((x, y)), op(x, y))[1]
    dense = prod(a, b)
    neurons.to_spike_driven(prod)
    events = prod(a, b)
    assert len(seen) == 1 + 4 * 4  # integer mode once, then one product per pair of event slots
    assert all(set(x.unique().tolist()) <= {0.0, 1.0} and set(y.unique().tolist()) <= {0.0, 1.0} for x, y in seen[1:])
    assert torch.allclose(events, dense, rtol=0, atol=1e-6)
    # accumulates: one per pair of unit events that meet (|count_a| x |count_b| summed over the contraction)
    ca, cb = (a * 4).round(), (b * 4).round()
    assert prod.event_acs(a, b) == int((ca @ cb).sum())
    real = neurons.SpikeProduct(None, k)
    assert real.event_acs(torch.randn(2, 5, 3), b) == int(cb.sum() * 5)  # each event adds 5 values (rows of a)
    with pytest.raises(neurons.NeuronError, match="not counts"):
        prod(a + 0.01, b)


def test_spike_mode_runs_every_attention_product_on_events_and_matches_integer(tiny):
    _, io, model = tiny
    products = [m for m in model.modules() if isinstance(m, neurons.SpikeProduct)]
    assert len(products) == 2 * (6 + 2) + 4 * 2 * model.cfg.decoder_layers + 1  # backbone, decoder (CA, SA), mask
    eq = neurons.check_equivalence(model, io["input"], return_layers=True)
    assert eq.max_rel <= 1e-4 and eq.outputs == 3
    calls = []
    for m in products:
        m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args)))
    neurons.to_spike_driven(model)
    try:
        with torch.no_grad():
            model(io["input"])
    finally:
        neurons.to_integer(model)
    used = {id(m) for m, _ in calls}
    assert used == {id(m) for m in products if not (hasattr(m, "equation") and m in _reordered(model))}
    assert neurons.mode_of(model) == "integer"


def _reordered(model):
    """The decoder's q (k^T v) products, used only by the fast path."""
    return [m for name, m in model.named_modules() if isinstance(m, neurons.SpikeProduct)
            and "transformer_decoder" in name and name.rsplit(".", 1)[-1] in ("kv", "q_kv")]


def test_profile_counts_the_products_as_accumulates(tiny):
    _, io, model = tiny
    p = profile(model, io["input"][:1])
    kinds = {}
    for layer in p.layers:
        kinds.setdefault(layer.kind, []).append(layer)
    products = kinds["SpikeProduct"]
    assert len(products) == 2 * 8 + 2 * 2 * model.cfg.decoder_layers + 1
    assert all(l.macs == 0 and l.dense_ops > 0 for l in products) and sum(l.acs for l in products) > 0
    dense = {l.name for l in p.layers if l.macs > 0}
    synapses = {n for n, m in model.named_modules() if isinstance(m, neurons.Synapse)}
    assert "backbone.downsample1_1.encode_conv" in dense and not dense & synapses  # spike-fed layers: ACs only
    # the other MAC layers read a conv's output, not spikes: RepConv's inner convs, SepConv's pointwise after its
    # depthwise conv
    assert all(".body.2." in n or n.endswith("Conv.pwconv2") or n.endswith("encode_conv") for n in dense)
    assert p.energy_mj == pytest.approx((p.macs * 4.6 + p.acs * 0.9) * 1e-9)
    spike = profile(neurons.to_spike_driven(model), io["input"][:1])
    neurons.to_integer(model)
    # spike-driven, each RepConv runs as its re-parameterised 3x3 conv on events: ACs, no MACs left in it
    dense_spike = {l.name for l in spike.layers if l.macs > 0}
    assert dense_spike == {n for n in dense if ".body.2." not in n} and spike.macs < p.macs
    reps = [l for l in spike.layers if l.name.endswith(".rep")]
    assert len(reps) == 4 * 8 and all(l.macs == 0 for l in reps) and sum(l.acs for l in reps) > 0
    prods = {l.name: l.acs for l in spike.layers if l.kind == "SpikeProduct"}
    assert prods == {l.name: l.acs for l in products}  # the same events, whichever mode runs the products


@pytest.mark.parametrize("T", [1, 4])
def test_fast_path_gives_the_same_logits(tiny, T):
    desc, io, model = tiny
    m = build_spike2former(**{**desc["config"], "T": T})
    m.load_state_dict(model.state_dict())
    m.eval()
    with torch.no_grad():
        ref = m(io["input"])
        optimize(m)
        fast = m(io["input"])
        layers = m(io["input"], return_layers=True)
        optimize(m, False)
        again = m(io["input"])
    assert torch.equal(again, ref) and not any("forward" in n.__dict__ for n in m.modules())  # switched back
    assert (fast - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert layers[2].shape[0] == desc["config"]["decoder_layers"] + 1  # return_layers still gives every layer
    assert (fast - io["logits"]).abs().max() <= 1e-4 * io["logits"].abs().max()
