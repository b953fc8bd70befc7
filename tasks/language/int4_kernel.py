r"""Packed-int4 group partials for SDLLM's decode: a small C kernel, compiled on first use.

The exact group accumulation of :class:`tasks.language.sdllm.GroupQuantLinear`
needs, per token ``n``, input group ``G`` and output ``o``, the integer partial
:math:`P_{G,n,o} = \sum_{i \in G} q_{o,i} C_{n,i}` (int4 codes, counts
:math:`|C| \le 127`). This kernel reads the codes packed two per byte (half a
byte per weight: 8x fewer weight bytes than fp32, 2x fewer than the int8 path)
and computes the partials in 32-bit integers:

* output rows in tiles of 8; per tile and chunk of 8 inputs, 32 bytes whose
  low nibbles are the 8 rows' codes of inputs ``i..i+3`` and high nibbles of
  ``i+4..i+7`` (offset by 8, so unsigned), so one unsigned x signed byte
  product with the 4 counts broadcast sums 4 inputs per row in one 32-bit
  lane: 8 rows per vector, no horizontal sums, the weights read as one
  sequential stream;
* that product is AVX2 ``vpmaddubsw`` (pairwise int16 sums, at most
  :math:`2 \cdot 15 \cdot 127`; four chunks accumulated in int16, 30480 <
  :math:`2^{15}`, then widened with ``vpmaddwd``), or ``vpdpbusd`` where the
  CPU has AVX-VNNI / AVX512-VNNI; a plain C loop where it has neither;
* the +8 offset is removed exactly: :math:`P = \sum (q+8) C - 8 \sum_{i \in G} C_i`;
* output rows are split over the OpenMP threads of torch's own runtime (the
  library links ``libgomp.so.1``, which resolves to the one torch loaded), so
  ``torch.set_num_threads`` governs it.

The partials are the same integers as the fp32 batched product's, and the
kernel then runs the shared epilogue (:func:`tasks.language.sdllm.group_epilogue`)
in the same order, one fp32 rounding per step, no fused multiply-add
(``-ffp-contract=off``), so the outputs are bit-identical to every other path
(tests/language); no partials leave the kernel.

Why by hand: torch's CPU operators have no int4 x int8 -> int32 product.
``torch._weight_int4pack_mm_for_cpu`` and ``_weight_int8pack_mm`` take float
activations and round the integer partials in bf16 (or, in fp32, ran 30-100x
slower than the fp32 product, measured on an AMX Xeon), and ``torch._int_mm``
needs int8 weights and, on a CPU without VNNI, runs 20-300x slower than fp32
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

__all__ = ["build", "library", "status", "supports", "pack", "partials", "linear", "group_linear_int4"]

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* Layout: output rows in tiles of 8; per tile and chunk of 8 inputs i..i+7, 32 bytes; byte 4j+r (row j of the
   tile, r < 4) = (q[j][i+r] + 8) | (q[j][i+4+r] + 8) << 4. So the low nibbles of a chunk are 8 rows x inputs
   i..i+3 and the high nibbles 8 rows x inputs i+4..i+7: a product with the counts c[i..i+3] (c[i+4..i+7])
   broadcast to every row sums 4 inputs per row in one 32-bit lane, 8 rows per vector, no horizontal sums. */

#if defined(__AVX2__)
#ifndef PREFETCH
#define PREFETCH 1024 /* bytes ahead in the weight stream */
#endif
#if defined(__AVXVNNI__)
#define DOT4(acc, u, c) _mm256_dpbusd_avx_epi32(acc, u, c)
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define DOT4(acc, u, c) _mm256_dpbusd_epi32(acc, u, c)
#endif

/* one group of `chunks` chunks for 8 rows and NR (<= 4) rows of counts `ldc` apart, unpacking each chunk once:
   acc[r] lanes = the 8 rows' sums of (q + 8) c_r. Inlined with a constant NR, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void group8(const uint8_t *w, const int8_t *c, int64_t ldc,
                                                         int64_t chunks, const int NR, __m256i *acc) {
    const __m256i m = _mm256_set1_epi8(0x0F);
    for (int r = 0; r < NR; r++) acc[r] = _mm256_setzero_si256();
#if defined(DOT4)
    for (int64_t t = 0; t < chunks; t++, w += 32, c += 8) {
        _mm_prefetch((const char *)w + PREFETCH, _MM_HINT_T0);
        __m256i v = _mm256_loadu_si256((const __m256i *)w);
        __m256i lo = _mm256_and_si256(v, m), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
        for (int r = 0; r < NR; r++) {
            acc[r] = DOT4(acc[r], lo, _mm256_set1_epi32(*(const int32_t *)(c + r * ldc)));
            acc[r] = DOT4(acc[r], hi, _mm256_set1_epi32(*(const int32_t *)(c + r * ldc + 4)));
        }
    }
#else
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t t = 0; t < chunks;) {
        /* int16 lanes: at most 2 x 15 x 127 per product pair, two pairs per chunk, four chunks: 30480 < 2^15 */
        __m256i s16[4];
        for (int r = 0; r < NR; r++) s16[r] = _mm256_setzero_si256();
        for (int64_t e = t + 4 < chunks ? t + 4 : chunks; t < e; t++, w += 32, c += 8) {
            _mm_prefetch((const char *)w + PREFETCH, _MM_HINT_T0);
            __m256i v = _mm256_loadu_si256((const __m256i *)w);
            __m256i lo = _mm256_and_si256(v, m), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
            for (int r = 0; r < NR; r++) {
                s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(*(const int32_t *)(c + r * ldc))));
                s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(*(const int32_t *)(c + r * ldc + 4))));
            }
        }
        for (int r = 0; r < NR; r++) acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(s16[r], ones));
    }
#endif
}

static void group8_rows(const uint8_t *w, const int8_t *c, int64_t ldc, int64_t chunks, int nr, __m256i *acc) {
    switch (nr) {  /* one specialised copy per row count */
    case 1: group8(w, c, ldc, chunks, 1, acc); break;
    case 2: group8(w, c, ldc, chunks, 2, acc); break;
    case 3: group8(w, c, ldc, chunks, 3, acc); break;
    default: group8(w, c, ldc, chunks, 4, acc); break;
    }
}
#endif

static void group8_plain(const uint8_t *w, const int8_t *c, int64_t chunks, int32_t *lanes) {
    for (int j = 0; j < 8; j++) lanes[j] = 0;
    for (int64_t t = 0; t < chunks; t++, w += 32, c += 8)
        for (int j = 0; j < 8; j++)
            for (int r = 0; r < 4; r++)
                lanes[j] += (int32_t)(w[4 * j + r] & 15) * c[r] + (int32_t)(w[4 * j + r] >> 4) * c[4 + r];
}

/* w: [ceil(out/8)][in*4] packed tiles; x: [N][in_x] integer-valued float counts (|x| <= 127, in_x <= in = G*g, the
   rest zero); g % 8 == 0. P != NULL: the int32 partials P[G][N][out]. Else the shared epilogue
   y[n][o] = (((s_0 P_0 + s_1 P_1) + s_2 P_2) + ...) * gamma_n, s: [G][out], gamma: one value or one per row. */
int zoo_int4(const uint8_t *w, const float *x, int64_t N, int64_t in_x, int64_t out, int64_t G, int64_t g,
             int32_t *P, const float *s, const float *gamma, int64_t gamma_rows, float *y) {
    const int64_t in = G * g, chunks = g / 8, tiles = (out + 7) / 8;
    int8_t *c = (int8_t *)calloc((size_t)(N * in), 1);
    int32_t *off = (int32_t *)malloc(sizeof(int32_t) * (size_t)(N * G));
    if (!c || !off) { free(c); free(off); return 1; }
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < in_x; i++) c[n * in + i] = (int8_t)(int)x[n * in_x + i];
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < G; k++) {
            int32_t t = 0;
            for (int64_t i = 0; i < g; i++) t += c[n * in + k * g + i];
            off[n * G + k] = 8 * t;
        }
#pragma omp parallel for schedule(static)
    for (int64_t tile = 0; tile < tiles; tile++) {
        const int64_t o = tile * 8, rows = out - o < 8 ? out - o : 8;
        const uint8_t *wt = w + tile * in * 4;
        for (int64_t n0 = 0; n0 < N; n0 += 4) {
            const int nr = N - n0 < 4 ? (int)(N - n0) : 4;  /* count rows sharing each unpacked chunk */
            int32_t p[4][8];
            float acc[4][8], sk[8] = {0};
            for (int64_t k = 0; k < G; k++) {
                const uint8_t *wk = wt + k * chunks * 32;
                const int8_t *ck = c + n0 * in + k * g;
#if defined(__AVX2__)
                __m256i v[4];
                group8_rows(wk, ck, in, chunks, nr, v);
                for (int r = 0; r < nr; r++)
                    _mm256_storeu_si256((__m256i *)p[r], _mm256_sub_epi32(v[r], _mm256_set1_epi32(off[(n0 + r) * G + k])));
#else
                for (int r = 0; r < nr; r++) {
                    group8_plain(wk, ck + r * in, chunks, p[r]);
                    for (int j = 0; j < 8; j++) p[r][j] -= off[(n0 + r) * G + k];
                }
#endif
                if (P) {
                    for (int r = 0; r < nr; r++)
                        for (int64_t j = 0; j < rows; j++) P[(k * N + n0 + r) * out + o + j] = p[r][j];
                    continue;
                }
                memcpy(sk, s + k * out + o, sizeof(float) * (size_t)rows);
                for (int r = 0; r < nr; r++)
                    for (int j = 0; j < 8; j++) {  /* one fp32 rounding per step, as the shared epilogue */
                        float q = (float)p[r][j] * sk[j];
                        acc[r][j] = k ? acc[r][j] + q : q;
                    }
            }
            if (!P)
                for (int r = 0; r < nr; r++) {
                    const float gm = gamma[gamma_rows > 1 ? n0 + r : 0];
                    for (int64_t j = 0; j < rows; j++) y[(n0 + r) * out + o + j] = acc[r][j] * gm;
                }
        }
    }
    free(c);
    free(off);
    return 0;
}

int zoo_int4_isa(void) {
#if defined(__AVX2__) && defined(DOT4)
    return 2;
#elif defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}
"""

