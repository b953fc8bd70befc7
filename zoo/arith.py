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
* ``bf16``: inputs and weights in bf16 (oneDNN, AMX where there is), the bias added in fp32. A candidate
  where the CPU has bf16 arithmetic. Spike counts (integers of at most 256 in magnitude, checked on the
  input) are exact in bf16; the weights are rounded to bf16 (unit roundoff 2^-8) and so is the output:
  ``|bf16 - fp32| <= 2^-7 conv(|x|, |W|)`` (0.8 % of the layer's absolute sum, at most). A real-valued input
  (SpikeYOLO's 1x1 convs after a depthwise one, which read its real-valued output) is rounded too, which adds up to 2^-8 of
  ``conv(|x|, |W|)``; such a choice is marked ``bf16_input: rounded`` and its later inputs are not checked
  for counts (those chosen on counts are, and fall back to fp32 on an input that is not). The override
  ``prefer="bf16"`` (``--arith bf16``: untimed, no tolerance) keeps bf16 to count inputs: on the demo
  detector, bf16 on every convolution including the real-valued inputs moved mAP@50 by -0.26 points;
* ``int8``: oneDNN's quantised convolution (``torch.ops.onednn.qconv2d_pointwise``, the kernel of PyTorch's
  x86 quantisation: VNNI / AMX-INT8 where there are, AVX2 ``vpmaddubsw`` elsewhere) on uint8 inputs with scale
  1 and zero point 0, which hold counts 0..255 exactly, and int8 weights quantised per output channel
  (symmetric, ``s_c = max|W_c| / 127``, calibrated on the weights themselves); the int32 accumulation is
  exact and the output comes back in fp32 (``s_c`` times the sum, plus the fp32 bias), so the only error is
  the weights' rounding: ``|int8 - fp32| <= (s_c / 2) conv(|x|, 1)``. A candidate only where oneDNN's
  quantised convolution runs here and the input is non-negative counts of at most 255 (checked on it).

A layer of :mod:`neurons` (a synapse bound to its neuron's levels) whose input is ``scale x counts`` (NI-LIF's
``count / D`` in Spike2Former) is treated alike: its counts are ``x / scale`` (int8: oneDNN's input scale, or
the matrix kernel's output scale; bf16 only for a power-of-two scale, which bf16 holds exactly).

The lossy candidates (``bf16``, ``int8``) are also held to a tolerance (``tol``, :data:`DEFAULT_TOL`): on the
layer's first input their largest difference from fp32, relative to the largest fp32 output, must be at most
``tol``, or the layer keeps an exact arithmetic (the reason and the measured error are reported). The bounds
above are worst cases; what a detector's mAP feels is how many counts flip at a rounding boundary downstream,
which the tolerance limits but does not bound: ``zoo bench detection`` measures the mAP@50 change of the
auto, all-int8 and bf16 paths on the demo set. ``zoo bench detection`` on 1,000 generated images (AVX512-VNNI
EPYC): BN folding alone, exact up to last bits, moved it by -0.08 points, all-Winograd -0.04, all-int8 +0.18,
auto (tolerance 1e-2) +0.06, bf16 autocast -0.03; a scratch run before the BN-pad folds put every count-fed
layer in bf16 (weights and outputs rounded): -0.32. On 200 images the same rounding flips moved it by up to
0.4 points either way, which is why the bench uses 1,000. Admitting real-valued inputs to bf16 (within
the same tolerance) put 14-16 of SpikeYOLO-s's 130 convolution calls in bf16 on an AMX Xeon; its auto path
ran at 2.87x / 3.38x the reference where all-int8 ran at 2.62x / 2.60x (two bench runs). At the earlier
default of 1e-3 the auto path
rejected every int8 layer of SpikeYOLO (their errors are 2-4e-3) and ran at 0.97x; 1e-2 is the default now.

The choice and the times behind it are kept per layer and shape (:func:`report`); ``allow`` limits the
candidates, ``force`` names the arithmetic of given layers (an override that skips the timing), ``prefer``
takes one arithmetic wherever it is a candidate (the CLI's ``--arith``: no timing, no tolerance).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ZooError

__all__ = ["FLAGS", "ARITHMETICS", "EXACT", "DEFAULT_TOL", "AutoConv", "cpu_capabilities", "cpu_flags", "describe",
           "int8_available", "report", "use_auto"]

ARITHMETICS = ("fp32", "winograd", "bf16", "int8")
EXACT = ("fp32", "winograd")  # equal to fp32 up to its rounding
DEFAULT_TOL = 1e-2  # the lossy candidates' largest difference from fp32, relative to the layer's largest output

# environment variables that cap the vector ISA oneDNN's / ATen's kernels use (reported beside the flags)
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")

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


# oneDNN's ISA names in increasing order (``ONEDNN_MAX_CPU_ISA``), as far as this module needs them
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16")


def _onednn_allows(isa: str) -> bool:
    """Whether ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) leaves oneDNN ``isa``'s kernels (unset: yes)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if cap not in _ONEDNN_ISAS:  # unset, ALL, or an ISA above these (AMX, AVX10)
        return True
    return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(isa)


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
        "bf16": any_of("avx512_bf16", "amx_bf16") and _onednn_allows("AVX512_CORE_BF16"),
        "int8": any_of("avx512_vnni", "avx_vnni", "amx_int8") and _onednn_allows("AVX2_VNNI"),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "model": model,
        "isa_limits": {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)},
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
    limits = caps.get("isa_limits") or {}
    if limits:  # e.g. an AVX2-only CPU emulated on a newer one: the flags are the hardware's, the kernels are not
        listed += "; kernels limited by " + " ".join(f"{k}={v}" for k, v in limits.items())
    return (f"CPU: {caps['model'] or 'unknown model'}, torch ISA {caps['torch_isa']}, {caps['cores']} cores "
            f"({caps['threads']} torch threads); {listed}")


def _counts(x: torch.Tensor) -> bool:
    """Whether ``x`` holds only integers of magnitude <= 256 (exact in bf16)."""
    return bool(x.numel()) and bool(((x == torch.round(x)) & (x.abs() <= 256)).all())


def _unsigned_counts(x: torch.Tensor, high: int = 255) -> bool:
    """Whether ``x`` holds only integers in 0..``high`` (255: exact in uint8 with scale 1, zero point 0)."""
    return bool(x.numel()) and bool(((x == torch.round(x)) & (x >= 0) & (x <= high)).all())


SPOT_STRIDE = 97  # after the full check on a layer's first input, every 97th value of the later ones is checked


def _spot(x: torch.Tensor) -> torch.Tensor:
    """Every :data:`SPOT_STRIDE`-th value of ``x`` (a view where ``x`` is contiguous in NCHW or channels_last)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    return x.reshape(-1)[::SPOT_STRIDE]


_INT8: bool | None = None


def int8_available() -> bool:
    """Whether oneDNN's quantised convolution with an fp32 output runs in this torch build (tried once)."""
    global _INT8
    if _INT8 is None:
        try:
            conv = nn.Conv2d(2, 2, 1)
            _INT8 = bool(torch.allclose(_Int8Weights(conv)(torch.ones(1, 2, 2, 2), conv.weight, conv.bias),
                                        conv(torch.ones(1, 2, 2, 2)), atol=0.05))
        except (RuntimeError, AttributeError, NotImplementedError):
            _INT8 = False
    return _INT8


class _Int8Weights:
    """One convolution's int8 weights (per output channel, symmetric, ``s_c = max|W_c| / 127``), packed once per
    weight version; ``__call__(x, w, b, kernel)`` runs the quantised convolution on counts ``x``.

    Two kernels, both exact in their int32 sums: ``"qconv"``, oneDNN's quantised convolution (uint8 counts with
    scale 1 and zero point 0), for any layer; ``"mm"``, for 1x1 stride-1 ungrouped layers (zero padding allowed),
    ``torch._int_mm`` on the channels-last view (int8 counts 0..127, ``[pixels, C_in] @ [C_in, C_out]``), then
    ``s_c`` times the sums plus the bias in one ``addcmul``. On an AVX512-VNNI EPYC (1 thread) the second was
    4-24x faster than the first on SpikeYOLO's 1x1 layers (768->768 at 40x40: 4.6 ms against 31 ms, fp32 19 ms),
    whose oneDNN int8 kernel is slower than fp32 there; which one a layer uses is timed (:class:`AutoConv`)."""

    def __init__(self, conv: nn.Conv2d):
        self.conv, self.key, self.packed, self.matrix = conv, None, None, None
        c = conv
        self.mm_ok = (c.kernel_size == (1, 1) and c.stride == (1, 1) and c.groups == 1 and c.dilation == (1, 1)
                      and not isinstance(c.padding, str) and c.padding_mode == "zeros")

    def pack(self, w: torch.Tensor):
        key = (w.data_ptr(), w._version)
        if self.key != key:
            c = self.conv
            w = w.detach().float()
            scale = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-12)
            q = torch.round(w / scale.view(-1, 1, 1, 1)).clamp(-127, 127).to(torch.int8)
            packed = torch.ops.onednn.qconv_prepack(q.contiguous(memory_format=torch.channels_last), scale, 1.0, 0,
                                                    list(c.stride), list(c.padding), list(c.dilation), c.groups, None)
            self.packed = (packed, scale, torch.zeros(len(scale), dtype=torch.long))
            self.matrix = q.flatten(1).t() if self.mm_ok else None  # [C_in, C_out], a transposed view
            self.key = key
        return self.packed

    def __call__(self, x, w, b, kernel: str = "qconv", in_scale: float = 1.0):
        """``in_scale``: the input is ``in_scale`` times counts (NI-LIF's ``count / D``); 1: counts."""
        c = self.conv
        packed, scale, zp = self.pack(w)
        counts = x if in_scale == 1.0 else torch.round(x / in_scale)
        if kernel == "mm":
            return self._mm(counts, b, scale if in_scale == 1.0 else scale * in_scale)
        return torch.ops.onednn.qconv2d_pointwise(
            counts.to(torch.uint8), in_scale, 0, packed, scale, zp, None if b is None else b.detach().float(),
            list(c.stride), list(c.padding), list(c.dilation), c.groups, 1.0, 0, torch.float32, "none", [], "")

    def _mm(self, x, b, scale):
        """The 1x1 layer on ``torch._int_mm``, written into its (zero-)padded channels-last output: the border,
        where the layer sees only padding, is the bias."""
        n, cin, h, w = x.shape
        ph, pw = self.conv.padding
        rows = torch.empty((n, h, w, cin), dtype=torch.int8).copy_(x.permute(0, 2, 3, 1))  # one pass, any layout
        acc = torch._int_mm(rows.view(-1, cin), self.matrix).view(n, h, w, -1)
        bias = torch.zeros(acc.shape[-1]) if b is None else b.detach().float()
        out = torch.empty(n, h + 2 * ph, w + 2 * pw, acc.shape[-1])
        if ph or pw:
            out[:, :ph], out[:, h + ph:], out[:, :, :pw], out[:, :, w + pw:] = bias, bias, bias, bias
        torch.addcmul(bias, acc, scale, out=out[:, ph:ph + h, pw:pw + w])
        return out.permute(0, 3, 1, 2)  # channels_last NCHW, no copy


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

    def __init__(self, conv: nn.Conv2d, name: str, allow: tuple[str, ...], force: str | None, bf16_cpu: bool,
                 int8: bool = False, tol: float = DEFAULT_TOL, prefer: str | None = None):
        from . import winograd

        self.conv, self.name, self.force, self.tol, self.prefer = conv, name, force, tol, prefer
        self.allow = tuple(a for a in allow if a != "winograd" or winograd.eligible(conv))
        self.bf16_cpu, self.int8_ok = bf16_cpu, int8
        self.int8_layer = conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
        self.choice: dict[tuple, dict] = {}  # input shape -> {"arith", "why", "ms": {arith: ms}, "err": {arith: rel}}
        self._wino = winograd.WinogradConv(conv, autotune=False)
        self._int8 = _Int8Weights(conv)
        levels = getattr(conv, "levels", None) if hasattr(conv, "input_counts") else None  # a neurons synapse
        self.in_scale = float(levels.scale) if levels is not None else 1.0  # its input: in_scale x counts
        self.kernel: dict[tuple, str] = {}  # input shape -> the int8 kernel timed faster ("qconv" or "mm")
        self.kernel_ms: dict[tuple, dict] = {}
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
        if arith == "int8":
            return self._int8(x, w, b, self.kernel.get(tuple(x.shape), "qconv"), self.in_scale)
        return nn.Conv2d._conv_forward(c, x, w, b)

    def _counts_of(self, x: torch.Tensor) -> torch.Tensor:
        """The counts behind ``x`` if it is ``in_scale`` times counts (as the layer's neuron emits them)."""
        return x if self.in_scale == 1.0 else x / self.in_scale

    def _candidates(self, x) -> tuple[list[str], list[str]]:
        """The arithmetics this layer may use on ``x`` (fp32 first), and why the others may not."""
        candidates, excluded = ["fp32"], []
        for a in self.allow:
            if a == "winograd":
                candidates.append(a)
            elif a == "bf16":
                if not self.bf16_cpu:
                    excluded.append("bf16: the CPU has no bf16 arithmetic")
                elif self.prefer == "bf16" and not self._bf16_exact_input(x):  # untimed, so no tolerance check
                    excluded.append("bf16: input is not spike counts (the bf16 override rounds no inputs)")
                else:
                    candidates.append(a)
            elif a == "int8":
                if not self.int8_ok:
                    excluded.append("int8: no oneDNN quantised convolution in this torch")
                elif not self.int8_layer:
                    excluded.append("int8: padding mode or 'same' padding")
                elif not _unsigned_counts(self._counts_of(x)):
                    excluded.append("int8: input is not counts 0..255")
                else:
                    candidates.append(a)
        return candidates, excluded

    def _int8_kernel(self, x, w, b) -> None:
        """For a layer ``torch._int_mm`` can run (1x1, counts <= 127): time it against oneDNN's quantised
        convolution and keep the faster for this shape (:attr:`kernel`, the times in :attr:`kernel_ms`)."""
        shape = tuple(x.shape)
        if shape in self.kernel:
            return
        if not self._int8.mm_ok or not _unsigned_counts(self._counts_of(x), 127):
            self.kernel[shape], self.kernel_ms[shape] = "qconv", {}
            return
        try:
            ms = _interleaved_ms({k: (lambda k=k: self._int8(x, w, b, k, self.in_scale)) for k in ("qconv", "mm")},
                                 rounds=3)
        except (RuntimeError, NotImplementedError):  # no CPU torch._int_mm in this build
            self.kernel[shape], self.kernel_ms[shape] = "qconv", {}
            return
        self.kernel[shape], self.kernel_ms[shape] = min(ms, key=ms.get), ms

    def _bf16_exact_input(self, x) -> bool:
        """Whether bf16 holds ``x`` exactly: counts of at most 256 times a power-of-two scale."""
        return _counts(self._counts_of(x)) and math.log2(self.in_scale).is_integer()

    def _decide(self, x, w, b) -> dict:
        choice = self._choose(x, w, b)
        if choice["arith"] == "bf16":
            choice["bf16_input"] = "counts" if self._bf16_exact_input(x) else "rounded"
            if choice["bf16_input"] == "rounded":
                choice["why"] += "; bf16 rounds this real-valued input (within the tolerance)"
        if choice["arith"] == "int8":
            shape = tuple(x.shape)
            self._int8_kernel(x, w, b)
            choice["int8_kernel"], ms = self.kernel[shape], self.kernel_ms[shape]
            if ms:
                choice["why"] += f"; int8 kernel {self.kernel[shape]} (qconv {ms['qconv']:.3g} ms, mm {ms['mm']:.3g} ms)"
        return choice

    def _choose(self, x, w, b) -> dict:
        if self.force is not None:
            return {"arith": self.force, "why": "forced", "ms": {}, "err": {}}
        candidates, excluded = self._candidates(x)
        if self.prefer is not None:
            if self.prefer in candidates:
                return {"arith": self.prefer, "why": f"{self.prefer} asked for (override)", "ms": {}, "err": {}}
            why = "; ".join([f"{self.prefer} asked for, not possible here: fp32",
                             *(e for e in excluded if e.startswith(self.prefer + ":"))])
            return {"arith": "fp32", "why": why, "ms": {}, "err": {}}
        err = {}
        lossy = [a for a in candidates if a not in EXACT]
        if "int8" in lossy:
            self._int8_kernel(x, w, b)  # time int8 with its faster kernel below
        if lossy:
            want = self._run("fp32", x, w, b)
            scale = float(want.abs().max()) or 1.0
            for a in lossy:
                err[a] = float((self._run(a, x, w, b) - want).abs().max()) / scale
                if err[a] > self.tol:
                    candidates.remove(a)
                    excluded.append(f"{a}: error {err[a]:.2g} of the output's range > tolerance {self.tol:g}")
        ms = _interleaved_ms({a: (lambda a=a: self._run(a, x, w, b)) for a in candidates})
        best = min(ms, key=ms.get)
        why = f"fastest of {', '.join(ms)}" if len(ms) > 1 else "the only candidate"
        return {"arith": best, "why": "; ".join([why, *excluded]), "ms": ms, "err": err}

    def _still_counts(self, x, arith: str) -> bool:
        """A spot check of a later input (every :data:`SPOT_STRIDE`-th value; the first input of each shape was
        checked whole): still counts that ``arith`` holds exactly?"""
        sample = self._counts_of(_spot(x))
        if arith == "bf16":
            return _counts(sample)
        return _unsigned_counts(sample, 127 if self.kernel.get(tuple(x.shape)) == "mm" else 255)

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            return nn.Conv2d._conv_forward(self.conv, x, w, b)
        shape = tuple(x.shape)
        if shape not in self.choice:
            self.choice[shape] = self._decide(x, w, b)
            return self._run(self.choice[shape]["arith"], x, w, b)
        choice = self.choice[shape]
        arith = choice["arith"]
        check = arith == "int8" or choice.get("bf16_input") == "counts"  # a rounded bf16 input needs no counts
        if check and self.force is None and not self._still_counts(x, arith):
            arith = "fp32"  # this input is not counts after all (the choice was made on another one)
        return self._run(arith, x, w, b)


def use_auto(model: nn.Module, allow=ARITHMETICS, force: dict[str, str] | None = None,
             bf16: bool | None = None, int8: bool | None = None, tol: float = DEFAULT_TOL,
             prefer: str | None = None) -> list[AutoConv]:
    """Let every ``nn.Conv2d`` of ``model`` choose its arithmetic (see the module docstring); in place.

    ``allow``: the candidates besides fp32; ``force``: ``{layer name: arithmetic}`` overrides; ``bf16`` /
    ``int8``: whether the CPU has bf16 arithmetic / this torch has oneDNN's quantised convolution (default:
    from the CPU's flags / tried); ``tol``: the lossy candidates' tolerance; ``prefer``: one arithmetic taken
    wherever it is a candidate, without timing (an override). Returns the per-layer switches."""
    unknown = set(allow) - set(ARITHMETICS) or {a for a in (force or {}).values() if a not in ARITHMETICS}
    if prefer is not None and prefer not in ARITHMETICS:
        unknown = {prefer}
    if unknown:
        raise ZooError(f"unknown arithmetic {', '.join(sorted(unknown))}; choose from {', '.join(ARITHMETICS)}")
    if not tol >= 0:
        raise ZooError(f"the tolerance must be >= 0, got {tol}")
    force = dict(force or {})
    if bf16 is None:
        bf16 = bool(cpu_capabilities()["bf16"])
    if int8 is None:
        int8 = int8_available()
    switches = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and not isinstance(m.__dict__.get("_conv_forward"), AutoConv):
            m._conv_forward = AutoConv(m, name, tuple(dict.fromkeys((*allow, *([prefer] if prefer else [])))),
                                       force.pop(name, None), bf16, int8, tol, prefer)  # state_dict unchanged
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


CHOICES = ("reference", "auto", *ARITHMETICS)  # the CLI's --arith


def apply(model: nn.Module, arith: str, *example) -> nn.Module:
    """The model a CLI's ``--arith`` asks for: ``reference`` = ``model`` as built; otherwise a BN-folded copy in
    the memory format timed faster on ``example`` (NCHW for ``winograd``; :func:`zoo.fuse.optimize_for_inference`)
    whose convolutions choose their arithmetic: ``auto`` by timing (every candidate, within :data:`DEFAULT_TOL`),
    a named one (``fp32``, ``winograd``, ``bf16``, ``int8``) wherever the layer and its input allow it, fp32
    elsewhere."""
    if arith not in CHOICES:
        raise ZooError(f"unknown --arith {arith!r}; choose from {', '.join(CHOICES)}")
    if arith == "reference":
        return model
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ZooError(f"--arith {arith} chooses CPU arithmetic; the model is on {device} (pass --device cpu)")
    from .fuse import optimize_for_inference

    fast = optimize_for_inference(model, *example, channels_last="auto" if arith != "winograd" else False)
    use_auto(fast, prefer=None if arith == "auto" else arith)
    return fast


def summary(model: nn.Module, arith: str) -> str:
    """One line: which arithmetic the convolutions took (after a forward), e.g.
    ``arithmetic (--arith int8): int8 52, fp32 1 of 53 convolution shapes``."""
    from collections import Counter

    rows = report(model)
    if arith == "reference" or not rows:
        return f"arithmetic (--arith {arith}): the model as built, fp32"
    n = Counter(r["arith"] for r in rows)
    return (f"arithmetic (--arith {arith}): " + ", ".join(f"{a} {n[a]}" for a in sorted(n, key=n.get, reverse=True))
            + f" of {len(rows)} (convolution, input shape) pairs")
