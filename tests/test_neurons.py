"""Each neuron against its equation, the two modes against each other."""

import pytest
import torch
from spikingjelly.activation_based import functional

import neurons
from neurons import NeuronError


def reference_ilif(x, decay=0.25, D=4):
    """SpikeYOLO mem_update: mem = (mem_old - spike) * decay + x[t]; spike = round(clamp(mem, 0, D))."""
    out, mem, spike = [], None, None
    for t in range(x.shape[0]):
        mem = x[t] if t == 0 else (mem - spike) * decay + x[t]
        spike = torch.round(torch.clamp(mem, 0, D))
        out.append(spike)
    return torch.stack(out)


def reference_gen1(x, tau=2.0, D=4):
    out, v = [], torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / tau
        s = torch.round(torch.clamp(h, 0, D))
        v = h - s
        out.append(s)
    return torch.stack(out)


def reference_nilif(x, D=8, beta=1.0):
    out, h = [], torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        u = h + x[t]
        s = torch.clamp(torch.round(u), 0, D) / D
        h = beta * (u - s * D)
        out.append(s)
    return torch.stack(out)


@pytest.fixture
def x():
    return torch.randn(5, 3, 7, generator=torch.Generator().manual_seed(1)) * 3


def test_ilif_matches_spikeyolo_equation(x):
    n = neurons.ILIF()
    assert torch.equal(n(x), reference_ilif(x))
    assert n.levels == neurons.Levels(D=4)


def test_ilif_other_D_and_decay(x):
    assert torch.equal(neurons.ILIF(D=2, decay=0.5)(x), reference_ilif(x, decay=0.5, D=2))


def test_gen1_matches_decay_input_equation(x):
    assert torch.equal(neurons.ILIFGen1()(x), reference_gen1(x))
    # and it differs from the COCO I-LIF (the reason the Gen1 checkpoint needs its own neuron)
    assert not torch.equal(neurons.ILIFGen1()(x), neurons.ILIF()(x))


def test_nilif_matches_spike2former_equation(x):
    assert torch.equal(neurons.NILIF()(x), reference_nilif(x))
    assert torch.equal(neurons.NILIF(D=4, beta=0.5)(x), reference_nilif(x, D=4, beta=0.5))


def test_multispike_rounding():
    x = torch.tensor([-1.0, 0.5, 1.5, 2.5, 3.49, 9.0])
    assert neurons.MultiSpike()(x).tolist() == [0, 0, 2, 2, 3, 4]  # ties to even, as torch.round
    assert neurons.MultiSpike(half_up=True)(x).tolist() == [0, 1, 2, 3, 3, 4]  # floor(x + 0.5), SVL
    assert neurons.MultiSpike(norm=True)(x).tolist() == [0, 0, 0.5, 0.5, 0.75, 1.0]  # Multispike_norm


def test_ternary_counts_and_scale():
    n = neurons.Ternary(D=2, gamma=0.5)
    y = n(torch.tensor([-3.0, -0.6, 0.1, 0.4, 0.8, 5.0]))
    assert (y / 0.5).tolist() == [-2, -1, 0, 1, 2, 2]
    assert n.levels == neurons.Levels(D=2, signed=True, scale=0.5)


def test_single_step_equals_multi_step(x):
    for make in (neurons.ILIF, neurons.ILIFGen1, neurons.NILIF):
        multi = make()(x)
        single = make()
        single.step_mode = "s"
        steps = torch.stack([single(xt) for xt in x])
        assert torch.equal(multi, steps), make.__name__


