"""Input checks shared by the models: a wrong input gets one line that says what to pass."""

from __future__ import annotations

import torch

from .errors import ZooError


def check_image_batch(x, model: str, channels: int = 3, multiple: int = 1) -> None:
    """``x`` must be a float tensor ``[B, channels, H, W]`` with H and W multiples of ``multiple``."""
    if not isinstance(x, torch.Tensor):
        raise ZooError(f"{model} takes a torch.Tensor [B, {channels}, H, W], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != channels:
        raise ZooError(f"{model} takes images [B, {channels}, H, W], got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise ZooError(f"{model} takes float images scaled to [0, 1], got {x.dtype}; use x.float() / 255")
    if multiple > 1 and (x.shape[2] % multiple or x.shape[3] % multiple):
        raise ZooError(f"{model} needs H and W divisible by {multiple}, got {x.shape[2]}x{x.shape[3]}; letterbox or resize first")
