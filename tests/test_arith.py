"""zoo.arith: the CPU probe, and per-layer arithmetic (fp32 / Winograd / bf16 / int8) equal to fp32 on spike counts
within each one's stated bound, chosen once per shape, reported, overridable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo import arith
from zoo.errors import ZooError
from zoo.fuse import optimize_for_inference

CPUINFO = """processor\t: 0
model name\t: Test CPU
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni
"""


def counts(shape, seed=0, D=4):
    return torch.randint(0, D + 1, shape, generator=torch.Generator().manual_seed(seed)).float()


def conv(*args, seed=0, **kwargs):
    torch.manual_seed(seed)
    return nn.Conv2d(*args, **kwargs).eval()


def test_cpu_probe_reads_the_flags(monkeypatch):
    caps = arith.cpu_capabilities(CPUINFO)
    assert caps["flags"]["avx2"] and caps["flags"]["avx512_vnni"] and caps["flags"]["amx_bf16"] is False
    assert caps["bf16"] is False and caps["int8"] is True and caps["model"] == "Test CPU"
    assert caps["torch_isa"] == torch.backends.cpu.get_cpu_capability()
    assert arith.cpu_flags("no flags here") is None
    assert arith.cpu_capabilities("nothing")["bf16"] is None
    line = arith.describe(caps)
    assert "Test CPU" in line and "avx512_vnni" in line and "not: " in line and "amx_bf16" in line
    assert "limited" not in line or caps["isa_limits"]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an AVX2-only CPU emulated: no VNNI / bf16 kernels
    capped = arith.cpu_capabilities(CPUINFO)
    assert "kernels limited by ONEDNN_MAX_CPU_ISA=AVX2" in arith.describe(capped) and capped["int8"] is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert arith.cpu_capabilities(CPUINFO)["int8"] is True


@pytest.mark.parametrize("layer", [dict(args=(16, 24, 3), padding=1), dict(args=(16, 24, 1)),
                                   dict(args=(16, 16, 3), padding=1, groups=16), dict(args=(16, 24, 3), stride=2, padding=1)])
def test_each_arithmetic_equals_fp32_on_counts_within_its_bound(layer):
    c = conv(*layer["args"], **{k: v for k, v in layer.items() if k != "args"})
    x = counts((2, 16, 19, 21))
    with torch.no_grad():
        want = c(x)
        abs_sum = nn.functional.conv2d(x.abs(), c.weight.abs(), None, c.stride, c.padding, c.dilation, c.groups)
        for a in arith.ARITHMETICS:
            if a == "winograd" and not (c.kernel_size == (3, 3) and c.stride == (1, 1) and c.groups == 1):
                continue
            f = conv(*layer["args"], **{k: v for k, v in layer.items() if k != "args"})
            (switch,) = arith.use_auto(f, force={"": a})
            got = f(x)
            assert switch.choice[tuple(x.shape)]["arith"] == a
            diff = (got - want).abs()
            if a == "fp32":
                assert torch.equal(got, want)
            elif a == "winograd":
                assert diff.max() <= 1e-5 * want.abs().max()
            elif a == "int8":  # per-channel int8 weights (rounding <= s_c / 2), exact counts, exact int32 sums
                s_c = c.weight.abs().amax(dim=(1, 2, 3)).view(1, -1, 1, 1) / 127
                ones = torch.ones_like(c.weight)
                count_sum = nn.functional.conv2d(x.abs(), ones, None, c.stride, c.padding, c.dilation, c.groups)
                assert (diff <= s_c / 2 * count_sum + 1e-5 * want.abs().max()).all()
                assert diff.max() > 0  # it really ran in int8
            else:  # bf16 weights and output (unit roundoff 2^-8 each), exact inputs, fp32 accumulation
                assert (diff <= 2 ** -7 * abs_sum + 1e-6).all()
                assert diff.max() > 0  # it really ran in bf16


def test_choice_is_made_once_per_shape_and_reported():
    c = conv(8, 8, 3, padding=1)
    (switch,) = arith.use_auto(c, bf16=True, tol=1.0)
    with torch.no_grad():
        c(counts((1, 8, 16, 16)))
        first = dict(switch.choice)
        c(counts((1, 8, 16, 16), seed=1))
        assert switch.choice == first  # not timed again
        c(counts((1, 8, 8, 8)))
    rows = arith.report(c)
    assert [r["shape"] for r in rows] == [[1, 8, 16, 16], [1, 8, 8, 8]]
    r = rows[0]
    assert set(r["ms"]) == {"fp32", "winograd", "bf16"} | ({"int8"} if arith.int8_available() else set())
    assert r["arith"] == min(r["ms"], key=r["ms"].get)
    assert r["why"].startswith("fastest of")


def test_bf16_rounds_real_inputs_within_tolerance_and_needs_a_bf16_cpu():
    c = conv(8, 8, 1)
    (switch,) = arith.use_auto(c, bf16=True, tol=1.0)
    with torch.no_grad():
        c(torch.rand(1, 8, 8, 8))  # real values: bf16 rounds them, so it is measured and held to the tolerance
    choice = switch.choice[(1, 8, 8, 8)]
    assert "bf16" in choice["ms"] and 0 < choice["err"]["bf16"] < 1e-2
    if choice["arith"] == "bf16":
        assert choice["bf16_input"] == "rounded" and "rounds this real-valued input" in choice["why"]
    c = conv(8, 8, 1)
    (switch,) = arith.use_auto(c, allow=("fp32", "bf16"), bf16=True, tol=0.0)
    with torch.no_grad():
        c(torch.rand(1, 8, 8, 8))
    choice = switch.choice[(1, 8, 8, 8)]
    assert choice["arith"] == "fp32" and "bf16: error" in choice["why"] and "> tolerance 0" in choice["why"]
    c = conv(8, 8, 1)
    (switch,) = arith.use_auto(c, allow=("bf16",), bf16=False)
    with torch.no_grad():
        c(counts((1, 8, 8, 8)))
    assert switch.choice[(1, 8, 8, 8)] == {"arith": "fp32", "why": "the only candidate; bf16: the CPU has no bf16 arithmetic",
                                           "ms": switch.choice[(1, 8, 8, 8)]["ms"], "err": {}}


def test_bf16_chosen_on_counts_falls_back_on_a_real_input_but_a_rounded_choice_stays():
    real = torch.rand(1, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    c = conv(8, 8, 1)
    (switch,) = arith.use_auto(c, bf16=True, prefer="bf16")
    with torch.no_grad():
        c(counts((1, 8, 8, 8)))
        assert switch.choice[(1, 8, 8, 8)]["bf16_input"] == "counts"
        assert torch.equal(c(real), nn.Conv2d._conv_forward(c, real, c.weight, c.bias))  # not counts: fp32
    c = conv(8, 8, 1)
    (switch,) = arith.use_auto(c, bf16=True, prefer="bf16")
    with torch.no_grad():
        assert torch.equal(c(real), nn.Conv2d._conv_forward(c, real, c.weight, c.bias))
    assert "the bf16 override rounds no inputs" in switch.choice[(1, 8, 8, 8)]["why"]  # the override: counts only
    c = conv(8, 8, 1)
    (switch,) = arith.use_auto(c, allow=("bf16",), bf16=True, tol=1.0)
    with torch.no_grad():
        c(torch.rand(1, 8, 8, 8))
        switch.choice[(1, 8, 8, 8)].update(arith="bf16", bf16_input="rounded")  # as if timed fastest
        want = nn.Conv2d._conv_forward(c, real, c.weight, c.bias)
        got = c(real)  # chosen on a real input: stays bf16, rounded
    assert not torch.equal(got, want) and torch.allclose(got, want, atol=2e-2 * float(want.abs().max()))


def test_bad_overrides_are_errors():
    with pytest.raises(ZooError, match="unknown arithmetic"):
        arith.use_auto(conv(4, 4, 1), allow=("int4",))
    with pytest.raises(ZooError, match="unknown arithmetic"):
        arith.use_auto(conv(4, 4, 1), force={"": "fp16"})
    with pytest.raises(ZooError, match="names no convolution"):
        arith.use_auto(conv(4, 4, 1), force={"model.3.conv": "bf16"})


def test_demo_detector_runs_on_chosen_arithmetic():
    """Every convolution of the (BN-folded) demo model gets a choice; fp32-only auto is the fast path exactly."""
    model = zoo.load("spikeyolo-tiny-shapes")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fast = optimize_for_inference(model, x)
    auto = optimize_for_inference(model, x, channels_last=fast.zoo_channels_last)  # the same format, not re-timed
    switches = arith.use_auto(auto, allow=("fp32",))
    with torch.no_grad():
        want, got = fast(x)[0], auto(x)[0]
    assert torch.equal(got, want)
    rows = arith.report(auto)
    assert len({r["layer"] for r in rows}) == len(switches) == sum(isinstance(m, nn.Conv2d) for m in auto.modules())
    assert {r["arith"] for r in rows} == {"fp32"}


needs_int8 = pytest.mark.skipif(not arith.int8_available(), reason="this torch has no oneDNN quantised convolution")


@needs_int8
def test_int8_only_for_non_negative_counts():
    for x, reason in ((torch.rand(1, 8, 8, 8), "not counts 0..255"), (-counts((1, 8, 8, 8)), "not counts 0..255"),
                      (counts((1, 8, 8, 8), D=300), "not counts 0..255")):
        c = conv(8, 8, 3, padding=1)
        (switch,) = arith.use_auto(c, allow=("int8",), tol=1.0)
        with torch.no_grad():
            got = c(x)
            assert torch.equal(got, nn.functional.conv2d(x, c.weight, c.bias, padding=1))
        assert "int8" not in switch.choice[tuple(x.shape)]["ms"] and reason in switch.choice[tuple(x.shape)]["why"]


@pytest.mark.parametrize("lossy", ["bf16", "int8"])
def test_lossy_arithmetic_is_held_to_the_tolerance(lossy):
    """A lossy candidate whose error on the layer's first input exceeds ``tol`` is not a candidate, whatever its
    speed (and says so); within ``tol`` it is timed with the others. The measured error is reported."""
    if lossy == "int8" and not arith.int8_available():
        pytest.skip("this torch has no oneDNN quantised convolution")
    x = counts((1, 16, 12, 12))
    seen = {}
    for tol in (0.0, 1.0):
        c = conv(16, 16, 3, padding=1)
        (switch,) = arith.use_auto(c, allow=(lossy,), bf16=True, tol=tol)
        with torch.no_grad():
            got = c(x)
        seen[tol] = switch.choice[tuple(x.shape)]
        with torch.no_grad():
            want = nn.functional.conv2d(x, c.weight, c.bias, padding=1)
            err = float((switch._run(lossy, x, c.weight, c.bias) - want).abs().max() / want.abs().max())
        assert seen[tol]["err"][lossy] == pytest.approx(err)
        if tol == 0.0:
            assert torch.equal(got, want) and lossy not in seen[tol]["ms"] and "> tolerance 0" in seen[tol]["why"]
    assert 0 < seen[1.0]["err"][lossy] <= arith.DEFAULT_TOL * 10 and lossy in seen[1.0]["ms"]


def test_prefer_takes_an_arithmetic_wherever_it_applies():
    """The --arith override: the named arithmetic where the layer and input allow it, fp32 elsewhere, untimed."""
    stem, body = conv(3, 8, 3, padding=1), conv(8, 8, 3, padding=1, seed=1)
    arith.use_auto(stem, prefer="winograd")
    arith.use_auto(body, prefer="int8" if arith.int8_available() else "winograd")
    with torch.no_grad():
        stem(torch.rand(1, 3, 8, 8))
        body(counts((1, 8, 8, 8)))
    (s,), (b,) = arith.report(stem), arith.report(body)
    assert s["arith"] == "winograd" and "override" in s["why"] and s["ms"] == {}
    assert b["arith"] in ("int8", "winograd") and "override" in b["why"]
    if arith.int8_available():
        body2 = conv(8, 8, 3, padding=1)
        arith.use_auto(body2, prefer="int8")
        with torch.no_grad():
            body2(torch.rand(1, 8, 8, 8))  # real values: int8 would round them
        (r,) = arith.report(body2)
        assert r["arith"] == "fp32" and "not possible here" in r["why"] and "not counts" in r["why"]
    with pytest.raises(ZooError, match="unknown arithmetic"):
        arith.use_auto(conv(4, 4, 1), prefer="fp8")


@needs_int8
def test_detection_bench_int8_and_arith_override_paths():
    """`zoo bench detection`'s int8 path and its auto path under --arith: every count-fed conv on int8, the
    stem (real-valued image) in fp32, reported per layer."""
    from benchmarks.detection import worker

    for path, arith_asked in (("int8", "auto"), ("auto", "int8")):
        r = worker(path, "spikeyolo-tiny-shapes", None, 64, 1, arith_asked)
        taken = {row["layer"]: row["arith"] for row in r["layers"]}
        assert set(taken.values()) == {"int8", "fp32"} and taken["model.1.encode_conv"] == "fp32"
        assert r["ms"] > 0 and r["peak_mb"] > 0


@needs_int8
@pytest.mark.parametrize("padding", [0, 1])
def test_int8_matrix_kernel_equals_the_quantised_convolution(padding):
    """1x1 layers may run int8 on ``torch._int_mm`` instead of oneDNN's quantised convolution: the same int8
    weights and exact int32 sums, so the two agree to fp32 rounding, in any input layout and with zero padding
    (the border is the bias); which one runs is timed per shape and reported."""
    c = conv(16, 24, 1, padding=padding)
    weights = arith._Int8Weights(c)
    assert weights.mm_ok
    x = counts((2, 16, 7, 9))
    with torch.no_grad():
        want = weights(x, c.weight, c.bias, "qconv")
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            got = weights(xi, c.weight, c.bias, "mm")
            assert got.shape == want.shape == (2, 24, 7 + 2 * padding, 9 + 2 * padding)
            assert (got - want).abs().max() <= 1e-6 * want.abs().max()
        (switch,) = arith.use_auto(c, force={"": "int8"})
        c(x)
    (row,) = arith.report(c)
    assert row["int8_kernel"] in ("mm", "qconv") and f"int8 kernel {row['int8_kernel']}" in row["why"]
    assert not arith._Int8Weights(conv(16, 24, 3, padding=1)).mm_ok


@needs_int8
def test_a_later_input_that_is_not_counts_runs_in_fp32():
    """The first input of a shape is checked whole; later ones by a spot check of every SPOT_STRIDE-th value,
    which catches real values (the layer then runs fp32 for that input)."""
    c = conv(8, 8, 3, padding=1)
    arith.use_auto(c, prefer="int8")
    with torch.no_grad():
        c(counts((1, 8, 16, 16)))
        assert arith.report(c)[0]["arith"] == "int8"
        x = torch.rand(1, 8, 16, 16)
        assert torch.equal(c(x), nn.functional.conv2d(x, c.weight, c.bias, padding=1))


@needs_int8
@pytest.mark.parametrize("k", [1, 3])
def test_scaled_counts_of_a_synapse_take_int8(k):
    """A neurons synapse reading ``count / D`` (Spike2Former's NI-LIF) takes int8 on its counts: oneDNN's input
    scale (or the matrix kernel's output scale) is 1 / D, within the int8 bound of the unscaled layer over D."""
    import neurons

    torch.manual_seed(0)
    c = neurons.SpikeConv2d(16, 24, k, padding=k // 2, source=neurons.Levels(D=4, scale=0.25)).eval()
    x = counts((1, 16, 9, 11)) / 4
    with torch.no_grad():
        want = c(x)
        (switch,) = arith.use_auto(c, prefer="int8")
        got = c(x)
    assert switch.in_scale == 0.25 and arith.report(c)[0]["arith"] == "int8"
    s_c = c.weight.abs().amax(dim=(1, 2, 3)).view(1, -1, 1, 1) / 127
    count_sum = nn.functional.conv2d(x.abs() * 4, torch.ones_like(c.weight), None, 1, k // 2)
    diff = (got - want).abs()
    assert diff.max() > 0 and (diff <= s_c / 2 * count_sum / 4 + 1e-5 * want.abs().max()).all()
