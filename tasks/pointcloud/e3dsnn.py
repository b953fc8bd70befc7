"""E-3DSNN backbones as SVL trains them: spiking sparse 3D convnets on voxelised point clouds.

Qiu et al., "Efficient 3D Recognition with Event-driven Spike Sparse Convolution"
(E-3DSNN, AAAI 2025; github.com/bollossom/E-3DSNN) and "Spike-based
Vision-language Pretraining for Efficient 3D Open-world Understanding" (SVL;
github.com/bollossom/SVL, ``model/spike_e3dsnn.py``). Independent
re-implementation from the released model's structure; no official code is
used. Sub-modules carry the official attribute names, so an official state dict
(``module.`` prefix stripped) loads as it is; sparse convs keep spconv's weight
layout ``(out, k0, k1, k2, in)`` (:mod:`tasks.pointcloud.sparse`).

Layout (``SparseTensor`` between layers, features ``[N_voxels, C]``):

=================  ===========================================  ==========================
 module            layers                                       keys
=================  ===========================================  ==========================
 voxelize          points -> unique voxels (0.02), mean feats   (no parameters)
 stem              SubM3(6->E) BN S SubM3(E) BN S SubM3(E) BN   stem.{0,3,6}, stem.{1,4,7}
 enc.i.down        S -> SparseConv k2 s2 (C_{i-1}->C_i) -> BN   enc.i.down.{1,2}
 enc.i.blocks.j    y = [S SubM3 BN](x) + x;                     .block.{1,2}
                   out = [S SubM3 BN S SubM3 BN](y) + y         .voxel_block.{1,2,4,5}
 final             SubM k1 (C_4 -> 1280, bias), spconv's 1x1   final.{weight,bias}
 pool              mean over each sample's voxels -> [B, 1280]
 head (optional)   Rep-VLI: norm(f) @ norm(text_proj(T_cat))^T  head.weight
=================  ===========================================  ==========================

(``S`` = the multispike neuron; ``SubM3`` = submanifold 3x3x3 conv, no bias; the
residual adds pre-spike values, "membrane shortcut"; ``enc.i.down`` is the official
``DonwBlock``, ``enc.i.blocks.j`` ``BasicBlock``.)

Variants (``embed``, ``enc_channels``, ``enc_depth``); parameters with the 1280 head,
equal to the official classes' (built with spconv 2.3.8; ``tests/pointcloud/test_e3dsnn.py``):

====  =====  ================  =======  ==========  =============
 var  embed  channels          depths   params      without final
====  =====  ================  =======  ==========  =============
  T    16    16, 32, 64, 128   1,1,1,1   2,034,176      1,869,056
  S    24    24, 48, 96, 160   1,1,1,1   3,470,784      3,264,704
  L    64    64,128,128,256    2,2,2,2  17,649,280     17,320,320
  H    64    96,192,288,384    2,2,2,2  47,051,648     46,558,848
====  =====  ================  =======  ==========  =============

Neuron: :class:`neurons.MultiSpike` with ``D = 4``, ``half_up=True`` -- SVL's
``multispike``, ``floor(clamp(x, 0, 4) + 0.5)``, stateless (T = 1), straight-through
gradient. Every conv after a neuron is a ``Spike*Conv3d`` synapse, so
``neurons.to_spike_driven(model)`` runs it on binary events. BatchNorm1d
``eps=1e-3, momentum=0.01`` as released.

Input (what OpenShape's loaders give SVL): points ``[B, N, 6]`` = xyz + rgb (rgb in
[0, 1]), or a list of ``[N_i, 6]``. With ``normalize=True`` (default) xyz is centred
on its mean and divided by its largest norm (OpenShape ``normalize_pc``); features
are ``[normalised xyz, rgb]``; voxel coordinates ``trunc((xyz - min) / 0.02)``;
spatial shape ``max + 96`` as the release. Two choices differ from the release,
which does not run as published (it needs an input adapter):

* the minimum is taken per sample (the release takes it over the whole flattened
  batch, so a sample's voxels depend on its batch mates; identical for batch 1);
* points falling into one voxel are merged, their features averaged (the release
  keeps duplicate rows, which spconv's CPU and GPU kernels treat differently);
  averaging is deterministic and what Pointcept / MinkowskiEngine quantisation do.

Zero-shot use (SVL's ``test_modelnet40`` with the text side folded away)::

    model = zoo.load("svl-e3dsnn-h-openshape", weights="best_modelnet40_overall.pt",
                     classes="modelnet40/cat_name_pt_feat.npy")   # folded with the checkpoint's text_proj
    logits = model(points)                     # [B, K]; no text encoder runs
    # by hand: model.set_zero_shot_head(feats, text_proj_from_checkpoint("best_modelnet40_overall.pt"))

The head is derived, so it is not in the state dict; the zoo's own models (``text_dim > 0``) carry
``text_proj`` inside, and their files the default classes' features (``zero_shot.category_features``).

Parity trap: spconv 2.x computes a kernel-size-1 submanifold conv as
``x @ weight.view(in, out)`` on its ``(out, 1, 1, 1, in)`` weight (traveller59/spconv#450),
so the released ``final`` layer learned that map; ``final`` here does the same
(``SubMConv3d(spconv_1x1=True)``); ``padding=1`` there has no effect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import neurons
from zoo.errors import ZooError

from .sparse import SparseSequential, SparseTensor, SpikeSparseConv3d, SpikeSubMConv3d, SubMConv3d

__all__ = [
    "VARIANTS", "E3DSNNConfig", "E3DSNN", "build_e3dsnn", "BasicBlock", "DownBlock",
    "voxelize", "normalize_unit_sphere", "fold_text_head", "from_official", "text_proj_from_checkpoint",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
SPATIAL_MARGIN = 96  # the release: spatial_shape = max(grid) + 96


@dataclass(frozen=True)
class E3DSNNConfig:
    """One E-3DSNN variant (SVL's ``E_3DSNN_T/S/L/H`` defaults)."""

    embed_channels: int = 16
    enc_channels: tuple[int, int, int, int] = (16, 32, 64, 128)
    enc_depth: tuple[int, int, int, int] = (1, 1, 1, 1)
    in_channels: int = 6  # xyz + rgb
    out_channels: int = 1280  # OpenCLIP ViT-bigG-14 width
    voxel_size: float = 0.02
    D: int = 4  # multispike's largest count
    normalize: bool = True  # centre + scale xyz to the unit sphere before voxelising
    text_dim: int = 0  # > 0: the model carries SVL's text_proj (text_dim -> out) in its own state (the zoo's models)


VARIANTS = {
    "t": E3DSNNConfig(16, (16, 32, 64, 128), (1, 1, 1, 1)),
    "s": E3DSNNConfig(24, (24, 48, 96, 160), (1, 1, 1, 1)),
    "l": E3DSNNConfig(64, (64, 128, 128, 256), (2, 2, 2, 2)),
    "h": E3DSNNConfig(64, (96, 192, 288, 384), (2, 2, 2, 2)),
}


def batch_norm(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def _spike(D: int) -> neurons.MultiSpike:
    return neurons.MultiSpike(D=D, half_up=True)


def _spike_subm(c: int, neuron, key: str) -> SpikeSubMConv3d:
    return SpikeSubMConv3d(c, c, 3, padding=1, bias=False, indice_key=key, source=neuron)


class BasicBlock(nn.Module):
    """Two residual units on the membrane: ``y = block(x) + x``, ``out = voxel_block(y) + y``."""

    def __init__(self, channels: int, D: int, indice_key: str):
        super().__init__()
        s_block, s_first, s_second = _spike(D), _spike(D), _spike(D)
        self.block = SparseSequential(s_block, _spike_subm(channels, s_block, indice_key), batch_norm(channels))
        self.voxel_block = SparseSequential(
            s_first, _spike_subm(channels, s_first, indice_key), batch_norm(channels),
            s_second, _spike_subm(channels, s_second, indice_key), batch_norm(channels),
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        y = self.block(x) + x
        return self.voxel_block(y) + y


class DownBlock(nn.Module):
    """The official ``DonwBlock``: ``down`` = spike -> SparseConv k2 s2 -> BN, then ``blocks``."""

    def __init__(self, c_in: int, c_out: int, depth: int, D: int, stage: int):
        super().__init__()
        s = _spike(D)
        self.down = SparseSequential(
            s, SpikeSparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=f"spconv{stage}", source=s),
            batch_norm(c_out),
        )
        self.blocks = nn.ModuleList(BasicBlock(c_out, D, f"subm{stage + 1}") for _ in range(depth))

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = self.down(x)
        for block in self.blocks:
            x = block(x)
        return x


def normalize_unit_sphere(xyz: torch.Tensor) -> torch.Tensor:
    """OpenShape ``normalize_pc``: centre on the mean, divide by the largest norm (zeros if degenerate)."""
    xyz = xyz - xyz.mean(0, keepdim=True)
    scale = xyz.norm(dim=1).max() if len(xyz) else xyz.new_tensor(0.0)
    return torch.zeros_like(xyz) if scale < 1e-6 else xyz / scale


def voxelize(points, voxel_size: float = 0.02, normalize: bool = True, in_channels: int = 6) -> SparseTensor:
    """Points ``[B, N, C]`` (or a list of ``[N_i, C]``; xyz first) -> one voxel per occupied cell.

    Features ``[xyz (normalised if asked), rest]``; coordinates ``trunc((xyz - min_sample) / voxel_size)``;
    the features of points sharing a voxel are averaged; voxels sorted by (batch, i0, i1, i2).
    """
    if isinstance(points, torch.Tensor):
        if points.ndim != 3:
            raise ZooError(f"points must be [B, N, {in_channels}] (xyz + rgb) or a list of [N, {in_channels}], "
                           f"got shape {tuple(points.shape)}")
        samples = list(points)
    else:
        samples = list(points)
    if not samples:
        raise ZooError("voxelize: no point clouds given")
    feats, grids, batch = [], [], []
    for b, p in enumerate(samples):
        if not isinstance(p, torch.Tensor) or p.ndim != 2 or p.shape[1] != in_channels or not p.is_floating_point():
            raise ZooError(f"each point cloud must be a float [N, {in_channels}] tensor (xyz + rgb); "
                           f"got {getattr(p, 'shape', type(p).__name__)}")
        if len(p) == 0:
            raise ZooError(f"point cloud {b} is empty")
        xyz = normalize_unit_sphere(p[:, :3]) if normalize else p[:, :3]
        feats.append(torch.cat([xyz, p[:, 3:]], 1))
        grids.append(torch.div(xyz - xyz.min(0, keepdim=True).values, voxel_size, rounding_mode="trunc").long())
        batch.append(torch.full((len(p),), b, dtype=torch.long, device=p.device))
    feats, grid, batch = torch.cat(feats), torch.cat(grids), torch.cat(batch)
    shape = tuple(int(s) + SPATIAL_MARGIN for s in grid.max(0).values)
    coords = torch.cat([batch[:, None], grid], 1)
    keys = ((coords[:, 0] * shape[0] + coords[:, 1]) * shape[1] + coords[:, 2]) * shape[2] + coords[:, 3]
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    n = len(uniq)
    counts = torch.zeros(n, dtype=feats.dtype, device=feats.device).index_add_(0, inverse, torch.ones_like(feats[:, 0]))
    mean = torch.zeros(n, feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, inverse, feats)
    vox_coords = coords.new_empty(n, 4)
    vox_coords[inverse] = coords
    return SparseTensor(mean / counts[:, None], vox_coords, shape, len(samples))


def batch_mean(x: SparseTensor) -> torch.Tensor:
    """Mean of the features over each sample's sites: ``[B, C]``."""
    b = x.coords[:, 0]
    total = x.features.new_zeros(x.batch_size, x.features.shape[1]).index_add_(0, b, x.features)
    n = torch.bincount(b, minlength=x.batch_size).clamp(min=1).to(x.features.dtype)
    return total / n[:, None]


class E3DSNN(nn.Module):
    """E-3DSNN: points ``[B, N, 6]`` (xyz + rgb) or a :class:`SparseTensor` -> ``[B, 1280]`` features,
    or ``[B, K]`` zero-shot logits once a Rep-VLI head is set (:meth:`set_zero_shot_head`)."""

    def __init__(self, cfg: E3DSNNConfig = E3DSNNConfig()):
        super().__init__()
        self.cfg = cfg
        E, C, D = cfg.embed_channels, cfg.enc_channels, cfg.D
        s1, s2 = _spike(D), _spike(D)
        self.stem = SparseSequential(
            SubMConv3d(cfg.in_channels, E, 3, padding=1, bias=False, indice_key="stem"),  # real-valued input
            batch_norm(E), s1,
            SpikeSubMConv3d(E, E, 3, padding=1, bias=False, indice_key="stem", source=s1),
            batch_norm(E), s2,
            SpikeSubMConv3d(E, E, 3, padding=1, bias=False, indice_key="stem", source=s2),
            batch_norm(E),
        )
        self.enc = nn.ModuleList(
            DownBlock(E if i == 0 else C[i - 1], C[i], cfg.enc_depth[i], D, i) for i in range(len(C))
        )
        # reads the (non-spiking) residual sum; kernel 1 as spconv computes it
        self.final = SubMConv3d(C[-1], cfg.out_channels, 1, padding=1, bias=True, spconv_1x1=True)
        # SVL keeps text_proj beside the backbone (checkpoint['text_proj']); the zoo's own models hold it inside
        self.text_proj = nn.Linear(cfg.text_dim, cfg.out_channels) if cfg.text_dim else None
        self.head: nn.Linear | None = None
        self.classes: tuple[list[str], torch.Tensor] | None = None  # (names, text features) to fold after loading
        self._names: list[str] | None = None

    @property
    def names(self) -> list[str] | None:
        """Category names of the head's rows (a ``classes=`` list wins over the card's default)."""
        return list(self.classes[0]) if self.classes is not None else self._names

    @names.setter
    def names(self, value) -> None:
        self._names = None if value is None else list(value)

    def features(self, x) -> torch.Tensor:
        """Pooled ``[B, out_channels]`` features (no head)."""
        if not isinstance(x, SparseTensor):
            x = voxelize(x, self.cfg.voxel_size, self.cfg.normalize, self.cfg.in_channels)
        x = self.stem(x)
        for stage in self.enc:
            x = stage(x)
        return batch_mean(self.final(x))

    def forward(self, x) -> torch.Tensor:
        f = self.features(x)
        return f if self.head is None else self.head(F.normalize(f, dim=1))

    def set_zero_shot_head(self, text_features: torch.Tensor, text_proj: nn.Module | None = None,
                           names: list[str] | None = None) -> nn.Linear:
        """Fold Rep-VLI's text side into ``self.head``: ``model(points)`` then returns zero-shot logits.

        ``text_proj`` defaults to the model's own (the zoo's models carry it). The head is derived, not
        saved: it is not in the state dict, so a checkpoint loads whatever the class list."""
        text_proj = text_proj if text_proj is not None else self.text_proj
        expected = text_proj.in_features if isinstance(text_proj, nn.Linear) else self.cfg.out_channels
        if text_features.ndim == 2 and text_features.shape[1] != expected:
            raise ZooError(f"category features are {text_features.shape[1]}-d but the head takes {expected}-d "
                           f"({'text_proj input' if text_proj is not None else 'the model output'}); encode the "
                           "categories with the text encoder the model was aligned to (SVL's weights: OpenShape's OpenCLIP "
                           "bigG-14 files, e.g. cat_name_pt_feat.npy)")
        head = fold_text_head(text_features, text_proj)
        device = next(self.final.parameters()).device
        self.head = _FoldedHead(head.in_features, head.out_features).to(device)
        with torch.no_grad():
            self.head.weight.copy_(head.weight)
        self.head.requires_grad_(False)
        if names is not None:
            if len(names) != len(text_features):
                raise ZooError(f"{len(names)} category names but {len(text_features)} feature rows")
            self.names = list(names)
        return self.head

    def restore_from_checkpoint(self, ckpt) -> None:
        """``zoo.load``: after the weights, fold the requested classes (SVL checkpoints: with their
        ``text_proj``; the zoo's demo file: its shipped category features)."""
        proj = self.text_proj
        if proj is None and isinstance(ckpt, dict) and isinstance(ckpt.get("text_proj"), dict):
            proj = text_proj_from_checkpoint(ckpt)
        if self.classes is not None:
            names, feats = self.classes
            self.set_zero_shot_head(feats, proj, names)
        elif isinstance(ckpt, dict) and ZERO_SHOT_KEY in ckpt:  # names: the card's classes (zoo.load sets them)
            self.set_zero_shot_head(ckpt[ZERO_SHOT_KEY].float(), proj)


ZERO_SHOT_KEY = "zero_shot.category_features"  # the zoo's files: the default classes' text features


class _FoldedHead(nn.Linear):
    """The Rep-VLI head (bias-free ``nn.Linear``), kept out of the state dict: it is derived from category
    features, so checkpoints stay class-agnostic."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        pass

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        pass


def drop_zero_shot(state: dict) -> dict:
    """Converter for the zoo's own files: the category features are not weights (see ``restore_from_checkpoint``)."""
    return {k: v for k, v in state.items() if not k.startswith("zero_shot.")}


@torch.no_grad()
def fold_text_head(text_features: torch.Tensor, text_proj: nn.Module | None = None) -> nn.Linear:
    """Rep-VLI: ``norm(text_proj(T))`` ``[K, C]`` as one bias-free ``nn.Linear(C, K)``.

    SVL's zero-shot logits are ``norm(f) @ norm(text_proj(T_cat))^T`` (train.py ``test_modelnet40``)
    with fixed category text features, so the text encoder and ``text_proj`` fold away;
    applied to ``norm(f)`` the head gives exactly those logits (cosine similarities).
    """
    if text_features.ndim != 2:
        raise ZooError(f"text features must be [K, C], got {tuple(text_features.shape)}")
    t = text_proj(text_features) if text_proj is not None else text_features
    head = nn.Linear(t.shape[1], t.shape[0], bias=False).to(t.device, t.dtype)
    head.weight.copy_(F.normalize(t, dim=1))
    head.requires_grad_(False)
    return head


def build_e3dsnn(size: str = "t", out_channels: int = 1280, **overrides) -> E3DSNN:
    """Build E-3DSNN ``size`` in ``t | s | l | h``; keywords override :class:`E3DSNNConfig` fields."""
    if size not in VARIANTS:
        raise ZooError(f"unknown E-3DSNN size {size!r}; sizes are {', '.join(VARIANTS)}")
    fields = E3DSNNConfig.__dataclass_fields__
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ZooError(f"unknown E-3DSNN option(s) {', '.join(sorted(unknown))}; options are {', '.join(sorted(fields))}")
    base = VARIANTS[size]
    cfg = E3DSNNConfig(**{**base.__dict__, "out_channels": int(out_channels), **overrides})
    return E3DSNN(cfg)


def from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An SVL checkpoint's ``state_dict`` (DDP ``module.`` prefixes) -> this model's keys.

    Only a leading ``module.`` is stripped (OpenShape's example strips the regex ``module.``
    anywhere, which also hits names containing "module"). spconv's record-voxel-count buffers,
    if any, are dropped.
    """
    out = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k.endswith("_max_num_voxels_during_training"):
            continue
        out[k] = v
    return out


def text_proj_from_checkpoint(ckpt) -> nn.Linear:
    """SVL's ``text_proj`` (``nn.Linear``, 1280 -> out) from a checkpoint dict or file (``save_model``'s
    ``'text_proj'`` entry, DDP prefix ``module.``), for :meth:`E3DSNN.set_zero_shot_head`."""
    from zoo.checkpoint import read
    from zoo.errors import WeightsError

    obj = ckpt if isinstance(ckpt, dict) else read(ckpt)
    sd = obj.get("text_proj") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise WeightsError("the checkpoint has no 'text_proj' (SVL saves it beside 'state_dict'); is it an SVL checkpoint?")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if "weight" not in sd or sd["weight"].ndim != 2:
        raise WeightsError(f"'text_proj' holds {sorted(sd)}, not a Linear's weight and bias")
    out_f, in_f = sd["weight"].shape
    proj = nn.Linear(in_f, out_f, bias="bias" in sd)
    proj.load_state_dict({k: v.float() for k, v in sd.items()})
    return proj
