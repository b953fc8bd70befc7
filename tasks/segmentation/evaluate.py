"""Semantic segmentation evaluation: mIoU, mAcc and aAcc as mmseg's ``IoUMetric``, plus firing rate and energy.

:func:`evaluate` runs a model over a data set of :mod:`tasks.segmentation.data` (items ``(image, label, name)``)
through the official test pipeline (:func:`tasks.segmentation.predict.segment`), scores every prediction against
its label with :class:`tasks.segmentation.metrics.SegmentationMetric` (ignore index 255, the data set's class
count: a prediction outside it, such as a channel >= 21 of the VOC checkpoints' 150-way head, is a miss) and
profiles the first image (its model input) with :func:`zoo.profile`. A bad file of the data set stops the
evaluation with the data set's one-line error (a skipped image would change the numbers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from zoo.errors import ZooError
from zoo.vision import model_device_dtype

from .metrics import SegmentationMetric
from .pipeline import TestPipeline, pipeline_for, preprocess
from .predict import segment


@dataclass
class SegmentationEval:
    """What :func:`evaluate` measured: fractions (0..1); per-class lists in class order (NaN: class absent)."""

    miou: float
    macc: float
    aacc: float
    images: int
    num_classes: int
    iou: list = field(default_factory=list)
    acc: list = field(default_factory=list)
    firing_rate: float | None = None
    energy_mj: float | None = None
    macs: int | None = None
    acs: int | None = None
    predictions: list = field(default_factory=list, repr=False)  # label maps, with keep_predictions

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("predictions")
        return d


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, pipeline: TestPipeline | None = None, num_classes: int | None = None,
             max_images: int | None = None, energy: bool = True, progress: bool = False,
             keep_predictions: bool = False) -> SegmentationEval:
    """mIoU / mAcc / aAcc of ``model`` on ``dataset`` (see the module doc).

    ``num_classes``: the classes scored (default ``len(dataset.classes)``); ``pipeline``: the test settings
    (default the model's); ``keep_predictions``: keep every predicted label map in the result.
    """
    from tqdm import tqdm

    from zoo.profiling import profile

    pipeline = pipeline or pipeline_for(model)
    k = num_classes if num_classes is not None else len(getattr(dataset, "classes", ()))
    if k <= 0:
        raise ZooError("the data set names no classes; pass num_classes")
    metric = SegmentationMetric(k)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n <= 0:
        raise ZooError("the data set is empty; there is nothing to evaluate")
    result = SegmentationEval(0.0, 0.0, 0.0, 0, k)
    for i in tqdm(range(n), desc="eval", unit="img", disable=not progress, leave=False):
        image, label, _ = dataset[i]
        if energy and result.energy_mj is None:
            device, dtype = model_device_dtype(model)
            p = profile(model, preprocess(image, pipeline)[0].to(device=device, dtype=dtype))
            result.firing_rate, result.energy_mj, result.macs, result.acs = p.firing_rate, p.energy_mj, p.macs, p.acs
        (seg,) = segment(model, image, pipeline)
        metric.update(seg["label"], label)
        if keep_predictions:
            result.predictions.append(seg["label"])
    scores = metric.compute()
    result.miou, result.macc, result.aacc = scores["mIoU"], scores["mAcc"], scores["aAcc"]
    result.iou, result.acc, result.images = scores["IoU"], scores["Acc"], n
    return result


__all__ = ["evaluate", "SegmentationEval"]
