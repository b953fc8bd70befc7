"""Which tensors hold a spiking neuron's output: by where they came from, never by their values.

:class:`SpikeTracker` is a ``torch.overrides.TorchFunctionMode``. Inside it,
:meth:`SpikeTracker.mark` tags a neuron's output with the factor between
its values and its event counts (1 for SpikingJelly's 0/1 spikes and the
zoo's counts, ``1/D`` for a normalised count, ``gamma`` for a ternary one),
and every torch call that only moves, copies, selects or zero-pads values
passes the tag on: views, reshapes, permutes, flatten, indexing, split,
cat/stack of equally tagged tensors, zero padding, max pooling, nearest
upsampling, casts, dropout in eval mode, ReLU. Anything else (arithmetic,
normalisation, averaging) gives an untagged tensor, and so does an
in-place change to a tagged tensor or to any view of it (the tag records
the tensor's version counter), except writing tagged values (or zeros)
into a tagged tensor or a fresh zero buffer.

So a float image of 0/1 pixels is not spikes, and the counts behind a
tensor read at a weight layer are exactly the neuron's.
"""

from __future__ import annotations

import weakref

import torch
from spikingjelly.activation_based.neuron import base_node, lif_variants, psn
from torch.overrides import TorchFunctionMode

from neurons.nodes import is_count_neuron

__all__ = ["SpikeTracker", "spiking_neuron_scale"]

ZERO = 0.0  # the tag of a buffer of zeros made from nothing: merges with any spikes written into it

_SJ_SPIKING = (base_node.BaseNode, base_node.SimpleBaseNode, psn.PSN, psn.MaskedPSN, psn.SlidingPSN)
_SJ_ANALOG = (lif_variants.LIAFNode,)  # leaky integrate and *analog* fire: real-valued output


def spiking_neuron_scale(module) -> float | None:
    """``output / count`` for a spiking neuron module (the zoo's count neurons, SpikingJelly's
    spiking nodes), ``None`` for any other module."""
    if is_count_neuron(module):
        return float(module.levels.scale)
    if isinstance(module, _SJ_SPIKING) and not isinstance(module, _SJ_ANALOG):
        return 1.0
    return None


def _merge(tags) -> float | None:
    """One tag for values gathered from tensors with ``tags``; ``None`` unless all hold the same spikes."""
    found = ZERO
    for t in tags:
        if t is None or (t != ZERO and found != ZERO and t != found):
            return None
        if t != ZERO:
            found = t
    return found


