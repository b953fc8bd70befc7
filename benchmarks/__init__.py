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
