"""``zoo.load``: build a registered model, give it its weights, set its mode."""

from __future__ import annotations

from pathlib import Path

import torch

import neurons

from . import checkpoint, hub, plugin
from .errors import WeightsError, ZooError, one_line
from .registry import ModelCard, get, info

MODES = ("integer", "spike")
OWN_FORMATS = ("safetensors", "torch")  # files holding the zoo's own keys: loaded as they are


def convert(card: ModelCard, state: dict, fmt: str, source: str) -> dict:
    """Map a checkpoint of format ``fmt`` to ``card``'s keys with the converter the card names for it."""
    if fmt in card.converters:
        try:
            return plugin.load_object(card.converters[fmt])(state)
        except ZooError:
            raise
        except Exception as e:  # a crafted or foreign state dict the converter cannot read
            raise WeightsError(f"{source} cannot be converted for {card.name} ({type(e).__name__}: {one_line(e, 160)}); "
                               "is it the checkpoint for this model?") from None
    if fmt in OWN_FORMATS:
        return state
    known = ", ".join(["the zoo's safetensors / state dicts", *(f"official {f} files" for f in card.converters)])
    raise WeightsError(f"{source} is a {fmt} checkpoint, which {card.name} cannot read; it reads {known}")


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
    The model resets its neuron state before every forward. A model with a
    ``restore_from_checkpoint(ckpt)`` method is then given the whole checkpoint
    (e.g. TDE restores its AGM gate history from the pickled official model).
    """
    if mode not in MODES:
        raise ZooError(f"mode must be one of {MODES}, got {mode!r}")
    if options.get("device_map") is not None and torch.device(device) != torch.device("cpu"):
        raise ZooError("pass device_map or device, not both (device_map places every module itself)")
    card = info(name)
    try:
        model = get(name).builder(**options)
    except TypeError as e:
        raise ZooError(f"{name} does not take these options ({e})") from None
    if card.builds_weights:  # e.g. SDLLM: the builder converts its base model's weights
        if weights is not None:
            raise ZooError(f"{name} is converted from a base model: pass base='PATH' (a Hugging Face directory), not weights=")
        path = None
    elif weights is not None:  # a local file: its format is what it holds
        path, fmt = Path(weights), None
    elif pretrained:
        if card.weights is None:
            raise ZooError(f"{name} has no released weights; use pretrained=False for random weights, or weights='PATH'")
        path, fmt = hub.fetch(card.weights), hub.entry(card.weights).format  # the manifest says what it is
    else:
        path = None
    if path is not None:
        raw = checkpoint.read(path)
        fmt = fmt or checkpoint.recognise(raw)
        load_state(model, convert(card, checkpoint.to_state_dict(raw), fmt, str(path)), str(path))
        restore = getattr(model, "restore_from_checkpoint", None)
        if callable(restore):  # running state or settings the official pickle holds outside its state dict
            restore(raw)
    if mode == "spike":
        neurons.to_spike_driven(model)
    model.card = card
    if card.classes:
        model.names = list(card.classes)
    neurons.auto_reset(model)
    if getattr(model, "hf_device_map", None) is not None:  # placed by accelerate (device_map=...): not moved
        return model.eval()
    return model.eval().to(device)
