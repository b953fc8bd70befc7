"""zoo.profile on spiking networks built from plain torch and SpikingJelly layers, against counts by hand.

Each hand count is computed from the spike tensors the neurons actually emitted
(caught with forward hooks during the profiled pass): an AC per unit event per
synapse reached, counted with ``Tensor.unfold`` windows (not the profiler's
convolution with ones), and a MAC per multiply of the dense op.
"""

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import layer, neuron
from torch import nn

import neurons
import zoo

T, B = 2, 2


def hand_conv_acs(counts: torch.Tensor, conv: nn.modules.conv._ConvNd) -> int:
    """Events x synapses reached, by enumerating every (input channel, kernel tap, output position) window."""
    nd = len(conv.kernel_size)
    a = counts.abs().double().reshape(-1, *counts.shape[-nd - 1:])
    if conv.padding == "same":  # torch puts the odd one on the right
        per_dim = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(conv.kernel_size, conv.dilation)]
    else:
        per_dim = [(0, 0) if conv.padding == "valid" else (p, p) for p in conv.padding]
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode  # others pad with copies of inputs
    a = F.pad(a, [side for lr in reversed(per_dim) for side in lr], mode=mode)
    for i, (k, s, d) in enumerate(zip(conv.kernel_size, conv.stride, conv.dilation)):
        a = a.unfold(2 + i, d * (k - 1) + 1, s)[..., ::d]  # windows along spatial dim i, dilated taps
    return int(a.sum()) * conv.out_channels // conv.groups


def hand_linear_acs(counts: torch.Tensor, lin: nn.Linear) -> int:
    return int(counts.abs().sum()) * lin.out_features


def dense_conv_macs(conv, out) -> int:
    return out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] ** len(conv.kernel_size)


def catch(*modules):
    """Outputs of ``modules`` during the next forward (the profiled one), in call order per module."""
    seen = {m: [] for m in modules}
    for m in modules:
        m.register_forward_hook(lambda mod, args, out: seen[mod].append(out.detach().clone()))
    return seen


def by_name(p):
    return {l.name: l for l in p.layers}


ZOO_ILIF = lambda: neurons.ILIF()  # noqa: E731
SJ_ILIF = lambda: neuron.ILIFNode(step_mode="m")  # noqa: E731


class PlainNet(nn.Module):
    """nn.Conv2d (image) -> I-LIF -> view -> nn.Conv2d (grouped, strided, dilated) -> I-LIF -> reshape -> nn.Linear."""

    def __init__(self, make_neuron):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.lif1 = make_neuron()
        self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.lif2 = make_neuron()
        self.fc = nn.Linear(6 * 4 * 4, 5)
        with torch.no_grad():
            self.stem.weight.mul_(6)  # counts above 1
            self.conv.weight.mul_(3)

    def forward(self, x):
        y = self.stem(x).unsqueeze(0).repeat(T, 1, 1, 1, 1)  # [T, B, 4, 8, 8]
        s1 = self.lif1(y)
        z = self.conv(s1.view(T * B, 4, 8, 8))
        s2 = self.lif2(z.view(T, B, 6, 4, 4))
        return self.fc(s2.reshape(T, B, -1)).mean(0)  # Linear on [T, B, F]


@pytest.mark.parametrize("make_neuron", [ZOO_ILIF, SJ_ILIF], ids=["neurons.ILIF", "spikingjelly.ILIFNode"])
def test_plain_torch_net_against_hand_count(make_neuron):
    torch.manual_seed(0)
    net = PlainNet(make_neuron)
    x = torch.rand(B, 2, 8, 8)
    spikes = catch(net.lif1, net.lif2, net.stem)
    layers = by_name(zoo.profile(net, x))
    (s1,), (s2,), (stem_out,) = spikes[net.lif1], spikes[net.lif2], spikes[net.stem]
    assert s1.max() > 1 and s2.sum() > 0  # integer counts, and the second layer fires

    assert layers["stem"].macs == dense_conv_macs(net.stem, stem_out) and layers["stem"].acs == 0
    assert layers["conv"].macs == 0 and layers["conv"].acs == hand_conv_acs(s1.flatten(0, 1), net.conv)
    assert layers["fc"].macs == 0 and layers["fc"].acs == hand_linear_acs(s2, net.fc)
    assert layers["conv"].input_rate == pytest.approx(float(s1.mean()))
    assert layers["lif1"].firing_rate == pytest.approx(float(s1.mean()))
    assert layers["lif1"].neurons == s1.numel()


