"""Object detection: SpikeYOLO (ECCV 2024, COCO and Gen1), its demo model, and TDE (AAAI 2026).

``models`` holds the cards, ``spikeyolo`` / ``tde`` the architectures, ``convert`` the official checkpoint
converters, ``data`` the data set adapters, ``evaluate`` / ``predict`` / ``train`` the rest, ``cli`` the verbs.
"""

from zoo.plugin import Task

TASK = Task(
    name="detection",
    description="object detection: boxes and classes (SpikeYOLO, TDE)",
    models="tasks.detection.models",
    cli="tasks.detection.cli",
)

_LAZY = {"SpikeYOLO": "spikeyolo", "build_spikeyolo": "spikeyolo", "TDE": "tde", "build_tde": "tde"}
__all__ = ["TASK", *_LAZY]


def __getattr__(name):  # the architectures import torch: only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
