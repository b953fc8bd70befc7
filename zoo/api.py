"""``zoo.load``: build a registered model, give it its weights, set its mode."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

import neurons

from . import checkpoint, hub
from .errors import WeightsError, ZooError, one_line
from .registry import get, info

MODES = ("integer", "spike")


def _converter(spec: str):
    if not spec:
        return lambda state: state
    module, _, fn = spec.partition(":")
    return getattr(importlib.import_module(module), fn)


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly, turning key or shape mismatches into one readable error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise WeightsError(f"{source} does not fit this model: {', '.join(parts)}; is it the checkpoint for this model and size?")
    model.load_state_dict(state, strict=True)


def load(
    name: str,
    pretrained: bool = True,
    weights: str | Path | None = None,
    mode: str = "integer",
    device: str | torch.device = "cpu",
    **options,
) -> torch.nn.Module:
    """Build model ``name`` and return it in eval mode, ready for inference.

    ``weights``: a local file (official checkpoint as downloaded, or the zoo's
    safetensors) instead of the registered weights. ``pretrained=False``: random
    weights (models converted from a base model, ``card.builds_weights``, always
    start from their base's weights). ``mode``: ``"integer"`` (counts, fast) or ``"spike"`` (binary or
    ternary events over ``D`` virtual time steps). ``options`` go to the builder.
    The model resets its neuron state before every forward.
    """
    if mode not in MODES:
        raise ZooError(f"mode must be one of {MODES}, got {mode!r}")
    card = info(name)
    try:
        model = get(name).builder(**options)
    except TypeError as e:
        raise ZooError(f"{name} does not take these options ({e})") from None
    converter = card.converter
    if card.builds_weights:  # e.g. SDLLM: the builder converts its base model's weights
        if weights is not None:
            raise ZooError(f"{name} is converted from a base model: pass base='PATH' (a Hugging Face directory), not weights=")
        state = None
    elif weights is not None:
        source = str(weights)
        state = checkpoint.to_state_dict(checkpoint.read(weights))
    elif pretrained:
        if card.weights is None:
            raise ZooError(f"{name} has no released weights; use pretrained=False for random weights, or weights='PATH'")
        converter = hub.entry(card.weights).converter or converter
        path = hub.fetch(card.weights)
        source = str(path)
        state = checkpoint.to_state_dict(checkpoint.read(path))
    else:
        state = None
    if state is not None:
        if set(state) != set(model.state_dict()):  # an official checkpoint: map its keys to ours
            try:
                state = _converter(converter)(state)
            except ZooError:
                raise
            except Exception as e:  # a crafted or foreign state dict the converter cannot read
                raise WeightsError(f"{source} cannot be converted for {name} ({type(e).__name__}: {one_line(e, 160)}); "
                                   "is it the checkpoint for this model?") from None
        load_state(model, state, source)
    if mode == "spike":
        neurons.to_spike_driven(model)
    model.card = card
    if card.classes:
        model.names = list(card.classes)
    neurons.auto_reset(model)
    return model.eval().to(device)
