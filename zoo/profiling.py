"""Firing rates, operations and energy, with the convention of the SNN papers.

Energy = E_MAC x MACs + E_AC x ACs, where

* a weight layer whose input is real-valued (the first layer, or any layer
  not fed by spikes) costs MACs: one per multiply-accumulate of the dense op;
* a weight layer fed by a count neuron (a :class:`neurons.Synapse`, or a
  plain layer whose input is exactly binary) costs ACs: one per unit event
  per synapse it reaches. A count of ``c`` is ``|c|`` events, so integer
  counts are counted as ``|c|``-many accumulates, never as MACs.

AC counts are exact (each input's count times its real fan-out, borders and
strides included), not ``rate x dense FLOPs``. The paper convention
``SOP = fr x T x FLOPs`` is the same number up to border effects.
Operations outside Conv/Linear layers (attention matmuls, norms, additions)
are not counted; models that need them counted wrap them in layers.

Energy per operation comes from SpikingJelly's ``SimpleEnergyCostConfig``
presets (Horowitz 2014, 45 nm): ``fp32`` (4.6 / 0.9 pJ, the papers'
default), ``fp16`` (1.5 / 0.4 pJ) and ``int8`` (0.23 / 0.03 pJ).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.op_counter import SimpleEnergyCostConfig
from torch import nn

import neurons
from neurons.nodes import is_count_neuron

from .errors import ZooError

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


def _dense_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        return out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return out.numel() * module.in_features  # Linear


@torch.no_grad()
def _event_acs(module: nn.Module, counts: torch.Tensor) -> int:
    """Exact number of weight accumulates that ``counts`` (|c| events per input) trigger."""
    a = counts.abs().to(torch.float64)
    if isinstance(module, nn.Linear):
        return int(a.sum().item()) * module.out_features
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        g = module.groups
        ones = torch.ones(g, module.in_channels // g, *module.kernel_size, dtype=torch.float64, device=a.device)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[a.ndim - 2]
        if module.padding_mode != "zeros":  # padded values are copies of real inputs
            a = F.pad(a, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding = 0
        else:
            padding = module.padding
        reach = conv(a, ones, None, module.stride, padding, module.dilation, g)  # [N, g, ...]
        return int(reach.sum().item()) * (module.out_channels // g)
    raise ZooError(f"cannot count events for {type(module).__name__}")


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def profile(model: nn.Module, *inputs, preset: str = "fp32", **kwargs) -> Profile:
    """Run ``model(*inputs, **kwargs)`` once and return its per-layer activity and energy.

    Pass a batch of one for per-sample numbers (the papers' convention).
    """
    if preset not in PRESETS:
        raise ZooError(f"unknown energy preset {preset!r}; presets: {', '.join(PRESETS)}")
    cost = PRESETS[preset]()
    result = Profile(preset=preset, e_mac_pj=cost.e_mac_pj, e_ac_pj=cost.e_ac_pj,
                     params=sum(p.numel() for p in model.parameters()))
    stats: dict[str, LayerStats] = {}
    hooks = []

    def weight_hook(name):
        def hook(module, args, out):
            (x,) = args[:1]
            s = stats.setdefault(name, LayerStats(name, type(module).__name__, sum(p.numel() for p in module.parameters(recurse=False))))
            dense = _dense_macs(module, out)
            s.dense_ops += dense
            if isinstance(module, neurons.Synapse):
                counts = module.input_counts(x)
            elif _is_binary(x):
                counts = x
            else:
                s.macs += dense
                return
            s.acs += _event_acs(module, counts)
            s.input_rate = float(counts.abs().float().mean())
        return hook

    def neuron_hook(name):
        def hook(module, args, out):
            s = stats.setdefault(name, LayerStats(name, type(module).__name__))
            counts = (out / module.levels.scale).abs()
            n_prev = s.neurons
            s.neurons += out.numel()
            rate = float(counts.float().mean())
            s.firing_rate = rate if s.firing_rate is None else (s.firing_rate * n_prev + rate * out.numel()) / s.neurons
        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            hooks.append(m.register_forward_hook(weight_hook(name)))
        elif is_count_neuron(m):
            hooks.append(m.register_forward_hook(neuron_hook(name)))
    was_training = model.training
    try:
        model.eval()
        functional.reset_net(model)
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        functional.reset_net(model)
    for s in stats.values():
        s.energy_pj = s.macs * cost.e_mac_pj + s.acs * cost.e_ac_pj
    result.layers = list(stats.values())
    return result
