"""The segmentation verbs. So far what ``zoo profile`` feeds a Spike2Former: a normalised random image.

This module imports no torch.
"""

from __future__ import annotations

from zoo.plugin import Profiling


def example_input(model, card, size, generator):
    """``zoo profile``: an image batch of ``size``, normalised as the official pipeline (ImageNet mean / std)."""
    import torch

    return (torch.randn(size, generator=generator),), {}


VERBS: dict = {}
PROFILING = Profiling(example_input, note="a random normalised image (a real photo fires differently)")
