"""TDE: Temporal Dynamics Enhancer for directly trained spiking object detectors.

Luo et al., "Temporal Dynamics Enhancer for Directly Trained Spiking Object
Detectors", AAAI 2026 (arXiv 2512.02447); official code: github.com/Mortal825/TDE,
a fork of SpikeYOLO on ultralytics 8.0.197 (AGPL-3.0 per its setup.py; the
repository has no LICENSE file).

An independent re-implementation written from the released configs
(``config/*_yolov8.yaml``) and modules (``yolo_spikformer.py``,
``nn/modules/Attention.py``, ``nn/tasks.py``); no official code is used. The
SpikeYOLO blocks come from :mod:`tasks.detection.spikeyolo` with a different
neuron; every sub-module has the official attribute name, so an official state
dict (``model.N...`` plus the four ``attention_i`` buffers) loads as it is.

What TDE adds to SpikeYOLO
--------------------------
* **Neuron** (:class:`BinaryLIF`, official ``mem_update`` + ``MultiSpike1``):
  binary spikes, soft reset by *half* a spike, decay 0.25, ``T = 4``.
* **Spiking Encoder (SE)** (:class:`SpikingEncoder`, ``Diff_GetT``): replaces
  ``MS_GetT`` + the first ``MS_DownSampling``: ``base = ReLU(BN(conv7x7/4(img)))``,
  then per step ``cur = base + G_t(cur)`` with ``G_t(z) = z + ReLU(BN(conv3x3(z)))``
  (one ``G_t`` per step), so every time step gets a different stimulus.
* **Attention Gating Module (AGM)** (:class:`GatedSpikingEncoder`,
  ``Co_Diff_GetT``): ``cur = alpha_base * base * (1 - a_t) + alpha_current *
  G_t(cur) * a_t`` with learnable scalars and a gate ``a_t`` (one number per time
  step) taken from the temporal attention of the three output blocks of the
  *previous* forward passes (see "AGM state" below).
* **Attention**: baseline :class:`TCSA` (CBAM-like, sigmoid gates over time,
  channel and space) and the **Spike-Driven Attention** :class:`SpikeTCSA`
  (``Spike_TCSA``): each branch max-pools, fires a top-90 % spike map
  (:class:`TopKSpike`), applies a 1x1 (3x3 for space) conv and gives both a
  binary spike map and the float map; ``out = x + (ta_s*sa_f*ca_s +
  ta_s*ca_f*sa_s + sa_s*ta_f*ca_s) / 3``: every float map is only masked by spikes.
* **Head** :class:`SpikeDetectTD` (``SpikeDetect_TD``): the SpikeYOLO head with a
  learned ``Linear(T, 1)`` time decoder instead of the mean over T.

Configurations (``build_tde(config=...)``), exactly as the released YAMLs
----------------------------------------------------------------------------
================  ===========  ===============================  ============
config            encoder      attention (blocks)               head
================  ===========  ===============================  ============
``snn``           repeat x T   none                             mean over T
``SE``            SE           none                             Linear T->1
``TCSA``          repeat x T   TCSA after residual, 5 neck      mean over T
``SDA``           repeat x T   SDA after residual, 5 neck       mean over T
``TCSA+SE``       SE           TCSA after residual, 3 outputs   mean over T
``SDA+SE``        SE           SDA after residual, 3 outputs    mean over T
``TDE(TCSA)``     SE           TCSA on MLP branch, 3 outputs    mean over T
``TDE(SDA)``      SE + AGM     SDA on MLP branch, 3 outputs     Linear T->1
================  ===========  ===============================  ============

"5 neck" = layers 12, 16, 19, 22, 25 (``att_MS_*`` blocks); "3 outputs" = the
blocks feeding the head (``att_MS_*`` for +SE, ``Att_MS_*`` for TDE; the latter
put attention on the MLP branch, ``x + att(mlp(x))``, the former after the
residual, ``att(x + mlp(x))``). Note: the released ``TDE(TCSA)`` config uses the
ungated ``Diff_GetT`` encoder, so its AGM has no effect; only ``TDE(SDA)`` is
gated. With the SE encoder the layer indices shift down by one (26 layers,
outputs 18, 21, 24, head 25) as in the YAMLs. ``train.py`` loads
``*_yolov8s.yaml``, i.e. scale ``s`` [0.33, 0.5, 1024].

AGM state (official ``DetectionModel._predict_once``)
-----------------------------------------------------
The gate is *model* state carried across forward passes, not neuron state:
after each forward the three output blocks leave ``S = sum_b mean_batch(ta_b) / 3``
(their temporal attention, batch-averaged; for SDA the float ``ta``). The next
forward appends the previous ``S`` to a history of at most 10 entries
(initially ``S = [1] * T``) and uses as gate: during the first 10 forwards the
previous ``S`` itself (ones for the very first), afterwards the mean of the
last 10 ``S`` (written to the ``attention_0..T-1`` buffers, the only part of the
state the checkpoint's state dict holds), in training and eval alike. This
model reproduces that exactly (:meth:`TDE.agm_gate` shows the next gate). The
neuron reset (``functional.reset_net``, which the model runs before every
forward, as ``neurons.auto_reset`` and ``neurons.check_equivalence`` do)
resets membranes only: the AGM history lives in plain buffers of the model,
not in neuron memories, so it survives it. Choices made here:

* a freshly built model starts from the official fresh state (the official
  constructor also runs two stride-probing forwards on zeros, which advance the
  history; that is not reproduced);
* an official checkpoint as released (the ultralytics pickle of the whole
  ``DetectionModel``, read by ``zoo.load(..., weights=PATH)``) restores the
  running state the official forward really reads: the pickled history
  ``past_data`` (a ``deque`` of at most 10 entries), ``lenqueue`` and the last
  attention ``shared_params`` (:meth:`TDE.restore_from_checkpoint`), taken from
  the same pickled model as the weights (``ema``, else ``model``); the next
  forwards then equal the official model's. The ``attention_i`` buffers are
  only *written* by the official forward (and, in the ``ema`` model, averaged by
  the EMA from the training model's), so they are not a gate;
* a plain state dict (``load_state_dict``, safetensors) has no history: it is
  primed from ``attention_i`` (10 copies, ``S = attention``), so the first
  forward uses the checkpoint's last averaged gate: an approximation, the
  official model's first <= 10 forwards can differ from it (~10 %).
  :meth:`TDE.reset_agm` returns to the fresh state;
* ``model.agm_update = False`` freezes the gate (the one the next forward
  would use) and stops updating it: deterministic outputs that do not depend
  on earlier inputs, e.g. for spike-driven vs integer checks.

Like the official code, the gate and SDA's top-k thresholds depend on the
whole batch (one top-k over the batch tensor; one gate per batch).

Spike-driven mode: every conv fed by a neuron (including SDA's 1x1 / 3x3 convs
after the top-k spikes) is a :mod:`neurons` synapse, so ``neurons.to_spike_driven``
works. Real-valued by design (as in the paper): the encoder (image convs and
``G_t``), TCSA's sigmoid MLPs, SDA's spike-masked float maps and the time decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn

import neurons
from neurons import BinaryLIF, SpikeConv3d, TopKSpike

from zoo.errors import WeightsError, ZooError
from zoo.inputs import check_image_batch

from .spikeyolo import (
    SCALES, Concat, GetT, MS_AllConvBlock, MS_ConvBlock, MS_DownSampling, MS_StandardConv, SpikeDetect,
    _repeats, backbone, batch_norm, layer_widths, per_step,
)

__all__ = [
    "CONFIGS", "TDEConfig", "TDE", "build_tde", "from_official", "infer_config",
    "BinaryLIF", "TopKSpike", "SpikeConv3d", "TemporalStep", "SpikingEncoder", "GatedSpikingEncoder",
    "TimeAttention", "ChannelAttention", "SpatialAttention", "TCSA",
    "SpikeTimeAttention", "SpikeChannelAttention", "SpikeSpatialAttention", "SpikeTCSA",
    "AttMSConvBlock", "AttMSAllConvBlock", "TimeDecoder", "SpikeDetectTD",
]

AGM_HISTORY = 10  # the official deque(maxlen=10)


# --------------------------------------------------------------------------- neurons and synapses


# --------------------------------------------------------------------------- spiking encoder (SE) and AGM


class TemporalStep(nn.Module):
    """``G_t(z) = z + ReLU(BN(conv3x3(z)))`` (official ``generate_T``)."""

    def __init__(self, c: int):
        super().__init__()
        self.encode_conv = nn.Conv2d(c, c, 3, 1, 1)
        self.encode_bn = batch_norm(c)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.act(self.encode_bn(self.encode_conv(x)))


class SpikingEncoder(nn.Module):
    """SE (``Diff_GetT``): image ``[B, 3, H, W]`` -> ``[T, B, C, H/4, W/4]``, a different stimulus per step.

    ``base = ReLU(BN(conv kxk stride s(img)))``; ``cur_0 = base``;
    ``cur_t = base + G_t(cur_{t-1})``; output ``[cur_1 .. cur_T]``.
    """

    def __init__(self, c1: int, c2: int, k: int, s: int, p: int, T: int):
        super().__init__()
        self.T = int(T)
        self.time_modules = nn.ModuleList(TemporalStep(c2) for _ in range(self.T))
        self.encode_conv = nn.Conv2d(c1, c2, k, s, p)
        self.encode_bn = batch_norm(c2)
        self.act = nn.ReLU(inplace=True)

    def base(self, x):
        return self.act(self.encode_bn(self.encode_conv(x)))

    def forward(self, x):
        base = self.base(x)
        cur, outs = base, []
        for step in self.time_modules:
            cur = base + step(cur)
            outs.append(cur)
        return torch.stack(outs)


class GatedSpikingEncoder(SpikingEncoder):
    """SE + AGM (``Co_Diff_GetT``): ``cur_t = alpha_base*base*(1 - a_t) + alpha_current*G_t(cur_{t-1})*a_t``.

    ``gate`` = ``[a_1 .. a_T]``, a tensor of T numbers supplied by :class:`TDE`.
    """

    def __init__(self, c1: int, c2: int, k: int, s: int, p: int, T: int):
        super().__init__(c1, c2, k, s, p, T)
        self.alpha_base = nn.Parameter(torch.tensor(1.0))
        self.alpha_current = nn.Parameter(torch.tensor(1.0))

    def forward(self, x, gate: torch.Tensor):
        base = self.base(x)
        gate = gate.to(base.device)
        cur, outs = base, []
        for t, step in enumerate(self.time_modules):
            cur = step(cur)
            a = gate[t]
            cur = self.alpha_base * base * (1 - a) + self.alpha_current * cur * a
            outs.append(cur)
        return torch.stack(outs)


# --------------------------------------------------------------------------- attention: TCSA (baseline) and SDA


def _bt(x):  # [T, B, C, H, W] <-> [B, T, C, H, W]
    return x.transpose(0, 1)


class TimeAttention(nn.Module):
    """TCSA's time branch: CBAM channel attention with T as the channels, MLP ``T -> T*ratio -> T``.

    Input ``[B, T, C, H, W]``; output ``[B, T, 1, 1, 1]`` in (0, 1).
    """

    def __init__(self, T: int, ratio: int = 16):
        super().__init__()
        self.sharedMLP = nn.Sequential(
            nn.Conv3d(T, T * ratio, 1, bias=False), nn.ReLU(inplace=True), nn.Conv3d(T * ratio, T, 1, bias=False)
        )

    def forward(self, x):
        return torch.sigmoid(self.sharedMLP(F.adaptive_avg_pool3d(x, 1)) + self.sharedMLP(F.adaptive_max_pool3d(x, 1)))


class ChannelAttention(nn.Module):
    """TCSA's channel branch: CBAM channel attention pooled over T, H, W, MLP ``C -> C/ratio -> C``.

    Input ``[B, T, C, H, W]``; output ``[B, 1, C, 1, 1]``.
    """

    def __init__(self, c: int, ratio: int = 16):
        super().__init__()
        self.sharedMLP = nn.Sequential(
            nn.Conv3d(c, c // ratio, 1, bias=False), nn.ReLU(inplace=True), nn.Conv3d(c // ratio, c, 1, bias=False)
        )

    def forward(self, x):
        x = x.transpose(1, 2)  # [B, C, T, H, W]
        out = torch.sigmoid(self.sharedMLP(F.adaptive_avg_pool3d(x, 1)) + self.sharedMLP(F.adaptive_max_pool3d(x, 1)))
        return out.transpose(1, 2)


class SpatialAttention(nn.Module):
    """TCSA's spatial branch: mean and max over (T, C), 3x3 conv, sigmoid. Output ``[B, 1, 1, H, W]``."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x):
        x = x.flatten(1, 2)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True)[0]], dim=1)
        return torch.sigmoid(self.conv(pooled).unsqueeze(1))


