"""Input checks shared by the models: a wrong input gets one line that says what to pass."""

from __future__ import annotations

import torch

from .errors import ZooError


def check_image_batch(x, model: str, channels: int = 3, multiple: int = 1, ndims: tuple = (4,)) -> None:
    """``x`` must be a float tensor ``[B, channels, H, W]`` (or ``[B, T, channels, H, W]`` when 5 is in
    ``ndims``) with H and W positive multiples of ``multiple``."""
    shape = " or ".join({4: f"[B, {channels}, H, W]", 5: f"[B, T, {channels}, H, W]"}[n] for n in ndims)
    if not isinstance(x, torch.Tensor):
        raise ZooError(f"{model} expects a torch.Tensor {shape}, got {type(x).__name__}")
    if x.dim() not in ndims:
        raise ZooError(f"{model} expects a {shape} tensor, got {x.dim()} dims, shape {tuple(x.shape)}")
    if x.shape[-3] != channels:
        raise ZooError(f"{model} expects {channels} input channels, got {x.shape[-3]} (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ZooError(f"{model} expects a float image in [0, 1], got dtype {x.dtype}; use x.float() / 255")
    h, w = x.shape[-2:]
    if h == 0 or w == 0 or h % multiple or w % multiple:
        raise ZooError(f"{model} needs H and W to be positive multiples of {multiple} (divisible by {multiple}), "
                       f"got {h}x{w}; pad, letterbox or resize the image")
