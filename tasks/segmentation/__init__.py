"""Semantic segmentation: Spike2Former (AAAI 2025) on ADE20K, Cityscapes and Pascal VOC 2012.

``models`` holds the cards, ``spike2former`` / ``dcnv3`` the architecture, ``convert`` the official (mmengine)
checkpoint converter, ``data`` the data set adapters, ``metrics`` mIoU / mAcc / aAcc, ``synthetic`` the demo
data set, ``pipeline`` the official test pipeline, ``predict`` (``segment`` in memory, ``predict`` over files) and
``evaluate`` the work of the verbs, ``fast`` the fast inference path, ``cli`` the verbs.
"""

from zoo.plugin import Task, lazy_exports

TASK = Task(
    name="segmentation",
    description="semantic segmentation: a class per pixel (Spike2Former)",
    models="tasks.segmentation.models",
    cli="tasks.segmentation.cli",
)

_LAZY = {"Spike2Former": "spike2former", "Spike2FormerConfig": "spike2former", "build_spike2former": "spike2former"}
__all__ = ["TASK", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)  # the architectures import torch: only when asked for