class TCSA(nn.Module):
    """Baseline time-channel-spatial attention: ``ReLU(sa * (ca * (ta * x)))``, applied in sequence.

    Input / output ``[T, B, C, H, W]``; also returns ``ta`` ``[B, T, 1, 1, 1]``.
    """

    def __init__(self, T: int, c: int, c_ratio: int = 16, t_ratio: int = 16):
        super().__init__()
        self.ca = ChannelAttention(c, c_ratio)
        self.ta = TimeAttention(T, t_ratio)
        self.sa = SpatialAttention()

    def forward(self, x):
        x = _bt(x)
        ta = self.ta(x)
        out = ta * x
        out = self.ca(out) * out
        out = self.sa(out) * out
        return _bt(torch.relu(out)), ta


class _SpikeBranch(nn.Module):
    """top-k spikes -> conv -> (binary spikes, float map)."""

    def _fire(self, pooled, conv):
        f = conv(self.lif1(pooled))
        return self.lif2(f), f


class SpikeTimeAttention(_SpikeBranch):
    """SDA's time branch: max over (C, H, W) -> top-k spikes -> 1x1 conv ``T -> T``. Outputs ``[B, T, 1, 1, 1]``."""

    def __init__(self, T: int):
        super().__init__()
        self.lif1 = TopKSpike(0.9)
        self.lif2 = neurons.MultiSpike(D=1)
        self.conv1 = SpikeConv3d(T, T, 1, bias=False, source=self.lif1)

    def forward(self, x):
        return self._fire(F.adaptive_max_pool3d(x, 1), self.conv1)


