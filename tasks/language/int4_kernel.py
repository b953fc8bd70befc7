r"""Packed-int4 group partials for SDLLM's decode: a small C kernel, compiled on first use.

The exact group accumulation of :class:`tasks.language.sdllm.GroupQuantLinear`
needs, per token ``n``, input group ``G`` and output ``o``, the integer partial
:math:`P_{G,n,o} = \sum_{i \in G} q_{o,i} C_{n,i}` (int4 codes, counts
:math:`|C| \le 127`). This kernel reads the codes packed two per byte (half a
byte per weight: 8x fewer weight bytes than fp32, 2x fewer than the int8 path)
and computes the partials in 32-bit integers:

* a block of 64 weights of one output row is 32 bytes, byte ``j`` holding
  :math:`q_j + 8` in its low nibble and :math:`q_{j+32} + 8` in its high one;
* per block, two unsigned x signed byte products with pairwise int16 sums
  (AVX2 ``vpmaddubsw``; at most :math:`2 \cdot 2 \cdot 15 \cdot 127`, no
  saturation) widened to int32 (``vpmaddwd``), or one ``vpdpbusd`` where the
  CPU has AVX-VNNI / AVX512-VNNI; a plain C loop where it has neither;
* the +8 offset is removed exactly: :math:`P = \sum (q+8) C - 8 \sum_{i \in G} C_i`;
* output rows are split over the OpenMP threads of torch's own runtime (the
  library links ``libgomp.so.1``, which resolves to the one torch loaded), so
  ``torch.set_num_threads`` governs it.

The partials are the same integers as the fp32 batched product's, and the
epilogue (:func:`tasks.language.sdllm.group_epilogue`) is the same function, so
the outputs are bit-identical to every other path (tests/language).

Why by hand: torch's CPU operators have no int4 x int8 -> int32 product.
``torch._weight_int4pack_mm_for_cpu`` and ``_weight_int8pack_mm`` take float
activations and round the integer partials in bf16 (or, in fp32, ran 30-100x
slower than the fp32 product, measured on an AMX Xeon), and ``torch._int_mm``
needs int8 weights and, on a CPU without VNNI, runs 100-300x slower than fp32
(measured on an AVX2-only AMD EPYC). Nothing in the allowed libraries streams
int4 weights into integer partial sums on a CPU.

The library is built with the system C compiler (``$CC``, else ``cc`` / ``gcc``,
``-O3 -march=native``) into ``<zoo cache>/kernels/`` once per source, compiler
and CPU; without a compiler :func:`library` is None and the other paths run
(:func:`status` says why). ``SPIKING_ZOO_INT4=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["build", "library", "status", "supports", "pack", "partials", "group_linear_int4"]

BLOCK = 64  # weights per packed block (32 bytes)

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX2__)
static inline __m256i block_dot(__m256i acc, const uint8_t *w, const int8_t *c) {
    const __m256i m = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_loadu_si256((const __m256i *)w);
    __m256i lo = _mm256_and_si256(v, m), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
    __m256i c0 = _mm256_loadu_si256((const __m256i *)c), c1 = _mm256_loadu_si256((const __m256i *)(c + 32));
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, lo, c0), hi, c1);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, lo, c0), hi, c1);
#else
    __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, c0), _mm256_maddubs_epi16(hi, c1));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)));
#endif
}

static inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_hadd_epi32(s, s);
    s = _mm_hadd_epi32(s, s);
    return _mm_cvtsi128_si32(s);
}

/* four output rows at once: their four group sums in one vector */
static inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d);
    __m256i s = _mm256_hadd_epi32(ab, cd);
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}
#endif

static inline int32_t dot_plain(const uint8_t *w, const int8_t *c, int64_t nb) {
    int32_t s = 0;
    for (int64_t b = 0; b < nb; b++, w += 32, c += 64)
        for (int j = 0; j < 32; j++)
            s += (int32_t)(w[j] & 15) * c[j] + (int32_t)(w[j] >> 4) * c[j + 32];
    return s;
}

/* w: [out][G*g/2] packed codes; c: [N][G*g] int8 counts; P: [G][N][out] int32; g % 64 == 0. */
int zoo_int4_partials(const uint8_t *w, const int8_t *c, int32_t *P, int64_t N, int64_t out, int64_t G, int64_t g) {
    const int64_t in = G * g, nb = g / 64, rowb = in / 2;
    int32_t *off = (int32_t *)malloc(sizeof(int32_t) * (size_t)(N * G));
    if (!off) return 1;
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < G; k++) {
            int32_t s = 0;
            for (int64_t i = 0; i < g; i++) s += c[n * in + k * g + i];
            off[n * G + k] = 8 * s;
        }
#if defined(__AVX2__)
    const int64_t out4 = out / 4 * 4;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out4; o += 4) {
        const uint8_t *w0 = w + o * rowb, *w1 = w0 + rowb, *w2 = w1 + rowb, *w3 = w2 + rowb;
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < G; k++) {
                const int8_t *cr = c + n * in + k * g;
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                for (int64_t b = 0; b < nb; b++) {
                    const int64_t wo = (k * nb + b) * 32;
                    a0 = block_dot(a0, w0 + wo, cr + 64 * b);
                    a1 = block_dot(a1, w1 + wo, cr + 64 * b);
                    a2 = block_dot(a2, w2 + wo, cr + 64 * b);
                    a3 = block_dot(a3, w3 + wo, cr + 64 * b);
                }
                __m128i s = _mm_sub_epi32(hsum4(a0, a1, a2, a3), _mm_set1_epi32(off[n * G + k]));
                _mm_storeu_si128((__m128i *)(P + (k * N + n) * out + o), s);
            }
    }
    for (int64_t o = out4; o < out; o++)
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < G; k++) {
                __m256i a = _mm256_setzero_si256();
                for (int64_t b = 0; b < nb; b++) a = block_dot(a, w + o * rowb + (k * nb + b) * 32, c + n * in + k * g + 64 * b);
                P[(k * N + n) * out + o] = hsum(a) - off[n * G + k];
            }
#else
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out; o++)
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < G; k++)
                P[(k * N + n) * out + o] = dot_plain(w + o * rowb + k * g / 2, c + n * in + k * g, nb) - off[n * G + k];
#endif
    free(off);
    return 0;
}

int zoo_int4_isa(void) {
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
    return 2;
#elif defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}
"""