def test_straight_through_gradient():
    x = torch.tensor([[-1.0, 0.3, 2.6, 5.0]], requires_grad=True)
    neurons.ILIF()(x).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 0.0]]  # zero outside [0, D]
    x = torch.tensor([-5.0, -1.2, 0.7, 5.0], requires_grad=True)
    neurons.Ternary(D=4)(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_state_persists_until_reset(x):
    n = neurons.ILIF()
    first = n(x)
    assert not torch.equal(n(x), first)  # membrane carried over
    functional.reset_net(n)
    assert torch.equal(n(x), first)


@pytest.mark.parametrize("signed", [False, True])
def test_expand_events_are_binary_and_sum_to_counts(signed):
    D = 4
    low = -D if signed else 0
    counts = torch.randint(low, D + 1, (3, 5), generator=torch.Generator().manual_seed(0)).float()
    ev = neurons.expand_events(counts, D, signed)
    assert ev.shape == (D, 3, 5)
    assert set(ev.unique().tolist()) <= ({-1.0, 0.0, 1.0} if signed else {0.0, 1.0})
    assert torch.equal(ev.sum(0), counts)


def test_spike_mode_runs_on_events_and_adds_bias_once():
    torch.manual_seed(0)
    lif = neurons.ILIF()
    conv = neurons.SpikeConv2d(3, 4, 3, padding=1, source=lif)
    counts = lif(torch.randn(1, 2, 3, 6, 6) * 3).flatten(0, 1)
    seen = []
    conv.register_forward_hook(lambda m, a, o: None)
    orig = conv._weight_op
    conv._weight_op = lambda inp, w: (seen.append(inp), orig(inp, w))[1]
    dense = conv(counts)
    neurons.to_spike_driven(conv)
    events = conv(counts)
    assert torch.allclose(dense, events, atol=1e-5)
    assert set(seen[-1].unique().tolist()) <= {0.0, 1.0} and seen[-1].shape[0] == 4 * counts.shape[0]
    assert neurons.mode_of(conv) == "spike"


def test_spike_mode_folds_scale_for_nilif():
    n = neurons.NILIF(D=8)
    lin = neurons.SpikeLinear(6, 3, source=n)
    s = n(torch.randn(2, 4, 6) * 6)
    dense = lin(s)
    assert torch.allclose(neurons.to_spike_driven(lin)(s), dense, atol=1e-5)
    assert neurons.mode_of(neurons.to_integer(lin)) == "integer"


def test_spike_mode_rejects_non_counts():
    conv = neurons.SpikeConv2d(2, 2, 1, source=neurons.Levels(D=4))
    neurons.to_spike_driven(conv)
    with pytest.raises(NeuronError, match="not counts"):
        conv(torch.full((1, 2, 2, 2), 0.3))
    with pytest.raises(NeuronError, match="not counts"):
        conv(torch.full((1, 2, 2, 2), 7.0))


def test_to_spike_driven_needs_synapses():
    with pytest.raises(NeuronError, match="no synapse layers"):
        neurons.to_spike_driven(torch.nn.Linear(2, 2))


def test_check_equivalence_on_model(tiny):
    x = torch.rand(2, 3, 8, 8)
    eq = neurons.check_equivalence(tiny, x)
    assert eq.max_rel <= 1e-5 and eq.outputs == 1
    assert neurons.mode_of(tiny) == "integer"
    # and a broken spike path is caught: drop the bias in spike mode
    tiny.head.bias.data += 1.0
    orig = tiny.head.spike_forward
    tiny.head.spike_forward = lambda inp: orig(inp) - tiny.head.bias
    assert neurons.check_equivalence(tiny, x).max_abs > 0.5


def test_auto_reset_makes_forward_repeatable(tiny):
    x = torch.rand(1, 3, 8, 8)
    first = tiny(x)
    assert not torch.equal(tiny(x), first)  # without reset, state leaks into the next call
    neurons.auto_reset(tiny)
    neurons.auto_reset(tiny)  # idempotent
    a, b = tiny(x), tiny(x)
    assert torch.equal(a, b)


def test_ilif_single_step_fast_path_equals_loop():
    x = torch.randn(1, 2, 3, 5, 5, generator=torch.Generator().manual_seed(3)) * 3
    fast = neurons.ILIF()
    ref = reference_ilif(x)
    assert torch.equal(fast(x), ref)
    # state after the step continues exactly as SpikingJelly's loop would
    loop = neurons.ILIF()
    loop.v = torch.zeros_like(x[0])  # a tensor state takes SpikingJelly's path
    loop(x)
    assert torch.equal(fast.v, loop.v)
    # straight-through gradient and memory layout kept
    xg = x.clone().requires_grad_()
    neurons.ILIF()(xg).sum().backward()
    assert torch.equal(xg.grad, ((x >= 0) & (x <= 4)).float())
    cl = x[0].contiguous(memory_format=torch.channels_last)[None]
    assert neurons.ILIF()(cl)[0].is_contiguous(memory_format=torch.channels_last)


def test_binary_lif_matches_tde_equation(x):
    """TDE mem_update + MultiSpike1: H[t] = 0.25 (H[t-1] - 0.5 S[t-1]) + X[t]; S = round(clip(H, 0, 1))."""
    out, h, s = [], None, None
    for t in range(x.shape[0]):
        h = x[t] if t == 0 else (h - 0.5 * s) * 0.25 + x[t]
        s = torch.round(torch.clamp(h, 0, 1))
        out.append(s)
    assert torch.equal(neurons.BinaryLIF()(x), torch.stack(out))


def test_topk_spike_fires_on_the_top_fraction():
    x = torch.arange(10.0).view(2, 5)
    s = neurons.TopKSpike(ratio=0.3)(x)
    assert s.sum() == 3 and torch.equal(s.view(-1)[-3:], torch.ones(3))


class _MLP(torch.nn.Module):
    """Linear (real input) -> I-LIF -> spiking linear -> ternary encoder -> spiking linear, T=3."""

    def __init__(self):
        super().__init__()
        self.fc0 = torch.nn.Linear(8, 16)
        self.lif = neurons.ILIF()
        self.fc1 = neurons.SpikeLinear(16, 12, source=self.lif)
        self.enc = neurons.Ternary(D=3, gamma=0.4)
        self.fc2 = neurons.SpikeLinear(12, 5, source=self.enc)

    def forward(self, x):  # x: [T, B, 8]
        return self.fc2(self.enc(self.fc1(self.lif(self.fc0(x) * 3))))


def test_integer_equals_spike_driven_on_linear_network():
    torch.manual_seed(0)
    mlp = _MLP()
    x = torch.randn(3, 4, 8)
    eq = neurons.check_equivalence(mlp, x)
    assert eq.max_rel <= 1e-5
    counts = mlp.lif(mlp.fc0(x) * 3)
    assert counts.abs().sum() > 0  # events really flowed
