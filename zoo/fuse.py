"""Inference-time rewrites: BN folding and the memory format (channels_last or NCHW, chosen by measurement).

``fold_batchnorm(model, *example)`` finds every BatchNorm whose input is the
output of a convolution that feeds nothing else (found by running the example
once and matching the tensors that flow between layers, so it works on any
model without a graph tracer), folds the BN's running statistics into that
conv's weight and bias, and removes the BN (unless the BN's parent module sets
``keeps_batchnorm = True`` because it reads the statistics itself). Each fold
is checked on the example's activations; the original model is never changed.

Folding changes the last bits of the convolutions' outputs, so a spiking model's
outputs can differ where a membrane potential sits on a rounding boundary (one
count more or less); ``zoo bench detection`` reports what that does to mAP.
"""

from __future__ import annotations

import copy

import torch
from spikingjelly.activation_based import functional
from torch import nn

from .errors import ZooError


@torch.no_grad()
def _run_hooked(model: nn.Module, example, hooks) -> None:
    """One forward of ``example`` from reset neuron state, then ``hooks`` removed and the state reset again."""
    try:
        functional.reset_net(model)
        model(*example)
    finally:
        for h in hooks:
            h.remove()
        functional.reset_net(model)


def _conv_bn_pairs(model: nn.Module, *example) -> list[tuple[str, str, torch.Tensor]]:
    """(conv, bn, the conv's input on the example) for every BN fed only by one conv's output."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, set] = {}
    consumers: dict[int, int] = {}
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def conv_hook(m, args, out):
        produced[id(out)] = (names[m], out)  # keep the tensor alive so its id stays unique
        inputs[names[m]] = args[0]

    def any_pre_hook(m, args):
        for a in args:
            if isinstance(a, torch.Tensor) and id(a) in produced:
                consumers[id(a)] = consumers.get(id(a), 0) + 1
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    pairs.setdefault(names[m], set()).add(produced[id(a)][0])
                else:
                    pairs.setdefault(names[m], set()).add(None)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        if not list(m.children()):  # leaves consume tensors
            hooks.append(m.register_forward_pre_hook(any_pre_hook))
    _run_hooked(model, example, hooks)
    out = []
    modules = dict(model.named_modules())
    for bn_name, sources in pairs.items():
        if len(sources) != 1 or None in sources:
            continue
        parent = modules[bn_name.rpartition(".")[0]] if "." in bn_name else model
        if getattr(parent, "keeps_batchnorm", False):  # the parent reads the BN's statistics itself
            continue
        conv_name = next(iter(sources))
        if sum(1 for v in pairs.values() if conv_name in v) == 1:  # the conv feeds this BN only
            out.append((conv_name, bn_name, inputs[conv_name]))
    return out


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * scale + bn.bias
    conv.bias = nn.Parameter(new_bias)


def fold_batchnorm(model: nn.Module, *example, rtol: float = 1e-4) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval) with conv->BN pairs folded; returns ``(model, pairs_folded)``.

    Each fold is checked layer by layer on the example's activations: the folded
    conv must reproduce ``bn(conv(x))`` to ``rtol`` of its range. (Whole-model
    outputs of a spiking model may differ more: a last-bit change that moves a
    membrane potential across a rounding boundary changes one count.)
    """
    model = copy.deepcopy(model).eval()
    pairs = _conv_bn_pairs(model, *example)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for conv_name, bn_name, x in pairs:
            conv, bn = modules[conv_name], modules[bn_name]
            reference = bn(conv(x))
            _fold(conv, bn)
            diff = float((conv(x) - reference).abs().max())
            if diff > rtol * max(float(reference.abs().max()), 1.0):
                raise ZooError(f"folding {bn_name} into {conv_name} changed its output by {diff:.3g}; cannot fold this model: run it as built (--arith reference)")
            parent_name, _, attr = bn_name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, attr, nn.Identity())
    return model, len(pairs)


