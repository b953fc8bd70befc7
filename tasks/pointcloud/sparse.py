"""Sparse 3D convolution in plain PyTorch: submanifold and strided convs on voxel sites.

Why hand-written: the E-3DSNN backbones were built on spconv 2.x, but spconv
2.3.8's CPU wheel (the only build that installs on a machine without CUDA)
returns wrong results when torch runs with 2 intra-op threads (max error 0.3-1.0
against a dense conv3d after a few calls; exact only under
``torch.set_num_threads(1)``) and has no CPU backward at all
(``indice_conv_backward`` calls ``torch.cuda.current_stream()``). Here every
conv is one gather + matmul + ``index_add_`` per kernel offset, so forward and
backward are ordinary autograd ops on any device, and both equal a dense
``F.conv3d`` evaluated on the active sites (``tests/pointcloud/test_sparse.py``).

Data: a :class:`SparseTensor` holds ``features [N, C]``, integer ``coords [N, 4]``
= ``(batch, i0, i1, i2)`` (unique, in ``[0, spatial_shape)``), the
``spatial_shape`` and the batch size, as spconv's ``SparseConvTensor``. Sites are
hashed by the linear key ``((b * S0 + i0) * S1 + i1) * S2 + i2``; neighbours
are found with one sort and a ``searchsorted`` per kernel offset. The
(input site, output site, offset) pairs of a geometry are computed once and
cached on the tensor, so every submanifold conv of a stage reuses them (what
spconv's ``indice_key`` does).

Weights keep spconv 2.x's layout ``(out, k0, k1, k2, in)``: official state dicts
load as they are. ``weight.permute(0, 4, 1, 2, 3)`` is the equivalent
``F.conv3d`` weight (cross-correlation, no flip, as spconv; checked).

* :class:`SubMConv3d`: output sites = input sites; odd kernel, centred
  (``padding`` is ignored, as spconv's submanifold conv). With
  ``spconv_1x1=True`` a kernel-size-1 conv computes ``x @ weight.view(in, out)``
  -- what spconv 2.x actually does on its ``(out, 1, 1, 1, in)`` weight
  (traveller59/spconv#450), and so what models trained with it learned.
* :class:`SparseConv3d`: a regular (strided) conv restricted to outputs that
  receive at least one input; output ``o`` gets input ``c = o * stride - padding
  + k * dilation``; output shape as ``F.conv3d``'s.

Spike-driven form: :class:`SpikeSubMConv3d` / :class:`SpikeSparseConv3d` are the
same layers as :class:`neurons.Synapse` s: fed by a count neuron, in spike-driven
mode each count (0..D) becomes ``D`` binary event slots
(``neurons.expand_events``), the bias-free weights accumulate the events of each
slot, the slots are summed and the bias added once.

Operation counting (for ``zoo.profile``): after every forward each sparse conv
holds ``last_kernel_map`` (a :class:`KernelMap`), and

* ``num_pairs``: the number of (input site, output site, offset) pairs that exist
  (only active sites, only kernel taps that hit an active site);
* ``fan_out``: ``[N_in]`` long tensor, how many pairs each input site is in;
* ``dense_ops()`` = ``num_pairs * in_channels * out_channels`` (MACs for a
  real-valued input);
* ``event_acs(counts)`` = ``out_channels * sum_j fan_out[j] * sum_c |counts[j, c]|``
  (ACs: one per unit event per synapse reached, exact).

The layers take and return a :class:`SparseTensor` and are not ``nn.modules.conv._ConvNd``;
a profiler finds them as :class:`SparseConvBase`. In a forward hook (the kernel map is set
by then): a :class:`neurons.Synapse` (``Spike*Conv3d``) gets
``module.event_acs(module.input_counts(args[0].features))`` ACs; any other sparse conv
(real-valued input: the stem's first conv, ``final``) ``module.dense_ops()`` MACs. The
cost of the same layer as a dense op over the whole grid is not a meaningful reference
(the grid is ~99 % empty); ``dense_ops()`` is the sparse dense-equivalent.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from spikingjelly.activation_based import layer as sj_layer
from torch import nn

from neurons.synapse import Synapse, expand_events
from zoo.errors import ZooError

__all__ = [
    "SparseTensor", "KernelMap", "SparseSequential", "SparseConvBase", "SubMConv3d", "SparseConv3d",
    "SpikeSubMConv3d", "SpikeSparseConv3d", "linear_keys", "submanifold_map", "strided_map", "apply_kernel_map",
]


def _triple(v) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 3:
        raise ZooError(f"expected an int or 3 ints, got {v!r}")
    return v


def linear_keys(coords: torch.Tensor, spatial_shape) -> torch.Tensor:
    """``[N, 4]`` (batch, i0, i1, i2) -> ``[N]`` int64 keys ``((b * S0 + i0) * S1 + i1) * S2 + i2``."""
    s0, s1, s2 = (int(s) for s in spatial_shape)
    c = coords.long()
    return ((c[:, 0] * s0 + c[:, 1]) * s1 + c[:, 2]) * s2 + c[:, 3]


@dataclass
class KernelMap:
    """The (input site, output site, kernel tap) pairs of one conv on one geometry.

    ``taps[t]`` is the flat kernel index (``k0 * K1 * K2 + k1 * K2 + k2``);
    ``in_idx[t]`` / ``out_idx[t]`` the sites it connects. ``identity_tap`` is the
    tap whose pairs are all sites onto themselves (a submanifold conv's centre),
    computed without a gather.
    """

    taps: list[int]
    in_idx: list[torch.Tensor]
    out_idx: list[torch.Tensor]
    n_in: int
    n_out: int
    identity_tap: int | None = None
    _fan_out: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_pairs(self) -> int:
        return sum(int(i.numel()) for i in self.in_idx) + (self.n_in if self.identity_tap is not None else 0)

    @property
    def fan_out(self) -> torch.Tensor:
        if self._fan_out is None:
            device = self.in_idx[0].device if self.in_idx else torch.device("cpu")
            f = torch.zeros(self.n_in, dtype=torch.long, device=device)
            for idx in self.in_idx:
                f.index_add_(0, idx, torch.ones_like(idx))
            if self.identity_tap is not None:
                f += 1
            self._fan_out = f
        return self._fan_out


class SparseTensor:
    """Active voxel sites: ``features [N, C]``, ``coords [N, 4]`` (batch, i0, i1, i2), ``spatial_shape``."""

    def __init__(self, features: torch.Tensor, coords: torch.Tensor, spatial_shape, batch_size: int | None = None,
                 _cache: dict | None = None):
        if features.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 4 or coords.shape[0] != features.shape[0]:
            raise ZooError(
                f"SparseTensor needs features [N, C] and coords [N, 4] (batch, i0, i1, i2); "
                f"got {tuple(features.shape)} and {tuple(coords.shape)}"
            )
        self.features = features
        self.coords = coords.long()
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.batch_size = int(batch_size) if batch_size is not None else (int(coords[:, 0].max()) + 1 if len(coords) else 0)
        self._cache = {} if _cache is None else _cache  # kernel maps of this geometry, shared by replace_feature

    def replace_feature(self, features: torch.Tensor) -> "SparseTensor":
        """The same sites (and cached kernel maps) with new features."""
        if features.shape[0] != self.features.shape[0]:
            raise ZooError(f"replace_feature: {features.shape[0]} rows for {self.features.shape[0]} sites")
        return SparseTensor(features, self.coords, self.spatial_shape, self.batch_size, self._cache)

    def __add__(self, other):
        """Site-wise sum with another tensor on the same sites, or with a ``[N, C]`` tensor."""
        if isinstance(other, SparseTensor):
            if other.coords is not self.coords and not torch.equal(other.coords, self.coords):
                raise ZooError("cannot add SparseTensors on different sites")
            other = other.features
        return self.replace_feature(self.features + other)

    def dense(self) -> torch.Tensor:
        """``[B, C, S0, S1, S2]`` with zeros at inactive sites (for checks; memory grows with the grid)."""
        out = self.features.new_zeros(self.batch_size, *self.spatial_shape, self.features.shape[1])
        c = self.coords
        out[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = self.features
        return out.permute(0, 4, 1, 2, 3).contiguous()

    def __repr__(self) -> str:
        return (f"SparseTensor(sites={self.features.shape[0]}, channels={self.features.shape[1]}, "
                f"spatial_shape={self.spatial_shape}, batch_size={self.batch_size})")


def _check_unique(sorted_keys: torch.Tensor) -> None:
    if sorted_keys.numel() > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        raise ZooError("SparseTensor has duplicate coordinates; merge points per voxel first (tasks.pointcloud.e3dsnn.voxelize)")


def submanifold_map(x: SparseTensor, kernel_size, dilation=1) -> KernelMap:
    """Pairs of a submanifold conv: output site ``o`` reads site ``o + (k - K // 2) * dilation``."""
    ks, dil = _triple(kernel_size), _triple(dilation)
    if any(k % 2 == 0 for k in ks):
        raise ZooError(f"a submanifold conv needs an odd kernel size, got {ks}")
    key = ("subm", ks, dil)
    if key in x._cache:
        return x._cache[key]
    coords, shape = x.coords, x.spatial_shape
    keys = linear_keys(coords, shape)
    sorted_keys, order = torch.sort(keys)
    _check_unique(sorted_keys)
    n = coords.shape[0]
    bounds = torch.tensor(shape, device=coords.device)
    taps, ins, outs, identity = [], [], [], None
    for t, k in enumerate(itertools.product(*(range(k) for k in ks))):
        delta = torch.tensor([(k[d] - ks[d] // 2) * dil[d] for d in range(3)], device=coords.device)
        if not bool(delta.any()):
            identity = t
            continue
        nb = coords[:, 1:] + delta
        valid = ((nb >= 0) & (nb < bounds)).all(1)
        nkeys = linear_keys(torch.cat([coords[:, :1], nb], 1), shape)
        pos = torch.searchsorted(sorted_keys, nkeys).clamp_(max=max(n - 1, 0))
        found = valid & (sorted_keys[pos] == nkeys) if n else valid
        out_idx = found.nonzero().squeeze(1)
        taps.append(t)
        ins.append(order[pos[out_idx]])
        outs.append(out_idx)
    kmap = KernelMap(taps, ins, outs, n_in=n, n_out=n, identity_tap=identity)
    x._cache[key] = kmap
    return kmap


def strided_map(x: SparseTensor, kernel_size, stride, padding=0, dilation=1) -> tuple[KernelMap, torch.Tensor, tuple]:
    """Pairs of a regular conv on the active sites: ``(kernel map, output coords, output spatial shape)``.

    Output sites are those that receive at least one input, sorted by linear key.
    """
    ks, st, pad, dil = _triple(kernel_size), _triple(stride), _triple(padding), _triple(dilation)
    key = ("conv", ks, st, pad, dil)
    if key in x._cache:
        return x._cache[key]
    out_shape = tuple((x.spatial_shape[d] + 2 * pad[d] - dil[d] * (ks[d] - 1) - 1) // st[d] + 1 for d in range(3))
    if any(s <= 0 for s in out_shape):
        raise ZooError(f"spatial shape {x.spatial_shape} is too small for kernel {ks}, stride {st}, padding {pad}")
    coords = x.coords
    bounds = torch.tensor(out_shape, device=coords.device)
    st_t, pad_t = torch.tensor(st, device=coords.device), torch.tensor(pad, device=coords.device)
    taps, ins, cand = [], [], []
    for t, k in enumerate(itertools.product(*(range(k) for k in ks))):
        num = coords[:, 1:] + pad_t - torch.tensor([k[d] * dil[d] for d in range(3)], device=coords.device)
        o = torch.div(num, st_t, rounding_mode="floor")
        valid = ((num % st_t) == 0).all(1) & (num >= 0).all(1) & (o < bounds).all(1)
        idx = valid.nonzero().squeeze(1)
        taps.append(t)
        ins.append(idx)
        cand.append(torch.cat([coords[idx, :1], o[idx]], 1))
    all_out = torch.cat(cand, 0)
    out_keys, inverse = torch.unique(linear_keys(all_out, out_shape), sorted=True, return_inverse=True)
    out_coords = all_out.new_empty(out_keys.shape[0], 4)
    out_coords[inverse] = all_out
    outs = list(torch.split(inverse, [int(i.numel()) for i in ins]))
    result = (KernelMap(taps, ins, outs, n_in=coords.shape[0], n_out=int(out_keys.shape[0])), out_coords, out_shape)
    x._cache[key] = result
    return result


def apply_kernel_map(features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """``features [..., N_in, C_in]`` through ``weight (C_out, k0, k1, k2, C_in)`` -> ``[..., N_out, C_out]``.

    One gather, one matmul and one ``index_add_`` per kernel tap (no bias).
    """
    w = weight.flatten(1, -2)  # (out, taps, in)
    out = features.new_zeros(*features.shape[:-2], kmap.n_out, weight.shape[0])
    if kmap.identity_tap is not None:
        out = out + features @ w[:, kmap.identity_tap].t()
    for t, i, o in zip(kmap.taps, kmap.in_idx, kmap.out_idx):
        if i.numel():
            out.index_add_(-2, o, features.index_select(-2, i) @ w[:, t].t())
    return out


class SparseSequential(nn.Sequential):
    """``nn.Sequential`` over a :class:`SparseTensor`: sparse convs take the tensor, any other module
    (BatchNorm1d, neurons) acts on its ``features`` (as spconv's ``SparseSequential``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        for m in self:
            x = m(x) if isinstance(m, SparseConvBase) else x.replace_feature(m(x.features))
        return x


class SparseConvBase(nn.Module):
    """Base of the sparse convs: parameters ``weight (out, k0, k1, k2, in)`` and ``bias``; op counts of the last forward."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, indice_key: str | None = None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _triple(kernel_size), _triple(stride)
        self.padding, self.dilation = _triple(padding), _triple(dilation)
        self.indice_key = indice_key  # documentation only: kernel maps are cached per geometry
        self.weight = nn.Parameter(torch.empty(self.out_channels, *self.kernel_size, self.in_channels))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels))
        else:
            self.register_parameter("bias", None)
        self.last_kernel_map: KernelMap | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))  # torch's conv default
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    # ---- subclasses
    def _geometry(self, x: SparseTensor):
        raise NotImplementedError

    def _matrix_weight(self) -> torch.Tensor:
        """The weight as used: ``(out, k0, k1, k2, in)``."""
        return self.weight

    def _features(self, features: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        out = apply_kernel_map(features, self._matrix_weight(), kmap)
        return out if self.bias is None else out + self.bias

    def forward(self, x: SparseTensor) -> SparseTensor:
        if not isinstance(x, SparseTensor):
            raise ZooError(f"{type(self).__name__} takes a SparseTensor, got {type(x).__name__}")
        if x.features.shape[1] != self.in_channels:
            raise ZooError(f"{type(self).__name__} expects {self.in_channels} channels, got {x.features.shape[1]}")
        kmap, coords, shape = self._geometry(x)
        self.last_kernel_map = kmap
        feats = self._features(x.features, kmap)
        if coords is None:
            return x.replace_feature(feats)
        return SparseTensor(feats, coords, shape, x.batch_size)

    # ---- operation counts of the last forward
    @property
    def num_pairs(self) -> int:
        return self.last_kernel_map.num_pairs if self.last_kernel_map is not None else 0

    @property
    def fan_out(self) -> torch.Tensor:
        return self.last_kernel_map.fan_out

    def dense_ops(self) -> int:
        """Multiply-accumulates of the last forward on a real-valued input."""
        return self.num_pairs * self.in_channels * self.out_channels

    @torch.no_grad()
    def event_acs(self, counts: torch.Tensor) -> int:
        """Exact accumulates that ``counts [N_in, C_in]`` (``|c|`` unit events each) trigger in the last forward."""
        per_site = counts.abs().to(torch.float64).sum(1)
        return int((self.fan_out.to(torch.float64) * per_site).sum().item()) * self.out_channels

    def profile_operations(self, x, out) -> dict:
        """:func:`zoo.profile`'s hook for layers that are no Conv: the last forward's exact operations, over
        the kernel pairs that exist (a synapse fed by a count neuron: accumulates; else dense MACs)."""
        if isinstance(self, Synapse):
            counts = self.input_counts(x.features)
            return {"dense": self.dense_ops(), "acs": self.event_acs(counts),
                    "input_rate": float(counts.abs().float().mean())}
        return {"dense": self.dense_ops(), "acs": None}

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1, 1):
            s += f", dilation={self.dilation}"
        return s + f", bias={self.bias is not None}"


class SubMConv3d(SparseConvBase):
    """Submanifold conv (spconv ``SubMConv3d``): outputs on the input sites only; weight ``(out, k, k, k, in)``.

    ``spconv_1x1=True``: for kernel size 1, compute ``x @ weight.view(in, out)`` as spconv 2.x does
    (its upstream bug, traveller59/spconv#450); needed to run weights trained with spconv.
    """

    def __init__(self, *args, spconv_1x1: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if spconv_1x1 and math.prod(self.kernel_size) != 1:
            raise ZooError("spconv_1x1 applies to kernel size 1 only")
        self.spconv_1x1 = bool(spconv_1x1)

    def _geometry(self, x):
        return submanifold_map(x, self.kernel_size, self.dilation), None, None

    def _matrix_weight(self):
        if self.spconv_1x1:  # reinterpret memory as (in, out), then back to the (out, 1, 1, 1, in) we apply
            return self.weight.reshape(self.in_channels, self.out_channels).t().reshape(self.weight.shape)
        return self.weight

    def extra_repr(self) -> str:
        return super().extra_repr() + (", spconv_1x1=True" if self.spconv_1x1 else "")


class SparseConv3d(SparseConvBase):
    """Regular sparse conv (spconv ``SparseConv3d``): outputs where any input reaches; e.g. k2 s2 downsampling."""

    def _geometry(self, x):
        return strided_map(x, self.kernel_size, self.stride, self.padding, self.dilation)


class _SpikeSparse(Synapse):
    """A sparse conv fed by a count neuron (see the module docstring); same parameters and keys."""

    def forward(self, x):  # Synapse.forward would hand a SparseTensor to spike_forward
        return SparseConvBase.forward(self, x)

    def _features(self, features, kmap):
        if not self.spike_driven:
            return SparseConvBase._features(self, features, kmap)
        lv = self.levels
        counts = self.input_counts(features)
        events = expand_events(counts, lv.D, lv.signed)  # [D, N, C] in {0, 1} (or {-1, 0, 1})
        weight = self._matrix_weight()
        weight = weight * lv.scale if lv.scale != 1.0 else weight
        out = apply_kernel_map(events, weight, kmap)  # every slot accumulates its events, no bias
        out = sj_layer.TemporalBinSum(lv.D, always_convert=True)(out)[0]
        return out if self.bias is None else out + self.bias


class SpikeSubMConv3d(_SpikeSparse, SubMConv3d):
    """:class:`SubMConv3d` fed by a count neuron; ``source`` is that neuron or its :class:`neurons.Levels`."""

    def __init__(self, *args, source=None, **kwargs):
        SubMConv3d.__init__(self, *args, **kwargs)
        self._init_synapse(source)


class SpikeSparseConv3d(_SpikeSparse, SparseConv3d):
    """:class:`SparseConv3d` fed by a count neuron; ``source`` is that neuron or its :class:`neurons.Levels`."""

    def __init__(self, *args, source=None, **kwargs):
        SparseConv3d.__init__(self, *args, **kwargs)
        self._init_synapse(source)
