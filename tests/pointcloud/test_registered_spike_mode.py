"""Spike-driven mode equals integer mode on every registered point-cloud model, on real events."""

import pytest
import torch

import neurons
import zoo


def _firing(model):
    """Random BN statistics that make a randomly initialised E-3DSNN's neurons fire (as in detection's test)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.6)
    return model


@pytest.mark.parametrize("name", zoo.list_models(task="pointcloud"))
def test_spike_mode_equals_integer_mode(name):
    torch.manual_seed(0)
    # float64: in fp32 the events' partial sums, added in another order than the counts' product, can move a
    # value of 47M-parameter H across a neuron's rounding edge (0.5 of a count), which then propagates; the two
    # modes are the same arithmetic, so in float64 they agree to rounding
    model = _firing(zoo.load(name, pretrained=False)).double()
    points = torch.rand(1, 300, 6, dtype=torch.float64)
    points[..., :3] = points[..., :3] * 2 - 1
    eq = neurons.check_equivalence(model, points)
    assert eq.max_rel <= 1e-4, (name, eq)
    rate = zoo.profile(model, points).firing_rate
    assert rate is not None and rate > 0.05  # the check ran on real events, not on silence
