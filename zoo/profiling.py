"""Firing rates, operations and energy, with the convention of the SNN papers.

Energy = E_MAC x MACs + E_AC x ACs, where

* a weight layer (any ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose*d`` or
  ``nn.Linear``, subclasses included: the zoo's synapses, SpikingJelly's
  ``layer.Conv2d`` / ``layer.Linear``, layers inside a ``SeqToANNContainer``)
  whose input is a spiking neuron's output costs ACs: one per unit event per
  synapse it reaches. A count of ``c`` is ``|c|`` events, so integer counts
  are counted as ``|c|``-many accumulates, never as MACs;
* any other weight layer (the first layer, or any layer not fed by spikes)
  costs MACs: one per multiply-accumulate of the dense op.

Spiking neurons are the zoo's count neurons and SpikingJelly's spiking nodes
(``LIFNode``, ``IFNode``, ``ILIFNode``, ...). Whether a layer's input is their
output is decided by where the tensor came from, never by its values
(:mod:`zoo.provenance`): views, reshapes, indexing, cat, zero padding, max
pooling and nearest upsampling of spikes are spikes; a float image of 0/1
pixels is not. A synapse layer (:class:`neurons.Synapse`) is built for a
count neuron and reads the counts behind its input with ``input_counts``.

AC counts are exact (each input's count times its real fan-out, borders,
strides, dilation and groups included), not ``rate x dense FLOPs``. The paper
convention ``SOP = fr x T x FLOPs`` is the same number up to border effects.
Products of spikes with spikes or with real values (spiking attention) are
counted where they are :class:`neurons.SpikeProduct` modules: one AC per unit
event and value of the other operand it meets (one per pair of events when
both operands spike; :meth:`neurons.SpikeProduct.event_acs`). Other
operations (norms, additions, plain matmuls) are not counted.
A weight layer that is no Conv or Linear (a sparse convolution, say) counts itself: a module with
``profile_operations(input, output) -> {"dense": MACs as a dense op, "acs": event
accumulates or None (real-valued input: the dense MACs), "input_rate": ...}`` is
hooked like a Conv.

Energy per operation comes from SpikingJelly's ``SimpleEnergyCostConfig``
presets (Horowitz 2014, 45 nm): ``fp32`` (4.6 / 0.9 pJ, the papers'
default), ``fp16`` (1.5 / 0.4 pJ) and ``int8`` (0.23 / 0.03 pJ).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.op_counter import SimpleEnergyCostConfig
from torch import nn

import neurons
from .errors import ZooError
from .provenance import SpikeTracker, spiking_neuron_scale

PRESETS = {"fp32": SimpleEnergyCostConfig.fp32, "fp16": SimpleEnergyCostConfig.fp16, "int8": SimpleEnergyCostConfig.int8}


@dataclass
class LayerStats:
    name: str
    kind: str
    params: int = 0
    macs: int = 0  # dense multiply-accumulates this layer performed on real-valued input
    acs: int = 0  # accumulates triggered by unit events
    dense_ops: int = 0  # what the layer would cost as a dense op
    input_rate: float | None = None  # mean |count| per input element (None: real-valued input)
    firing_rate: float | None = None  # neurons: mean |count| per neuron per time step
    neurons: int = 0  # neurons: outputs observed (neurons x time steps x batch)
    energy_pj: float = 0.0


@dataclass
class Profile:
    layers: list[LayerStats] = field(default_factory=list)
    preset: str = "fp32"
    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9
    params: int = 0

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def acs(self) -> int:
        return sum(l.acs for l in self.layers)

    @property
    def energy_mj(self) -> float:
        return sum(l.energy_pj for l in self.layers) * 1e-9

    @property
    def firing_rate(self) -> float | None:
        """Mean count per neuron per time step over all neurons (weighted by neuron count)."""
        rates = [(l.firing_rate, l.neurons) for l in self.layers if l.firing_rate is not None]
        total = sum(n for _, n in rates)
        return sum(r * n for r, n in rates) / total if total else None

    def summary(self) -> dict:
        return {"params": self.params, "macs": self.macs, "acs": self.acs, "energy_mj": self.energy_mj,
                "firing_rate": self.firing_rate, "preset": self.preset, "e_mac_pj": self.e_mac_pj, "e_ac_pj": self.e_ac_pj}

    def to_dict(self) -> dict:
        return {**self.summary(), "layers": [asdict(l) for l in self.layers]}


def _dense_macs(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size)
        if module.transposed:  # every input scatters to out/groups channels x kernel taps
            return x.numel() * (module.out_channels // module.groups) * k
        return out.numel() * (module.in_channels // module.groups) * k
    return out.numel() * module.in_features  # Linear


@functools.lru_cache(maxsize=1024)
def _reach_1d(length: int, out_len: int, k: int, stride: int, left: int, dilation: int,
              transposed: bool) -> torch.Tensor:
    """For each input position along one dimension: how many (output position, kernel tap) pairs it feeds."""
    taps = torch.arange(k) * dilation
    if transposed:  # input i, tap t writes output i * stride - left + t * dilation
        o = torch.arange(length)[:, None] * stride - left + taps
        return ((o >= 0) & (o < out_len)).sum(1).double()
    i = (torch.arange(out_len)[:, None] * stride - left + taps).flatten()  # output o, tap t reads input i
    return torch.bincount(i[(i >= 0) & (i < length)], minlength=length).double()


@torch.no_grad()
def _event_acs(module: nn.Module, events: torch.Tensor, out: torch.Tensor) -> int:
    """Exact number of weight accumulates that ``events`` (|count| per input) trigger.

    A conv's fan-out of an input position is the same for every channel and is a
    product over the spatial dimensions, so the events are summed over batch and
    channels and weighted by that reach: no convolution is run.
    """
    if isinstance(module, nn.Linear):
        return int(events.sum(dtype=torch.float64).item()) * module.out_features
    if not isinstance(module, nn.modules.conv._ConvNd):
        raise ZooError(f"cannot count events for {type(module).__name__}")
    nd = len(module.kernel_size)
    per_position = events.reshape(-1, *events.shape[events.ndim - nd:]).sum(0, dtype=torch.float64)  # [*spatial]
    if module.transposed:
        lefts = module.padding
    elif module.padding_mode != "zeros":  # padded values are copies of real inputs: their events count too
        pads = module._reversed_padding_repeated_twice
        per_position = F.pad(per_position[None, None], pads, mode=module.padding_mode)[0, 0]
        lefts = (0,) * nd
    else:  # zero padding ("same" included: the odd pixel goes right)
        lefts = module._reversed_padding_repeated_twice[-2::-2]
    reach = torch.ones((), dtype=torch.float64)
    for d, (length, out_len) in enumerate(zip(per_position.shape, out.shape[out.ndim - nd:])):
        r = _reach_1d(length, out_len, module.kernel_size[d], module.stride[d], lefts[d], module.dilation[d],
                      module.transposed)
        reach = reach.unsqueeze(-1) * r.to(per_position.device)
    return int((per_position * reach).sum().item()) * (module.out_channels // module.groups)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


class _Counter:
    """The forward hooks: neurons tag their outputs and record firing; weight layers count MACs or ACs."""

    def __init__(self, tracker: SpikeTracker):
        self.tracker = tracker
        self.stats: dict[str, LayerStats] = {}

    def weight_hook(self, name: str):
        def hook(module, args, kwargs, out):
            x = args[0] if args else next(iter(kwargs.values()))
            with torch._C.DisableTorchFunction():  # the counting itself is not the model's: do not track it
                self.count_layer(name, module, x, out)
        return hook

    def neuron_hook(self, name: str):
        def hook(module, args, out):
            scale = spiking_neuron_scale(module)  # read per call: a Ternary's gamma may be recalibrated
            self.tracker.mark(out, scale)
            with torch._C.DisableTorchFunction():
                self.count_neuron(name, module, out, scale)
        return hook

    def count_layer(self, name: str, module: nn.Module, x, out) -> None:
        s = self.stats.setdefault(name, LayerStats(name, type(module).__name__, _params(module)))
        if hasattr(module, "profile_operations"):  # a weight layer that counts itself (e.g. a sparse conv)
            ops = module.profile_operations(x, out)
            s.dense_ops += ops["dense"]
            if ops.get("acs") is None:
                s.macs += ops["dense"]
            else:
                s.acs += ops["acs"]
                s.input_rate = ops.get("input_rate")
            return
        dense = _dense_macs(module, x, out)
        s.dense_ops += dense
        if isinstance(module, neurons.Synapse):  # built for a count neuron: it knows its counts
            counts = module.input_counts(x)
        else:
            scale = self.tracker.spike_scale(x)
            if scale is None:  # not a spiking neuron's output, whatever its values
                s.macs += dense
                return
            counts = x if scale == 1.0 else torch.round(x / scale)
        events = counts.abs()
        s.acs += _event_acs(module, events, out)
        s.input_rate = float(events.float().mean())

    def product_hook(self, name: str):
        def hook(module, args, kwargs, out):
            a, b = (list(args) + list(kwargs.values()))[:2]
            with torch._C.DisableTorchFunction():
                s = self.stats.setdefault(name, LayerStats(name, type(module).__name__))
                s.dense_ops += module.dense_macs(a, b)
                s.acs += module.event_acs(a, b)
                spiking = [x / lv.scale for x, lv in ((a, module.side_levels(0)), (b, module.side_levels(1))) if lv]
                s.input_rate = float(sum(x.abs().float().mean() for x in spiking) / len(spiking))
        return hook

    def count_neuron(self, name: str, module: nn.Module, out: torch.Tensor, scale: float) -> None:
        s = self.stats.setdefault(name, LayerStats(name, type(module).__name__))
        rate = float((out / scale).abs().float().mean())
        n_prev = s.neurons
        s.neurons += out.numel()
        s.firing_rate = rate if s.firing_rate is None else (s.firing_rate * n_prev + rate * out.numel()) / s.neurons


def profile(model: nn.Module, *inputs, preset: str = "fp32", **kwargs) -> Profile:
    """Run ``model(*inputs, **kwargs)`` once and return its per-layer activity and energy.

    Pass a batch of one for per-sample numbers (the papers' convention).
    """
    if preset not in PRESETS:
        raise ZooError(f"unknown energy preset {preset!r}; presets: {', '.join(PRESETS)}")
    cost = PRESETS[preset]()
    result = Profile(preset=preset, e_mac_pj=cost.e_mac_pj, e_ac_pj=cost.e_ac_pj,
                     params=sum(p.numel() for p in model.parameters()))
    tracker = SpikeTracker()
    counter = _Counter(tracker)
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or hasattr(m, "profile_operations"):
            hooks.append(m.register_forward_hook(counter.weight_hook(name), with_kwargs=True))
        elif isinstance(m, neurons.SpikeProduct):
            hooks.append(m.register_forward_hook(counter.product_hook(name), with_kwargs=True))
        elif spiking_neuron_scale(m) is not None:
            hooks.append(m.register_forward_hook(counter.neuron_hook(name)))
    was_training = model.training
    try:
        model.eval()
        functional.reset_net(model)
        with torch.no_grad(), tracker:
            model(*inputs, **kwargs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        functional.reset_net(model)
    for s in counter.stats.values():
        s.energy_pj = s.macs * cost.e_mac_pj + s.acs * cost.e_ac_pj
    result.layers = list(counter.stats.values())
    return result
