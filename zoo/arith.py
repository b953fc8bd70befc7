"""Arithmetic per layer, chosen at run time by what the CPU supports and by measured speed.

``cpu_capabilities()`` reads ``/proc/cpuinfo`` (Linux; elsewhere the flags are unknown) and asks torch which
vector ISA its kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``: ``DEFAULT``, ``AVX2``,
``AVX512`` ...). ``zoo bench detection`` prints it above its ratios, since they depend on it: bf16 convolutions
are fast only with AVX512-BF16 or AMX-BF16, int8 ones with VNNI or AMX-INT8.

``use_auto(model)`` lets every convolution of an inference model pick, once per input shape, the fastest of
the arithmetics it may use (:class:`AutoConv`), timed on that first input:

* ``fp32``: the direct convolution (oneDNN), always a candidate;
* ``winograd``: F(4x4, 3x3) (:mod:`zoo.winograd`) for dense 3x3 stride-1 convolutions; differs from fp32 by
  ~1e-5 of the output's range (the transforms' rounding);
* ``bf16``: inputs and weights in bf16 (oneDNN, AMX where there is), the bias added in fp32. A candidate only
  where the CPU has bf16 arithmetic and the layer's input is spike counts (integers of at most 256 in
  magnitude, checked on that input), which bf16 holds exactly; the weights are rounded to bf16 (unit
  roundoff 2^-8) and so is the output: ``|bf16 - fp32| <= 2^-7 conv(|x|, |W|)`` (0.8 % of the layer's
  absolute sum, at most).

The choice and the times behind it are kept per layer and shape (:func:`report`); ``allow`` limits the
candidates, ``force`` names the arithmetic of given layers (an override that skips the timing). int8
(counts exact, weights quantised per output channel) is not one of the candidates yet.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ZooError

__all__ = ["FLAGS", "ARITHMETICS", "AutoConv", "cpu_capabilities", "cpu_flags", "describe", "report", "use_auto"]

ARITHMETICS = ("fp32", "winograd", "bf16")

# the /proc/cpuinfo flags that matter for fp32 / bf16 / int8 convolutions and matrix products
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The flags of the first processor in ``/proc/cpuinfo`` (or of ``cpuinfo``, its text); None if unknown."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_capabilities(cpuinfo: str | None = None) -> dict:
    """``{"torch_isa", "flags": {flag: bool | None}, "bf16", "int8", "cores", "model"}``.

    ``bf16`` / ``int8``: the CPU has native bf16 (AVX512-BF16 or AMX-BF16) / int8 dot products (VNNI or
    AMX-INT8); None where the flags cannot be read."""
    flags = cpu_flags(cpuinfo)
    model = ""
    text = cpuinfo
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    has = {f: (None if flags is None else f in flags) for f in FLAGS}
    any_of = lambda *names: None if flags is None else any(has[n] for n in names)  # noqa: E731
    return {
        "torch_isa": torch.backends.cpu.get_cpu_capability(),
        "flags": has,
        "bf16": any_of("avx512_bf16", "amx_bf16"),
        "int8": any_of("avx512_vnni", "avx_vnni", "amx_int8"),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "model": model,
    }


def describe(caps: dict) -> str:
    """One line: ``CPU: <model>, torch ISA AVX512, 2 cores (2 torch threads); flags avx2 ... (not: amx_int8)``."""
    flags = caps["flags"]
    if any(v is None for v in flags.values()):
        listed = "flags unknown"
    else:
        listed = "flags " + (" ".join(f for f, v in flags.items() if v) or "none")
        lack = [f for f, v in flags.items() if not v]
        if lack:
            listed += f" (not: {' '.join(lack)})"
    return (f"CPU: {caps['model'] or 'unknown model'}, torch ISA {caps['torch_isa']}, {caps['cores']} cores "
            f"({caps['threads']} torch threads); {listed}")


def _counts(x: torch.Tensor) -> bool:
    """Whether ``x`` holds only integers of magnitude <= 256 (exact in bf16)."""
    return bool(x.numel()) and bool(((x == torch.round(x)) & (x.abs() <= 256)).all())


def _interleaved_ms(fns: dict, rounds: int = 5) -> dict[str, float]:
    """Fastest of ``rounds`` timed calls of each function after a warm-up, the calls taken in turn (round
    robin), so that a stall of a shared machine does not fall on one candidate only."""
    import time

    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - t) * 1e3)
    return best


class AutoConv:
    """Replaces one convolution's ``_conv_forward``: the arithmetic timed fastest for the input's shape."""

    def __init__(self, conv: nn.Conv2d, name: str, allow: tuple[str, ...], force: str | None, bf16_cpu: bool):
        from . import winograd

        self.conv, self.name, self.force = conv, name, force
        self.allow = tuple(a for a in allow if a != "winograd" or winograd.eligible(conv))
        self.bf16_cpu = bf16_cpu
        self.choice: dict[tuple, dict] = {}  # input shape -> {"arith", "why", "ms": {arith: ms}}
        self._wino = winograd.WinogradConv(conv, autotune=False)
        self._bf16_key, self._bf16_w = None, None

    def _bf16_weight(self, w: torch.Tensor) -> torch.Tensor:
        key = (w.data_ptr(), w._version)
        if self._bf16_key != key:
            self._bf16_w, self._bf16_key = w.detach().to(torch.bfloat16), key
        return self._bf16_w

    def _run(self, arith: str, x, w, b):
        c = self.conv
        if arith == "winograd":
            return self._wino(x, w, b)
        if arith == "bf16":
            out = F.conv2d(x.to(torch.bfloat16), self._bf16_weight(w), None, c.stride, c.padding, c.dilation,
                           c.groups).float()
            return out if b is None else out + b.view(1, -1, 1, 1)
        return nn.Conv2d._conv_forward(c, x, w, b)

    def _decide(self, x, w, b) -> dict:
        if self.force is not None:
            return {"arith": self.force, "why": "forced", "ms": {}}
        candidates, excluded = ["fp32"], []
        for a in self.allow:
            if a == "winograd":
                candidates.append(a)
            elif a == "bf16":
                if not self.bf16_cpu:
                    excluded.append("bf16: the CPU has no bf16 arithmetic")
                elif not _counts(x):
                    excluded.append("bf16: input is not spike counts")
                else:
                    candidates.append(a)
        ms = _interleaved_ms({a: (lambda a=a: self._run(a, x, w, b)) for a in candidates})
        best = min(ms, key=ms.get)
        why = f"fastest of {', '.join(ms)}" if len(ms) > 1 else "the only candidate"
        return {"arith": best, "why": "; ".join([why, *excluded]), "ms": ms}

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            return nn.Conv2d._conv_forward(self.conv, x, w, b)
        shape = tuple(x.shape)
        if shape not in self.choice:
            self.choice[shape] = self._decide(x, w, b)
        return self._run(self.choice[shape]["arith"], x, w, b)


def use_auto(model: nn.Module, allow=ARITHMETICS, force: dict[str, str] | None = None,
             bf16: bool | None = None) -> list[AutoConv]:
    """Let every ``nn.Conv2d`` of ``model`` choose its arithmetic (see the module docstring); in place.

    ``allow``: the candidates besides fp32; ``force``: ``{layer name: arithmetic}`` overrides; ``bf16``: whether
    the CPU has bf16 arithmetic (default: from its flags). Returns the per-layer switches."""
    unknown = set(allow) - set(ARITHMETICS) or {a for a in (force or {}).values() if a not in ARITHMETICS}
    if unknown:
        raise ZooError(f"unknown arithmetic {', '.join(sorted(unknown))}; choose from {', '.join(ARITHMETICS)}")
    force = dict(force or {})
    if bf16 is None:
        bf16 = bool(cpu_capabilities()["bf16"])
    switches = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and not isinstance(m.__dict__.get("_conv_forward"), AutoConv):
            m._conv_forward = AutoConv(m, name, tuple(allow), force.pop(name, None), bf16)  # state_dict unchanged
            switches.append(m._conv_forward)
    if force:
        raise ZooError(f"force names no convolution of the model: {', '.join(sorted(force))}")
    return switches


def report(model: nn.Module) -> list[dict]:
    """One row per (layer, input shape) that ran: ``{"layer", "shape", "arith", "why", "ms"}``."""
    rows = []
    for m in model.modules():
        switch = m.__dict__.get("_conv_forward")
        if isinstance(switch, AutoConv):
            for shape, c in switch.choice.items():
                rows.append({"layer": switch.name, "shape": list(shape), **c})
    return rows
