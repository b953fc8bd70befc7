"""The mIoU / mAcc / aAcc metric against an independent confusion-matrix computation."""

import numpy as np
import torch

from tasks.segmentation.metrics import SegmentationMetric


def _confusion_reference(preds, labels, nc, ignore=255):
    """mmseg's definitions from a confusion matrix (rows: label, columns: prediction; out-of-range columns dropped)."""
    cm = np.zeros((nc, nc + 1), dtype=np.float64)  # the last column collects predictions outside 0..nc-1
    for p, l in zip(preds, labels):
        p, l = p.numpy().ravel(), l.numpy().ravel()
        keep = l != ignore
        p, l = p[keep], l[keep]
        p = np.where((p >= 0) & (p < nc), p, nc)
        np.add.at(cm, (l, p), 1)
    inter = np.diag(cm[:, :nc])
    label_area = cm.sum(1)
    pred_area = cm[:, :nc].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (label_area + pred_area - inter)
        acc = inter / label_area
    return np.nanmean(iou), np.nanmean(acc), inter.sum() / label_area.sum()


def test_metric_equals_confusion_matrix_reference():
    g = torch.Generator().manual_seed(0)
    nc = 6
    preds, labels = [], []
    for h, w in ((17, 23), (8, 5), (30, 31)):
        label = torch.randint(0, nc, (h, w), generator=g)
        label[torch.rand(h, w, generator=g) < 0.1] = 255  # ignored pixels
        pred = torch.where(torch.rand(h, w, generator=g) < 0.6, label.clamp(max=nc - 1),
                           torch.randint(0, nc + 3, (h, w), generator=g))  # some predictions beyond the classes
        preds.append(pred)
        labels.append(label)
    metric = SegmentationMetric(nc)
    for p, l in zip(preds, labels):
        metric.update(p, l)
    got = metric.compute()
    miou, macc, aacc = _confusion_reference(preds, labels, nc)
    assert abs(got["mIoU"] - miou) < 1e-12 and abs(got["mAcc"] - macc) < 1e-12 and abs(got["aAcc"] - aacc) < 1e-12


def test_absent_class_is_nan_and_skipped():
    metric = SegmentationMetric(3)
    metric.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 0], [1, 255]]))  # (1, 1) is ignored
    out = metric.compute()
    assert np.isnan(out["IoU"][2]) and out["IoU"][:2] == [0.5, 0.5] and out["mIoU"] == 0.5
    assert abs(out["aAcc"] - 2 / 3) < 1e-12 and out["Acc"][:2] == [0.5, 1.0]
