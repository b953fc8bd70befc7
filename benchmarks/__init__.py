"""Benchmark suites behind ``zoo bench TASK``: ``benchmarks/<task>.py`` exposes ``VERB`` (found by the task's
name); speed as ratios measured side by side in one run."""

import sys


def progress(message: str) -> None:
    """What the bench is doing now, on stderr (stdout stays the report)."""
    print(f"zoo bench: {message}", file=sys.stderr, flush=True)


def firing_statistics(model, bias_max: float = 0.4, seed: int | None = None):
    """Random BatchNorm statistics (any BatchNorm dimension) that make a randomly initialised model's neurons
    fire as a trained model's do: mean in [-0.5, 0.5], var in [0.5, 2], weight in [0.5, 1.5], bias in
    [-0.2, ``bias_max``]; from ``seed`` (else torch's global generator). Returns ``model``."""
    import torch

    g = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, bias_max, generator=g)
    return model


# ----------------------------------------------------------------------------------------------------------
# the quick summaries behind ``zoo bench`` (no task): one row per task, see :mod:`zoo.bench`

SUMMARY_SIZES = ("quick", "tiny")  # quick: what `zoo bench` runs (minutes on 2 cores); tiny: what the test runs


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call, in ms."""
    import statistics
    import time

    fn()
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def summary_row(model: str, task: str, metric: str, value: float | None, data: str, firing_rate, energy_mj,
                energy_per: str, times_ms: dict, reference: str, exact: list[str], note: str = "") -> dict:
    """One task's row of the cross-task table. ``times_ms``: ms per call of each path timed side by side;
    ``exact``: the paths whose outputs equal the reference's (within fp32 rounding, or the same tokens);
    the fastest of those and its ratio (reference time / its time) are the row's speed."""
    ref = times_ms[reference]
    best = min(exact, key=times_ms.get) if exact else reference
    return {"model": model, "task": task, "metric": metric, "value": value, "data": data,
            "firing_rate": firing_rate, "energy_mj": energy_mj, "energy_per": energy_per,
            "paths_ms": times_ms, "reference": reference, "exact": exact, "fastest": best,
            "speedup": ref / times_ms[best], "note": note}
