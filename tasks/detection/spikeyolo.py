"""SpikeYOLO: integer-valued training, spike-driven inference object detection.

Luo et al., "Integer-Valued Training and Spike-Driven Inference Spiking Neural
Network for High-performance and Energy-efficient Object Detection", ECCV 2024
(arXiv 2407.20708); official code: github.com/BICLab/SpikeYOLO (AGPL-3.0).

This is an independent re-implementation written from the released model's
structure (``snn_yolov8.yaml`` + ``yolo_spikformer.py``); no official code is
used. The model is an ``nn.ModuleList`` named ``model`` indexed exactly like
the YAML, and every sub-module has the official attribute name, so an official
state dict loads as it is (see :mod:`tasks.detection.convert`).

Layout (``[T, B, C, H, W]`` tensors between layers; ``T`` = time steps):

====  =====================  ==========================================
 idx  block                  notes
====  =====================  ==========================================
  0   GetT                   image -> T copies (Gen1: event frames; one frame: T = 1)
  1   MS_DownSampling 128    7x7 stride 4, real-valued input (no neuron)
  2   MS_AllConvBlock x3     SepConv + two 3x3 MS_StandardConv
  3   MS_DownSampling 256    I-LIF -> 3x3 stride 2
  4   MS_AllConvBlock x6     -> P3 skip
  5   MS_DownSampling 512
  6   MS_ConvBlock[3,7] x9   SepConv + two RepConv (mlp ratio 3) -> P4 skip
  7   MS_DownSampling 1024
  8   MS_ConvBlock[2,7] x3
  9   SpikeSPPF 1024         max-pool pyramid on membrane inputs
 10   MS_StandardConv 512    1x1
 11   Upsample x2
 12   MS_ConvBlock[3,7]
 13   Concat(12, 6)
 14   MS_StandardConv 256    1x1
 15   Upsample x2
 16   MS_AllConvBlock
 17   Concat(16, 4)
 18   MS_StandardConv 256    1x1
 19   MS_AllConvBlock        -> detect P3 (stride 8)
 20   MS_StandardConv 256    3x3 stride 2
 21   Concat(20, 14)
 22   MS_ConvBlock[3,7]      -> detect P4 (stride 16)
 23   MS_StandardConv 512    3x3 stride 2
 24   Concat(23, 10)
 25   MS_ConvBlock[1,7]      -> detect P5 (stride 32); [2,7] for m and l
 26   SpikeDetect            YOLOv8 head, reg_max 16, mean over T, DFL
====  =====================  ==========================================

Repeats are ``max(round(n * depth), 1)`` (Python's round: 9 x 0.5 -> 4);
widths follow the official parser: down-sampling ``int(c * width)`` (no
channel cap), SPPF ``ceil(min(c, max_ch) * width / 8) * 8``, standard convs
``min(int(c * width), int(max_ch * width))``.

Neurons: every neuron is :class:`neurons.ILIF` (``mem_update`` +
``MultiSpike4``; Gen1: :class:`neurons.ILIFGen1`). Every conv that consumes a
neuron's output is a :class:`neurons.SpikeConv2d`, so
``neurons.to_spike_driven(model)`` runs the whole network on binary events.
One place needs care: the last 1x1 conv of SepConv (``pwconv3``, the official
``SepRepConv``) sees ``BN(spikes)`` with BN-valued padding; in spike-driven
mode its BN is folded into that conv's weights (scale) and a bias (shift), and
the padding becomes zero events, which is exact.

All BatchNorms use ``eps=1e-3, momentum=0.03``: the official
``initialize_weights`` sets that on every ``nn.BatchNorm2d``, so the released
checkpoints were trained and evaluated with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn

import neurons
from zoo.errors import ZooError
from zoo.inputs import check_image_batch

__all__ = [
    "SCALES", "SpikeYOLOConfig", "SpikeYOLO", "build_spikeyolo",
    "GetT", "MS_DownSampling", "SepConv", "RepConv", "SepRepConv", "MS_ConvBlock", "MS_AllConvBlock",
    "MS_StandardConv", "SpikeConv", "SpikeConvWithoutBN", "SpikeSPPF", "Concat", "DFL", "SpikeDetect",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.03
STRIDES = (8.0, 16.0, 32.0)

# [depth, width, max_channels] as in snn_yolov8.yaml (m's max_channels is 7024 there; it caps nothing)
SCALES = {
    "n": (0.33, 0.375, 1024),
    "s": (0.33, 0.5, 1024),
    "m": (0.5, 0.625, 7024),
    "l": (0.5, 0.75, 1024),
}

Neuron = Callable[[], nn.Module]


def batch_norm(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def per_step(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D op to ``[T, B, C, H, W]`` by folding T into the batch."""
    return op(x.flatten(0, 1)).unflatten(0, (x.shape[0], -1))  # -1: the batch stays symbolic in an export


