"""Spike-driven mode equals integer mode on every registered detection model."""

import pytest
import torch

import neurons
import zoo


def _firing(model):
    """Random BN statistics that make the neurons fire as in a trained model."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.4)
    return model


@pytest.mark.parametrize("name", [n for n in zoo.list_models(task="detection") if not n.endswith("-test")])
def test_spike_mode_equals_integer_mode(name):
    torch.manual_seed(0)
    model = _firing(zoo.load(name, pretrained=False))
    x = torch.rand(1, 3, 64, 64)
    eq = neurons.check_equivalence(model, x)
    assert eq.max_rel <= 1e-4, (name, eq)
    rate = zoo.profile(model, x).firing_rate
    assert rate is not None and rate > 0.05  # the check ran on real events, not on silence
