"""Spike-driven mode equals integer mode on every registered detection model."""

import pytest
import torch

import neurons
import zoo
from benchmarks.detection import firing_statistics


@pytest.mark.parametrize("name", [n for n in zoo.list_models(task="detection") if not n.endswith("-test")])
def test_spike_mode_equals_integer_mode(name):
    torch.manual_seed(0)
    model = firing_statistics(zoo.load(name, pretrained=False))
    x = torch.rand(1, 3, 64, 64)
    eq = neurons.check_equivalence(model, x)
    assert eq.max_rel <= 1e-4, (name, eq)
    rate = zoo.profile(model, x).firing_rate
    assert rate is not None and rate > 0.05  # the check ran on real events, not on silence
