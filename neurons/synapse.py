"""Synapse layers: the weight layer after a count neuron, in two modes.

``SpikeConv1d``, ``SpikeConv2d`` and ``SpikeLinear`` are the torch layers
(same parameters, same state-dict keys) with one addition: they know the
:class:`~neurons.nodes.Levels` of the neuron that feeds them.

* **integer mode** (default): the layer multiplies the counts, as any layer
  would. Fast; used for training and dense inference.
* **spike-driven mode**: every count is expanded into ``D`` event slots of
  truly binary (or ternary -1/0/+1) values with SpikingJelly's
  ``layer.SpikeCountToBinary``; the weights (times the neuron's ``scale``)
  accumulate those events with no bias; ``layer.TemporalBinSum`` sums the
  slots; the bias is added once. Nothing but events reaches the weights.

The layer checks in spike-driven mode that its input really is a count of
its neuron, so a wiring mistake fails loudly instead of silently changing
the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import layer as sj_layer
from torch import nn

from .errors import NeuronError

from .nodes import Levels, is_count_neuron

__all__ = ["SpikeConv1d", "SpikeConv2d", "SpikeConv3d", "SpikeLinear", "Synapse", "expand_events"]


def expand_events(counts: torch.Tensor, D: int, signed: bool = False) -> torch.Tensor:
    """``[N, ...]`` integer counts -> ``[D, N, ...]`` events in {0, 1} (or {-1, 0, 1}).

    Slot ``d`` holds an event where ``|count| > d`` (thermometer code), so the
    events summed over slots give back the counts exactly.
    """
    to_binary = sj_layer.SpikeCountToBinary(D, always_convert=True)
    if not signed:
        return to_binary(counts.unsqueeze(0))
    return to_binary(counts.clamp(min=0).unsqueeze(0)) - to_binary((-counts).clamp(min=0).unsqueeze(0))


class Synapse:
    """Mixin for a weight layer fed by a count neuron (see module docstring)."""

    spike_driven: bool = False
    check_inputs: bool = True

    def _init_synapse(self, source) -> None:
        if isinstance(source, Levels) or source is None:
            self._levels = source
        elif is_count_neuron(source):
            # keep a plain reference: the neuron is registered elsewhere in the model
            object.__setattr__(self, "_source_neuron", source)
            self._levels = None
        else:
            raise TypeError(f"source must be a Levels or a count neuron, got {type(source).__name__}")
        self.spike_driven = False

    @property
    def levels(self) -> Levels:
        neuron = self.__dict__.get("_source_neuron")
        if neuron is not None:
            return neuron.levels
        return self._levels if self._levels is not None else Levels()

    def _weight_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _channel_bias(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spike_driven:
            return super(Synapse, self).forward(x)  # the plain torch layer
        return self.spike_forward(x)

    def input_counts(self, x: torch.Tensor) -> torch.Tensor:
        """The integer counts behind an input value (``x / scale``, rounded)."""
        lv = self.levels
        counts = x / lv.scale if lv.scale != 1.0 else x
        rounded = torch.round(counts)
        if self.check_inputs:
            low = -lv.D if lv.signed else 0
            if rounded.numel() and (
                (rounded - counts).abs().max() > 1e-3 or rounded.max() > lv.D or rounded.min() < low
            ):
                raise NeuronError(
                    f"{type(self).__name__} in spike-driven mode got values that are not counts in "
                    f"[{low}, {lv.D}] x {lv.scale:g}; feed it from its neuron, or build it with the right Levels"
                )
        return rounded

    def spike_forward(self, x: torch.Tensor) -> torch.Tensor:
        lv = self.levels
        counts = self.input_counts(x)
        events = expand_events(counts, lv.D, lv.signed)  # [D, N, ...], values in {-1, 0, 1}
        weight = self.weight * lv.scale if lv.scale != 1.0 else self.weight
        out = self._weight_op(events.flatten(0, 1), weight)  # accumulate events, no bias
        out = sj_layer.TemporalBinSum(lv.D, always_convert=True)(out.unflatten(0, (lv.D, x.shape[0])))[0]
        return out if self.bias is None else self._channel_bias(out)


class _SpikeConvNd(Synapse):
    def _weight_op(self, x, weight):
        return self._conv_forward(x, weight, None)

    def _channel_bias(self, out):
        return out + self.bias.view(1, -1, *([1] * (out.ndim - 2)))


class SpikeConv2d(_SpikeConvNd, nn.Conv2d):
    """``nn.Conv2d`` fed by a count neuron; ``source`` is that neuron or its :class:`Levels`."""

    def __init__(self, *args, source=None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_synapse(source)


class SpikeConv1d(_SpikeConvNd, nn.Conv1d):
    """``nn.Conv1d`` fed by a count neuron; ``source`` is that neuron or its :class:`Levels`."""

    def __init__(self, *args, source=None, **kwargs):
        nn.Conv1d.__init__(self, *args, **kwargs)
        self._init_synapse(source)


class SpikeConv3d(_SpikeConvNd, nn.Conv3d):
    """``nn.Conv3d`` fed by a count neuron (TDE's spike-driven attention)."""

    def __init__(self, *args, source=None, **kwargs):
        nn.Conv3d.__init__(self, *args, **kwargs)
        self._init_synapse(source)


class SpikeLinear(Synapse, nn.Linear):
    """``nn.Linear`` fed by a count neuron; ``source`` is that neuron or its :class:`Levels`."""

    def __init__(self, *args, source=None, **kwargs):
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_synapse(source)

    def _weight_op(self, x, weight):
        return F.linear(x, weight)

    def _channel_bias(self, out):
        return out + self.bias


def _counts(x: torch.Tensor, lv: Levels, who: str) -> torch.Tensor:
    """The integer counts behind ``x`` (``x / scale`` rounded), checked to be counts of ``lv``."""
    counts = x / lv.scale if lv.scale != 1.0 else x
    rounded = torch.round(counts)
    low = -lv.D if lv.signed else 0
    if rounded.numel() and ((rounded - counts).abs().max() > 1e-3 or rounded.max() > lv.D or rounded.min() < low):
        raise NeuronError(f"{who} in spike-driven mode got values that are not counts in [{low}, {lv.D}] x "
                          f"{lv.scale:g}; feed it from its neuron, or build it with the right Levels")
    return rounded


class SpikeProduct(Synapse, nn.Module):
    """The product of two tensors of which one or both are count neurons' outputs: ``a @ b`` or an einsum.

    Spiking attention multiplies spikes by spikes (``q (k^T v)``, ``q k^T v``) or by real values; there is no
    weight layer to hold the ``scale`` of the counts. ``left`` / ``right``: the neuron (or :class:`Levels`) behind
    ``a`` / ``b``, ``None`` for a real-valued operand. ``equation``: an einsum equation (default: ``torch.matmul``).

    * integer mode: ``a @ b`` (or the einsum) of the values, as the model was written;
    * spike-driven mode: every spiking operand is expanded into ``D`` binary (or ternary) event slots
      (:func:`expand_events`); the product runs once per pair of slots on those events (an event adds the
      other operand's value: an accumulate), the slots are summed, and the scales of the counts multiply the
      result once (as the ``/D`` folded into a weight layer).

    :meth:`event_acs` is the exact number of accumulates the events trigger (what :func:`zoo.profile` counts).
    """

    def __init__(self, left=None, right=None, equation: str | None = None):
        nn.Module.__init__(self)
        if left is None and right is None:
            raise TypeError("SpikeProduct needs a spiking operand: pass left= and/or right= (a count neuron or Levels)")
        self._sides = []
        for src in (left, right):
            if src is None or isinstance(src, Levels):
                self._sides.append(src)
            elif is_count_neuron(src):
                self._sides.append(src)  # a plain list: the neuron is registered elsewhere in the model
            else:
                raise TypeError(f"left / right must be a Levels or a count neuron, got {type(src).__name__}")
        self.equation = equation
        self.spike_driven = False

    def side_levels(self, i: int) -> Levels | None:
        src = self._sides[i]
        return src.levels if src is not None and not isinstance(src, Levels) else src

    @property
    def levels(self) -> Levels:  # the first spiking operand's (Synapse's interface)
        return self.side_levels(0) or self.side_levels(1)

    def _op(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b) if self.equation is None else torch.einsum(self.equation, a, b)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not self.spike_driven:
            return self._op(a, b)
        slots, scale = [], 1.0
        for x, i in ((a, 0), (b, 1)):
            lv = self.side_levels(i)
            if lv is None:
                slots.append([x])
            else:
                slots.append(expand_events(_counts(x, lv, type(self).__name__), lv.D, lv.signed))
                scale *= lv.scale
        out = None
        for ea in slots[0]:
            for eb in slots[1]:
                y = self._op(ea, eb)
                out = y if out is None else out + y
        return out * scale if scale != 1.0 else out

    def _spec(self, a: torch.Tensor, b: torch.Tensor) -> str:
        if self.equation is not None:
            return self.equation.split("->")[0]
        sa = "...mk" if a.dim() > 1 else "k"
        sb = "...kn" if b.dim() > 1 else "k"
        return f"{sa},{sb}"

    @torch.no_grad()
    def event_acs(self, a: torch.Tensor, b: torch.Tensor) -> int:
        """Accumulates of one forward: per unit event of a spiking operand, one per value of the other operand it
        meets (both spiking: one per pair of events). Exact, from the counts."""
        weights = []
        for x, i in ((a, 0), (b, 1)):
            lv = self.side_levels(i)
            if lv is None:
                weights.append(torch.ones((), dtype=torch.float64).expand(x.shape))
            else:
                c = torch.round(x / lv.scale) if lv.scale != 1.0 else x
                weights.append(c.abs().double())
        return int(torch.einsum(self._spec(a, b) + "->", *weights).item())

    @torch.no_grad()
    def dense_macs(self, a: torch.Tensor, b: torch.Tensor) -> int:
        """Multiply-accumulates of the dense product."""
        ones = [torch.ones((), dtype=torch.float64).expand(x.shape) for x in (a, b)]
        return int(torch.einsum(self._spec(a, b) + "->", *ones).item())


__all__.append("SpikeProduct")
