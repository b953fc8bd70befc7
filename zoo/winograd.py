"""Winograd F(4x4, 3x3) for dense 3x3 stride-1 convolutions on CPU (inference, fp32).

Lavin & Gray (CVPR 2016): a 4x4 output tile of a 3x3 convolution is

    Y = A^T [ (G g G^T) * (B^T d B) ] A

for a 6x6 input tile ``d`` and the filter ``g``: 36 multiplications per
tile and channel pair instead of 144. Over channels the element-wise
product becomes 36 matrix products ``U[t] (Co x Ci) @ V[t] (Ci x tiles)``,
done here as one ``torch.bmm``; the transforms are small dense products
(``kron(B^T, B^T)`` on the 36 tile values, ``kron(A^T, A^T)`` back).
``U = G g G^T`` is computed once per weight, in float64.

In SpikeYOLO 69 % of the multiply-accumulates are such convolutions, fed
with spike counts (small integers: ``B^T d B`` is then exact). The result
differs from the direct convolution by ~1e-5 of the output's range (fp32
rounding of the transforms), like BN folding; a membrane potential that sits
on a rounding boundary can then give one count more or less.

Whether Winograd is faster depends on the shape (channels, tile count) and
the machine, so :class:`WinogradConv` times both algorithms on the first
input of each shape and keeps the faster (``zoo bench detection`` reports
the choices). PyTorch's own NNPACK Winograd would be the library to use, but
its initialisation fails on this machine (``NNPACK SpatialConvolution_updateOutput failed``).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from .timing import call_times

__all__ = ["winograd_conv2d", "winograd_weight", "use_winograd", "switches", "eligible"]

_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
_BT_F32 = torch.tensor(_BT, dtype=torch.float32)
_AT_F32 = torch.tensor(_AT, dtype=torch.float32)


def eligible(conv: nn.Module) -> bool:
    """A dense 3x3 stride-1 convolution (zero padding given as numbers), no dilation, one group."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and isinstance(conv.padding, tuple)
            and conv.padding_mode == "zeros")


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[Co, Ci, 3, 3]`` -> ``U`` ``[36, Co, Ci]`` (``G g G^T`` of every filter, computed in float64)."""
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ik,ockl,jl->ijoc", g, weight.detach().double(), g)
    return u.reshape(36, weight.shape[0], weight.shape[1]).float().contiguous()


def winograd_conv2d(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, padding=(1, 1)) -> torch.Tensor:
    """The 3x3 stride-1 convolution of ``x`` ``[N, Ci, H, W]`` with ``U = winograd_weight(w)``."""
    n, c, h_in, w_in = x.shape
    ph, pw = padding
    h, w = h_in + 2 * ph - 2, w_in + 2 * pw - 2  # output size
    co = u.shape[1]
    th, tw = -(-h // 4), -(-w // 4)
    xp = F.pad(x, (pw, tw * 4 + 2 - w_in - pw, ph, th * 4 + 2 - h_in - ph))
    tiles = xp.unfold(2, 6, 4).unfold(3, 6, 4)  # [N, C, th, tw, 6, 6], a view
    d = tiles.permute(4, 5, 1, 0, 2, 3).reshape(6, 6 * c * n * th * tw)  # gathered 6x6 tiles [k, (l, C, tiles)]
    t = torch.mm(_BT_F32, d).view(6, 6, -1)  # B^T d: [i, l, ...]
    v = torch.matmul(_BT_F32, t).view(36, c, n * th * tw)  # (B^T d) B: [(i, j), C, tiles], separably
    m = torch.bmm(u, v)  # [36, Co, N tiles]
    t = torch.mm(_AT_F32, m.view(6, -1)).view(4, 6, -1)  # A^T m: [p, j, ...]
    y = torch.matmul(_AT_F32, t).view(4, 4, co, n, th, tw)  # (A^T m) A: [p, q, Co, N, th, tw]
    y = y.permute(3, 2, 4, 0, 5, 1).reshape(n, co, th * 4, tw * 4)
    if th * 4 != h or tw * 4 != w:
        y = y[:, :, :h, :w]
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _best_ms(fn, repeats: int = 5) -> float:
    """Fastest of ``repeats`` timed calls after a warm-up (on a shared machine the minimum is the least noisy)."""
    return min(call_times(fn, repeats)) * 1e3


class WinogradConv:
    """Replaces one convolution's ``_conv_forward``: Winograd where it was timed faster for the input's shape."""

    def __init__(self, conv: nn.Conv2d, autotune: bool = True):
        self.conv = conv
        self.autotune = autotune
        self.choice: dict[tuple, bool] = {}  # input shape -> use Winograd
        self._u = None
        self._key = None

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        key = (w.data_ptr(), w._version)
        if self._key != key:
            self._u, self._key = winograd_weight(w), key
        return self._u

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        direct = nn.Conv2d._conv_forward
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            return direct(self.conv, x, w, b)
        shape = tuple(x.shape)
        if shape not in self.choice:
            if self.autotune:
                u = self.weight(w)
                xc = x.contiguous()
                t_direct = _best_ms(lambda: direct(self.conv, x, w, b))
                t_wino = _best_ms(lambda: winograd_conv2d(xc, u, b, self.conv.padding))
                self.choice[shape] = t_wino < t_direct
            else:
                self.choice[shape] = True
        if not self.choice[shape]:
            return direct(self.conv, x, w, b)
        return winograd_conv2d(x.contiguous(), self.weight(w), b, self.conv.padding)


def use_winograd(model: nn.Module, autotune: bool = True) -> list[WinogradConv]:
    """Let every eligible convolution of ``model`` use Winograd (CPU fp32 inference; anything else, and
    every shape where the direct convolution was timed faster when ``autotune``, runs as before).
    Returns the per-layer switches (their ``choice`` maps show what was picked)."""
    switches = []
    for m in model.modules():
        if eligible(m) and not isinstance(m.__dict__.get("_conv_forward"), WinogradConv):
            m._conv_forward = WinogradConv(m, autotune)  # an instance attribute: state_dict is unchanged
            switches.append(m._conv_forward)
    return switches


def switches(model: nn.Module) -> list[WinogradConv]:
    """The :class:`WinogradConv` switches :func:`use_winograd` put into ``model``."""
    return [m._conv_forward for m in model.modules() if isinstance(m.__dict__.get("_conv_forward"), WinogradConv)]
