"""DCNv3 sampling core in pure PyTorch (``F.grid_sample``), as InternImage's ``dcnv3_core_pytorch``.

Spike2Former's pixel decoder always runs this pure-PyTorch path (the CUDA op
of InternImage is commented out in the official code), so the zoo needs no
compiled op. Written from the algorithm (Wang et al., "InternImage", CVPR
2023, eq. 3): for every output pixel ``p0``, every group ``g`` and every
kernel point ``k``

.. math::
    y_g(p_0) = \\sum_k m_{gk}\\, x_g(p_0 + p_k + \\Delta p_{gk})

with ``x_g`` sampled bilinearly (zero outside the zero-padded input). The
mask ``m`` is used as given (Spike2Former quantises it instead of a softmax).

Layouts, as the official core expects them (channels last):

* ``x``      ``[N, H, W, group * group_channels]``
* ``offset`` ``[N, H_out, W_out, group * P * 2]`` -- per group, per kernel point, ``(dx, dy)`` in pixels
* ``mask``   ``[N, H_out, W_out, group * P]``
* kernel points ``k`` run x-major: ``k = ix * kernel_h + iy`` (InternImage's meshgrid order).

The arithmetic follows InternImage's order (reference point and kernel offset
normalised by the padded size, then the offset divided by it), so the result
matches the official core to float rounding, bit for bit in practice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dcnv3_core"]


def _reference_points(h_out: int, w_out: int, kernel: int, dilation: int, stride: int,
                      h_in: int, w_in: int, device) -> torch.Tensor:
    """``[1, H_out, W_out, 1, 2]``: each output pixel's kernel centre (x, y) in the padded input, in [0, 1]."""
    first = (dilation * (kernel - 1)) // 2 + 0.5  # centre of the first window, in pixels
    ys = torch.linspace(first, first + (h_out - 1) * stride, h_out, dtype=torch.float32, device=device)
    xs = torch.linspace(first, first + (w_out - 1) * stride, w_out, dtype=torch.float32, device=device)
    ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((ref_x.reshape(-1)[None] / w_in, ref_y.reshape(-1)[None] / h_in), -1).reshape(1, h_out, w_out, 1, 2)


def _kernel_offsets(kernel: int, dilation: int, group: int, h_in: int, w_in: int, device) -> torch.Tensor:
    """``[1, 1, 1, group * P, 2]``: the fixed kernel displacements (x, y), x-major, repeated per group."""
    half = (dilation * (kernel - 1)) // 2
    steps = torch.linspace(-half, -half + (kernel - 1) * dilation, kernel, dtype=torch.float32, device=device)
    dx, dy = torch.meshgrid(steps, steps, indexing="ij")  # dx varies along the first axis: x-major points
    points = torch.stack((dx / w_in, dy / h_in), -1).reshape(-1, 2)  # [P, 2]
    return points.repeat(group, 1).reshape(1, 1, 1, group * kernel * kernel, 2)


def dcnv3_core(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, kernel: int = 3, stride: int = 1,
               pad: int = 1, dilation: int = 1, group: int = 4, offset_scale: float = 1.0) -> torch.Tensor:
    """Deformable sampling of ``x`` (see the module docstring for layouts). Returns ``[N, H_out, W_out, C]``."""
    x = F.pad(x, [0, 0, pad, pad, pad, pad])  # zero border on H and W (channels last)
    n, h_in, w_in, channels = x.shape
    _, h_out, w_out, _ = offset.shape
    group_channels = channels // group
    points = kernel * kernel

    ref = _reference_points(h_out, w_out, kernel, dilation, stride, h_in, w_in, x.device)
    grid = _kernel_offsets(kernel, dilation, group, h_in, w_in, x.device)
    size = torch.tensor([w_in, h_in], device=x.device).repeat(group * points)  # (x, y) per point, flat
    # sampling locations in [0, 1] of the padded input: [N, H_out, W_out, group * P * 2]
    loc = (ref + grid * offset_scale).repeat(n, 1, 1, 1, 1).flatten(3, 4) + offset * offset_scale / size
    grid_xy = 2 * loc - 1  # grid_sample's [-1, 1] (align_corners=False: pixel centres at (i + 0.5) / size)

    # one grid_sample per group: [N * group, group_channels, H_in, W_in] sampled at [N * group, H_out * W_out, P, 2]
    value = x.reshape(n, h_in * w_in, channels).transpose(1, 2).reshape(n * group, group_channels, h_in, w_in)
    grid_xy = grid_xy.reshape(n, h_out * w_out, group, points, 2).transpose(1, 2).flatten(0, 1)
    sampled = F.grid_sample(value, grid_xy, mode="bilinear", padding_mode="zeros", align_corners=False)

    weights = mask.reshape(n, h_out * w_out, group, points).transpose(1, 2).reshape(n * group, 1, h_out * w_out, points)
    out = (sampled * weights).sum(-1).reshape(n, channels, h_out * w_out)
    return out.transpose(1, 2).reshape(n, h_out, w_out, channels).contiguous()
