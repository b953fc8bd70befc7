"""The packed-int4 group kernel: exact partials and the shared epilogue's bits on each instruction-set path
(the CPU's own build, plain C, and AVX-VNNI, which is always compiled and run only where the CPU has it), the
same tokens in decode."""

from __future__ import annotations

import pytest
import torch

from tasks.language import int4_kernel, int_kernels
from tasks.language.sdllm import SDLinear, SDLLMConfig, convert, group_epilogue, group_linear, group_partials
from zoo.arith import cpu_flags
from zoo.errors import ZooError

from .conftest import tiny_llama

needs_kernel = pytest.mark.skipif(int4_kernel._compiler() is None, reason="no C compiler for the int4 kernel")


def _case(N, out, G, g, pad, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(-8, 8, (out, G * g), generator=gen, dtype=torch.int8)
    counts = torch.randint(-127, 128, (N, G * g - pad), generator=gen).float()
    ref = group_partials(counts, codes.float().reshape(out, G, g).permute(1, 2, 0).contiguous())
    return codes, counts, ref


def _cpu_has(flag: str) -> bool:
    return flag in (cpu_flags() or ())


VNNI = {"AVX-VNNI": (("-mavx2", "-mavxvnni"), ("avx_vnni",)),
        "AVX512-VNNI": (("-mavx2", "-mavx512f", "-mavx512vl", "-mavx512vnni"), ("avx512_vnni", "avx512vl"))}


@needs_kernel
@pytest.mark.parametrize("path", ["native", "plain-C", *VNNI])
def test_partials_are_the_exact_integers(path):
    flags, needs = {"native": ((), ()), "plain-C": (("-mno-avx2",), ()), **VNNI}[path]
    try:
        lib = int4_kernel.build(flags)
    except OSError as e:  # an older compiler without these flags
        pytest.skip(str(e))
    if path != "native":
        assert lib.isa == ("plain C" if path == "plain-C" else "VNNI vpdpbusd")
    if not all(_cpu_has(f) for f in needs):
        pytest.skip(f"built (the {path} path compiles), but this CPU cannot run it")
    # extreme codes and counts (-8 x -127 everywhere: the largest pair sums), odd output counts, padded groups,
    # several 64-blocks per group, up to 16 rows
    for N, out, G, g, pad in [(1, 1024, 8, 128, 0), (3, 770, 12, 64, 5), (16, 2051, 3, 64, 63), (2, 37, 1, 256, 0),
                              (1, 13, 5, 8, 3), (2, 64, 3, 40, 0)]:
        codes, counts, ref = _case(N, out, G, g, pad)
        P = int4_kernel.partials(counts, int4_kernel.pack(codes), out, G, lib)
        assert P.dtype == torch.int32 and torch.equal(P.float(), ref)
        # the kernel's own epilogue: the shared one, bit for bit (G = 12 and 40 groups: torch's sum(0) sums 40 in
        # another order than left to right), a scalar gamma and one per row
        scales = torch.rand(G, 1, out, generator=torch.Generator().manual_seed(1)) * 1e-3
        for gamma in (torch.tensor(0.37), torch.rand(N, 1) + 0.1):
            assert torch.equal(int4_kernel.linear(counts, int4_kernel.pack(codes), scales, gamma, lib),
                               group_epilogue(ref, scales, gamma))
    codes, counts, ref = _case(2, 64, 40, 64, 0)
    scales = torch.rand(40, 1, 64) * 1e-3
    assert torch.equal(int4_kernel.linear(counts, int4_kernel.pack(codes), scales, torch.tensor(0.5), lib),
                       group_epilogue(ref, scales, torch.tensor(0.5)))
    worst = torch.full((5, 128), -8, dtype=torch.int8)
    P = int4_kernel.partials(torch.full((1, 128), -127.0), int4_kernel.pack(worst), 5, 1, lib)
    assert torch.equal(P, torch.full((1, 1, 5), 8 * 127 * 128, dtype=torch.int32))


def test_pack_layout_and_limits():
    codes = torch.randint(-8, 8, (10, 16), dtype=torch.int8)
    packed = int4_kernel.pack(codes)
    assert packed.shape == (2, 64) and packed.dtype == torch.uint8  # 2 tiles of 8 rows, 4 bytes per input
    lo, hi = (packed & 15).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    for j, r, t in [(0, 0, 0), (3, 2, 1), (7, 3, 1)]:  # tile 0, row j, chunk t: byte 32 t + 4 j + r
        assert lo[0, 32 * t + 4 * j + r] == codes[j, 8 * t + r] and hi[0, 32 * t + 4 * j + r] == codes[j, 8 * t + 4 + r]
    assert torch.equal(lo[1].reshape(2, 8, 4)[:, 2:], torch.zeros(2, 6, 4, dtype=torch.int8))  # rows past 10: zero
    assert torch.equal(lo[1].reshape(2, 8, 4)[0, :2], codes[8:10, :4])
    with pytest.raises(ValueError, match="multiple of 8"):
        int4_kernel.pack(torch.zeros(2, 12, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        int4_kernel.pack(torch.full((2, 64), 9, dtype=torch.int8))
    assert int4_kernel.supports(64, 4, 127) and int4_kernel.supports(32, 4, 127) and not int4_kernel.supports(12, 4, 127)
    assert not int4_kernel.supports(64, 8, 127) and not int4_kernel.supports(64, 4, 128)


@needs_kernel
def test_int4_decode_gives_the_eager_models_tokens(calib_ids):
    from tasks.language.decode import FusedDecoder

    model = convert(tiny_llama(), calib_ids, SDLLMConfig(group_size=64, gamma="per_token", steps="auto", rotate=True))
    lin = next(m for m in model.modules() if isinstance(m, SDLinear)).linear
    counts, g = torch.randint(-120, 121, (3, lin.in_features)).float(), torch.rand(3, 1) + 0.1
    codes, scales = lin._codes()
    assert torch.equal(int4_kernel.group_linear_int4(counts, lin.int4_codes(), scales, g),
                       group_linear(counts, codes, scales, g))  # the same epilogue, bit for bit
    prompt = calib_ids[:1, :12]
    with torch.no_grad():
        eager = [prompt]
        for _ in range(8):  # the eager converted model, greedy, full recompute
            eager.append(model(torch.cat(eager, 1)).logits[:, -1].argmax(-1, keepdim=True))
    eager = torch.cat(eager, 1)
    runs = {}
    for kernel in ("fp32", "int4"):
        dec = FusedDecoder(model, max_len=32, compile=False, kernel=kernel)
        runs[kernel] = dec.generate(prompt, max_new_tokens=8, return_logits=True)
    assert runs["int4"][0].equal(eager) and runs["fp32"][0].equal(eager)
    assert torch.equal(runs["int4"][1], runs["fp32"][1])
    w = dec.layers[0].down[0]
    assert w[3] is not None and w[3].dtype == torch.uint8 and w[0] is None and w[2] is None  # only packed codes


def test_kernel_choice_and_errors(calib_ids, monkeypatch):
    from tasks.language.decode import FusedDecoder

    cpu = torch.device("cpu")
    assert int_kernels.choose(64, 7, cpu, 64, 4) == "fp32"  # prefill-sized: the batched product
    assert int_kernels.choose(1, 7, cpu, 12, 4) in ("fp32", "int8")  # groups of 12 do not fit int4
    assert int_kernels.choose(1, 7, cpu, 64, 8) in ("fp32", "int8")  # nor do 8-bit codes
    assert int_kernels.choose(1, 200, cpu, 64, 4) == "fp32"  # counts beyond int8
    if int4_kernel.library() is not None:
        monkeypatch.setenv("SPIKING_ZOO_INT4", "1")
        assert int_kernels.choose(64, 7, cpu, 64, 4) == "int4"  # forced, any number of rows
        monkeypatch.delenv("SPIKING_ZOO_INT4")
        t = int_kernels.timing()
        best = min((k for k in ("fp32", "int8", "int4") if f"{k}_s" in t), key=lambda k: t[f"{k}_s"])
        assert int_kernels.choose(1, 7, cpu, 64, 4) == best
    model = convert(tiny_llama(), calib_ids, SDLLMConfig(group_size=32, w_bits=8))
    with pytest.raises(ZooError, match=r"kernel='int4' cannot run 64x64 \(groups of 32, 8-bit codes"):
        FusedDecoder(model, max_len=16, compile=False, kernel="int4")
    with pytest.raises(ValueError, match="unknown kernel"):
        int_kernels.fits("int2", 64, 4, 7)


def test_without_a_compiler_the_other_kernels_run(monkeypatch):
    monkeypatch.setattr(int4_kernel, "_compiler", lambda: None)
    with pytest.raises(OSError, match="no C compiler"):
        int4_kernel.build()
    int4_kernel.library.cache_clear()
    try:
        assert int4_kernel.library() is None and "no C compiler" in int4_kernel.status()["why"]
        assert not int_kernels.fits("int4", 64, 4, 7)
        assert int_kernels.choose(1, 7, torch.device("cpu"), 64, 4) in ("fp32", "int8")
    finally:
        monkeypatch.undo()
        int4_kernel.library.cache_clear()
