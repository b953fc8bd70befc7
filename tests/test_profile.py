"""The profiler against numbers worked out by hand."""

import pytest
import torch
from torch import nn

import neurons
import zoo
from zoo.errors import ZooError


class HandNet(nn.Module):
    """stem Linear(2->3, real input) -> I-LIF -> SpikeLinear(3->2), single time step."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(2, 3, bias=False)
        self.lif = neurons.ILIF(step_mode="s")
        self.fc = neurons.SpikeLinear(3, 2, source=self.lif)
        with torch.no_grad():
            self.stem.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.lif(self.stem(x)))


def test_profile_by_hand():
    x = torch.tensor([[2.0, 3.4]])  # stem -> [2, 3.4, 5.4] -> counts [2, 3, 4]
    p = zoo.profile(HandNet(), x)
    layers = {l.name: l for l in p.layers}
    assert layers["stem"].macs == 6 and layers["stem"].acs == 0  # 3 outputs x 2 inputs, real-valued
    assert layers["lif"].firing_rate == pytest.approx(3.0)  # mean count per neuron per step
    assert layers["fc"].macs == 0 and layers["fc"].acs == 9 * 2  # 2+3+4 events, each reaching 2 outputs
    assert layers["fc"].input_rate == pytest.approx(3.0)
    assert p.energy_mj == pytest.approx((6 * 4.6 + 18 * 0.9) * 1e-9)
    assert p.params == 6 + 8
    p8 = zoo.profile(HandNet(), x, preset="int8")
    assert p8.energy_mj == pytest.approx((6 * 0.23 + 18 * 0.03) * 1e-9)


def test_conv_events_counted_exactly_with_borders():
    conv = neurons.SpikeConv2d(1, 2, 3, padding=1, source=neurons.Levels(D=4))
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 3  # a corner: reaches 4 of the 9 kernel positions
    x[0, 0, 1, 1] = 1  # interior: reaches 9
    p = zoo.profile(nn.Sequential(conv), x)
    assert p.layers[0].acs == (3 * 4 + 1 * 9) * 2  # x 2 output channels


def test_ternary_counts_as_absolute_events():
    t = neurons.Ternary(D=2, gamma=0.5)
    lin = neurons.SpikeLinear(3, 4, source=t)
    p = zoo.profile(nn.Sequential(t, lin), torch.tensor([[-1.0, 0.0, 0.6]]))  # counts -2, 0, 1
    assert p.layers[-1].acs == 3 * 4


def test_same_numbers_in_spike_mode(tiny):
    x = torch.rand(1, 3, 8, 8)
    a = zoo.profile(tiny, x)
    neurons.to_spike_driven(tiny)
    b = zoo.profile(tiny, x)
    assert (a.macs, a.acs) == (b.macs, b.acs) and a.acs > 0
    assert a.firing_rate == pytest.approx(b.firing_rate)


def test_plain_layer_is_ac_when_fed_by_a_neuron_and_mac_otherwise():
    lin = nn.Linear(4, 3)
    spikes = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    assert zoo.profile(nn.Sequential(neurons.MultiSpike(D=1), lin), spikes).acs == 9
    assert zoo.profile(lin, spikes).macs == 12  # 0/1 values that no neuron emitted are not spikes
    assert zoo.profile(lin, torch.tensor([[2.0, 0.0, 1.0, 1.0]])).macs == 12


def test_unknown_preset():
    with pytest.raises(ZooError, match="preset"):
        zoo.profile(nn.Linear(2, 2), torch.zeros(1, 2), preset="7nm")


def test_acs_equal_spikingjelly_count_of_real_events(tiny):
    """Integer-mode AC counts == SpikingJelly's op_counter on the true binary events of spike mode."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.op_counter import ACCounter, DispatchCounterMode

    x = torch.rand(1, 3, 8, 8)
    ours = zoo.profile(tiny, x)
    neurons.to_spike_driven(tiny)
    counter = ACCounter()
    functional.reset_net(tiny)
    with torch.no_grad(), DispatchCounterMode([counter]):
        tiny(x)
    weight_ops = {k: v for k, v in counter.get_counts()["Global"].items() if "convolution" in str(k) or "mm" in str(k)}
    assert ours.acs > 0 and sum(weight_ops.values()) == ours.acs
