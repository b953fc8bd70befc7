"""Switching a whole model between integer and spike-driven mode, checking
that both agree, and resetting neuron state so that users never have to."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from spikingjelly.activation_based import functional
from torch import nn

from .errors import NeuronError

from .synapse import Synapse

__all__ = ["to_spike_driven", "to_integer", "mode_of", "check_equivalence", "auto_reset", "Equivalence"]


def _synapses(model: nn.Module) -> list[Synapse]:
    return [m for m in model.modules() if isinstance(m, Synapse)]


def _set_mode(model: nn.Module, spike: bool) -> nn.Module:
    synapses = _synapses(model)
    if not synapses:
        raise NeuronError(
            f"{type(model).__name__} has no synapse layers (neurons.SpikeConv2d / SpikeLinear), "
            "so it has no spike-driven mode; build its weight layers after neurons from neurons.synapse"
        )
    for s in synapses:
        s.spike_driven = spike
    return model


def to_spike_driven(model: nn.Module) -> nn.Module:
    """Switch every synapse layer of ``model`` to spike-driven mode (events); returns ``model``, changed in place.

    A model without synapse layers is an error: it has nothing that could run on events.
    """
    return _set_mode(model, True)


def to_integer(model: nn.Module) -> nn.Module:
    """Switch every synapse layer of ``model`` back to integer mode (counts); returns ``model``."""
    return _set_mode(model, False)


def mode_of(model: nn.Module) -> str:
    """``'spike'``, ``'integer'`` or ``'mixed'``."""
    flags = {s.spike_driven for s in _synapses(model)}
    return "mixed" if len(flags) > 1 else ("spike" if flags == {True} else "integer")


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flatten(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    return []


@dataclass
class Equivalence:
    """Largest differences between integer-mode and spike-driven outputs."""

    max_abs: float
    max_rel: float  # max |a - b| / max(max |a|, tiny), over all outputs
    outputs: int

    def __float__(self) -> float:
        return self.max_abs


@torch.no_grad()
def check_equivalence(model: nn.Module, *inputs, **kwargs) -> Equivalence:
    """Run ``model(*inputs)`` in integer mode and in spike-driven mode; report the largest difference.

    Both runs start from the same state: neuron state is reset and buffers (state a
    model keeps across forwards) are restored before each; the mode and buffers are
    restored after.
    """
    previous = [(s, s.spike_driven) for s in _synapses(model)]
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # models with state across forwards (TDE's gate)

    def restore_buffers():
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])

    try:
        results = []
        for switch in (to_integer, to_spike_driven):
            switch(model)
            restore_buffers()
            functional.reset_net(model)
            results.append(_flatten(model(*inputs, **kwargs)))
    finally:
        for s, flag in previous:
            s.spike_driven = flag
        restore_buffers()
        functional.reset_net(model)
    ints, spikes = results
    if len(ints) != len(spikes) or not ints:
        raise NeuronError("check_equivalence: the model returned no tensors, or different structures in the two modes")
    max_abs = max_rel = 0.0
    for a, b in zip(ints, spikes):
        if a.shape != b.shape:
            raise NeuronError(f"check_equivalence: output shapes differ between modes: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.numel() == 0:
            continue
        diff = (a.double() - b.double()).abs().max().item()
        scale = max(a.double().abs().max().item(), 1e-12)
        max_abs, max_rel = max(max_abs, diff), max(max_rel, diff / scale)
    return Equivalence(max_abs=max_abs, max_rel=max_rel, outputs=len(ints))


def _reset_hook(module, args):
    functional.reset_net(module)


def auto_reset(model: nn.Module) -> nn.Module:
    """Make ``model`` reset all its neuron state before every forward (idempotent)."""
    if not getattr(model, "_zoo_auto_reset", False):
        model.register_forward_pre_hook(_reset_hook)
        model._zoo_auto_reset = True
    return model