class SpikeChannelAttention(_SpikeBranch):
    """SDA's channel branch: max over (T, H, W) -> top-k spikes -> 1x1 conv ``C -> C``. Outputs ``[B, 1, C, 1, 1]``."""

    def __init__(self, c: int):
        super().__init__()
        self.lif1 = TopKSpike(0.9)
        self.lif2 = neurons.MultiSpike(D=1)
        self.conv1 = SpikeConv3d(c, c, 1, bias=False, source=self.lif1)

    def forward(self, x):
        spikes, floats = self._fire(F.adaptive_max_pool3d(x.transpose(1, 2), 1), self.conv1)
        return spikes.transpose(1, 2), floats.transpose(1, 2)


class SpikeSpatialAttention(_SpikeBranch):
    """SDA's spatial branch: max over (T, C) -> top-k spikes -> 3x3 conv ``1 -> 1``. Outputs ``[B, 1, 1, H, W]``."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.lif1 = TopKSpike(0.9)
        self.lif2 = neurons.MultiSpike(D=1)
        self.conv = neurons.SpikeConv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=False, source=self.lif1)

    def forward(self, x):
        spikes, floats = self._fire(x.flatten(1, 2).max(dim=1, keepdim=True)[0], self.conv)
        return spikes.unsqueeze(1), floats.unsqueeze(1)


class SpikeTCSA(nn.Module):
    """SDA (``Spike_TCSA``): ``x + (ta_s*sa_f*ca_s + ta_s*ca_f*sa_s + sa_s*ta_f*ca_s) / 3``.

    Input / output ``[T, B, C, H, W]``; also returns the float ``ta`` ``[B, T, 1, 1, 1]``.
    """

    def __init__(self, T: int, c: int):
        super().__init__()
        self.ca = SpikeChannelAttention(c)
        self.ta = SpikeTimeAttention(T)
        self.sa = SpikeSpatialAttention()

    def forward(self, x):
        x = _bt(x)
        ta_s, ta_f = self.ta(x)
        ca_s, ca_f = self.ca(x)
        sa_s, sa_f = self.sa(x)
        att = ta_s * sa_f * ca_s + ta_s * ca_f * sa_s + sa_s * ta_f * ca_s
        return _bt(x + att / 3), ta_f


def _attention(kind: str, T: int, c: int) -> nn.Module:
    return TCSA(T, c) if kind == "tcsa" else SpikeTCSA(T, c)


class AttMSConvBlock(MS_ConvBlock):
    """MS_ConvBlock with attention. ``branch=True`` (``Att_MS_ConvBlock``): ``x + att(mlp(x))``;
    ``branch=False`` (``att_MS_ConvBlock``): ``att(x + mlp(x))``. Returns ``(out, ta)``."""

    def __init__(self, dim: int, mlp_ratio: int, kernel_size: int, neuron, att: str, T: int, branch: bool):
        super().__init__(dim, mlp_ratio, kernel_size, neuron)
        self.att = _attention(att, T, dim)
        self.branch = branch

    def mlp(self, x):
        y = per_step(lambda z: self.bn1(self.conv1(z)), self.lif1(x))
        return per_step(lambda z: self.bn2(self.conv2(z)), self.lif2(y))

    def forward(self, x):
        x = self.Conv(x) + x
        if self.branch:
            y, ta = self.att(self.mlp(x))
            return x + y, ta
        return self.att(x + self.mlp(x))


class AttMSAllConvBlock(MS_AllConvBlock):
    """MS_AllConvBlock with attention (``Att_MS_AllConvBlock`` / ``att_MS_AllConvBlock``);
    see :class:`AttMSConvBlock`."""

    def __init__(self, dim: int, mlp_ratio: int, kernel_size: int, neuron, att: str, T: int, branch: bool):
        super().__init__(dim, mlp_ratio, kernel_size, neuron)
        self.att = _attention(att, T, dim)
        self.branch = branch

    def forward(self, x):
        x = self.Conv(x) + x
        y = self.conv2(self.conv1(x))
        if self.branch:
            y, ta = self.att(y)
            return x + y, ta
        return self.att(x + y)


# --------------------------------------------------------------------------- head


class TimeDecoder(nn.Module):
    """``Linear(T, 1)`` over the time axis: ``[T, B, C, H, W]`` -> ``[B, C, H, W]`` (init: weights 0.25, bias 0)."""

    def __init__(self, T: int):
        super().__init__()
        self.fc = nn.Linear(T, 1)
        nn.init.constant_(self.fc.weight, 0.25)
        nn.init.constant_(self.fc.bias, 0.0)

    def forward(self, x):
        T, B, C, H, W = x.shape
        return self.fc(x.permute(1, 2, 3, 4, 0).flatten(0, -2)).view(B, C, H, W)


class SpikeDetectTD(SpikeDetect):
    """SpikeYOLO's head with a learned time decoder (``SpikeDetect_TD``) instead of the mean over T."""

    def __init__(self, nc: int, ch, neuron, T: int, reg_max: int = 16):
        super().__init__(nc, ch, neuron, reg_max)
        self.td = TimeDecoder(T)

    def forward(self, xs):
        raw = [self.td(torch.cat((self.cv2[i](x), self.cv3[i](x)), 2)) for i, x in enumerate(xs)]
        if self.training:
            return raw
        return self.decode(raw), raw


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class _Layout:
    encoder: str  # "repeat" (MS_GetT + MS_DownSampling), "se" (Diff_GetT), "agm" (Co_Diff_GetT)
    att: str | None  # None, "tcsa", "sda"
    where: str = ""  # "neck": 5 att_ blocks after the residual; "out": 3 att_ blocks; "tde": 3 Att_ blocks (branch)
    td_head: bool = False  # SpikeDetect_TD (Linear T->1) instead of the mean over T