@pytest.mark.parametrize("first", [neuron.LIFNode, neuron.IFNode, neuron.ILIFNode])
def test_spikingjelly_multi_step_net_against_hand_count(first):
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1, groups=2, step_mode="m"),  # real-valued input: MACs
        first(step_mode="m"),
        layer.SeqToANNContainer(nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.BatchNorm2d(6)),
        neuron.IFNode(step_mode="m", v_threshold=0.5),
        layer.MaxPool2d(2, step_mode="m"),
        layer.Flatten(start_dim=1, step_mode="m"),
        layer.Linear(6 * 4 * 4, 3, step_mode="m"),
    )
    with torch.no_grad():
        net[0].weight.mul_(5)
        net[2][1].running_var.fill_(0.05)
    x = torch.rand(T, B, 2, 8, 8)
    seen = catch(net[0], net[1], net[3], net[4])
    layers = by_name(zoo.profile(net, x))
    (c0,), (s1,), (s3,), (pooled,) = seen[net[0]], seen[net[1]], seen[net[3]], seen[net[4]]
    assert s1.sum() > 0 and pooled.sum() > 0
    if first is neuron.ILIFNode:
        assert s1.max() > 1  # counts, not just 0/1

    assert layers["0"].macs == dense_conv_macs(net[0], c0) and layers["0"].acs == 0
    assert layers["2.0"].macs == 0 and layers["2.0"].acs == hand_conv_acs(s1, net[2][0])
    assert layers["6"].macs == 0 and layers["6"].acs == hand_linear_acs(pooled, net[6])
    assert layers["1"].firing_rate == pytest.approx(float(s1.mean()))
    assert layers["3"].firing_rate == pytest.approx(float(s3.mean()))


def test_binary_image_into_first_conv_is_macs():
    """A float image of 0/1 pixels is not spikes: no neuron emitted it."""
    torch.manual_seed(0)
    net = PlainNet(ZOO_ILIF)
    image = (torch.rand(B, 2, 8, 8) > 0.5).float()
    seen = catch(net.stem)
    stem = by_name(zoo.profile(net, image))["stem"]
    assert stem.acs == 0 and stem.macs == dense_conv_macs(net.stem, seen[net.stem][0]) > 0
    assert stem.input_rate is None


@pytest.mark.parametrize("source", ["multispike", "normalised", "ternary"])
def test_integer_counts_count_count_many(source):
    """A count c into a plain layer is |c| accumulates, whatever scale the neuron emits it at."""
    pre = torch.tensor([[0.2, 1.0, 3.2, 9.0, -2.0, 2.6]])
    make = {"multispike": lambda: neurons.MultiSpike(D=4),            # counts 0 1 3 4 0 3
            "normalised": lambda: neurons.MultiSpike(D=4, norm=True),  # the same counts / 4
            "ternary": lambda: neurons.Ternary(D=2, gamma=1.5)}[source]  # counts 0 1 2 2 -1 2
    events = {"multispike": 11, "normalised": 11, "ternary": 8}[source]
    net = nn.Sequential(make(), nn.Linear(6, 4))
    p = zoo.profile(net, pre)
    assert p.layers[-1].macs == 0 and p.layers[-1].acs == events * 4
    assert p.layers[0].firing_rate == pytest.approx(events / 6)


def _spikes_in(between, make_neuron=ZOO_ILIF):
    """Profile ``I-LIF -> between -> flatten -> Linear``; return (linear row, hand AC count of its input)."""
    seen = {}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lif = make_neuron()
            self.fc = nn.LazyLinear(3)

        def forward(self, x):
            v = between(self.lif(x))
            seen["v"] = v.detach().clone()
            return self.fc(v.reshape(T, B, -1))

    torch.manual_seed(0)
    net = Net()
    x = torch.rand(T, B, 4, 4, 4) * 3
    net(x)  # materialise the lazy layer
    row = by_name(zoo.profile(net, x))["fc"]
    return row, hand_linear_acs(seen["v"], net.fc)


def _zero_buffer_filled(s):
    buf = s.new_zeros(*s.shape[:2], 4, 6, 6)
    buf[:, :, :, 1:5, 1:5] = s
    return buf


def _write_into_view(s):
    s.flatten()[0] = 0.5  # an in-place change through a view: no longer the neuron's output
    return s


@pytest.mark.parametrize("between", [
    lambda s: s.permute(0, 1, 3, 4, 2).contiguous(),
    lambda s: torch.cat([s, s[:, :, :2]], dim=2),
    lambda s: torch.stack([s[0], s[1]]),
    lambda s: F.pad(s.flatten(0, 1), (1, 1, 1, 1)),
    lambda s: F.max_pool2d(s.flatten(0, 1), 2),
    lambda s: F.interpolate(s.flatten(0, 1), scale_factor=2, mode="nearest"),
    lambda s: s.transpose(-1, -2)[..., ::2],
    lambda s: torch.chunk(s, 2, dim=2)[1].unsqueeze(0).squeeze(0),
    lambda s: F.dropout(s, 0.5, training=False),  # identity (eval)
    _zero_buffer_filled,
], ids=["permute", "cat", "stack", "zero-pad", "max-pool", "nearest", "transpose-slice", "chunk", "dropout",
        "zero-buffer"])
def test_spikes_pass_through_value_preserving_ops(between):
    row, hand = _spikes_in(between)
    assert row.macs == 0 and row.acs == hand > 0


