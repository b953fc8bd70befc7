r"""Integer kernels for SDLLM's exact group accumulation: int8 counts x int8 weight codes -> int32 partials.

:class:`tasks.language.sdllm.GroupQuantLinear` needs, per output row ``o``
and input group ``G``, the integer partial sum
:math:`P_{G,o} = \sum_{i \in G} q_{o,i} C_i` (int4 codes, counts bounded by
127) and then one float epilogue :math:`y_o = g \sum_G s_{o,G} P_{G,o}`.
The portable path computes the partials as an fp32 batched product (exact:
every partial is an integer below :math:`2^{24}`). This module computes them
on the CPU's integer GEMM, ``torch._int_mm`` (int8 x int8 -> int32; oneDNN,
which uses AVX512-VNNI / AVX-VNNI / AMX-INT8 where the CPU has them), with
the weight codes kept in memory as int8 (``[out, in]``, 1 byte per weight: 4x
fewer bytes than fp32 read per decode step):

* the ``G`` groups become ``G`` rows of one GEMM: row ``(n, G)`` holds token
  ``n``'s counts in group ``G``'s columns and zeros elsewhere, so one
  ``[N G, in] x [in, out]`` product yields every group partial at once (the
  weights are read once; ``G`` times the multiply-adds, which a memory-bound
  decode step does not feel). For many rows (prefill) the fp32 batched
  product is used instead (:data:`MAX_ROWS`).
* the partials are the same integers as the fp32 path's, and the epilogue is
  the same function, so the outputs are bit-identical (tests/language).

Dispatch at run time, by measurement, among three kernels for the same
integers: the fp32 batched product, this int8 GEMM, and the packed-int4 C
kernel of :mod:`tasks.language.int4_kernel` (half a byte per weight).
:func:`available` probes that ``torch._int_mm`` runs (and is exact) on this
CPU, :func:`fits` says which kernels can run a layer, :func:`timing` times
each once on a decode-sized layer and :func:`choose` takes the fastest that
fits. That matters: on an AVX2-only CPU (no AVX512-VNNI / AVX-VNNI / AMX)
``_int_mm`` takes a slow path, measured 20-300x the fp32 product's time for
one decode row (AMD EPYC, torch 2.14.1), while CPUs with VNNI run it on
oneDNN's integer kernels. :func:`cpu_features` reports the flags.
``SPIKING_ZOO_INT8=0`` / ``SPIKING_ZOO_INT4=0`` turn a kernel off, ``=1``
forces it (for any number of rows).
"""

from __future__ import annotations

import os
import statistics
from functools import lru_cache

import torch
import torch.nn.functional as F

from zoo.arith import cpu_flags
from zoo.timing import call_times

from . import int4_kernel
from .int4_kernel import group_linear_int4

__all__ = ["available", "faster", "fits", "choose", "cpu_features", "group_linear_int8", "group_linear_auto", "MAX_ROWS"]

MAX_ROWS = 16  # rows (tokens) up to which the integer kernels are chosen (decode); above, the fp32 batched product


@lru_cache(maxsize=1)
def cpu_features() -> dict:
    """Integer-GEMM features of this CPU: ``{"capability": ATen's, "avx512_vnni": ..., "avx_vnni": ..., "amx_int8": ...}``."""
    flags = cpu_flags() or set()
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover
        cap = "unknown"
    return {"capability": cap, **{f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}}


@lru_cache(maxsize=1)
def _probe() -> bool:
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        a = torch.tensor([[1, -2] * 8], dtype=torch.int8)
        b = torch.ones(16, 8, dtype=torch.int8)
        return bool((torch._int_mm(a, b) == -8).all())
    except Exception:
        return False


def available() -> bool:
    """Whether the int8 GEMM path can run here (``torch._int_mm`` works on this CPU and is not turned off)."""
    if os.environ.get("SPIKING_ZOO_INT8", "").strip() == "0":
        return False
    return _probe()


def _median_s(fn, repeats: int = 7) -> float:
    return statistics.median(call_times(fn, repeats))


