"""The point-cloud verbs. So far only what ``zoo profile`` feeds an E-3DSNN: a random coloured cloud.

This module imports no torch.
"""

from __future__ import annotations

from zoo.plugin import Profiling


def example_input(model, card, size, generator):
    """``zoo profile``: ``size`` = (B, N, 6) random points (xyz in [-1, 1], rgb in [0, 1])."""
    import torch

    points = torch.rand(size, generator=generator)
    points[..., :3] = points[..., :3] * 2 - 1
    return (points,), {}


VERBS: dict = {}
PROFILING = Profiling(example_input, note="random points (a real cloud fires differently)")