def _arg(args, kwargs, i, name, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


# how each value-preserving call finds its source; the result is tagged as the source is
_SAME = {  # output values are input values (or zeros): the first argument's tag
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "t",
    "T", "mT", "data", "movedim", "moveaxis", "swapaxes", "swapdims", "squeeze", "unsqueeze", "expand",
    "expand_as", "broadcast_to", "contiguous", "clone", "detach", "to", "float", "double", "half",
    "bfloat16", "int", "long", "short", "type", "type_as", "cpu", "cuda", "__getitem__", "narrow",
    "select", "index_select", "gather", "take", "take_along_dim", "masked_select", "split",
    "split_with_sizes", "tensor_split", "chunk", "unbind", "hsplit", "vsplit", "dsplit", "flip", "fliplr",
    "flipud", "roll", "rot90", "repeat", "tile", "repeat_interleave", "unfold", "pixel_shuffle",
    "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "as_strided", "relu", "identity",
    "upsample_nearest",
}
_POOL = {  # max pooling: values are inputs (or zero padding); a second output (indices) is not spikes
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "_max_pool1d", "_max_pool2d", "_max_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices",
}
_GATHER = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack", "row_stack"}
_ZEROS = {"zeros", "zeros_like", "new_zeros"}
_KEEP_IN_PLACE = {"relu_", "unsqueeze_", "squeeze_", "transpose_", "t_", "detach_", "requires_grad_"}
_DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
_IN_PLACE = _KEEP_IN_PLACE | {"__setitem__", "copy_", "zero_", "fill_", "masked_fill_"}
_RULED = _SAME | _POOL | _GATHER | _ZEROS | _DROPOUT | _IN_PLACE | {"pad", "interpolate", "upsample", "masked_fill"}


def _is_zero(v) -> bool:
    return v is None or (isinstance(v, (bool, int, float)) and v == 0)


def _source_tag(name, args, kwargs, tag_of):
    """The tag of a (non-in-place) call's result, or ``None``."""
    if name in _SAME or name in _POOL:
        return tag_of(_arg(args, kwargs, 0, "input"))
    if name in _GATHER:
        tensors = _arg(args, kwargs, 0, "tensors")
        return _merge(tag_of(t) for t in tensors) if tensors else None
    if name == "pad":  # F.pad(input, pad, mode="constant", value=None)
        mode, value = _arg(args, kwargs, 2, "mode", "constant"), _arg(args, kwargs, 3, "value")
        return tag_of(_arg(args, kwargs, 0, "input")) if mode != "constant" or _is_zero(value) else None
    if name in ("interpolate", "upsample"):  # (input, size, scale_factor, mode="nearest", ...)
        mode = _arg(args, kwargs, 3, "mode", "nearest")
        return tag_of(_arg(args, kwargs, 0, "input")) if mode in ("nearest", "nearest-exact") else None
    if name in _DROPOUT:  # (input, p, training, inplace): identity when not training
        return None if _arg(args, kwargs, 2, "training", True) else tag_of(_arg(args, kwargs, 0, "input"))
    if name == "masked_fill":
        return tag_of(args[0]) if _is_zero(_arg(args, kwargs, 2, "value", 1)) else None
    if name in _ZEROS:
        return ZERO
    return None


def _in_place_tag(name, args, kwargs, tag_of):
    """The tag ``args[0]`` has after an in-place call, read before the call."""
    if name == "__setitem__":  # x[i] = v: x keeps its tag only if v holds the same spikes (or zeros)
        value = args[2]
        return _merge((tag_of(args[0]), tag_of(value) if isinstance(value, torch.Tensor) else
                       (ZERO if _is_zero(value) and value is not None else None)))
    if name == "copy_":
        return tag_of(_arg(args, kwargs, 1, "src"))
    if name == "zero_" or (name == "fill_" and _is_zero(_arg(args, kwargs, 1, "value", 1))):
        return ZERO
    if name == "masked_fill_":
        return tag_of(args[0]) if _is_zero(_arg(args, kwargs, 2, "value", 1)) else None
    if name == "fill_":
        return None
    return tag_of(args[0])  # _KEEP_IN_PLACE


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors keep no version counter
        return -1


class SpikeTracker(TorchFunctionMode):
    """Tags the tensors that carry spiking neurons' outputs while it is active (see module docstring)."""

    def __init__(self):
        super().__init__()
        self._tags: dict[int, tuple[weakref.ref, float, int]] = {}

    def mark(self, t, scale: float | None) -> None:
        """Record that ``t`` holds spikes of ``scale`` (``None``: that it does not)."""
        if not isinstance(t, torch.Tensor):
            return
        key = id(t)
        if scale is None:
            self._tags.pop(key, None)
            return
        tags = self._tags

        def forget(ref, key=key):
            entry = tags.get(key)
            if entry is not None and entry[0] is ref:
                del tags[key]

        tags[key] = (weakref.ref(t, forget), scale, _version(t))

    def tag(self, t) -> float | None:
        """``t``'s tag: its spikes' scale, ``ZERO`` for a fresh zero buffer, ``None`` for anything else."""
        entry = self._tags.get(id(t)) if isinstance(t, torch.Tensor) else None
        if entry is None or entry[0]() is not t or entry[2] != _version(t):
            return None
        return entry[1]

    def spike_scale(self, t) -> float | None:
        """The scale of the spikes ``t`` holds, or ``None`` if it holds no neuron's output."""
        s = self.tag(t)
        return None if s is None or s == ZERO else s

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property (x.T, x.data): the descriptor's name
            name = getattr(getattr(func, "__self__", None), "__name__", "")
        if name not in _RULED or not (self._tags or name in _ZEROS):
            return func(*args, **kwargs)  # nothing to pass on; an in-place change voids tags by itself
        if name in _IN_PLACE:
            tag = _in_place_tag(name, args, kwargs, self.tag)  # read before the call bumps the version
            out = func(*args, **kwargs)
            self.mark(args[0], tag)
            return out
        tag = _source_tag(name, args, kwargs, self.tag)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self.mark(out, tag)
        elif isinstance(out, (tuple, list)) and tag is not None:
            for o in out[:1] if name in _POOL else out:
                self.mark(o, tag)
        return out
