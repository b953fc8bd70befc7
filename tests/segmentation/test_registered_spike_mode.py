"""Spike-driven mode equals integer mode on every registered segmentation model, on real events."""

import pytest
import torch

import neurons
import zoo
from benchmarks import firing_statistics


@pytest.mark.parametrize("name", zoo.list_models(task="segmentation"))
def test_spike_mode_equals_integer_mode(name):
    torch.manual_seed(0)
    # float64: in fp32 a different order of summing events can move a value across a neuron's rounding edge
    # (a count), which then propagates; the two modes are the same arithmetic, so in float64 they agree
    model = firing_statistics(zoo.load(name, pretrained=False), bias_max=0.6).double()
    for key, gain in model.state_dict().items():  # the demo model's attention gains, as calibration leaves them
        if key.endswith(".gain"):
            gain.fill_(float(torch.empty(()).uniform_(2, 40)))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    eq = neurons.check_equivalence(model, x)
    assert eq.max_rel <= 1e-4, (name, eq)
    rate = zoo.profile(model, x).firing_rate
    assert rate is not None and rate > 0.01  # the check ran on real events, not on silence
