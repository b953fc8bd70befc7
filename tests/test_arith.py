"""zoo.arith: the CPU probe, and per-layer arithmetic (fp32 / Winograd / bf16) equal to fp32 on spike counts
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


def test_cpu_probe_reads_the_flags():
    caps = arith.cpu_capabilities(CPUINFO)
    assert caps["flags"]["avx2"] and caps["flags"]["avx512_vnni"] and caps["flags"]["amx_bf16"] is False
    assert caps["bf16"] is False and caps["int8"] is True and caps["model"] == "Test CPU"
    assert caps["torch_isa"] == torch.backends.cpu.get_cpu_capability()
    assert arith.cpu_flags("no flags here") is None
    assert arith.cpu_capabilities("nothing")["bf16"] is None
    line = arith.describe(caps)
    assert "Test CPU" in line and "avx512_vnni" in line and "not: " in line and "amx_bf16" in line


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
            else:  # bf16 weights and output (unit roundoff 2^-8 each), exact inputs, fp32 accumulation
                assert (diff <= 2 ** -7 * abs_sum + 1e-6).all()
                assert diff.max() > 0  # it really ran in bf16


def test_choice_is_made_once_per_shape_and_reported():
    c = conv(8, 8, 3, padding=1)
    (switch,) = arith.use_auto(c, bf16=True)
    with torch.no_grad():
        c(counts((1, 8, 16, 16)))
        first = dict(switch.choice)
        c(counts((1, 8, 16, 16), seed=1))
        assert switch.choice == first  # not timed again
        c(counts((1, 8, 8, 8)))
    rows = arith.report(c)
    assert [r["shape"] for r in rows] == [[1, 8, 16, 16], [1, 8, 8, 8]]
    r = rows[0]
    assert set(r["ms"]) == {"fp32", "winograd", "bf16"} and r["arith"] == min(r["ms"], key=r["ms"].get)
    assert r["why"].startswith("fastest of")


def test_bf16_only_for_counts_and_only_on_a_bf16_cpu():
    c = conv(8, 8, 1)
    (switch,) = arith.use_auto(c, bf16=True)
    with torch.no_grad():
        c(torch.rand(1, 8, 8, 8))  # real values: bf16 would round them
    assert "bf16" not in switch.choice[(1, 8, 8, 8)]["ms"] and "not spike counts" in switch.choice[(1, 8, 8, 8)]["why"]
    c = conv(8, 8, 1)
    (switch,) = arith.use_auto(c, bf16=False)
    with torch.no_grad():
        c(counts((1, 8, 8, 8)))
    assert switch.choice[(1, 8, 8, 8)] == {"arith": "fp32", "why": "the only candidate; bf16: the CPU has no bf16 arithmetic",
                                           "ms": switch.choice[(1, 8, 8, 8)]["ms"]}


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
    auto = optimize_for_inference(model, x)
    switches = arith.use_auto(auto, allow=("fp32",))
    with torch.no_grad():
        want, got = fast(x)[0], auto(x)[0]
    assert torch.equal(got, want)
    rows = arith.report(auto)
    assert len({r["layer"] for r in rows}) == len(switches) == sum(isinstance(m, nn.Conv2d) for m in auto.modules())
    assert {r["arith"] for r in rows} == {"fp32"}
