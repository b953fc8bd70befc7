"""A converted SDLLM model spread over devices, CPU memory and disk with Hugging Face accelerate's ``device_map``.

``zoo.load("sdllm-llama2-13b", device_map="auto", offload_folder="offload")`` (or an explicit map,
``{"model.layers.0": 0, ..., "model.layers.39": "disk", "lm_head": "cpu"}``) loads the converted model
from its cache file into a ``meta`` skeleton one tensor at a time (``safetensors.safe_open``), each
quantised weight dequantised from its int4 codes straight onto the device its module is mapped to, or
written to ``offload_folder`` for the modules mapped to ``"disk"`` (accelerate's ``offload_weight``); the
model is never whole in CPU memory. :func:`accelerate.dispatch_model` then adds the hooks that move each
block's inputs to its device (multi-GPU pipeline) and bring an offloaded block's weights in for its forward.
``"auto"`` / ``"balanced"`` / ``"sequential"`` are accelerate's strategies (:func:`accelerate.infer_auto_device_map`,
``max_memory`` as in transformers: ``{0: "20GiB", "cpu": "30GiB"}``; no block is split).

The conversion itself (calibration) runs before, whole or layer by layer (:mod:`tasks.language.layerwise`),
and writes the cache this reads. Outputs equal the model loaded whole (tested with blocks on disk).
An offloaded block's quantised weights are brought in for each forward, so its integer codes are derived
again each time (:class:`tasks.language.sdllm.GroupQuantLinear` keys them on the weight's storage): slower,
the same values. Needs ``pip install accelerate`` (the ``[language-offload]`` extra; not installed with the zoo).
"""

from __future__ import annotations

from pathlib import Path

import torch

from zoo.errors import ZooError

__all__ = ["load_dispatched", "require_accelerate", "resolve_map", "STRATEGIES"]

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def require_accelerate():
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ZooError("device_map needs Hugging Face accelerate: pip install accelerate (or -e '.[language-offload]')") from None
    return accelerate


def _owner(name: str, device_map: dict) -> str | None:
    """The device_map key that places tensor ``name`` (the longest module prefix; ``""`` is the whole model)."""
    best = None
    for key in device_map:
        if key == "" or name == key or name.startswith(key + "."):
            if best is None or len(key) > len(best):
                best = key
    return best


def resolve_map(model: torch.nn.Module, device_map, max_memory=None, dtype=None) -> dict:
    """An explicit ``{module: device}`` map from a strategy name or a map; every tensor must be placed."""
    accelerate = require_accelerate()
    if isinstance(device_map, str):
        if device_map not in STRATEGIES:
            raise ZooError(f"device_map must be a dict or one of {', '.join(STRATEGIES)}, got {device_map!r}")
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        if device_map != "sequential":
            max_memory = accelerate.utils.get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                                              dtype=dtype, low_zero=device_map == "balanced_low_0")
        device_map = accelerate.infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                                      dtype=dtype)
    elif not isinstance(device_map, dict):
        raise ZooError(f"device_map must be a dict or one of {', '.join(STRATEGIES)}, got {type(device_map).__name__}")
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    unplaced = [n for n in names if _owner(n, device_map) is None]
    if unplaced:
        raise ZooError(f"device_map places no module holding {unplaced[0]} ({len(unplaced)} tensors unplaced); "
                       "map every module (or use device_map='auto')")
    return dict(device_map)


@torch.no_grad()
def load_dispatched(skeleton: torch.nn.Module, cached: Path, device_map, offload_folder=None, max_memory=None,
                    dtype=None) -> torch.nn.Module:
    """The converted model of ``cached`` (:func:`tasks.language.sdllm.pack_state` output) in ``skeleton`` (on
    ``meta``, ``replace_structure`` applied), placed by ``device_map`` and dispatched (see the module docstring)."""
    accelerate = require_accelerate()
    from accelerate.utils import offload_weight, save_offload_index, set_module_tensor_to_device
    from safetensors import safe_open

    from .sdllm import unpacked_values

    device_map = resolve_map(skeleton, device_map, max_memory, dtype)
    on_disk = "disk" in device_map.values()
    if on_disk and offload_folder is None:
        raise ZooError("device_map puts modules on 'disk': pass offload_folder=DIR (where their weights are written)")
    index: dict = {}
    folder = None
    if on_disk:
        folder = Path(offload_folder)
        folder.mkdir(parents=True, exist_ok=True)
    buffers = {n for n, _ in skeleton.named_buffers()}
    with safe_open(str(cached), framework="pt") as f:
        keys = set(f.keys())
        for name, _, value in unpacked_values(skeleton, lambda k: f.get_tensor(k) if k in keys else None):
            device = device_map[_owner(name, device_map)]
            if device == "disk" and name in buffers:
                device = "cpu"  # accelerate keeps an offloaded module's buffers in memory (on a meta one it runs on garbage)
            if device == "disk":
                index = offload_weight(value, name, str(folder), index=index)
            else:
                set_module_tensor_to_device(skeleton, name, device, value=value)
    if getattr(skeleton.config, "tie_word_embeddings", False) and hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()  # the tied head was not a tensor of its own: point it at the loaded embedding
    if on_disk:
        save_offload_index(index, str(folder))
    return accelerate.dispatch_model(skeleton, device_map=device_map, offload_dir=None if folder is None else str(folder),
                                     offload_index=index or None)