ISA_NAMES = {0: "plain C", 1: "AVX2 vpmaddubsw", 2: "VNNI vpdpbusd"}
_status = {"library": None, "why": "not built yet"}


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _cpu_flags() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def build(extra: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile (once per source, compiler, flags and CPU; cached) and load the kernel; ``extra``: more compiler
    flags (tests build the plain-C path with ``("-mno-avx2",)``). Raises OSError saying why it cannot."""
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler (set CC, or install gcc)")
    from zoo.hub import cache_dir

    key = hashlib.sha256("\0".join((SOURCE, cc, *extra, _cpu_flags())).encode()).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"int4_{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "int4.c"
            src.write_text(SOURCE)
            for arch in (["-march=native"], []):  # some compilers / CPUs reject -march=native
                cmd = [cc, "-O3", *arch, *extra, "-fopenmp", "-shared", "-fPIC", str(src), "-o", f"{tmp}/k.so"]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode == 0:
                    os.replace(f"{tmp}/k.so", path)  # atomic: a concurrent build leaves one whole file
                    break
            else:
                raise OSError(f"the C compiler failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
    lib = ctypes.CDLL(str(path))
    lib.zoo_int4_partials.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4
    lib.zoo_int4_partials.restype = ctypes.c_int
    lib.path, lib.isa = str(path), ISA_NAMES.get(lib.zoo_int4_isa(), "?")
    return lib


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The kernel built for this CPU (on the first call; then from the cache), or None (:func:`status` says why)."""
    if os.environ.get("SPIKING_ZOO_INT4", "").strip() == "0":
        _status.update(why="turned off (SPIKING_ZOO_INT4=0)")
        return None
    try:
        lib = build()
    except OSError as e:
        _status.update(why=str(e))
        return None
    _status.update(library=lib.path, why="", isa=lib.isa)
    return lib


def status() -> dict:
    """``{"library": path or None, "why": reason it is not there, "isa": the kernel's instruction set}``."""
    library()
    return dict(_status)


def supports(group_width: int, w_bits: int, bound: int) -> bool:
    """Whether a layer fits the kernel: groups of a multiple of 64 weights, codes within int4, counts within int8."""
    return group_width % BLOCK == 0 and 0 < w_bits <= 4 and bound <= 127


def pack(codes_i8: torch.Tensor) -> torch.Tensor:
    """int8 codes ``[out, G*g]`` in [-8, 7] -> uint8 ``[out, G*g/2]`` in the kernel's block layout."""
    out_f, n = codes_i8.shape
    if n % BLOCK or int(codes_i8.min()) < -8 or int(codes_i8.max()) > 7:
        raise ValueError("int4 packing needs groups of a multiple of 64 codes in [-8, 7]")
    u = (codes_i8.to(torch.int16) + 8).reshape(out_f, n // BLOCK, 2, BLOCK // 2)
    return (u[:, :, 0] | (u[:, :, 1] << 4)).to(torch.uint8).reshape(out_f, n // 2).contiguous()


def partials(counts: torch.Tensor, packed: torch.Tensor, groups: int, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """``[N, in]`` integer counts, packed codes ``[out, G*g/2]`` -> int32 partials ``[G, N, out]``."""
    lib = lib or library()
    n, out_f = counts.shape[0], packed.shape[0]
    width = packed.shape[1] * 2 // groups
    c = counts
    pad = groups * width - c.shape[-1]
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.to(torch.int8).contiguous()
    P = torch.empty(groups, n, out_f, dtype=torch.int32)
    if lib.zoo_int4_partials(packed.data_ptr(), c.data_ptr(), P.data_ptr(), n, out_f, groups, width):
        raise MemoryError("int4 kernel: out of memory")
    return P


@torch.library.custom_op("spiking_zoo::group_linear_int4", mutates_args=())
def group_linear_int4(counts: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``[N, in]`` integer counts (|c| <= 127), packed int4 codes, scales ``[G, 1, out]`` -> ``[N, out]``: the
    kernel's int32 partials, then the shared epilogue (every path's, bit for bit)."""
    from .sdllm import group_epilogue

    return group_epilogue(partials(counts, packed, scales.shape[0]).float(), scales, gamma)


@group_linear_int4.register_fake
def _(counts, packed, scales, gamma):
    return counts.new_empty((counts.shape[0], packed.shape[0]), dtype=torch.float32)