@pytest.mark.parametrize("between", [
    lambda s: s * 1.0,
    lambda s: F.dropout(s, 0.5, training=True),
    lambda s: s + 0,
    lambda s: F.pad(s.flatten(0, 1), (1, 1), value=1.0),
    lambda s: F.avg_pool2d(s.flatten(0, 1), 2),
    lambda s: F.interpolate(s.flatten(0, 1), scale_factor=2, mode="bilinear"),
    lambda s: torch.cat([s, torch.ones_like(s)], dim=2),
    lambda s: torch.cat([s, s / 2], dim=2),
    _write_into_view,
], ids=["times-one", "dropout-training", "plus-zero", "pad-with-one", "avg-pool", "bilinear", "cat-with-real",
        "cat-with-half", "written-in-place"])
def test_computed_tensors_are_not_spikes(between):
    row, _ = _spikes_in(between)
    assert row.acs == 0 and row.macs > 0


CONVS = [
    ("conv1d", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (4, 9)),
    ("conv1d-dilated-grouped", lambda: nn.Conv1d(4, 8, 3, padding=3, dilation=3, groups=4), (4, 9)),
    ("conv2d-depthwise", lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 7, 6)),
    ("conv2d-strided-dilated",
     lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(2, 0), dilation=(2, 1)), (4, 7, 6)),
    ("conv2d-same", lambda: nn.Conv2d(4, 2, 4, padding="same"), (4, 7, 6)),
    ("conv2d-replicate", lambda: nn.Conv2d(4, 2, 3, padding=1, padding_mode="replicate"), (4, 7, 6)),
    ("conv2d-reflect-strided", lambda: nn.Conv2d(4, 2, 3, stride=2, padding=(2, 1), padding_mode="reflect"), (4, 7, 6)),
    ("conv1d-circular", lambda: nn.Conv1d(4, 2, 5, padding=2, padding_mode="circular"), (4, 9)),
    ("conv3d", lambda: nn.Conv3d(4, 6, 3, stride=(1, 2, 2), padding=1), (4, 3, 5, 5)),
    ("conv3d-grouped", lambda: nn.Conv3d(4, 2, (1, 3, 3), padding=(0, 1, 1), groups=2), (4, 3, 5, 5)),
    ("sj-conv1d", lambda: layer.Conv1d(4, 6, 3, padding=1, step_mode="m"), (4, 9)),
    ("sj-conv3d", lambda: layer.Conv3d(4, 6, 3, padding=1, step_mode="m"), (4, 3, 5, 5)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("make_conv,shape", [c[1:] for c in CONVS], ids=[c[0] for c in CONVS])
def test_conv_shapes_on_time_batch_input(make_conv, shape):
    """[T, B, C, ...] spikes into a plain conv (T folded into the batch) or a SpikingJelly multi-step conv."""
    torch.manual_seed(0)
    lif, conv = neurons.ILIF(), make_conv()
    multi_step = isinstance(conv, layer.Conv1d | layer.Conv3d)
    net = nn.Sequential(lif, conv) if multi_step else _Folded(lif, conv)
    x = torch.rand(T, B, *shape) * 4
    seen = catch(lif)
    row = by_name(zoo.profile(net, x))["1" if multi_step else "conv"]
    (s,) = seen[lif]
    assert s.max() > 1 and row.macs == 0 and row.acs == hand_conv_acs(s, conv)


class _Folded(nn.Module):
    def __init__(self, lif, conv):
        super().__init__()
        self.lif, self.conv = lif, conv

    def forward(self, x):
        return self.conv(self.lif(x).flatten(0, 1))


def test_linear_on_time_batch_spikes_and_single_step_neurons():
    """A single-step neuron called per time step, its outputs stacked, then a Linear on [T, B, N, F]."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lif = neuron.LIFNode(tau=2.0, step_mode="s")
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(torch.stack([self.lif(x_t) for x_t in x]))

    net = Net()
    x = torch.rand(T, B, 5, 6) * 3
    seen = catch(net.lif)
    row = by_name(zoo.profile(net, x))["fc"]
    assert row.macs == 0 and row.acs == hand_linear_acs(torch.stack(seen[net.lif]), net.fc) > 0


def test_transposed_conv_counts_events_that_land_in_the_output():
    torch.manual_seed(0)
    lif, up = neurons.ILIF(), nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, groups=1)
    net = _Folded(lif, up)
    x = torch.rand(1, 1, 3, 4, 5) * 4
    seen = catch(lif)
    row = by_name(zoo.profile(net, x))["conv"]
    s = seen[lif][0][0, 0]  # [C, H, W]
    out_h, out_w = 8, 10
    hand = 0
    for c, i, j in (s > 0).nonzero().tolist():  # each event: the kernel taps that land inside the output
        taps = sum(0 <= i * 2 - 1 + a < out_h and 0 <= j * 2 - 1 + b < out_w for a in range(3) for b in range(3))
        hand += int(s[c, i, j]) * taps * up.out_channels
    assert row.macs == 0 and row.acs == hand > 0