CONFIGS = {
    "snn": _Layout("repeat", None),
    "SE": _Layout("se", None, td_head=True),
    "TCSA": _Layout("repeat", "tcsa", "neck"),
    "SDA": _Layout("repeat", "sda", "neck"),
    "TCSA+SE": _Layout("se", "tcsa", "out"),
    "SDA+SE": _Layout("se", "sda", "out"),
    "TDE(TCSA)": _Layout("se", "tcsa", "tde"),
    "TDE(SDA)": _Layout("agm", "sda", "tde", td_head=True),
}


@dataclass(frozen=True)
class TDEConfig:
    config: str = "TDE(SDA)"
    depth: float = 0.33
    width: float = 0.5
    max_ch: int = 1024
    nc: int = 20
    T: int = 4
    repeats: tuple[int, int, int, int] | None = None  # backbone blocks (SE-layout layers 1, 3, 5, 7); None: from depth

    @property
    def layout(self) -> _Layout:
        return CONFIGS[self.config]

    def block_repeats(self) -> tuple[int, int, int, int]:
        if self.repeats is not None:
            return tuple(self.repeats)
        return tuple(_repeats(n, self.depth) for n in (3, 6, 9, 3))


class TDE(nn.Module):
    """A TDE detector (any of the released ablation configs). Input: float images ``[B, 3, H, W]`` in
    [0, 1], H and W multiples of 32. Output: as :class:`tasks.detection.spikeyolo.SpikeDetect`.

    Neuron state is reset at the start of every forward; the AGM gate is model
    state that persists across forwards (module docstring).
    """

    def __init__(self, cfg: TDEConfig = TDEConfig()):
        super().__init__()
        if cfg.config not in CONFIGS:
            raise ZooError(f"unknown TDE config {cfg.config!r}; configs are {', '.join(CONFIGS)}")
        self.cfg = cfg
        lay, T = cfg.layout, int(cfg.T)
        neuron = BinaryLIF
        n1, n3, n5, n7 = cfg.block_repeats()
        # SpikeYOLO's widths; TDE's layer indices are one lower (no MS_GetT layer in the SE layout)
        c1, c3, c5, c7, c8, c9, c12, c13, c16, c17, c19, c20, c22, c23 = layer_widths(cfg.width, cfg.max_ch)
        up = lambda: nn.Upsample(scale_factor=(1, 2, 2), mode="nearest")  # noqa: E731

        def block(kind, c, ratio, where):
            """A neck/output block: plain, or with attention if this config puts it here."""
            plain = MS_ConvBlock if kind == "conv" else MS_AllConvBlock
            att = AttMSConvBlock if kind == "conv" else AttMSAllConvBlock
            targets = {"neck": ("neck", "out"), "out": ("out",), "tde": ("out",)}.get(lay.where, ())
            if lay.att is None or where not in targets:
                return plain(c, ratio, 7, neuron)
            return att(c, ratio, 7, neuron, lay.att, T, branch=lay.where == "tde")

        if lay.encoder == "repeat":
            stem = [GetT(T), MS_DownSampling(3, c1, 7, 4, 2, True, neuron)]
        elif lay.encoder == "se":
            stem = [SpikingEncoder(3, c1, 7, 4, 2, T)]
        else:
            stem = [GatedSpikingEncoder(3, c1, 7, 4, 2, T)]
        self._o = len(stem) - 1  # index offset of the MS_GetT layouts
        head = SpikeDetectTD if lay.td_head else SpikeDetect
        head_args = dict(T=T) if lay.td_head else {}
        self.model = nn.ModuleList(stem + [
            *backbone(c1, c3, c5, c7, c8, (n1, n3, n5, n7), neuron),          # 1..8 (SE-layout index; P3 3, P4 5, P5 8)
            MS_StandardConv(c8, c9, 1, 1, neuron),                             # 9
            up(),                                                              # 10
            block("conv", c9, 3, "neck"),                                      # 11
            Concat(),                                                          # 12  (11, 5)
            MS_StandardConv(c12, c13, 1, 1, neuron),                           # 13
            up(),                                                              # 14
            block("all", c13, 4, "neck"),                                      # 15
            Concat(),                                                          # 16  (15, 3)
            MS_StandardConv(c16, c17, 1, 1, neuron),                           # 17
            block("all", c17, 4, "out"),                                       # 18  -> P3 out
            MS_StandardConv(c17, c19, 3, 2, neuron),                           # 19
            Concat(),                                                          # 20  (19, 13)
            block("conv", c20, 3, "out"),                                      # 21  -> P4 out
            MS_StandardConv(c20, c22, 3, 2, neuron),                           # 22
            Concat(),                                                          # 23  (22, 9)
            block("conv", c23, 1, "out"),                                      # 24  -> P5 out
            head(cfg.nc, (c17, c20, c23), neuron, **head_args),                # 25
        ])
        # AGM: the official DetectionModel's buffers (state-dict keys attention_0 ..) and its running history
        for i in range(T):
            self.register_buffer(f"attention_{i}", torch.tensor(1.0))
        # fixed-size buffers updated in place (safe under DDP buffer broadcasting and .to())
        self.register_buffer("_agm_history", torch.zeros(AGM_HISTORY, T), persistent=False)
        self.register_buffer("_agm_count", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("_agm_last", torch.ones(T), persistent=False)
        self.agm_update = True
        self.register_load_state_dict_post_hook(TDE._after_load)

    # ----------------------------------------------------------------- AGM state

    @property
    def gated(self) -> bool:
        return self.cfg.layout.encoder == "agm"

    def _attention_buffers(self) -> list[torch.Tensor]:
        return [getattr(self, f"attention_{i}") for i in range(self.cfg.T)]

    def reset_agm(self) -> None:
        """Back to the state of a fresh official model: empty history, last attention = ones."""
        with torch.no_grad():
            self._agm_history.zero_()
            self._agm_count.zero_()
            self._agm_last.fill_(1.0)

    @torch.no_grad()
    def prime_agm(self) -> None:
        """Fill the history from the ``attention_i`` buffers (as after loading a checkpoint)."""
        gate = torch.stack([b.detach() for b in self._attention_buffers()]).to(self._agm_last)
        self._agm_history.copy_(gate.expand(AGM_HISTORY, -1))
        self._agm_count.fill_(AGM_HISTORY)
        self._agm_last.copy_(gate)

    @torch.no_grad()
    def load_agm_state(self, history, count: int, last) -> None:
        """Set the AGM running state as the official ``DetectionModel`` holds it: ``history`` = ``past_data``
        (oldest first, at most 10 entries of T numbers), ``count`` = ``lenqueue``, ``last`` = ``shared_params``
        (the attention the last forward left)."""
        T = self.cfg.T
        try:
            rows = [torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()) for v in row]) for row in history]
            last = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()) for v in last])
            n = min(int(count), AGM_HISTORY)
        except (TypeError, ValueError, RuntimeError) as e:
            raise WeightsError(f"the checkpoint's AGM history is not T={T} numbers per entry ({e})") from None
        if any(r.numel() != T for r in rows) or last.numel() != T or len(rows) != n or n < 0:
            raise WeightsError(f"the checkpoint's AGM history does not fit T={T}: {len(rows)} entries, lenqueue "
                               f"{count}, last attention of {last.numel()}; is it a TDE(SDA) checkpoint?")
        self._agm_history.zero_()
        if n:
            self._agm_history[:n].copy_(torch.stack(rows))
        self._agm_count.fill_(n)
        self._agm_last.copy_(last)

    def restore_from_checkpoint(self, ckpt) -> None:
        """What an official checkpoint holds outside its state dict (called by ``zoo.load`` after the weights):
        the AGM history of the pickled model the weights come from, and a check of the encoder's ``T``."""
        from .convert import check_pickled_T, official_module

        check_pickled_T(self, ckpt, "TDE")
        module = official_module(ckpt)
        if not self.gated or module is None:
            return  # a plain state dict: the history stays primed from attention_i (load_state_dict)
        d = vars(module)
        if not all(k in d for k in ("past_data", "lenqueue", "shared_params")):
            raise WeightsError("the pickled TDE model has no AGM history (past_data, lenqueue, shared_params); "
                               "is it an official TDE(SDA) checkpoint?")
        self.load_agm_state(list(d["past_data"]), d["lenqueue"], d["shared_params"])

    @staticmethod
    def _after_load(module, incompatible_keys) -> None:
        if module.gated:
            module.prime_agm()

    @torch.no_grad()
    def agm_gate(self, advance: bool = False) -> torch.Tensor:
        """The gate ``[a_1 .. a_T]`` the next forward uses; ``advance`` moves the history on, as a forward does."""
        n, last = int(self._agm_count), self._agm_last
        if n < AGM_HISTORY:  # warm-up: the previous forward's attention (ones at first), appended to the history
            gate = last.clone()
            if advance:
                self._agm_history[n].copy_(last)
                self._agm_count += 1
            return gate
        history = torch.cat([self._agm_history[1:], last.unsqueeze(0)])  # the deque drops its oldest entry
        gate = torch.stack([history[:, i].contiguous().mean() for i in range(history.shape[1])])
        if advance:
            self._agm_history.copy_(history)
            for buf, g in zip(self._attention_buffers(), gate):
                buf.copy_(g)
        return gate

    @torch.no_grad()
    def _agm_record(self, tas: list[torch.Tensor]) -> None:
        """After a forward: the new ``S`` = sum over the output blocks of their batch-mean ``ta`` / 3."""
        s = torch.zeros_like(self._agm_last)
        for ta in tas:
            s += (ta.detach().mean(dim=0).reshape(-1) / len(tas)).to(s)
        self._agm_last.copy_(s)

    # ----------------------------------------------------------------- forward

    @property
    def stride(self) -> torch.Tensor:
        return self.model[-1].stride

    def check_input(self, x) -> None:
        """Raise :class:`ZooError` (one line) unless ``x`` is a float image batch ``[B, 3, H, W]``."""
        check_image_batch(x, "TDE", multiple=32)

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        functional.reset_net(self)
        m, o = self.model, self._o
        tas: list[torch.Tensor] = []

        def run(i, z):
            out = m[i + o](z)
            if isinstance(out, tuple):  # an attention block: (features, temporal attention)
                out, ta = out
                tas.append(ta)
            return out

        if self.gated:
            x = m[0](x, self.agm_gate(advance=self.agm_update))
        else:
            x = m[1](m[0](x)) if o else m[0](x)
        p3 = m[3 + o](m[2 + o](m[1 + o](x)))
        p4 = m[5 + o](m[4 + o](p3))
        y9 = m[9 + o](m[8 + o](m[7 + o](m[6 + o](p4))))
        y = m[12 + o]([run(11, m[10 + o](y9)), p4])
        y13 = m[13 + o](y)
        y = m[16 + o]([run(15, m[14 + o](y13)), p3])
        out_p3 = run(18, m[17 + o](y))
        out_p4 = run(21, m[20 + o]([m[19 + o](out_p3), y13]))
        out_p5 = run(24, m[23 + o]([m[22 + o](out_p4), y9]))
        if self.gated and self.agm_update:
            self._agm_record(tas)
        return m[25 + o]([out_p3, out_p4, out_p5])


