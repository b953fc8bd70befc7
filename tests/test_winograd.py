"""Winograd F(4x4, 3x3) against the direct convolution, and the per-layer switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.fuse import optimize_for_inference
from zoo.winograd import eligible, switches, use_winograd, winograd_conv2d, winograd_weight


@pytest.mark.parametrize("padding", [(1, 1), (0, 0), (2, 1)])
@pytest.mark.parametrize("size", [(8, 8), (7, 13), (3, 5)])
def test_equals_direct_convolution(padding, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (2, 6, *size), generator=g).float()  # spike counts, as in SpikeYOLO
    w, b = torch.randn(5, 6, 3, 3, generator=g), torch.randn(5, generator=g)
    ref = F.conv2d(x, w, b, padding=padding)
    out = winograd_conv2d(x, winograd_weight(w), b, padding)
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    assert torch.allclose(winograd_conv2d(x, winograd_weight(w), None, padding), ref - b.view(1, -1, 1, 1), atol=1e-4)


def test_switch_keeps_the_model_and_falls_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2)).eval()
    assert [eligible(m) for m in model] == [True, False, False, False, False]
    keys = set(model.state_dict())
    x = torch.rand(1, 4, 12, 12)
    with torch.no_grad():
        ref = model(x)
    used = use_winograd(model, autotune=False)
    assert len(used) == 1 and switches(model) == used and set(model.state_dict()) == keys
    assert use_winograd(model) == []  # idempotent
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5)
    assert used[0].choice == {(1, 4, 12, 12): True}
    # training (grad enabled) takes the direct convolution: the backward pass is torch's own
    out = model(x.requires_grad_())
    out.sum().backward()
    assert torch.allclose(out.detach(), ref, atol=1e-6)


def test_autotune_records_a_choice_per_shape():
    conv = nn.Conv2d(8, 8, 3, padding=1).eval()
    (switch,) = use_winograd(conv)
    with torch.no_grad():
        conv(torch.rand(1, 8, 16, 16))
        conv(torch.rand(1, 8, 20, 20))
    assert set(switch.choice) == {(1, 8, 16, 16), (1, 8, 20, 20)}


def test_optimize_for_inference_winograd_on_a_spiking_detector():
    import zoo
    from benchmarks.detection import firing_statistics

    torch.manual_seed(0)
    model = firing_statistics(zoo.load("spikeyolo-tiny-shapes", pretrained=False))
    fast = optimize_for_inference(model, torch.rand(1, 3, 64, 64), winograd=True)
    for s in switches(fast):
        s.autotune = False
    assert len(switches(fast)) > 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref, got = model(x), fast(x)
    ref, got = (ref[0], got[0]) if isinstance(ref, tuple) else (ref, got)
    # counts can flip where a membrane potential sits on a rounding boundary: compare the bulk, not every element
    close = ((got - ref).abs() <= 1e-3 * ref.abs().max()).float().mean()
    assert close > 0.99, float(close)
