"""Fast inference for Spike2Former: the same numbers with fewer operations (``zoo bench segmentation`` times it).

Profiled at 256x256 on one thread, the released ADE20K model spends its time in the T = 4 copies of every
layer (the image is repeated T times and every step computes the same: neurons are stateless within a forward),
in the mask ``einsum`` of all 1 + L decoder outputs (the logits use only the last) and in the decoder attention
``(q k^T) v`` over up to H/4 x W/4 keys. :func:`optimize` switches the model to

* one time step instead of ``T`` (bit-identical: the T copies are identical and their mean is each of them);
* the masks of the last decoder layer only (``forward(x)``; ``return_layers=True`` still gives all);
* the decoder attention as ``q (k^T v)``: softmax-free, so the same product in another order; both orders are
  exact sums of multiples of ``1 / (64 sqrt C)`` while they stay below 2^24 units, so the result is equal in
  practice (the bench reports the largest difference).

* every NI-LIF as what it computes here, ``round(clamp(x, 0, D)) / D`` in three in-place operations: its state
  is reset before each forward and each neuron fires once per forward, so the membrane bookkeeping is dead work
  (bit-identical).

DCNv3's sampling runs at 1/16 of the image and took under 1 % of the time, so it is left as it is.
"""

from __future__ import annotations

import types

import torch
from torch import nn

import neurons

from .spike2former import Spike2Former, SpikeMultiHeadAttention


def _stateless(self, x: torch.Tensor) -> torch.Tensor:
    """NI-LIF from a reset state, inference only: ``round(clamp(x, 0, D)) / D``."""
    if self.training or torch.is_grad_enabled():
        return type(self).forward(self, x)
    return torch.clamp(x, 0, self.D).round_().div_(self.D)


def optimize(model: nn.Module, enable: bool = True) -> nn.Module:
    """Switch a :class:`Spike2Former` (in place) to the fast inference path, or back; returns it.

    Meant for inference (``eval()``, no gradients); the neurons fall back to their own forward otherwise."""
    if not isinstance(model, Spike2Former):
        raise TypeError(f"optimize expects a Spike2Former, got {type(model).__name__}")
    model.fast_inference = enable
    for m in model.modules():
        if isinstance(m, neurons.NILIF):
            if enable:
                m.forward = types.MethodType(_stateless, m)
            else:
                m.__dict__.pop("forward", None)
    for m in model.modules():
        if isinstance(m, SpikeMultiHeadAttention):
            m.reorder = enable
    return model


__all__ = ["optimize"]
