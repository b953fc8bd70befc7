"""Sparse convs equal a dense conv3d on the active sites, forward and backward; spike-driven mode; op counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import neurons
from tasks.pointcloud.sparse import (
    SparseConv3d, SparseSequential, SparseTensor, SpikeSparseConv3d, SpikeSubMConv3d, SubMConv3d,
)
from zoo.errors import ZooError

SHAPE = (7, 6, 5)


def random_sites(batch=2, shape=SHAPE, fill=0.35, channels=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    occupied = torch.rand(batch, *shape, generator=g) < fill
    coords = occupied.nonzero()  # (b, i0, i1, i2)
    coords = coords[torch.randperm(len(coords), generator=g)]  # sites in no particular order
    feats = torch.randn(len(coords), channels, generator=g, dtype=dtype)
    return SparseTensor(feats, coords, shape, batch)


def dense_weight(conv):
    return conv.weight.permute(0, 4, 1, 2, 3)  # spconv (out, k0, k1, k2, in) -> conv3d (out, in, k0, k1, k2)


def at_sites(dense, coords):
    return dense.permute(0, 2, 3, 4, 1)[coords[:, 0], coords[:, 1], coords[:, 2], coords[:, 3]]


@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 1), (3, 2), ((3, 1, 3), 1)])
def test_submanifold_equals_dense_conv3d_forward_and_backward(k, dilation):
    x = random_sites(channels=3)
    conv = SubMConv3d(3, 4, k, dilation=dilation, bias=True).double()
    feats = x.features.clone().requires_grad_(True)
    out = conv(x.replace_feature(feats))
    assert torch.equal(out.coords, x.coords)

    dense_in = x.replace_feature(feats).dense()
    ks = conv.kernel_size
    pad = tuple((kk // 2) * dilation for kk in ks)
    ref = at_sites(F.conv3d(dense_in, dense_weight(conv), conv.bias, padding=pad, dilation=dilation), x.coords)
    torch.testing.assert_close(out.features, ref, rtol=1e-10, atol=1e-10)

    g = torch.randn_like(ref)
    gf, gw, gb = torch.autograd.grad((out.features * g).sum(), (feats, conv.weight, conv.bias))
    rf, rw, rb = torch.autograd.grad((ref * g).sum(), (feats, conv.weight, conv.bias))
    torch.testing.assert_close(gf, rf, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gb, rb, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 1, 0), ((2, 3, 1), (2, 1, 1), (0, 1, 0))])
def test_strided_conv_equals_dense_conv3d_forward_and_backward(k, stride, padding):
    x = random_sites(channels=3, seed=1)
    conv = SparseConv3d(3, 5, k, stride=stride, padding=padding, bias=False).double()
    feats = x.features.clone().requires_grad_(True)
    out = conv(x.replace_feature(feats))
    ref_dense = F.conv3d(x.replace_feature(feats).dense(), dense_weight(conv), None, stride=stride, padding=padding)
    assert out.spatial_shape == tuple(ref_dense.shape[2:])
    # every output site gets an input, and the dense output is zero everywhere else
    torch.testing.assert_close(out.dense(), ref_dense, rtol=1e-10, atol=1e-10)
    reach = F.conv3d(x.replace_feature(torch.ones_like(feats[:, :1])).dense(), torch.ones(1, 1, *conv.kernel_size,
                     dtype=feats.dtype), stride=stride, padding=padding)
    assert len(out.coords) == int((reach > 0).sum())

    ref = at_sites(ref_dense, out.coords)
    g = torch.randn_like(ref)
    gf, gw = torch.autograd.grad((out.features * g).sum(), (feats, conv.weight))
    rf, rw = torch.autograd.grad((ref * g).sum(), (feats, conv.weight))
    torch.testing.assert_close(gf, rf, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)


def test_k2s2_output_site_is_floor_half():
    x = random_sites(seed=2)
    out = SparseConv3d(3, 2, 2, stride=2, bias=False)(x.replace_feature(x.features.float()))
    half = torch.cat([x.coords[:, :1], x.coords[:, 1:] // 2], 1)
    # output shape (S - 2) // 2 + 1 as conv3d: on an odd axis the last input plane falls off (as in spconv)
    assert out.spatial_shape == (3, 3, 2)
    half = half[(half[:, 1:] < torch.tensor(out.spatial_shape)).all(1)]
    assert torch.equal(torch.unique(out.coords, dim=0), torch.unique(half, dim=0))


def test_spconv_1x1_quirk_is_a_reinterpretation_of_the_weight():
    x = random_sites(channels=3, seed=3)
    conv = SubMConv3d(3, 4, 1, bias=True, spconv_1x1=True).double()
    out = conv(x)
    expect = x.features @ conv.weight.reshape(3, 4) + conv.bias  # what spconv 2.x computes
    torch.testing.assert_close(out.features, expect)
    plain = SubMConv3d(3, 4, 1, bias=True).double()
    plain.load_state_dict(conv.state_dict())
    assert not torch.allclose(plain(x).features, expect)


def test_duplicate_coordinates_are_an_error():
    coords = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]])
    with pytest.raises(ZooError, match="duplicate"):
        SubMConv3d(2, 2, 3)(SparseTensor(torch.zeros(2, 2), coords, (3, 3, 3)))


def _spiking_stack():
    spike1, spike2 = neurons.MultiSpike(D=4, half_up=True), neurons.MultiSpike(D=4, half_up=True)
    return SparseSequential(
        SubMConv3d(3, 8, 3, bias=False), spike1,
        SpikeSubMConv3d(8, 8, 3, bias=True, source=spike1), spike2,
        SpikeSparseConv3d(8, 6, 2, stride=2, bias=False, source=spike2),
    )


def test_spike_driven_mode_equals_integer_mode_and_sees_only_events(monkeypatch):
    torch.manual_seed(0)
    x = random_sites(channels=3, seed=4, dtype=torch.float32)
    x = x.replace_feature(x.features * 3)
    net = _spiking_stack()
    ints = net(x).features
    from tasks.pointcloud import sparse

    seen, real = [], sparse.apply_kernel_map

    def recording(features, weight, kmap):
        seen.append(features.detach().clone())
        return real(features, weight, kmap)

    monkeypatch.setattr(sparse, "apply_kernel_map", recording)
    spikes = neurons.to_spike_driven(net)(x).features
    torch.testing.assert_close(spikes, ints, rtol=1e-5, atol=1e-5)
    # the first conv reads real values; the two spiking convs see only [D=4, N, C] binary events
    assert seen[0].ndim == 2
    events = seen[1:]
    assert len(events) == 2 and all(s.shape[0] == 4 and set(s.unique().tolist()) <= {0.0, 1.0} for s in events)
    assert all(s.sum() > 0 for s in events)


def test_spike_driven_mode_rejects_non_counts():
    conv = SpikeSubMConv3d(3, 4, 3, source=neurons.MultiSpike(D=4))
    neurons.to_spike_driven(conv)
    x = random_sites(channels=3, seed=5, dtype=torch.float32)
    with pytest.raises(neurons.NeuronError, match="not counts"):
        conv(x)


def test_pair_counts_and_event_acs_are_exact():
    x = random_sites(channels=3, seed=6, dtype=torch.float32)
    counts = torch.randint(0, 5, x.features.shape).float()
    for conv, stride, pad in ((SubMConv3d(3, 4, 3, bias=False), 1, 1), (SparseConv3d(3, 4, 2, stride=2, bias=False), 2, 0)):
        out = conv(x.replace_feature(counts))
        occupied = x.replace_feature(torch.ones(len(counts), 1)).dense()
        ones = torch.ones(1, 1, 3, 3, 3) if stride == 1 else torch.ones(1, 1, 2, 2, 2)
        if stride == 1:  # submanifold: pairs = sum over active outputs of active neighbours
            reach = F.conv3d(occupied, ones, padding=pad)
            pairs = int(at_sites(reach, x.coords).sum())
        else:  # strided: every input reaches exactly one output per tap that lands on the grid
            inside = (x.coords[:, 1:] < 2 * torch.tensor(out.spatial_shape)).all(1)
            pairs = int(inside.sum())  # inputs past the last full 2-cell fall off (odd axes)
            assert 0 < pairs < len(counts)
        assert conv.num_pairs == pairs == int(conv.fan_out.sum())
        assert conv.dense_ops() == pairs * 3 * 4
        # ACs: each unit event, times the output sites it reaches, times out_channels
        per_site = counts.sum(1)
        assert conv.event_acs(counts) == int((conv.fan_out.float() * per_site).sum()) * 4
        if stride == 1:
            dense_counts = x.replace_feature(counts).dense().sum(1, keepdim=True)
            mask = occupied
            # events at j reach every active site in j's 3x3x3 neighbourhood
            reach_events = F.conv3d(dense_counts, ones, padding=1) * mask
            assert conv.event_acs(counts) == int(reach_events.sum()) * 4
