"""Spike-driven mode equals integer mode on every registered segmentation model, on real events."""

import pytest
import torch

import neurons
import zoo


def _firing(model):
    """Random BN statistics that make a randomly initialised Spike2Former's neurons fire (as detection's test)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.6)
    return model


@pytest.mark.parametrize("name", zoo.list_models(task="segmentation"))
def test_spike_mode_equals_integer_mode(name):
    torch.manual_seed(0)
    # float64: in fp32 a different order of summing events can move a value across a neuron's rounding edge
    # (a count), which then propagates; the two modes are the same arithmetic, so in float64 they agree
    model = _firing(zoo.load(name, pretrained=False)).double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    eq = neurons.check_equivalence(model, x)
    assert eq.max_rel <= 1e-4, (name, eq)
    rate = zoo.profile(model, x).firing_rate
    assert rate is not None and rate > 0.01  # the check ran on real events, not on silence
