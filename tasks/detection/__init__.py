"""Object detection: SpikeYOLO (ECCV 2024, COCO and Gen1), its demo model, and TDE (AAAI 2026).

``models`` holds the cards, ``spikeyolo`` / ``tde`` the architectures, ``convert`` the official checkpoint
converters, ``data`` the data set adapters, ``evaluate`` / ``predict`` / ``train`` the rest, ``cli`` the verbs.
"""

from zoo.plugin import Task, lazy_exports

TASK = Task(
    name="detection",
    description="object detection: boxes and classes (SpikeYOLO, TDE)",
    models="tasks.detection.models",
    cli="tasks.detection.cli",
)

_LAZY = {"SpikeYOLO": "spikeyolo", "build_spikeyolo": "spikeyolo", "TDE": "tde", "build_tde": "tde"}
__all__ = ["TASK", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)  # the architectures import torch: only when asked for
