"""segmentation models, data adapters and evaluators (see the task's issue)."""

from __future__ import annotations

from .models import CARDS, register_all
from .spike2former import Spike2Former, Spike2FormerConfig, build_spike2former

__all__ = ["Spike2Former", "Spike2FormerConfig", "build_spike2former", "CARDS"]

register_all()  # spike2former-ade20k, -l-ade20k, -cityscapes, -voc2012, -voc2012-t4 (cards in models.py)