@lru_cache(maxsize=1)
def timing() -> dict:
    """One decode row through a 1024 x 1024 layer in groups of 128: seconds of each group kernel that runs here
    (``fp32_s``: the batched product; ``int8_s``: the int8 GEMM; ``int4_s``: the packed-int4 kernel), measured
    once per process."""
    from .sdllm import group_linear

    gen = torch.Generator().manual_seed(0)
    n, g = 1024, 128
    counts = torch.randint(-7, 8, (1, n), generator=gen).float()
    codes_i8 = torch.randint(-7, 8, (n, n), generator=gen, dtype=torch.int8)
    codes = codes_i8.float().reshape(n, n // g, g).permute(1, 2, 0).contiguous()
    scales = torch.rand(n // g, 1, n, generator=gen)
    gamma = torch.tensor(0.1)
    with torch.no_grad():
        out = {"fp32_s": _median_s(lambda: group_linear(counts, codes, scales, gamma))}
        if available():
            out["int8_s"] = _median_s(lambda: group_linear_int8(counts, codes_i8, scales, gamma))
        if int4_kernel.library() is not None:
            packed = int4_kernel.pack(codes_i8)
            out["int4_s"] = _median_s(lambda: int4_kernel.group_linear_int4(counts, packed, scales, gamma))
    return out


def faster() -> bool:
    """Whether the int8 GEMM beats the fp32 batched product here on a decode row (:func:`timing`)."""
    t = timing()
    return "int8_s" in t and t["int8_s"] < t["fp32_s"]


def fits(kernel: str, width: int, w_bits: int, bound: int) -> bool:
    """Whether ``kernel`` (``"fp32"``, ``"int8"``, ``"int4"``) runs a layer with groups of ``width`` codes of
    ``w_bits`` bits fed counts up to ``bound``, on this machine."""
    if kernel == "fp32":
        return True
    if kernel == "int8":
        return bound <= 127 and available()
    if kernel == "int4":
        return int4_kernel.supports(width, w_bits, bound) and int4_kernel.library() is not None
    raise ValueError(f"unknown kernel {kernel!r}: use 'fp32', 'int8' or 'int4'")


def choose(rows: int, bound: int, device: torch.device, width: int = 0, w_bits: int = 4) -> str:
    """The group kernel for ``rows`` rows of counts bounded by ``bound`` through a layer with groups of ``width``
    codes of ``w_bits``: ``"int4"``, ``"int8"`` or ``"fp32"``. Forced by ``SPIKING_ZOO_INT4=1`` /
    ``SPIKING_ZOO_INT8=1`` where the layer fits; otherwise, for decode-sized inputs (``rows <= MAX_ROWS``), the
    fastest on this CPU by :func:`timing`; for more rows (prefill, calibration), the fp32 batched product."""
    if device.type != "cpu":
        return "fp32"
    ok = [k for k in ("int4", "int8") if fits(k, width, w_bits, bound)]
    if not ok:
        return "fp32"
    for name in ok:
        if os.environ.get(f"SPIKING_ZOO_{name.upper()}", "").strip() == "1":
            return name
    if rows > MAX_ROWS:
        return "fp32"
    t = timing()
    return min(["fp32"] + [k for k in ok if f"{k}_s" in t], key=lambda k: t[f"{k}_s"])


def _expand(counts: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """``[N, in]`` counts -> int8 ``[N * groups, groups * width]``: row ``(n, G)`` keeps group ``G``'s columns."""
    n = counts.shape[0]
    x = counts
    pad = groups * width - x.shape[-1]
    if pad:
        x = F.pad(x, (0, pad))
    x = x.to(torch.int8).reshape(n, 1, groups, width)
    return (x * _eye(groups, x.device)).reshape(n * groups, groups * width)


@lru_cache(maxsize=32)
def _eye(groups: int, device: torch.device) -> torch.Tensor:
    return torch.eye(groups, dtype=torch.int8, device=device).reshape(1, groups, groups, 1)


@torch.library.custom_op("spiking_zoo::group_linear_int8", mutates_args=())
def group_linear_int8(counts: torch.Tensor, codes_i8: torch.Tensor, scales: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``[N, in]`` integer counts (|c| <= 127), int8 codes ``[out, G g]``, scales ``[G, 1, out]`` -> ``[N, out]``:
    the int32 group partials from one int8 GEMM, then the shared epilogue (the fp32 path's, bit for bit)."""
    from .sdllm import group_epilogue

    groups = scales.shape[0]
    out_f, width = codes_i8.shape[0], codes_i8.shape[1] // groups
    n = counts.shape[0]
    P = torch._int_mm(_expand(counts, groups, width), codes_i8.t())  # [N G, out] int32
    P = P.reshape(n, groups, out_f).transpose(0, 1).float()  # exact: |P| < 2^24
    return group_epilogue(P, scales, gamma)


@group_linear_int8.register_fake
def _(counts, codes_i8, scales, gamma):
    return counts.new_empty((counts.shape[0], codes_i8.shape[0]), dtype=torch.float32)


def group_linear_auto(counts: torch.Tensor, layer, gamma: torch.Tensor) -> torch.Tensor:
    """A :class:`GroupQuantLinear`'s integer-mode product on the kernel :func:`choose` picks (same integers)."""
    from .sdllm import group_linear

    kernel = choose(counts.shape[0], layer.levels.D, counts.device, layer._group_width(), layer.w_bits)
    if kernel == "int4":  # packed codes only: no fp32 copy of them
        return group_linear_int4(counts, layer.int4_codes(), layer.scales(), gamma)
    if kernel == "int8":
        return group_linear_int8(counts, layer.int8_codes(), layer.scales(), gamma)
    codes, scales = layer._codes()
    return group_linear(counts, codes, scales, gamma)
