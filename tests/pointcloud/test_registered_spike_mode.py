"""Spike-driven mode equals integer mode on every registered point-cloud model, on real events."""

import pytest
import torch

import neurons
import zoo
from benchmarks import firing_statistics


@pytest.mark.parametrize("name", zoo.list_models(task="pointcloud"))
def test_spike_mode_equals_integer_mode(name):
    torch.manual_seed(0)
    # float64: in fp32 the events' partial sums, added in another order than the counts' product, can move a
    # value of 47M-parameter H across a neuron's rounding edge (0.5 of a count), which then propagates; the two
    # modes are the same arithmetic, so in float64 they agree to rounding
    model = firing_statistics(zoo.load(name, pretrained=False), bias_max=0.6).double()
    points = torch.rand(1, 300, 6, dtype=torch.float64)
    points[..., :3] = points[..., :3] * 2 - 1
    eq = neurons.check_equivalence(model, points)
    assert eq.max_rel <= 1e-4, (name, eq)
    rate = zoo.profile(model, points).firing_rate
    assert rate is not None and rate > 0.05  # the check ran on real events, not on silence