# --------------------------------------------------------------------------- building blocks


class GetT(nn.Module):
    """Layer 0 (``MS_GetT``): ``[B, C, H, W]`` -> ``T`` identical steps ``[T, B, C, H, W]``.

    A 5D input ``[B, T, C, H, W]`` (Gen1 event frames) is only transposed to ``[T, B, ...]``.
    """

    def __init__(self, T: int = 1):
        super().__init__()
        self.T = int(T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            return x.transpose(0, 1)
        return x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"T={self.T}"


class MS_DownSampling(nn.Module):
    """[I-LIF ->] conv (with bias) -> BN. The first one (on the image) has no neuron."""

    def __init__(self, c1: int, c2: int, k: int, s: int, p: int, first_layer: bool, neuron: Neuron):
        super().__init__()
        if first_layer:
            self.encode_conv = nn.Conv2d(c1, c2, k, s, p)  # real-valued image: a plain conv
        else:
            self.encode_lif = neuron()
            self.encode_conv = neurons.SpikeConv2d(c1, c2, k, s, p, source=self.encode_lif)
        self.encode_bn = batch_norm(c2)

    def forward(self, x):
        if hasattr(self, "encode_lif"):
            x = self.encode_lif(x)
        return per_step(lambda z: self.encode_bn(self.encode_conv(z)), x)


class BNAndPad(nn.Module):
    """BatchNorm, then pad by ``pad`` pixels with the value BN gives a zero input (``BNAndPadLayer``).

    With that padding a following unpadded conv sees exactly what it would see
    if BN were folded into it and the (zero-padded) input fed to it.
    """

    keeps_batchnorm = True  # zoo.fuse: the padding value reads the BN statistics, do not fold it away

    def __init__(self, pad: int, c: int):
        super().__init__()
        self.pad = pad
        self.bn = batch_norm(c)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` of this BN with running statistics: ``BN(x) = scale * x + shift``."""
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return scale, bn.bias - bn.running_mean * scale

    def forward(self, x):
        out = self.bn(x)
        p = self.pad
        if p > 0:
            bn = self.bn
            zero_value = bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            inside = F.pad(out.new_ones((1, 1) + out.shape[2:]), [p] * 4) > 0  # no batch size: exports keep it
            out = torch.where(inside, F.pad(out, [p] * 4), zero_value.view(1, -1, 1, 1))
        return out


@torch.no_grad()
def _padded_1x1(weight: torch.Tensor, bias: torch.Tensor, pad: int) -> nn.Conv2d:
    """A plain 1x1 conv with ``weight`` ``[out, in, 1, 1]``, ``bias`` and zero padding ``pad`` (its border is the
    bias): the inference form of a BN-and-pad block folded into its 1x1 conv (``fold_for_inference``)."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, padding=pad, bias=True)
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)
    return conv


class BNFoldedSpikeConv2d(neurons.SpikeConv2d):
    """A 1x1 conv that, in the official graph, reads ``BN(spikes)``.

    Integer mode: a plain conv (the BN ran before it). Spike-driven mode: it is
    fed the raw (zero-padded) spike counts and applies the BN itself, folded:
    events hit ``W * scale``, and ``W @ shift`` is added once as a bias.
    """

    def __init__(self, c1: int, c2: int, bn: BNAndPad, source):
        super().__init__(c1, c2, 1, 1, 0, bias=False, source=source)
        object.__setattr__(self, "_input_bn", bn)  # a plain reference: bn is registered in the parent

    def _weight_op(self, x, weight):
        scale, _ = self._input_bn.affine()
        return self._conv_forward(x, weight * scale.view(1, -1, 1, 1), None)

    def input_counts(self, x):
        """Counts behind the input. Integer mode feeds BN(padded counts): invert the BN (padding -> 0)."""
        if self.spike_driven:
            return super().input_counts(x)
        scale, shift = self._input_bn.affine()
        scale = scale.view(1, -1, 1, 1)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        counts = torch.where(scale == 0, torch.zeros_like(x), (x - shift.view(1, -1, 1, 1)) / safe)
        return torch.round(counts).clamp_(0, self.levels.D)

    def spike_forward(self, x):
        _, shift = self._input_bn.affine()
        bias = F.conv2d(shift.view(1, -1, 1, 1), self.weight)  # [1, c2, 1, 1]
        return super().spike_forward(x) + bias


class SepRepConv(nn.Module):
    """``BNAndPad -> 1x1 conv -> depthwise kxk (no padding)``: SepConv's last stage."""

    def __init__(self, c1: int, c2: int, source, k: int = 3):
        super().__init__()
        pad_bn = BNAndPad((k - 1) // 2, c1)
        self.body = nn.Sequential(
            pad_bn,
            nn.Sequential(
                BNFoldedSpikeConv2d(c1, c2, pad_bn, source),
                nn.Conv2d(c2, c2, k, 1, 0, groups=c2, bias=False),
            ),
        )

    def fold_for_inference(self) -> bool:
        """Integer-mode inference (:func:`zoo.fuse.fold_modules`): the 1x1 conv on the zero-padded counts (its own
        padding) with the BN in its weights (``W * scale``) and bias (``W @ shift``), as spike-driven mode
        computes it, so that it reads counts. Same outputs up to rounding."""
        if not isinstance(self.body[0], BNAndPad):  # folded already
            return False
        pad_bn, (pw, dw) = self.body[0], self.body[1]
        if pw.spike_driven or self.training:
            return False
        scale, shift = pad_bn.affine()
        self.body = nn.Sequential(_padded_1x1(pw.weight * scale.view(1, -1, 1, 1), pw.weight.flatten(1) @ shift,
                                              pad_bn.pad), dw)
        return True

    def forward(self, x):
        if not isinstance(self.body[0], BNAndPad):  # folded for inference
            return self.body(x)
        pad_bn, (pw, dw) = self.body[0], self.body[1]
        if not pw.spike_driven:
            return self.body(x)
        if self.training:
            raise ZooError("spike-driven mode folds BatchNorm running statistics: call model.eval() first")
        return dw(pw(F.pad(x, [pad_bn.pad] * 4)))  # zero events in the border; BN is folded into pw


class SepConv(nn.Module):
    """Inverted separable conv: I-LIF -> 1x1 (x2) -> BN -> I-LIF -> depthwise kxk -> BN -> I-LIF -> SepRepConv -> BN."""

    def __init__(self, dim: int, kernel_size: int, neuron: Neuron, expansion: int = 2):
        super().__init__()
        med = int(expansion * dim)
        self.lif1 = neuron()
        self.pwconv1 = neurons.SpikeConv2d(dim, med, 1, bias=False, source=self.lif1)
        self.bn1 = batch_norm(med)
        self.lif2 = neuron()
        self.dwconv2 = neurons.SpikeConv2d(
            med, med, kernel_size, padding=(kernel_size - 1) // 2, groups=med, bias=False, source=self.lif2
        )
        self.bn2 = batch_norm(med)
        self.lif3 = neuron()
        self.pwconv3 = SepRepConv(med, dim, source=self.lif3)
        self.bn3 = batch_norm(dim)

    def forward(self, x):
        x = per_step(lambda z: self.bn1(self.pwconv1(z)), self.lif1(x))
        x = per_step(lambda z: self.bn2(self.dwconv2(z)), self.lif2(x))
        return per_step(lambda z: self.bn3(self.pwconv3(z)), self.lif3(x))


class RepConv(nn.Module):
    """``1x1 (on spikes) -> BNAndPad -> depthwise kxk (no padding) -> 1x1 -> BN``: one re-parameterisable kxk conv."""

    def __init__(self, c1: int, c2: int, source, k: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            neurons.SpikeConv2d(c1, c1, 1, 1, 0, bias=False, source=source),
            BNAndPad((k - 1) // 2, c1),
            nn.Sequential(
                nn.Conv2d(c1, c1, k, 1, 0, groups=c1, bias=False),
                nn.Conv2d(c1, c2, 1, 1, 0, bias=False),
                batch_norm(c2),
            ),
        )

    def fold_for_inference(self) -> bool:
        """Integer-mode inference (:func:`zoo.fuse.fold_modules`): one 1x1 conv, zero-padded, with the BN folded in,
        instead of ``1x1 conv -> BN -> pad with BN(0)`` (the border is the folded bias = BN(0) either way), so no
        BN or padding pass over the conv's output. Same outputs up to rounding."""
        if len(self.body) != 3:  # folded already
            return False
        pw, pad_bn, rest = self.body
        if pw.spike_driven or self.training:
            return False
        scale, shift = pad_bn.affine()
        self.body = nn.Sequential(_padded_1x1(pw.weight * scale.view(-1, 1, 1, 1), shift, pad_bn.pad), rest)
        return True

    def forward(self, x):
        return self.body(x)


class MS_ConvBlock(nn.Module):
    """``x + SepConv(x)``, then a residual channel MLP of two RepConvs (``dim -> ratio*dim -> dim``)."""

    def __init__(self, dim: int, mlp_ratio: int, kernel_size: int, neuron: Neuron):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.Conv = SepConv(dim, kernel_size, neuron)
        self.lif1 = neuron()
        self.conv1 = RepConv(dim, hidden, source=self.lif1)
        self.bn1 = batch_norm(hidden)
        self.lif2 = neuron()
        self.conv2 = RepConv(hidden, dim, source=self.lif2)
        self.bn2 = batch_norm(dim)

    def forward(self, x):
        x = self.Conv(x) + x
        y = per_step(lambda z: self.bn1(self.conv1(z)), self.lif1(x))
        y = per_step(lambda z: self.bn2(self.conv2(z)), self.lif2(y))
        return x + y


class MS_StandardConv(nn.Module):
    """I-LIF -> kxk conv (stride s, 'same' padding, no bias) -> BN."""

    def __init__(self, c1: int, c2: int, k: int, s: int, neuron: Neuron):
        super().__init__()
        self.lif = neuron()
        self.conv = neurons.SpikeConv2d(c1, c2, k, s, k // 2, bias=False, source=self.lif)
        self.bn = batch_norm(c2)

    def forward(self, x):
        return per_step(lambda z: self.bn(self.conv(z)), self.lif(x))


class MS_AllConvBlock(nn.Module):
    """``x + SepConv(x)``, then a residual MLP of two 3x3 MS_StandardConvs (``dim -> ratio*dim -> dim``)."""

    def __init__(self, dim: int, mlp_ratio: int, kernel_size: int, neuron: Neuron):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.Conv = SepConv(dim, kernel_size, neuron)
        self.conv1 = MS_StandardConv(dim, hidden, 3, 1, neuron)
        self.conv2 = MS_StandardConv(hidden, dim, 3, 1, neuron)

    def forward(self, x):
        x = self.Conv(x) + x
        return x + self.conv2(self.conv1(x))


class SpikeConv(MS_StandardConv):
    """The head's / SPPF's I-LIF -> conv -> BN (same computation as MS_StandardConv)."""


class SpikeConvWithoutBN(nn.Module):
    """I-LIF -> 1x1 conv with bias: the head's last layer."""

    def __init__(self, c1: int, c2: int, neuron: Neuron):
        super().__init__()
        self.lif = neuron()
        self.conv = neurons.SpikeConv2d(c1, c2, 1, bias=True, source=self.lif)

    def forward(self, x):
        return per_step(self.conv, self.lif(x))


class SpikeSPPF(nn.Module):
    """SPPF: SpikeConv to c1/2, three chained 5x5 max-pools (on BN outputs), concat, SpikeConv to c2."""

    def __init__(self, c1: int, c2: int, k: int, neuron: Neuron):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = SpikeConv(c1, hidden, 1, 1, neuron)
        self.cv2 = SpikeConv(hidden * 4, c2, 1, 1, neuron)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = per_step(self.m, x)
        y2 = per_step(self.m, y1)
        y3 = per_step(self.m, y2)
        return self.cv2(torch.cat((x, y1, y2, y3), 2))


class Concat(nn.Module):
    """Concatenate ``[T, B, C, H, W]`` tensors along channels (dim 2)."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 2)


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over ``reg_max`` bins, expectation of the bin index.

    A fixed (non-trainable, but stored) 1x1 conv with weights 0..reg_max-1; it
    runs on real-valued probabilities, not spikes.
    """

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1))

    def forward(self, x):  # [B, 4 * reg_max, A] -> [B, 4, A]
        # no batch size in the reshapes: an ONNX export keeps the batch symbolic
        return self.conv(x.unflatten(1, (4, self.reg_max)).transpose(2, 1).softmax(1)).flatten(1, 2)


def make_anchors(shapes: list[tuple[int, int]], strides, dtype, device, offset: float = 0.5):
    """Anchor centres (grid units, ``[A, 2]`` as x, y) and their strides (``[A, 1]``), level by level."""
    points, stride_list = [], []
    for (h, w), s in zip(shapes, strides):
        sy, sx = torch.meshgrid(
            torch.arange(h, device=device, dtype=dtype) + offset,
            torch.arange(w, device=device, dtype=dtype) + offset,
            indexing="ij",
        )
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), s, dtype=dtype, device=device))
    return torch.cat(points), torch.cat(stride_list)


class SpikeDetect(nn.Module):
    """YOLOv8 decoupled head on spikes (``SpikeDetect``).

    Per level: box branch ``cv2`` (SpikeConv 3x3, SpikeConv 3x3, I-LIF + 1x1
    conv to ``4 * reg_max``) and class branch ``cv3`` (same, to ``nc``); the
    two are concatenated and averaged over T. Training: the per-level raw maps
    ``[B, 4*reg_max + nc, H, W]``. Eval: ``(y, raw)`` with ``y = [B, 4 + nc, A]``
    = box centre/size in input pixels (DFL expectation, ltrb -> xywh, times the
    stride) and sigmoid class probabilities.
    """

    def __init__(self, nc: int, ch: tuple[int, ...], neuron: Neuron, reg_max: int = 16):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = reg_max
        self.no = nc + 4 * reg_max
        self.register_buffer("stride", torch.tensor(STRIDES[: self.nl]), persistent=False)
        c2 = max(16, ch[0] // 4, 4 * reg_max)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(SpikeConv(x, c2, 3, 1, neuron), SpikeConv(c2, c2, 3, 1, neuron),
                          SpikeConvWithoutBN(c2, 4 * reg_max, neuron))
            for x in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(SpikeConv(x, c3, 3, 1, neuron), SpikeConv(c3, c3, 3, 1, neuron),
                          SpikeConvWithoutBN(c3, nc, neuron))
            for x in ch
        )
        self.dfl = DFL(reg_max) if reg_max > 1 else nn.Identity()
        self.bias_init()

    @torch.no_grad()
    def bias_init(self) -> None:
        """The official prior: box logits 1.0, class logits for ~5 objects per 640x640 image."""
        for box, cls, s in zip(self.cv2, self.cv3, STRIDES):
            box[-1].conv.bias.fill_(1.0)
            cls[-1].conv.bias[: self.nc] = math.log(5 / self.nc / (640 / s) ** 2)

    def forward(self, xs: list[torch.Tensor]):
        raw = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 2).mean(0) for i, x in enumerate(xs)]
        if self.training:
            return raw
        return self.decode(raw), raw

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        anchors, strides = make_anchors([r.shape[2:] for r in raw], self.stride.tolist(), raw[0].dtype, raw[0].device)
        anchors, strides = anchors.transpose(0, 1), strides.transpose(0, 1)  # [2, A], [1, A]
        x_cat = torch.cat([r.flatten(2) for r in raw], 2)
        box, cls = x_cat.split((4 * self.reg_max, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((xywh, cls.sigmoid()), 1)


# --------------------------------------------------------------------------- the model


def _repeats(n: int, depth: float) -> int:
    return max(round(n * depth), 1) if n > 1 else n


def _make_divisible(x: float, divisor: int = 8) -> int:
    return math.ceil(x / divisor) * divisor


@dataclass(frozen=True)
class SpikeYOLOConfig:
    """One SpikeYOLO variant: the YAML's scale plus the few things that differ between releases."""

    depth: float = 0.33
    width: float = 0.5
    max_ch: int = 1024
    nc: int = 80
    # time steps for a [B, 3, H, W] image (MS_GetT's argument). Gen1: the event frames' T ([B, T, 3, H, W]
    # brings its own); a single frame runs T = 1, as the official Gen1 YAML's MS_GetT [3, 1] does
    T: int = 1
    p5_ratio: int = 1  # layer 25's MS_ConvBlock mlp ratio: 1 in the YAML, 2 for scales m and l
    gen1: bool = False  # Gen1 release: decay-input I-LIF, accepts [B, T, 3, H, W] event frames
    repeats: tuple[int, int, int, int] | None = None  # layers 2, 4, 6, 8; None: from depth

    def block_repeats(self) -> tuple[int, int, int, int]:
        if self.repeats is not None:
            return tuple(self.repeats)
        return tuple(_repeats(n, self.depth) for n in (3, 6, 9, 3))


def layer_widths(width: float, max_ch: int) -> tuple[int, ...]:
    """Output channels of YAML layers 1, 3, 5, 7, 9, 10, 13, 14, 17, 18, 20, 21, 23, 24 at this scale.

    MS_DownSampling scales without a cap (``int(c * width)``), MS_StandardConv caps at
    ``max_ch * width``, SpikeSPPF rounds up to a multiple of 8; concatenations add up.
    """
    ds = lambda c: int(c * width)  # noqa: E731
    std = lambda c: min(int(c * width), int(max_ch * width))  # noqa: E731
    c1, c3, c5, c7 = ds(128), ds(256), ds(512), ds(1024)
    c9 = _make_divisible(min(1024, max_ch) * width)
    c10, c14, c18, c20, c23 = std(512), std(256), std(256), std(256), std(512)
    c13, c17, c21 = c10 + c5, c14 + c3, c20 + c14
    return c1, c3, c5, c7, c9, c10, c13, c14, c17, c18, c20, c21, c23, c23 + c10


def _stack(blocks: list[nn.Module]) -> nn.Module:
    """One block as it is, several in an nn.Sequential (the official key layout: model.4.0..., model.2....)."""
    return blocks[0] if len(blocks) == 1 else nn.Sequential(*blocks)


def backbone(c1: int, c3: int, c5: int, c7: int, c_sppf: int, repeats, neuron) -> list[nn.Module]:
    """The YAML's backbone after the first downsampling: four stages (spike conv blocks, each but the last
    followed by a stride-2 MS_DownSampling) and SpikeSPPF; shared by SpikeYOLO and TDE (layers 2..9 / 1..8)."""
    n1, n3, n5, n7 = repeats
    return [
        _stack([MS_AllConvBlock(c1, 4, 7, neuron) for _ in range(n1)]),
        MS_DownSampling(c1, c3, 3, 2, 1, False, neuron),
        _stack([MS_AllConvBlock(c3, 4, 7, neuron) for _ in range(n3)]),  # P3
        MS_DownSampling(c3, c5, 3, 2, 1, False, neuron),
        _stack([MS_ConvBlock(c5, 3, 7, neuron) for _ in range(n5)]),  # P4
        MS_DownSampling(c5, c7, 3, 2, 1, False, neuron),
        _stack([MS_ConvBlock(c7, 2, 7, neuron) for _ in range(n7)]),
        SpikeSPPF(c7, c_sppf, 5, neuron),  # P5
    ]


class SpikeYOLO(nn.Module):
    """SpikeYOLO detector. Input: float images ``[B, 3, H, W]`` in [0, 1], H and W multiples of 32
    (Gen1 also ``[B, T, 3, H, W]`` event frames). Output: see :class:`SpikeDetect`.

    Neuron state is reset at the start of every forward; there is nothing to reset by hand.
    """

    def __init__(self, cfg: SpikeYOLOConfig = SpikeYOLOConfig()):
        super().__init__()
        self.cfg = cfg
        if cfg.gen1:
            neuron = lambda: neurons.ILIFGen1(detach_reset=True)  # noqa: E731
        else:
            neuron = neurons.ILIF
        n2, n4, n6, n8 = cfg.block_repeats()
        c1, c3, c5, c7, c9, c10, c13, c14, c17, c18, c20, c21, c23, c24 = layer_widths(cfg.width, cfg.max_ch)
        up = lambda: nn.Upsample(scale_factor=(1, 2, 2), mode="nearest")  # noqa: E731  on [T, B, C, H, W]

        self.model = nn.ModuleList([
            GetT(1 if cfg.gen1 else cfg.T),                                                # 0
            MS_DownSampling(3, c1, 7, 4, 2, True, neuron),                                 # 1
            *backbone(c1, c3, c5, c7, c9, (n2, n4, n6, n8), neuron),                      # 2..9 (P3 4, P4 6, P5 9)
            MS_StandardConv(c9, c10, 1, 1, neuron),                                        # 10
            up(),                                                                          # 11
            MS_ConvBlock(c10, 3, 7, neuron),                                               # 12
            Concat(),                                                                      # 13 (12, 6)
            MS_StandardConv(c13, c14, 1, 1, neuron),                                       # 14
            up(),                                                                          # 15
            MS_AllConvBlock(c14, 4, 7, neuron),                                            # 16
            Concat(),                                                                      # 17 (16, 4)
            MS_StandardConv(c17, c18, 1, 1, neuron),                                       # 18
            MS_AllConvBlock(c18, 4, 7, neuron),                                            # 19 -> P3 out
            MS_StandardConv(c18, c20, 3, 2, neuron),                                       # 20
            Concat(),                                                                      # 21 (20, 14)
            MS_ConvBlock(c21, 3, 7, neuron),                                               # 22 -> P4 out
            MS_StandardConv(c21, c23, 3, 2, neuron),                                       # 23
            Concat(),                                                                      # 24 (23, 10)
            MS_ConvBlock(c24, cfg.p5_ratio, 7, neuron),                                    # 25 -> P5 out
            SpikeDetect(cfg.nc, (c18, c21, c24), neuron),                                  # 26
        ])

    @property
    def stride(self) -> torch.Tensor:
        return self.model[26].stride

    def check_input(self, x) -> None:
        """Raise :class:`ZooError` (one line) unless ``x`` is a float image batch this model can take."""
        check_image_batch(x, "SpikeYOLO", multiple=32, ndims=(4, 5) if self.cfg.gen1 else (4,))

    def restore_from_checkpoint(self, ckpt) -> None:
        """Called by ``zoo.load`` after the weights: check the official pickle's ``MS_GetT`` ``T`` (not in the
        state dict) against this model's."""
        from .convert import check_pickled_T

        check_pickled_T(self, ckpt, "SpikeYOLO")

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        functional.reset_net(self)
        m = self.model
        x = m[1](m[0](x))
        p3 = m[4](m[3](m[2](x)))
        p4 = m[6](m[5](p3))
        p5 = m[9](m[8](m[7](p4)))
        y10 = m[10](p5)
        y = m[13]([m[12](m[11](y10)), p4])
        y14 = m[14](y)
        y = m[17]([m[16](m[15](y14)), p3])
        out_p3 = m[19](m[18](y))
        out_p4 = m[22](m[21]([m[20](out_p3), y14]))
        out_p5 = m[25](m[24]([m[23](out_p4), y10]))
        return m[26]([out_p3, out_p4, out_p5])


def build_spikeyolo(scale="s", nc: int = 80, T: int = 1, gen1: bool = False, p5_ratio: int | None = None,
                    repeats=None) -> SpikeYOLO:
    """Build a SpikeYOLO. ``scale``: ``'n' | 's' | 'm' | 'l'`` or ``(depth, width, max_channels)``.

    ``p5_ratio`` defaults to 2 for m and l (the released 48M / 69M models), else 1.
    """
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ZooError(f"unknown SpikeYOLO scale {scale!r}; scales are {', '.join(SCALES)} or (depth, width, max_ch)")
        depth, width, max_ch = SCALES[scale]
        if p5_ratio is None:
            p5_ratio = 2 if scale in ("m", "l") else 1
    else:
        try:
            depth, width, max_ch = (float(scale[0]), float(scale[1]), int(scale[2]))
        except (TypeError, ValueError, IndexError):
            raise ZooError(f"scale must be a name or (depth, width, max_channels), got {scale!r}") from None
    cfg = SpikeYOLOConfig(depth=depth, width=width, max_ch=max_ch, nc=int(nc), T=int(T),
                          p5_ratio=int(p5_ratio or 1), gen1=bool(gen1),
                          repeats=tuple(int(r) for r in repeats) if repeats is not None else None)
    return SpikeYOLO(cfg)