def build_tde(config: str = "TDE(SDA)", scale="s", nc: int = 20, T: int = 4, repeats=None) -> TDE:
    """Build a TDE detector. ``config``: one of :data:`CONFIGS`; ``scale``: ``'n' | 's' | 'm' | 'l'``
    or ``(depth, width, max_channels)`` (the release trains ``s``)."""
    if config not in CONFIGS:
        raise ZooError(f"unknown TDE config {config!r}; configs are {', '.join(CONFIGS)}")
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ZooError(f"unknown TDE scale {scale!r}; scales are {', '.join(SCALES)} or (depth, width, max_ch)")
        depth, width, max_ch = SCALES[scale]
    else:
        try:
            depth, width, max_ch = (float(scale[0]), float(scale[1]), int(scale[2]))
        except (TypeError, ValueError, IndexError):
            raise ZooError(f"scale must be a name or (depth, width, max_channels), got {scale!r}") from None
    if int(T) < 1:
        raise ZooError(f"T must be a positive number of time steps, got {T!r}")
    cfg = TDEConfig(config=config, depth=depth, width=width, max_ch=max_ch, nc=int(nc), T=int(T),
                    repeats=tuple(int(r) for r in repeats) if repeats is not None else None)
    return TDE(cfg)


# --------------------------------------------------------------------------- official state dicts

from .convert import infer_tde_config as infer_config  # noqa: E402,F401  (the converter lives in convert.py)
from .convert import tde_from_official as from_official  # noqa: E402,F401