@torch.no_grad()
def fold_modules(model: nn.Module, *example, rtol: float = 1e-4) -> int:
    """Let every submodule that defines ``fold_for_inference()`` rewrite itself, in place (integer mode):
    e.g. SpikeYOLO's ``BN -> pad with BN(0) -> 1x1 conv`` becomes one zero-padded 1x1 conv with the BN in its
    weights and bias, so that the conv reads the spike counts (which ``zoo.arith``'s int8 / bf16 paths need)
    and the BN and padding passes go. Each rewrite is checked on that module's input from ``example``: its
    output must stay within ``rtol`` of its range. Returns the number of modules rewritten."""
    foldable = {n: m for n, m in model.named_modules() if callable(getattr(m, "fold_for_inference", None))}
    if not foldable:
        return 0
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: inputs.setdefault(n, args)) for n, m in foldable.items()]
    _run_hooked(model.eval(), example, hooks)
    done = 0
    for name, m in foldable.items():
        if name not in inputs:
            continue
        want = m(*inputs[name])
        if m.fold_for_inference():
            diff = _max_diff(m(*inputs[name]), want)
            if diff > rtol * max(float(want.abs().max()), 1.0):
                raise ZooError(f"folding {name} for inference changed its output by {diff:.3g}; cannot fold this model: run it as built (--arith reference)")
            done += 1
    return done


def _max_diff(a, b) -> float:
    if isinstance(a, torch.Tensor):
        return float((a - b).abs().max()) if a.numel() else 0.0
    if isinstance(a, (list, tuple)):
        return max([_max_diff(x, y) for x, y in zip(a, b)] + [0.0])
    return 0.0


def optimize_for_inference(model: nn.Module, *example, channels_last: bool | str = "auto",
                           winograd: bool = False) -> nn.Module:
    """A copy of ``model`` with BN folded (see :func:`fold_batchnorm`), in the faster memory format; or, with
    ``winograd=True``, NCHW with its 3x3 stride-1 convolutions on Winograd F(4x4, 3x3) where that was timed
    faster (:func:`zoo.winograd.use_winograd`).

    ``channels_last``: True, False, or ``"auto"`` (default): both formats timed on ``example`` (the fastest of 3
    forwards each, after a warm-up) and the faster kept, since which one oneDNN's fp32 convolutions prefer
    depends on the CPU (SpikeYOLO at 640, 2 threads, AVX2-only EPYC, three interleaved runs: folded +
    channels_last 0.91-0.97x the reference, folded NCHW 0.99-1.10x; channels_last won on the AVX512/AMX Xeon
    it was first chosen on). Time it on the input shape the model will serve. The choice is
    ``fast.zoo_channels_last``; a channels_last copy converts its 4-D inputs itself (a forward pre-hook), so
    callers pass any layout."""
    fast, _ = fold_batchnorm(model, *example)
    fold_modules(fast, *example)
    if getattr(fast, "_zoo_auto_reset", False):  # reset before every forward: no neuron state to keep after one
        for m in fast.modules():
            if hasattr(m, "keep_state"):
                m.keep_state = False
    if winograd:
        from .winograd import use_winograd

        use_winograd(fast)
        channels_last = False
    elif channels_last == "auto":
        channels_last = _channels_last_is_faster(fast, example)
    elif not isinstance(channels_last, bool):
        raise ZooError(f"channels_last must be True, False or 'auto', got {channels_last!r}")
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        fast.register_forward_pre_hook(_inputs_to_channels_last)
    fast.zoo_channels_last = channels_last
    return fast


def _in_format(args, fmt: torch.memory_format) -> tuple:
    """``args`` with every 4-D tensor in memory format ``fmt`` (a no-op for those already in it)."""
    return tuple(a.contiguous(memory_format=fmt) if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)


def _inputs_to_channels_last(module, args):
    return _in_format(args, torch.channels_last)


@torch.no_grad()
def _channels_last_is_faster(model: nn.Module, example, repeats: int = 3) -> bool:
    """Time ``model`` on ``example`` in NCHW, then in channels_last; leave it in NCHW; True if the second won."""
    from .timing import call_times

    def fastest(fmt):
        args = _in_format(example, fmt)

        def call():
            functional.reset_net(model)
            model(*args)

        return min(call_times(call, repeats))

    was_training = model.training
    model.eval()
    nchw = fastest(torch.contiguous_format)
    model.to(memory_format=torch.channels_last)
    cl = fastest(torch.channels_last)
    model.to(memory_format=torch.contiguous_format)
    model.train(was_training)
    return cl < nchw
