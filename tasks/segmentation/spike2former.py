"""Spike2Former: spiking Mask2Former-style semantic segmentation.

Lei et al., "Spike2Former: Efficient Spiking Transformer for High-performance
Image Segmentation", AAAI 2025 (arXiv 2412.14587); official code:
github.com/BICLab/Spike2Former (an MMSegmentation 1.1.1 / MMDetection 3.1
fork). This is an independent re-implementation written from the released
model's structure; no official code is used, and neither mmcv, mmseg nor
mmdet is needed. Every sub-module has the official attribute name, so an
official state dict (``backbone.*``, ``decode_head.*``) loads as it is (see
:mod:`tasks.segmentation.convert`).

Official config -> module (released configs ``configs/Spike2Former/released/``):

================================  ===========================================  =================================
 official (type / attribute)      here                                         notes
================================  ===========================================  =================================
 EncoderDecoder                   :class:`Spike2Former`                        ``backbone`` + ``decode_head``
 backbone Spiking_vit_MetaFormer  :class:`SpikingMetaFormer`                   SDTv2, dims [64, 128, 256, 360]
   downsample1_1 / ConvBlock1_1   MS_DownSampling 7x7 s2 + MS_ConvBlock(32)    -> x1, 1/2, 32 ch
   downsample1_2 / ConvBlock1_2   MS_DownSampling 3x3 s2 + MS_ConvBlock(64)    -> x2, 1/4, 64 ch
   downsample2 / ConvBlock2_1,2_2 3x3 s2 + 2 MS_ConvBlock(128)                 -> x3, 1/8, 128 ch
   downsample3 / block3           3x3 s2 + 6 MS_Block(256)
   downsample4 / block4           3x3 **s1** + 2 MS_Block(360)                 -> x4, 1/16, 360 ch
 decode_head MaskFormerHead       :class:`MaskFormerHead`                      queries, SDME mask/class heads
   pixel_decoder (mmdet.DCN-      :class:`DCNTransformerEncoderPixelDecoder`   6 DCNv3 encoder layers on x4,
   TransformerEncoderPixelDecoder)                                             spiking FPN over x3, x2, x1
   transformer_decoder            :class:`DetrTransformerDecoder`              CA -> SA -> FFN, no LayerNorm
================================  ===========================================  =================================

Neuron: the official ``Q_IFNode(surrogate_function=Quant())`` charges
``v += x``, fires ``s = round(clamp(v, 0, 8))``, resets ``v -= s`` and returns
``s / 8``: :class:`neurons.NILIF` with ``beta = 1`` and ``D = 8`` (the paper
writes ``D = 4``; ``D`` is a model setting here). Like the official code,
each neuron is applied once, single-step, to the whole ``[T, B, ...]``
tensor, and state is reset before every forward, so at inference every
neuron is the stateless ``round(clamp(x, 0, D)) / D`` and ``T`` changes
nothing but shapes. The head multiplies some neuron outputs by
``alpha = 4``.

Three places reshape where a permute would be expected; they are kept
exactly, since the released weights were trained with them:

* the pixel-encoder MLP (:class:`EncoderMLP`) reshapes its ``[T*B, C, N]``
  output straight to ``[T, B, H, W, C]``;
* DCNv3's offset and mask convs (:class:`DCNv3`) reshape ``[T*B, C, H, W]``
  straight to ``[T, B, H, W, C]``;
* the decoder FFN (:class:`MSDA_FFN`) reshapes its ``[T, B, N, C]`` input to
  ``[T, B, C, N]`` and its output back, without transposing.

Parity: with random weights, bit-exact with the official code (the ADE20K, ADE20K V2-L and Cityscapes
architectures at 64x96 on CPU, one thread; a reduced model is the test fixture). With more threads both
codes pick other float kernels, and a last-bit change can move a count across a rounding boundary, so
compare at one thread.

Synapse layers: every conv / linear that reads a neuron's output is a
``neurons.SpikeConv1d`` / ``SpikeConv2d`` / ``SpikeLinear`` bound to that
neuron (or, where the head scales a neuron's output by ``alpha``, to its
``Levels`` with ``scale = alpha / D``), and every product with spiking
operands is a ``neurons.SpikeProduct`` bound to its neurons: the backbone's
``q (k^T v)``, the decoder's ``q k^T v`` and the head's mask ``einsum``
(``alpha x`` spikes times the real mask features). ``neurons.to_spike_driven``
runs all of them on events: counts expanded into ``D`` binary slots, the
``1/D`` (and ``alpha``) applied once to the layer's weights or the product's
result; ``zoo profile`` counts their accumulates. Only the DCN sampling
(spiking mask times bilinearly sampled values) stays a plain computation, and
uncounted.

Fast inference (:func:`tasks.segmentation.fast.optimize`): one time step instead of ``T`` (all steps compute
the same at inference), only the last layer's masks (all the logits use), and the decoder attention in the
order ``q (k^T v)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from timm.layers import trunc_normal_
from torch import nn

import neurons
from zoo.errors import ZooError
from zoo.inputs import check_image_batch

from .dcnv3 import dcnv3_core

__all__ = [
    "Spike2FormerConfig", "Spike2Former", "build_spike2former", "SpikingMetaFormer", "MaskFormerHead",
    "DCNTransformerEncoderPixelDecoder", "DetrTransformerDecoder", "DCNv3", "sine_positional_encoding",
]

Neuron = Callable[[], nn.Module]


@dataclass(frozen=True)
class Spike2FormerConfig:
    """One Spike2Former. Defaults: the released ADE20K SDTv2 model (34,361,112 parameters)."""

    embed_dims: tuple[int, int, int, int] = (64, 128, 256, 360)  # backbone ``embed_dim``; stage 1 uses [0] // 2
    num_heads: int = 8  # backbone attention heads (scale (C / heads) ** -0.5)
    mlp_ratio: int = 4  # backbone ``mlp_ratios``
    block3_depth: int = 6  # hard-coded in the official backbone
    block4_depth: int = 2
    T: int = 1  # backbone time steps (the image is repeated T times); no effect on the output at eval
    D: int = 8  # neuron levels: 8 in the released code, 4 in the paper
    num_classes: int = 150  # cls_embed has num_classes + 1 outputs (the last: no object)
    num_queries: int = 100
    feat_channels: int = 256  # pixel decoder / transformer decoder width (``feat_channels`` = ``out_channels``)
    encoder_layers: int = 6  # DCN encoder layers of the pixel decoder
    encoder_ffn: int = 1024  # their MLP hidden width
    dcn_group: int = 32
    dcn_dw_kernel: int = 5
    decoder_layers: int = 6  # transformer decoder layers (cycle over 3 feature levels)
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    alpha: int = 4  # MaskFormerHead.alpha / MLP quant_const
    attention_gain: bool = False  # not in the official code: a per-attention gain buffer (see AttentionGain)


# --------------------------------------------------------------------------- helpers


def per_step(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a batch op to ``[T, B, ...]`` by folding T into the batch."""
    return op(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def scaled_levels(neuron: nn.Module, factor: float) -> neurons.Levels:
    """The Levels of ``factor * neuron(x)`` (the head's ``alpha * spike``)."""
    lv = neuron.levels
    return neurons.Levels(D=lv.D, signed=lv.signed, scale=lv.scale * factor)


class AttentionGain(nn.Module):
    """A fixed factor on a softmax-free attention's product, before its neuron (the zoo's demo models only).

    Not in the official code (``Spike2FormerConfig.attention_gain=False`` leaves it out, and with it the
    ``gain`` buffer, so official state dicts load as they are). The official ``q (k^T v) / sqrt(d)`` sums over
    every token; on the small images a CPU can train on, that sum is too small for the attention neuron to
    fire (measured at 128x128 on random weights: 99 % of its inputs below 0.15, the threshold is 0.5), which
    leaves the attention silent and the BatchNorm after it normalising a constant. The gain is one scalar per
    attention, set from data before training from scratch (:func:`tasks.segmentation.train.calibrate_firing`)
    and saved with the weights; at inference it is one more multiply of the product's result, as the
    ``1 / sqrt(d)`` already is, so spike-driven mode is unchanged.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("gain", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


def sine_positional_encoding(batch: int, h: int, w: int, num_feats: int, device, temperature: float = 10000.0,
                             scale: float = 2 * math.pi, eps: float = 1e-6) -> torch.Tensor:
    """mmdet ``SinePositionalEncoding(num_feats, normalize=True)`` of an all-valid mask: ``[B, 2*num_feats, H, W]``.

    Normalised row / column indices ``(1..H) / (H + eps) * 2 pi``; feature ``2i`` is ``sin``, ``2i+1`` is ``cos``
    of ``index / temperature ** (2 * (i // 2) / num_feats)``; ``y`` features first, then ``x``.
    """
    ones = torch.ones(batch, h, w, device=device)
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).reshape(batch, h, w, -1)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).reshape(batch, h, w, -1)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- backbone (SDTv2 / Meta-SpikeFormer)


class BNAndPadLayer(nn.Module):
    """BatchNorm, then pad ``pad_pixels`` with the value BN gives a zero input (so a following
    unpadded conv sees what it would see with the BN folded into the conv before it)."""

    keeps_batchnorm = True  # zoo.fuse: the padding value reads the BN statistics, do not fold it away

    def __init__(self, pad_pixels: int, num_features: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)
        self.pad_pixels = pad_pixels

    def forward(self, x):
        out = self.bn(x)
        p = self.pad_pixels
        if p > 0:
            bn = self.bn
            value = bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            n, c, h, w = out.shape
            padded = value.view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
            padded[:, :, p:-p, p:-p] = out
            out = padded
        return out


class RepConv(nn.Module):
    """``1x1 (on spikes) -> BNAndPad -> depthwise 3x3 (no padding) -> 1x1 -> BN``: a re-parameterisable 3x3 conv.

    The chain is linear, so at inference it is one 3x3 conv (zero padding, with bias) on the spikes: in
    spike-driven mode (and only there) it runs as that conv, ``rep``, on events (its weights are recomputed from
    the chain at every forward and kept out of the state dict), so every one of its operations is an accumulate.
    Integer mode runs the chain as the official code does.
    """

    def __init__(self, c_in: int, c_out: int, source):
        super().__init__()
        self.body = nn.Sequential(
            neurons.SpikeConv2d(c_in, c_in, 1, 1, 0, bias=False, source=source),
            BNAndPadLayer(1, c_in),
            nn.Sequential(
                nn.Conv2d(c_in, c_in, 3, 1, 0, groups=c_in, bias=False),
                nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False),
                nn.BatchNorm2d(c_out),
            ),
        )
        self.rep = neurons.SpikeConv2d(c_in, c_out, 3, 1, 1, bias=True, source=source)
        for name in ("weight", "bias"):  # derived from the chain, not parameters of their own
            delattr(self.rep, name)
            self.rep.register_buffer(name, torch.zeros(c_out, *((c_in, 3, 3) if name == "weight" else ())),
                                     persistent=False)

    @staticmethod
    def _bn(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return scale, bn.bias - bn.running_mean * scale

    @torch.no_grad()
    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3x3 conv equal to the chain (eval statistics): ``(weight [C_out, C_in, 3, 3], bias [C_out])``."""
        w1 = self.body[0].weight[:, :, 0, 0]  # [C, C_in]
        s1, b1 = self._bn(self.body[1].bn)
        dw, pw, bn2 = self.body[2]
        wd = dw.weight[:, 0]  # [C, 3, 3]
        wp = pw.weight[:, :, 0, 0]  # [C_out, C]
        s2, b2 = self._bn(bn2)
        weight = torch.einsum("oc,ckl,ci->oikl", wp * s2[:, None], wd, s1[:, None] * w1)
        bias = s2 * (wp @ (wd.sum((1, 2)) * b1)) + b2
        return weight, bias

    def forward(self, x):
        if self.rep.spike_driven and not self.training:
            self.rep.weight, self.rep.bias = self.merged()
            return self.rep(x)
        return self.body(x)


class SepConv(nn.Module):
    """spike -> 1x1 (x2) + BN -> spike -> depthwise 7x7 (no BN) -> 1x1 + BN (inverted separable conv)."""

    def __init__(self, dim: int, neuron: Neuron, expansion: int = 2, kernel_size: int = 7):
        super().__init__()
        med = int(expansion * dim)
        self.spike1 = neuron()
        self.pwconv1 = neurons.SpikeConv2d(dim, med, 1, bias=False, source=self.spike1)
        self.bn1 = nn.BatchNorm2d(med)
        self.spike2 = neuron()
        self.dwconv = neurons.SpikeConv2d(med, med, kernel_size, padding=kernel_size // 2, groups=med, bias=False,
                                          source=self.spike2)
        self.pwconv2 = nn.Conv2d(med, dim, 1, bias=False)  # reads the depthwise conv's output, not spikes
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        x = per_step(lambda z: self.bn1(self.pwconv1(z)), self.spike1(x))
        return per_step(lambda z: self.bn2(self.pwconv2(self.dwconv(z))), self.spike2(x))


class MS_ConvBlock(nn.Module):
    """``x + SepConv(x)``, then ``x + [spike -> 3x3 (x ratio) + BN -> spike -> 3x3 + BN]``."""

    def __init__(self, dim: int, mlp_ratio: int, neuron: Neuron):
        super().__init__()
        hidden = dim * mlp_ratio
        self.Conv = SepConv(dim, neuron)
        self.spike1 = neuron()
        self.conv1 = neurons.SpikeConv2d(dim, hidden, 3, padding=1, bias=False, source=self.spike1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.spike2 = neuron()
        self.conv2 = neurons.SpikeConv2d(hidden, dim, 3, padding=1, bias=False, source=self.spike2)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        x = self.Conv(x) + x
        y = per_step(lambda z: self.bn1(self.conv1(z)), self.spike1(x))
        y = per_step(lambda z: self.bn2(self.conv2(z)), self.spike2(y))
        return x + y


class MS_MLP(nn.Module):
    """Channel MLP on ``[T, B, C, H, W]``: spike -> Conv1d (x ratio, bias) + BN1d -> spike -> Conv1d + BN1d."""

    def __init__(self, dim: int, hidden: int, neuron: Neuron):
        super().__init__()
        self.fc1_spike = neuron()
        self.fc1_conv = neurons.SpikeConv1d(dim, hidden, 1, source=self.fc1_spike)
        self.fc1_bn = nn.BatchNorm1d(hidden)
        self.fc2_spike = neuron()
        self.fc2_conv = neurons.SpikeConv1d(hidden, dim, 1, source=self.fc2_spike)
        self.fc2_bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        shape = x.shape
        x = self.fc1_spike(x.flatten(3))
        x = per_step(lambda z: self.fc1_bn(self.fc1_conv(z)), x)
        x = per_step(lambda z: self.fc2_bn(self.fc2_conv(z)), self.fc2_spike(x))
        return x.reshape(shape)


class MS_Attention_RepConv_qkv_id(nn.Module):
    """Softmax-free spiking self-attention: ``spike(q) (spike(k)^T spike(v)) * (C / heads) ** -0.5``.

    q, k, v are RepConv + BN of the spiking input; the result is spiked and projected by RepConv + BN.
    """

    def __init__(self, dim: int, num_heads: int, neuron: Neuron, gain: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ZooError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.gain = AttentionGain() if gain else nn.Identity()
        self.head_spike = neuron()
        self.q_conv = nn.Sequential(RepConv(dim, dim, self.head_spike), nn.BatchNorm2d(dim))
        self.k_conv = nn.Sequential(RepConv(dim, dim, self.head_spike), nn.BatchNorm2d(dim))
        self.v_conv = nn.Sequential(RepConv(dim, dim, self.head_spike), nn.BatchNorm2d(dim))
        self.q_spike = neuron()
        self.k_spike = neuron()
        self.v_spike = neuron()
        self.attn_spike = neuron()
        self.proj_conv = nn.Sequential(RepConv(dim, dim, self.attn_spike), nn.BatchNorm2d(dim))
        self.kv = neurons.SpikeProduct(self.k_spike, self.v_spike)  # k^T v: spikes x spikes
        self.q_kv = neurons.SpikeProduct(self.q_spike, None)  # q (k^T v): spikes x real

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W]`` -> ``[T, B, heads, N, C / heads]``."""
        t, b, c = x.shape[:3]
        return x.flatten(3).transpose(-1, -2).reshape(t, b, -1, self.num_heads, c // self.num_heads).transpose(2, 3)

    def forward(self, x):
        t, b, c, h, w = x.shape
        x = self.head_spike(x)
        q = self._heads(self.q_spike(per_step(self.q_conv, x)))
        k = self._heads(self.k_spike(per_step(self.k_conv, x)))
        v = self._heads(self.v_spike(per_step(self.v_conv, x)))
        x = self.gain(self.q_kv(q, self.kv(k.transpose(-2, -1), v)) * self.scale)  # [T, B, heads, N, C / heads]
        x = self.attn_spike(x.transpose(3, 4).reshape(t, b, c, h, w))
        return per_step(self.proj_conv, x)


class MS_Block(nn.Module):
    """``x + attention(x)``, then ``x + MS_MLP(x)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, neuron: Neuron, gain: bool = False):
        super().__init__()
        self.attn = MS_Attention_RepConv_qkv_id(dim, num_heads, neuron, gain)
        self.mlp = MS_MLP(dim, int(dim * mlp_ratio), neuron)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class MS_DownSampling(nn.Module):
    """[spike ->] kxk conv (with bias) -> BN. The first one reads the image (no neuron)."""

    def __init__(self, c_in: int, c_out: int, k: int, s: int, p: int, first_layer: bool, neuron: Neuron):
        super().__init__()
        if first_layer:
            self.encode_conv = nn.Conv2d(c_in, c_out, k, s, p)
        else:
            self.encode_spike = neuron()
            self.encode_conv = neurons.SpikeConv2d(c_in, c_out, k, s, p, source=self.encode_spike)
        self.encode_bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        if hasattr(self, "encode_spike"):
            x = self.encode_spike(x)
        return per_step(lambda z: self.encode_bn(self.encode_conv(z)), x)


class SpikingMetaFormer(nn.Module):
    """The SDTv2 backbone (official ``Spiking_vit_MetaFormer``, ``decode_mode='Qsnn'``).

    ``[B, 3, H, W]`` -> ``[x1, x2, x3, x4]``, each ``[T, B, C, h, w]`` at strides 2, 4, 8, 16.
    """

    def __init__(self, cfg: Spike2FormerConfig, neuron: Neuron):
        super().__init__()
        d0, d1, d2, d3 = cfg.embed_dims
        r = cfg.mlp_ratio
        self.T = cfg.T
        self.downsample1_1 = MS_DownSampling(3, d0 // 2, 7, 2, 3, True, neuron)
        self.ConvBlock1_1 = nn.ModuleList([MS_ConvBlock(d0 // 2, r, neuron)])
        self.downsample1_2 = MS_DownSampling(d0 // 2, d0, 3, 2, 1, False, neuron)
        self.ConvBlock1_2 = nn.ModuleList([MS_ConvBlock(d0, r, neuron)])
        self.downsample2 = MS_DownSampling(d0, d1, 3, 2, 1, False, neuron)
        self.ConvBlock2_1 = nn.ModuleList([MS_ConvBlock(d1, r, neuron)])
        self.ConvBlock2_2 = nn.ModuleList([MS_ConvBlock(d1, r, neuron)])
        self.downsample3 = MS_DownSampling(d1, d2, 3, 2, 1, False, neuron)
        self.block3 = nn.ModuleList([MS_Block(d2, cfg.num_heads, r, neuron, cfg.attention_gain) for _ in range(cfg.block3_depth)])
        self.downsample4 = MS_DownSampling(d2, d3, 3, 1, 1, False, neuron)
        self.block4 = nn.ModuleList([MS_Block(d3, cfg.num_heads, r, neuron, cfg.attention_gain) for _ in range(cfg.block4_depth)])

    @staticmethod
    def _stage(x: torch.Tensor, down: nn.Module, *blocks: nn.Module) -> torch.Tensor:
        x = down(x)
        for blk in blocks:
            x = blk(x)
        return x

    def forward(self, x: torch.Tensor, steps: int | None = None) -> list[torch.Tensor]:
        """``steps``: time steps to run (default ``T``); at inference every step computes the same."""
        x = x.unsqueeze(0).repeat(steps or self.T, 1, 1, 1, 1)  # [T, B, 3, H, W]
        x1 = self._stage(x, self.downsample1_1, *self.ConvBlock1_1)  # 1/2
        x2 = self._stage(x1, self.downsample1_2, *self.ConvBlock1_2)  # 1/4
        x3 = self._stage(x2, self.downsample2, *self.ConvBlock2_1, *self.ConvBlock2_2)  # 1/8
        x = self._stage(x3, self.downsample3, *self.block3)  # 1/16, no output of its own
        x4 = self._stage(x, self.downsample4, *self.block4)  # 1/16 (stride-1 downsampling)
        return [x1, x2, x3, x4]


# --------------------------------------------------------------------------- pixel decoder (DCNv3 encoder + FPN)


class SepConv_Spike(nn.Module):
    """Channels-last ``[T, B, H, W, C]``: spike -> 1x1 (x2) + BN -> spike -> depthwise kxk + BN -> spike -> 1x1 + BN."""

    def __init__(self, dim: int, kernel_size: int, neuron: Neuron, expansion: int = 2):
        super().__init__()
        med = int(expansion * dim)
        self.spike1 = neuron()
        self.pwconv1 = nn.Sequential(neurons.SpikeConv2d(dim, med, 1, bias=False, source=self.spike1),
                                     nn.BatchNorm2d(med))
        self.spike2 = neuron()
        self.dwconv = nn.Sequential(neurons.SpikeConv2d(med, med, kernel_size, padding=kernel_size // 2, groups=med,
                                                        bias=False, source=self.spike2),
                                    nn.BatchNorm2d(med))
        self.spike3 = neuron()
        self.pwconv2 = nn.Sequential(neurons.SpikeConv2d(med, dim, 1, bias=False, source=self.spike3),
                                     nn.BatchNorm2d(dim))

    def forward(self, x):
        x = x.permute(0, 1, 4, 2, 3)
        x = per_step(self.pwconv1, self.spike1(x))
        x = per_step(self.dwconv, self.spike2(x))
        x = per_step(self.pwconv2, self.spike3(x))
        return x.permute(0, 1, 3, 4, 2).contiguous()


class DCNv3(nn.Module):
    """Spiking DCNv3 (official ``DCNv3_pytorch``) on channels-last ``[T, B, H, W, C]``.

    value = SepConv_Spike(x); offsets and mask from spike -> depthwise conv + BN -> spike -> 1x1 + BN
    (mask spiked, no softmax); sampled by :func:`tasks.segmentation.dcnv3.dcnv3_core`; then SepConv_Spike.
    """

    def __init__(self, channels: int, group: int, dw_kernel_size: int, neuron: Neuron, kernel_size: int = 3,
                 expansion: int = 2):
        super().__init__()
        if channels % group:
            raise ZooError(f"DCNv3 channels {channels} are not divisible by group {group}")
        self.group = group
        self.kernel_size = kernel_size
        points = group * kernel_size * kernel_size
        self.dw_spike = neuron()
        self.offset_spike = neuron()
        self.mask_spike = neuron()
        self.dw_conv = nn.Sequential(
            neurons.SpikeConv2d(channels, channels, dw_kernel_size, padding=(dw_kernel_size - 1) // 2,
                                groups=channels, bias=False, source=self.dw_spike),
            nn.BatchNorm2d(channels))
        self.offset = nn.Sequential(neurons.SpikeConv2d(channels, points * 2, 1, source=self.offset_spike),
                                    nn.BatchNorm2d(points * 2))
        self.mask = nn.Sequential(neurons.SpikeConv2d(channels, points, 1, source=self.offset_spike),
                                  nn.BatchNorm2d(points))
        self.input_proj = SepConv_Spike(channels, dw_kernel_size, neuron, expansion)
        self.output_proj = SepConv_Spike(channels, dw_kernel_size, neuron, expansion)

    def forward(self, x):
        t, b, h, w, c = x.shape
        value = self.input_proj(x)
        y = self.dw_spike(x.permute(0, 1, 4, 2, 3))
        y = self.offset_spike(per_step(self.dw_conv, y)).flatten(0, 1)
        # official quirk: [T*B, C, H, W] reshaped (not permuted) to channels-last
        offset = self.offset(y).reshape(t * b, h, w, -1)
        mask = self.mask_spike(self.mask(y).reshape(t * b, h, w, -1))
        out = dcnv3_core(value.flatten(0, 1), offset, mask, kernel=self.kernel_size, stride=1,
                         pad=(self.kernel_size - 1) // 2, dilation=1, group=self.group, offset_scale=1.0)
        return self.output_proj(out.reshape(t, b, h, w, c))


class EncoderMLP(MS_MLP):
    """The pixel encoder's channel MLP (official ``mmcv_spike.transformer.MS_MLP``): the backbone's layers,
    channels-last in and out.

    Official quirk: the ``[T*B, C, H*W]`` output is reshaped (not permuted) to ``[T, B, H, W, C]``.
    """

    def forward(self, x):
        shape = x.shape
        x = self.fc1_spike(x.permute(0, 1, 4, 2, 3).flatten(3))
        x = per_step(lambda z: self.fc1_bn(self.fc1_conv(z)), x)
        x = self.fc2_bn(self.fc2_conv(self.fc2_spike(x).flatten(0, 1)))
        return x.reshape(shape)


class DCNDetrTransformerEncoderLayer(nn.Module):
    """``q += g1 * SepConv_Spike(q); q += g2 * DCNv3(q); q += g3 * MLP(q)`` with layer scales (init 1e-6)."""

    def __init__(self, dim: int, ffn: int, group: int, dw_kernel_size: int, neuron: Neuron):
        super().__init__()
        self.Conv = SepConv_Spike(dim, 3, neuron)
        self.dcn = DCNv3(dim, group, dw_kernel_size, neuron)
        self.ffn = EncoderMLP(dim, ffn, neuron)
        self.gamma1 = nn.Parameter(1e-6 * torch.ones(dim))
        self.gamma2 = nn.Parameter(1e-6 * torch.ones(dim))
        self.gamma3 = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, q):
        q = q + self.gamma1 * self.Conv(q)
        q = q + self.gamma2 * self.dcn(q)
        return q + self.gamma3 * self.ffn(q)


class DCNDetrTransformerEncoder(nn.Module):
    def __init__(self, cfg: Spike2FormerConfig, neuron: Neuron):
        super().__init__()
        self.layers = nn.ModuleList([
            DCNDetrTransformerEncoderLayer(cfg.feat_channels, cfg.encoder_ffn, cfg.dcn_group, cfg.dcn_dw_kernel,
                                           neuron)
            for _ in range(cfg.encoder_layers)
        ])

    def forward(self, q):
        for layer in self.layers:
            q = layer(q)
        return q


class DCNTransformerEncoderPixelDecoder(nn.Module):
    """DCNv3 encoder on the 1/16 map, then a spiking FPN over the 1/8, 1/4 and 1/2 maps.

    Returns ``(mask_feature [T, B, C, H/2, W/2], memory [T, B, C, H/16, W/16] (spiked), [y16, y8, y4])``;
    the three FPN maps are the transformer decoder's keys.
    """

    def __init__(self, cfg: Spike2FormerConfig, neuron: Neuron):
        super().__init__()
        c = cfg.feat_channels
        d0, d1, d2, d3 = cfg.embed_dims
        in_channels = (d0 // 2, d0, d1)
        self.lateral_convs_spike = nn.ModuleList([neuron() for _ in in_channels])
        self.lateral_convs = nn.ModuleList([
            nn.Sequential(neurons.SpikeConv2d(ci, c, 1, source=s), nn.BatchNorm2d(c))
            for ci, s in zip(in_channels, self.lateral_convs_spike)
        ])
        self.output_convs_spike = nn.ModuleList([neuron() for _ in in_channels])
        self.output_convs = nn.ModuleList([
            nn.Sequential(neurons.SpikeConv2d(c, c, 3, padding=1, groups=c, bias=False, source=s), nn.BatchNorm2d(c))
            for s in self.output_convs_spike
        ])
        self.mask_feature_spike = neuron()
        self.mask_feature = neurons.SpikeConv2d(c, c, 1, source=self.mask_feature_spike)
        self.encoder = DCNDetrTransformerEncoder(cfg, neuron)
        self.last_feat_conv_spike = neuron()  # the official code spikes x4 with this one (encoder_in_proj_spike idle)
        self.encoder_in_proj = nn.Sequential(neurons.SpikeConv2d(d3, c, 1, source=self.last_feat_conv_spike),
                                             nn.BatchNorm2d(c))
        self.encoder_out_proj_spike = neuron()
        self.encoder_out_proj = nn.Sequential(neurons.SpikeConv2d(c, c, 1, source=self.encoder_out_proj_spike),
                                              nn.BatchNorm2d(c))

    def forward(self, feats: list[torch.Tensor]):
        x = per_step(self.encoder_in_proj, self.last_feat_conv_spike(feats[-1]))
        memory = self.encoder(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        memory = self.encoder_out_proj_spike(memory)
        y = per_step(self.encoder_out_proj, memory)
        outs = [y]
        for i in range(len(feats) - 2, -1, -1):  # 1/8, 1/4, 1/2
            lateral = per_step(self.lateral_convs[i], self.lateral_convs_spike[i](feats[i]))
            y = lateral + per_step(
                lambda z: F.interpolate(z, size=lateral.shape[-2:], mode="bilinear", align_corners=False), y)
            y = per_step(self.output_convs[i], self.output_convs_spike[i](y))
            outs.append(y)
        mask_feature = per_step(self.mask_feature, self.mask_feature_spike(y))
        return mask_feature, memory, outs[:3]


# --------------------------------------------------------------------------- transformer decoder


class SpikeMultiHeadAttention(nn.Module):
    """Softmax-free spiking attention (official ``MultiHeadAttentionBlock`` / ``CrossMultiHeadAttentionBlock``).

    Each of q, k, v: spike -> Conv1d 1x1 (bias) + BN1d -> spike; ``scores = q k^T / sqrt(C)`` (full width, no
    softmax); ``out = scores v``, heads concatenated -> spike -> Conv1d + BN1d. Inputs ``[T, B, N, C]``.
    """

    def __init__(self, dim: int, num_heads: int, neuron: Neuron, gain: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ZooError(f"decoder width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.embed_dim = dim
        self.gain = AttentionGain() if gain else nn.Identity()
        for name in ("q", "k", "v"):
            spike = neuron()
            setattr(self, f"{name}_conv_spike", spike)
            setattr(self, f"{name}_conv", nn.Sequential(neurons.SpikeConv1d(dim, dim, 1, source=spike),
                                                        nn.BatchNorm1d(dim)))
        self.q_spike = neuron()
        self.k_spike = neuron()
        self.v_spike = neuron()
        self.attn_spike = neuron()
        self.out_conv = nn.Sequential(neurons.SpikeConv1d(dim, dim, 1, source=self.attn_spike), nn.BatchNorm1d(dim))
        self.qk = neurons.SpikeProduct(self.q_spike, self.k_spike)  # q k^T: spikes x spikes
        self.scores_v = neurons.SpikeProduct(None, self.v_spike)  # (q k^T) v: real x spikes
        # the fast path's order q (k^T v) (no softmax, so the same product): fewer operations when N >> C / heads
        self.kv = neurons.SpikeProduct(self.k_spike, self.v_spike)
        self.q_kv = neurons.SpikeProduct(self.q_spike, None)
        self.reorder = False  # set by tasks.segmentation.fast.optimize

    @staticmethod
    def _project(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, N, C]`` -> Conv1d over C -> ``[T, B, N, C]``."""
        return per_step(conv, x.transpose(2, 3)).transpose(2, 3)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        t, b, n, c = x.shape
        return x.reshape(t, b, n, self.num_heads, c // self.num_heads).transpose(2, 3)

    def forward(self, query, key, value):
        t, b, nq, c = query.shape
        q = self._heads(self.q_spike(self._project(self.q_conv, self.q_conv_spike(query))))
        k = self._heads(self.k_spike(self._project(self.k_conv, self.k_conv_spike(key))))
        v = self._heads(self.v_spike(self._project(self.v_conv, self.v_conv_spike(value))))
        if self.reorder:
            out = self.q_kv(q, self.kv(k.transpose(3, 4), v)) / (self.embed_dim ** 0.5)
        else:
            scores = self.qk(q, k.transpose(3, 4)) / (self.embed_dim ** 0.5)
            out = self.scores_v(scores, v)
        out = self.gain(out).transpose(2, 3).reshape(t, b, nq, c)
        return self._project(self.out_conv, self.attn_spike(out))


class MultiheadAttention(nn.Module):
    """Adds the positional encodings (query_pos to the query, key_pos to the key; none to the value)."""

    def __init__(self, dim: int, num_heads: int, neuron: Neuron, gain: bool = False):
        super().__init__()
        self.attn = SpikeMultiHeadAttention(dim, num_heads, neuron, gain)

    def forward(self, query, key, value, query_pos, key_pos):
        return self.attn(query + query_pos, key + key_pos, value)


class MSDA_FFN(nn.Module):
    """spike -> Conv1d (x8) + BN1d -> spike -> Conv1d + BN1d on ``[T, B, N, C]``.

    Official quirk: the input ``[T, B, N, C]`` is reshaped (not transposed) to ``[T, B, C, N]`` and the
    output ``[T*B, C, N]`` reshaped back to ``[T, B, N, C]``.
    """

    def __init__(self, dim: int, hidden: int, neuron: Neuron):
        super().__init__()
        self.fc1_spike = neuron()
        self.fc1 = neurons.SpikeConv1d(dim, hidden, 1, source=self.fc1_spike)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2_spike = neuron()
        self.fc2 = neurons.SpikeConv1d(hidden, dim, 1, source=self.fc2_spike)
        self.bn2 = nn.BatchNorm1d(dim)

    def forward(self, x):
        t, b, n, c = x.shape
        y = self.fc1_spike(x).reshape(t, b, c, n)
        y = per_step(lambda z: self.bn1(self.fc1(z)), y)
        y = per_step(lambda z: self.bn2(self.fc2(z)), self.fc2_spike(y))
        return y.reshape(t, b, n, c)


class DetrTransformerDecoderLayer(nn.Module):
    """Cross-attention -> self-attention -> FFN, each residual; no LayerNorm."""

    def __init__(self, dim: int, num_heads: int, ffn: int, neuron: Neuron, gain: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads, neuron, gain)
        self.cross_attn = MultiheadAttention(dim, num_heads, neuron, gain)
        self.ffn = MSDA_FFN(dim, ffn, neuron)

    def forward(self, query, key, query_pos, key_pos):
        query = query + self.cross_attn(query, key, key, query_pos, key_pos)
        query = query + self.self_attn(query, query, query, query_pos, query_pos)
        return query + self.ffn(query)


class DetrTransformerDecoder(nn.Module):
    def __init__(self, cfg: Spike2FormerConfig, neuron: Neuron):
        super().__init__()
        self.layers = nn.ModuleList([
            DetrTransformerDecoderLayer(cfg.feat_channels, cfg.decoder_heads, cfg.decoder_ffn, neuron, cfg.attention_gain)
            for _ in range(cfg.decoder_layers)
        ])


# --------------------------------------------------------------------------- head


class MLP(nn.Module):
    """The mask-embedding MLP: fc1 (no bias) -> spike x alpha -> fc2 (no bias) -> spike x alpha -> fc_out."""

    def __init__(self, dim: int, out_dim: int, alpha: int, input_levels: neurons.Levels, neuron: Neuron):
        super().__init__()
        self.alpha = alpha
        self.fc1 = neurons.SpikeLinear(dim, dim, bias=False, source=input_levels)
        self.spike1 = neuron()
        self.fc2 = neurons.SpikeLinear(dim, dim, bias=False, source=scaled_levels(self.spike1, alpha))
        self.spike2 = neuron()
        self.fc_out = neurons.SpikeLinear(dim, out_dim, source=scaled_levels(self.spike2, alpha))

    def forward(self, x):
        x = self.spike1(self.fc1(x)) * self.alpha
        x = self.spike2(self.fc2(x)) * self.alpha
        return self.fc_out(x)


class MaskFormerHead(nn.Module):
    """Queries, transformer decoder and the SDME heads (official mmseg/mmdet ``MaskFormerHead``).

    ``forward(feats)`` -> ``(cls_scores [1+L, B, Q, K+1], mask_preds [1+L, B, Q, H/2, W/2])``: one entry for the
    initial queries and one per decoder layer, averaged over T. :meth:`predict` gives the semantic logits.
    """

    num_levels = 3

    def __init__(self, cfg: Spike2FormerConfig, neuron: Neuron):
        super().__init__()
        c = cfg.feat_channels
        self.alpha = cfg.alpha
        self.num_queries = cfg.num_queries
        self.pixel_decoder = DCNTransformerEncoderPixelDecoder(cfg, neuron)
        self.transformer_decoder = DetrTransformerDecoder(cfg, neuron)
        self.query_embed = nn.Embedding(cfg.num_queries, c)
        self.query_feat = nn.Embedding(cfg.num_queries, c)
        self.level_embed = nn.Embedding(self.num_levels, c)
        self.decoder_out_spike = neuron()
        out_levels = scaled_levels(self.decoder_out_spike, cfg.alpha)
        self.cls_embed = neurons.SpikeLinear(c, cfg.num_classes + 1, source=out_levels)
        self.mask_embed_spike = neuron()
        self.mask_embed = MLP(c, c, cfg.alpha, out_levels, neuron)
        self.w = nn.Parameter(torch.ones(1))
        self.shortcut_conv_spike = neuron()
        self.shortcut_conv = nn.Sequential(
            neurons.SpikeConv1d(cfg.num_queries, cfg.num_queries, 1, bias=False,
                                source=scaled_levels(self.shortcut_conv_spike, cfg.alpha)),
            nn.BatchNorm1d(cfg.num_queries))
        # masks = mask_embed (alpha x spikes) . mask features (real), per layer and time step
        self.mask_product = neurons.SpikeProduct(scaled_levels(self.mask_embed_spike, cfg.alpha), None,
                                                 equation="ltbqc,tbchw->ltbqhw")
        nn.init.constant_(self.cls_embed.bias, 0)
        trunc_normal_(self.cls_embed.weight, std=0.02)
        nn.init.constant_(self.mask_embed.fc_out.bias, 0)
        trunc_normal_(self.mask_embed.fc_out.weight, std=0.02)

    def forward(self, feats: list[torch.Tensor], last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``last_only``: masks of the last layer only (all that the semantic logits use)."""
        mask_features, memory, keys = self.pixel_decoder(feats)
        t, b = memory.shape[:2]
        query = self.query_feat.weight.expand(t, b, -1, -1)
        query_pos = self.query_embed.weight.expand(b, -1, -1)
        key_list, key_pos_list = [], []
        for i, k in enumerate(keys):
            h, w = k.shape[-2:]
            key_list.append(k.flatten(3).transpose(2, 3) + self.level_embed.weight[i])
            pos = sine_positional_encoding(b, h, w, k.shape[2] // 2, k.device)
            key_pos_list.append(pos.flatten(2).transpose(1, 2))
        out_dec = [query]
        for i, layer in enumerate(self.transformer_decoder.layers):
            level = i % self.num_levels
            query = layer(query, key_list[level], query_pos, key_pos_list[level])
            out_dec.append(query)
        out_dec = torch.sigmoid(torch.stack(out_dec))  # [1+L, T, B, Q, C] (decoder_post_norm)
        n_out, _, _, q, c = out_dec.shape
        spikes = self.alpha * self.decoder_out_spike(out_dec)
        cls_scores = self.cls_embed(spikes).mean(1)
        shortcut = self.shortcut_conv(self.alpha * self.shortcut_conv_spike(out_dec).reshape(-1, q, c))
        mask_embed = self.mask_embed(spikes) + self.w * shortcut.reshape(n_out, t, b, q, c)
        mask_embed = self.alpha * self.mask_embed_spike(mask_embed)
        if last_only:
            mask_embed = mask_embed[-1:]
        mask_preds = self.mask_product(mask_embed, mask_features).mean(1)
        return cls_scores, mask_preds

    @staticmethod
    def predict(cls_scores: torch.Tensor, mask_preds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Semantic logits ``[B, K, H, W]`` from the last layer: ``softmax(cls)[:-1] . sigmoid(resized masks)``."""
        masks = F.interpolate(mask_preds[-1], size=size, mode="bilinear", align_corners=False)
        probs = F.softmax(cls_scores[-1], dim=-1)[..., :-1]
        return torch.einsum("bqc,bqhw->bchw", probs, masks.sigmoid())


# --------------------------------------------------------------------------- model


class Spike2Former(nn.Module):
    """Spike2Former. Input: normalised float images ``[B, 3, H, W]`` (ImageNet mean / std on RGB 0..255).

    ``forward(x)`` gives the semantic logits ``[B, num_classes, H, W]`` (the official ``encode_decode``: before
    the resize to the original image and the argmax); ``forward(x, return_layers=True)`` gives
    ``(logits, cls_scores [1+L, B, Q, K+1], mask_preds [1+L, B, Q, H/2, W/2])``.
    Neuron state is reset at the start of every forward.
    """

    def __init__(self, cfg: Spike2FormerConfig = Spike2FormerConfig()):
        super().__init__()
        if cfg.D < 1:
            raise ZooError(f"D must be a positive integer, got {cfg.D}")
        self.cfg = cfg
        neuron = lambda: neurons.NILIF(D=cfg.D, step_mode="s")  # noqa: E731  one step over the whole [T, B, ...]
        self.backbone = SpikingMetaFormer(cfg, neuron)
        self.decode_head = MaskFormerHead(cfg, neuron)
        self.fast_inference = False  # set by tasks.segmentation.fast.optimize

    def check_input(self, x) -> None:
        check_image_batch(x, "Spike2Former")

    def forward(self, x: torch.Tensor, return_layers: bool = False):
        self.check_input(x)
        functional.reset_net(self)
        fast = self.fast_inference and not self.training
        feats = self.backbone(x, steps=1 if fast else None)
        cls_scores, mask_preds = self.decode_head(feats, last_only=fast and not return_layers)
        logits = MaskFormerHead.predict(cls_scores, mask_preds, tuple(x.shape[-2:]))
        return (logits, cls_scores, mask_preds) if return_layers else logits


def build_spike2former(**options) -> Spike2Former:
    """Build a Spike2Former; keywords are :class:`Spike2FormerConfig` fields (unknown ones are an error)."""
    fields = set(Spike2FormerConfig.__dataclass_fields__)
    unknown = set(options) - fields
    if unknown:
        raise ZooError(f"unknown Spike2Former option(s) {', '.join(sorted(unknown))}; "
                       f"options are {', '.join(sorted(fields))}")
    if "embed_dims" in options:
        options["embed_dims"] = tuple(int(d) for d in options["embed_dims"])
    return Spike2Former(Spike2FormerConfig(**options))
