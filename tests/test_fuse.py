"""Inference rewrites against the plain path."""

import pytest
import torch
from torch import nn

import neurons
from zoo.errors import ZooError
from zoo.fuse import fold_batchnorm, optimize_for_inference


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.lif = neurons.ILIF()
        self.conv2 = neurons.SpikeConv2d(4, 2, 1, bias=False, source=self.lif)
        self.bn2 = nn.BatchNorm2d(2)
        self.side = nn.BatchNorm2d(2)  # fed by conv2's output too: must not be folded

    def forward(self, x):
        y = self.lif(self.bn(self.conv(x))[None])[0]
        z = self.conv2(y)
        return self.bn2(z) + self.side(z)


def _randomise(m):
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 2)
                bn.bias.uniform_(-1, 1)
    return m.eval()


def test_fold_only_exclusive_conv_bn_pairs():
    torch.manual_seed(0)
    m = _randomise(ConvBN())
    x = torch.randn(2, 3, 8, 8) * 2
    folded, n = fold_batchnorm(m, x)
    assert n == 1 and isinstance(folded.bn, nn.Identity) and isinstance(folded.side, nn.BatchNorm2d)
    assert isinstance(m.bn, nn.BatchNorm2d)  # the original is untouched
    with torch.no_grad():
        a, b = m(x), folded(x)
    assert (a - b).abs().max() < 1e-4 or ((a - b).abs() > 1e-4).float().mean() < 0.01


def test_optimized_spikeyolo_matches_plain_path():
    from tasks.detection.spikeyolo import build_spikeyolo

    torch.manual_seed(0)
    m = _randomise(build_spikeyolo((0.33, 0.0625, 1024), nc=3))
    x = torch.rand(1, 3, 96, 128)
    _, n = fold_batchnorm(m, x)
    assert n > 40  # every conv -> BN of the network (BNAndPad keeps its own)
    fast = optimize_for_inference(m, x)
    with torch.no_grad():
        (ya, _), (yb, _) = m(x), fast(x.contiguous(memory_format=torch.channels_last))
    cls_a, cls_b = ya[:, 4:], yb[:, 4:]
    assert (cls_a - cls_b).abs().max() < 1e-3  # class scores: unchanged up to rare rounding flips
    assert ((ya - yb).abs() > 1e-3).float().mean() < 0.05


def test_memory_format_is_chosen_by_measurement_and_inputs_follow(monkeypatch):
    """``channels_last="auto"`` keeps the format timed faster (here made to win either way by a stand-in timer);
    a channels_last copy converts its inputs itself, so any input layout gives the same output."""
    import zoo.timing
    from tasks.detection.spikeyolo import build_spikeyolo
    from zoo import fuse

    torch.manual_seed(0)
    m = _randomise(build_spikeyolo((0.33, 0.0625, 1024), nc=3)).eval()
    x = torch.rand(1, 3, 64, 64)
    for cl_wins in (True, False):
        calls = []

        def fake_times(fn, repeats, calls=calls, cl_wins=cl_wins):
            fn()
            calls.append(1)
            return [1.0 if (len(calls) == 2) == cl_wins else 2.0]  # the second timing is channels_last's

        monkeypatch.setattr(zoo.timing, "call_times", fake_times)
        fast = fuse.optimize_for_inference(m, x)
        assert fast.zoo_channels_last is cl_wins and len(calls) == 2
        conv = next(mod for mod in fast.modules() if isinstance(mod, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is cl_wins or conv.weight.shape[-1] == 1
    with torch.no_grad():
        a = fuse.optimize_for_inference(m, x, channels_last=True)(x)[0]
        b = fuse.optimize_for_inference(m, x, channels_last=False)(x.contiguous(memory_format=torch.channels_last))[0]
    assert (a - b).abs().max() < 1e-3
    with pytest.raises(ZooError, match="channels_last must be"):
        fuse.optimize_for_inference(m, x, channels_last="yes")


def test_spikeyolo_bn_pad_blocks_fold_into_count_fed_convs():
    """SepRepConv (BN -> pad with BN(0) -> 1x1) and RepConv (1x1 -> BN -> pad) become one zero-padded 1x1 conv
    with the BN folded in, which reads the spike counts; same block outputs; the neurons of a copy of a model
    that resets before every forward keep no membrane after it."""
    import zoo
    from tasks.detection.spikeyolo import BNAndPad, RepConv, SepRepConv
    from zoo.fuse import fold_modules

    torch.manual_seed(0)
    model = zoo.load("spikeyolo-tiny-shapes", pretrained=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)[0]
    fast = optimize_for_inference(model, x, channels_last=False)
    blocks = [m for m in fast.modules() if isinstance(m, (SepRepConv, RepConv))]
    assert blocks and not any(isinstance(m, BNAndPad) for b in blocks for m in b.modules())
    assert all(isinstance(m, BNAndPad) for m in model.modules() if type(m).__name__ == "BNAndPad")  # not changed
    with torch.no_grad():
        got = fast(x)[0]
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert fold_modules(fast, x) == 0  # folded once
    ilif = [m for m in fast.modules() if hasattr(m, "keep_state")]
    assert ilif and not any(m.keep_state for m in ilif)
    assert all(m.keep_state for m in model.modules() if hasattr(m, "keep_state"))
    spiking = zoo.load("spikeyolo-tiny-shapes", pretrained=False, mode="spike")
    assert fold_modules(spiking.eval(), x) == 0  # spike-driven blocks fold BN themselves
