"""The spiking neurons the papers define, on SpikingJelly 2.0.

Every neuron here emits integer spike *counts* (possibly scaled) and carries a
:class:`Levels` record that says how a count becomes events: at most ``D``
unit events per time step, signed (ternary, -1/0/+1 events) or not, and the
factor ``scale`` between the emitted value and the count. Synapse layers
(:mod:`neurons.synapse`) read that record to run in spike-driven mode.

All stateful neurons take multi-step input ``[T, B, ...]`` (``step_mode='m'``,
the default here) or single-step input (``step_mode='s'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from spikingjelly.activation_based import base, neuron, surrogate

__all__ = ["Levels", "ILIF", "ILIFGen1", "NILIF", "MultiSpike", "Ternary", "BinaryLIF", "TopKSpike", "is_count_neuron",
           "ternary_counts"]


@dataclass(frozen=True)
class Levels:
    """How a neuron's output value maps to events.

    ``value = count * scale`` with ``count`` an integer in ``[0, D]``
    (``[-D, D]`` when ``signed``). In spike-driven mode each count becomes
    ``D`` event slots holding ``|count|`` events of sign ``sign(count)``.
    """

    D: int = 4
    signed: bool = False
    scale: float = 1.0

    def __post_init__(self):
        if int(self.D) != self.D or self.D < 1:
            raise ValueError(f"D must be a positive integer, got {self.D!r}")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale!r}")


def _count_ste(x: torch.Tensor, low: float, high: float, half_up: bool = False) -> torch.Tensor:
    """``round(clamp(x, low, high))`` with a straight-through gradient inside [low, high].

    ``half_up`` rounds ties upwards (``floor(x + 0.5)``, as SVL's ``multispike``);
    otherwise ties go to the even integer (``torch.round``, as SpikeYOLO and Spike2Former).
    """
    clamped = torch.clamp(x, low, high)
    hard = torch.floor(clamped + 0.5) if half_up else torch.round(clamped)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return hard  # inference: no straight-through bookkeeping
    return clamped + (hard - clamped).detach()


def ternary_counts(x: torch.Tensor, gamma, D: int, signed: bool = True) -> torch.Tensor:
    r"""SDLLM's gamma-SQP step 1, the one place its equation lives:
    :math:`C = \operatorname{round}(\operatorname{clip}(x / \gamma, -D, D))` (``signed=False``: clip to
    ``[0, D]``). ``gamma`` is a float or a tensor that broadcasts against ``x``; straight-through gradient
    inside the clip range when a gradient is needed."""
    return _count_ste(x / gamma, -D if signed else 0, D)


class _CountNeuron:
    """Mixin: a neuron whose output is ``count * levels.scale``."""

    levels: Levels

    @property
    def D(self) -> int:
        return self.levels.D


def is_count_neuron(module) -> bool:
    return isinstance(module, _CountNeuron)


class ILIF(_CountNeuron, neuron.ILIFNode):
    r"""I-LIF, the integer LIF neuron of SpikeYOLO (as released).

    .. math::
        H[t] = \beta\,(H[t-1] - S[t-1]) + X[t], \qquad H[0] = X[0]

        S[t] = \operatorname{round}(\operatorname{clip}(H[t], 0, D))

    with decay :math:`\beta = 0.25`, unit threshold, soft reset by the emitted
    count (detached in the reset path) and ``D = 4``. Backward: straight-through,
    zero where :math:`H[t] \notin [0, D]`.

    Source: Luo et al., "Integer-Valued Training and Spike-Driven Inference
    Spiking Neural Network for High-performance and Energy-efficient Object
    Detection", ECCV 2024 (arXiv 2407.20708), BICLab/SpikeYOLO
    ``yolo_spikformer.py`` (``mem_update`` + ``MultiSpike4``). Built on
    SpikingJelly's ``neuron.ILIFNode(tau=1/(1-beta))``.
    """

    def __init__(self, D: int = 4, decay: float = 0.25, detach_reset: bool = True, step_mode: str = "m"):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        super().__init__(
            tau=1.0 / (1.0 - decay),
            surrogate_function=surrogate.MultiLevelSpikeCount(int(D)),
            detach_reset=detach_reset,
            step_mode=step_mode,
        )
        self.levels = Levels(D=int(D))
        # False: a one-step inference forward leaves the membrane at rest instead of computing H - S (one
        # pass over the layer's activations), for models reset before every forward
        # (zoo.fuse.optimize_for_inference sets it on such models' copies)
        self.keep_state = True

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        if x_seq.shape[0] == 1 and isinstance(self.v, float) and self.v == 0.0 and not self.store_v_seq:
            # one time step from rest: H = X, so the neuron is round(clamp(X, 0, D)) -- no loop, no
            # stacking (which keeps the input's memory layout, e.g. channels_last); same values and
            # straight-through gradient as SpikingJelly's loop.
            h = x_seq / self.v_threshold if self.v_threshold != 1.0 else x_seq
            s = _count_ste(h, 0.0, self.D)
            if self.keep_state or torch.is_grad_enabled():
                self.v = (x_seq - (s.detach() if self.detach_reset else s) * self.v_threshold)[0]
            return s
        return super().multi_step_forward(x_seq, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"D={self.D}, decay={1 - 1 / self.tau:g}, step_mode={self.step_mode}"


class _StatefulCountNeuron(_CountNeuron, base.MemoryModule):
    """A count neuron with one membrane state ``v``; subclasses define :meth:`step`."""

    def __init__(self, step_mode: str = "m"):
        super().__init__()
        self.register_memory("v", 0.0)
        self.step_mode = step_mode

    def step(self, x: torch.Tensor, v: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        out, self.v = self.step(x, self.v)
        return out

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        v, outs = self.v, []
        for x in x_seq:
            out, v = self.step(x, v)
            outs.append(out)
        self.v = v
        return torch.stack(outs)


class ILIFGen1(_StatefulCountNeuron):
    r"""I-LIF as the SpikeYOLO Gen1 checkpoint was trained (decay_input LIF charge).

    .. math::
        H[t] = V[t-1] + \frac{X[t] - V[t-1]}{\tau}, \qquad V[-1] = 0

        S[t] = \operatorname{round}(\operatorname{clip}(H[t], 0, D)),
        \qquad V[t] = H[t] - S[t]

    with ``tau = 2`` and ``D = 4``. This is the neuron of the modified
    SpikingJelly bundled in ``SpikeYOLO_for_Gen1/``; with a stock LIF the
    released Gen1 checkpoint emits binary spikes and scores mAP ~0
    (BICLab/SpikeYOLO issues 47, 81).
    """

    def __init__(self, D: int = 4, tau: float = 2.0, detach_reset: bool = False, step_mode: str = "m"):
        super().__init__(step_mode)
        self.levels = Levels(D=int(D))
        self.tau = float(tau)
        self.detach_reset = detach_reset

    def step(self, x, v):
        h = v + (x - v) / self.tau
        s = _count_ste(h, 0.0, self.D)
        return s, h - (s.detach() if self.detach_reset else s)

    def extra_repr(self) -> str:
        return f"D={self.D}, tau={self.tau:g}, step_mode={self.step_mode}"


class NILIF(_StatefulCountNeuron):
    r"""NI-LIF, the normalised integer LIF neuron of Spike2Former.

    .. math::
        U[t] = H[t-1] + X[t]

        S[t] = \operatorname{clip}(\operatorname{round}(U[t]), 0, D) / D

        H[t] = \beta\,(U[t] - D\,S[t])

    The release (``Q_IFNode``) uses ``beta = 1`` and ``D = 8``; the output is
    the count divided by ``D``, so spike-driven inference folds ``1/D`` into
    the next layer's weights. Source: Lei et al., "Spike2Former: Efficient
    Spiking Transformer for High-performance Image Segmentation", AAAI 2025
    (arXiv 2412.14587), eq. 16-18, BICLab/Spike2Former ``Qtrick``.
    """

    def __init__(self, D: int = 8, beta: float = 1.0, step_mode: str = "m"):
        super().__init__(step_mode)
        self.levels = Levels(D=int(D), scale=1.0 / int(D))
        self.beta = float(beta)

    def step(self, x, v):
        u = v + x
        count = _count_ste(u, 0.0, self.D)
        return count / self.D, self.beta * (u - count.detach())

    def extra_repr(self) -> str:
        return f"D={self.D}, beta={self.beta:g}, step_mode={self.step_mode}"


class MultiSpike(_CountNeuron, torch.nn.Module):
    r"""Stateless multi-level spike: a count of events per position.

    .. math::
        S = \operatorname{round}(\operatorname{clip}(X, 0, D)) \;/\; (D \text{ if norm else } 1)

    ``half_up=True`` rounds ties upwards, ``floor(clip(X, 0, D) + 0.5)``, as
    SVL's ``multispike`` (bollossom/SVL); ``norm=True`` is Spike2Former's
    ``Multispike_norm`` (round, then divide by ``D = 4``). Straight-through
    gradient inside ``[0, D]``. Works on any shape (no time dimension needed).
    """

    def __init__(self, D: int = 4, norm: bool = False, half_up: bool = False):
        super().__init__()
        self.levels = Levels(D=int(D), scale=1.0 / int(D) if norm else 1.0)
        self.half_up = half_up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = _count_ste(x, 0.0, self.D, self.half_up)
        return count * self.levels.scale if self.levels.scale != 1.0 else count

    def extra_repr(self) -> str:
        return f"D={self.D}, scale={self.levels.scale:g}, half_up={self.half_up}"


class Ternary(_CountNeuron, torch.nn.Module):
    r"""Stateless bidirectional (ternary) count neuron, as SDLLM's gamma-SQP encoder.

    .. math::
        C = \operatorname{round}(\operatorname{clip}(X / \gamma, -D, D)), \qquad S = \gamma\, C

    ``gamma`` (a buffer, set by calibration) is the data-dependent step; in
    spike-driven mode each count becomes ``|C|`` events of sign ``sign(C)``
    spread over ``D`` slots (+1/-1 events), which halves the slots a
    symmetric quantiser needs. Straight-through gradient inside ``[-D, D]``.
    Source: SDLLM (2026; no public code), after BICLab/Int2Spike's
    ``SpikeCountTernaryLIFNode``.
    """

    def __init__(self, D: int = 4, gamma: float = 1.0):
        super().__init__()
        self.register_buffer("gamma", torch.tensor(float(gamma)))
        self._D = int(D)

    @property
    def levels(self) -> Levels:  # gamma may be recalibrated at any time
        return Levels(D=self._D, signed=True, scale=float(self.gamma))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ternary_counts(x, self.gamma, self._D) * self.gamma

    def extra_repr(self) -> str:
        return f"D={self._D}, gamma={float(self.gamma):g}"


class BinaryLIF(_StatefulCountNeuron):
    r"""TDE's binary LIF neuron (soft reset by half a spike).

    .. math::
        H[t] = \beta\,(H[t-1] - r\,S[t-1]) + X[t], \qquad H[0] = X[0]

        S[t] = \operatorname{round}(\operatorname{clip}(H[t], 0, 1))

    with decay :math:`\beta = 0.25`, reset :math:`r = 0.5` (the spike is
    detached in the reset path; :math:`H[t-1]` is not), ``torch.round``
    (ties to even: :math:`H = 0.5` does not fire, so the threshold is
    :math:`H > 0.5`). Backward: straight-through, zero where
    :math:`H[t] \notin [0, 1]`. ``D`` is the clip level (1: binary).

    Source: Luo et al., "Temporal Dynamics Enhancer for Directly Trained
    Spiking Object Detectors", AAAI 2026 (arXiv 2512.02447), Mortal825/TDE
    ``yolo_spikformer.py`` (``mem_update`` + ``MultiSpike1``).
    """

    def __init__(self, decay: float = 0.25, reset_by: float = 0.5, D: int = 1, step_mode: str = "m"):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        super().__init__(step_mode)
        self.levels = Levels(D=int(D))
        self.decay = float(decay)
        self.reset_by = float(reset_by)

    def step(self, x, v):
        h = v + x
        s = _count_ste(h, 0.0, self.D)
        return s, (h - s.detach() * self.reset_by) * self.decay

    def extra_repr(self) -> str:
        return f"D={self.D}, decay={self.decay:g}, reset_by={self.reset_by:g}, step_mode={self.step_mode}"


class TopKSpike(_CountNeuron, torch.nn.Module):
    """SDA's first neuron (official ``nomem_update``): a spike wherever the input is among its top ``ratio``.

    ``k = int(numel * ratio)`` over the *whole* tensor (batch included); spike
    where ``x >= `` the k-th largest value. Stateless, binary, no gradient
    (the official ``detach=True``).
    """

    def __init__(self, ratio: float = 0.9):
        super().__init__()
        self.ratio = float(ratio)
        self.levels = Levels(D=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1)
        k = int(flat.numel() * self.ratio)
        if k == 0:
            return torch.zeros_like(x)
        threshold = torch.topk(flat, k).values[-1]
        return (x.detach() >= threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio:g}"
