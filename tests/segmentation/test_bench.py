"""`zoo bench segmentation`: its three paths on the tiny model, each in its own process."""

from benchmarks.segmentation import run


def test_segmentation_bench_times_reference_fast_and_auto():
    r = run("spike2former-tiny-shapes", imgsz=64, repeats=1, warmup=0, threads=1)
    assert set(r["paths"]) == {"reference", "fast", "auto"}
    assert all(p["ms"] > 0 and p["peak_mb"] > 0 for p in r["paths"].values())
    assert r["fast_max_rel_diff"] <= 1e-5  # the fast path computes the same numbers
    assert 0.9 <= r["auto_argmax_agreement"] <= 1.0
    assert sum(r["paths"]["auto"]["arith"].values()) > 0