ISA_NAMES = {0: "plain C", 1: "AVX2 vpmaddubsw", 2: "VNNI vpdpbusd"}
_why = "not built yet"  # why library() is None


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def build(extra: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile (once per source, compiler, flags and CPU; cached) and load the kernel; ``extra``: more compiler
    flags (tests build the plain-C path with ``("-mno-avx2",)``). Raises OSError saying why it cannot."""
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler (set CC, or install gcc)")
    from zoo.arith import cpu_flags
    from zoo.hub import cache_dir

    flags = " ".join(sorted(cpu_flags() or ()))  # -march=native: a build per CPU
    key = hashlib.sha256("\0".join((SOURCE, cc, *extra, flags)).encode()).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"int4_{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}.part")  # same directory: the rename below is atomic
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "int4.c"
            src.write_text(SOURCE)
            for arch in (["-march=native"], []):  # some compilers / CPUs reject -march=native
                cmd = [cc, "-O3", *arch, *extra, "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC", str(src), "-o", str(part)]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode == 0:
                    os.replace(part, path)  # a concurrent build leaves one whole file
                    break
            else:
                raise OSError(f"the C compiler failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
    lib = ctypes.CDLL(str(path))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.zoo_int4.argtypes = [p, p, i64, i64, i64, i64, i64, p, p, p, i64, p]
    lib.zoo_int4.restype = ctypes.c_int
    lib.path, lib.isa = str(path), ISA_NAMES.get(lib.zoo_int4_isa(), "?")
    return lib


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The kernel built for this CPU (on the first call; then from the cache), or None (:func:`status` says why)."""
    global _why
    if os.environ.get("SPIKING_ZOO_INT4", "").strip() == "0":
        _why = "turned off (SPIKING_ZOO_INT4=0)"
        return None
    try:
        return build()
    except OSError as e:
        _why = str(e)
        return None


def status() -> dict:
    """``{"library": path or None, "isa": the kernel's instruction set or None, "why": why there is none}``."""
    lib = library()
    return {"library": lib.path, "isa": lib.isa, "why": ""} if lib is not None else {"library": None, "isa": None, "why": _why}


def supports(group_width: int, w_bits: int, bound: int) -> bool:
    """Whether a layer fits the kernel: groups of a multiple of 8 weights, codes within int4, counts within int8."""
    return group_width % 8 == 0 and 0 < w_bits <= 4 and bound <= 127


def pack(codes_i8: torch.Tensor) -> torch.Tensor:
    """int8 codes ``[out, in]`` in [-8, 7] -> uint8 ``[ceil(out/8), 4 in]``: the kernel's tiles of 8 rows (the
    SOURCE comment; rows past ``out`` are zero codes)."""
    out_f, n = codes_i8.shape
    if n % 8 or int(codes_i8.min()) < -8 or int(codes_i8.max()) > 7:
        raise ValueError("int4 packing needs a multiple of 8 codes per row, in [-8, 7]")
    u = codes_i8.to(torch.int16) + 8
    pad = -out_f % 8
    if pad:
        u = torch.cat([u, u.new_full((pad, n), 8)])
    u = u.reshape(-1, 8, n // 8, 2, 4)  # [tile, row j, chunk, lo/hi half, r]
    b = u[:, :, :, 0] | (u[:, :, :, 1] << 4)  # [tile, j, chunk, r]
    return b.permute(0, 2, 1, 3).to(torch.uint8).reshape(-1, n * 4).contiguous()


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _run(counts, packed, out_f, groups, lib, P=None, scales=None, gamma=None, y=None) -> None:
    """The kernel on ``counts`` (``[N, in]``): int32 partials into ``P``, or the epilogue's outputs into ``y``."""
    x = _f32(counts)
    gamma = None if gamma is None else _f32(gamma)
    width = packed.shape[1] // 4 // groups
    if (lib or library()).zoo_int4(packed.data_ptr(), x.data_ptr(), x.shape[0], x.shape[1], out_f, groups, width,
                                    _ptr(P), _ptr(scales), _ptr(gamma), 0 if gamma is None else gamma.numel(), _ptr(y)):
        raise MemoryError(f"int4 kernel: no memory for its {x.shape[0]} x {x.shape[1]} int8 counts; free memory or feed fewer rows")


def partials(counts: torch.Tensor, packed: torch.Tensor, out_f: int, groups: int,
             lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """``[N, in]`` integer counts, :func:`pack`'s codes of ``out_f`` rows -> int32 partials ``[G, N, out_f]``."""
    P = torch.empty(groups, counts.shape[0], out_f, dtype=torch.int32)
    _run(counts, packed, out_f, groups, lib, P=P)
    return P


def linear(counts: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, gamma: torch.Tensor,
           lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """``[N, in]`` integer counts (|c| <= 127), :func:`pack`'s codes, scales ``[G, 1, out]``, gamma (a scalar or
    ``[N, 1]``) -> ``[N, out]``: :func:`tasks.language.sdllm.group_epilogue` of the exact partials, bit for bit,
    in the kernel's one pass."""
    y = torch.empty(counts.shape[0], scales.shape[-1], dtype=torch.float32)
    _run(counts, packed, scales.shape[-1], scales.shape[0], lib, scales=_f32(scales), gamma=gamma, y=y)
    return y


# The operator that torch.compile'd code calls: registered with torch.library.Library rather than the
# custom_op decorator, whose autograd and dynamo wrappers cost ~10 us per call (measured: 24 vs 15 us for a
# tiny layer, 54 calls per decode step of the 134M model). Inference only: it has no autograd formula.
_OPS = torch.library.Library("spiking_zoo", "FRAGMENT")
_OPS.define("group_linear_int4(Tensor counts, Tensor packed, Tensor scales, Tensor gamma) -> Tensor")
_OPS.impl("group_linear_int4", lambda counts, packed, scales, gamma: linear(counts, packed, scales, gamma), "CPU")


@torch.library.register_fake("spiking_zoo::group_linear_int4")
def _(counts, packed, scales, gamma):
    return counts.new_empty((counts.shape[0], scales.shape[-1]), dtype=torch.float32)


group_linear_int4 = torch.ops.spiking_zoo.group_linear_int4.default
