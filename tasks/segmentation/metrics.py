"""mIoU, mAcc and aAcc exactly as mmseg 1.x's ``IoUMetric`` computes them (the official evaluation).

Per image, pixels whose label is the ignore index (255) are dropped; the remaining predictions and labels
are histogrammed over the ``num_classes`` bins ``0 .. num_classes - 1`` (a prediction outside that range,
e.g. channel 150 of a VOC checkpoint's 150-way head, falls in no bin: it is a miss for its pixel's class
and a false positive of no class, as ``torch.histc`` gives in mmseg). Areas are summed over the data set;
then ``IoU_c = I_c / U_c`` and ``Acc_c = I_c / L_c`` (NaN for a class absent from labels and predictions),
``mIoU`` / ``mAcc`` their NaN-means, ``aAcc = sum I / sum L``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data import IGNORE


@dataclass
class SegmentationMetric:
    num_classes: int
    ignore_index: int = IGNORE
    intersect: torch.Tensor = field(init=False)
    pred_area: torch.Tensor = field(init=False)
    label_area: torch.Tensor = field(init=False)

    def __post_init__(self):
        zeros = lambda: torch.zeros(self.num_classes, dtype=torch.float64)  # noqa: E731
        self.intersect, self.pred_area, self.label_area = zeros(), zeros(), zeros()

    def _hist(self, values: torch.Tensor) -> torch.Tensor:
        values = values[(values >= 0) & (values < self.num_classes)]
        return torch.bincount(values, minlength=self.num_classes).double()

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """One image: ``pred`` and ``label`` integer maps ``[H, W]`` of the same size."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in size")
        keep = label != self.ignore_index
        pred, label = pred[keep].long(), label[keep].long()
        self.intersect += self._hist(pred[pred == label])
        self.pred_area += self._hist(pred)
        self.label_area += self._hist(label)

    def compute(self) -> dict:
        union = self.pred_area + self.label_area - self.intersect
        iou = self.intersect / union  # 0/0 -> NaN: the class never appears
        acc = self.intersect / self.label_area
        total = self.label_area.sum()
        return {"mIoU": float(torch.nanmean(iou)), "mAcc": float(torch.nanmean(acc)),
                "aAcc": float(self.intersect.sum() / total) if total > 0 else float("nan"),
                "IoU": iou.tolist(), "Acc": acc.tolist()}
